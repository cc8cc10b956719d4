"""A mix sweep end to end with its fitted mixing law: four 1-worker trials over two sources
(each measured at the last step), the law fitted on them, its
proposal run as a confirmation trial through the same Tune trainable, and the result in the
ranked table, summary.json, best_mix.yaml and the MLflow parent run. Plus the law on a sweep
with too few finished trials (from trial files written here; no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bsm_ray.config import from_dict, load_config, to_dict
from bsm_ray.train.config import TrainConfig
from bsm_ray.train.context import read_metrics
from bsm_ray.tune.config import AnnealConfig
from bsm_ray.tune.law import MixingLaw, fit_law
from bsm_ray.tune.space import TrialRow

pytestmark = pytest.mark.slow

SOURCES = ["refseq_pair", "gene_pair"]
STEPS = 6
RANGE = (0.1, 1.0)
EXPERIMENT = "mix-sweep-test"


def _sweep_config(dataset: str, storage: Path, **kw) -> AnnealConfig:
    data = {
        "name": "mix-law", "storage_path": str(storage),
        "train": {"model": "bsm-tiny", "objective": "causal", "seq_len": 64,
                  "global_batch_tokens": 16 * 64, "micro_batch_rows": 8, "num_workers": 1,
                  "schedule": {"kind": "round", "start_lr": 3e-3, "end_lr": 3e-4},
                  "data": {"dataset": dataset, "mix": {"refseq_pair": 1, "gene_pair": 1},
                           "val_rows_per_source": 16}},
        "base": {"steps": 4, "mix": {"single_dna": 1, "refseq_pair": 1}, "num_workers": 0},
        "steps": STEPS, "eval_every": 2,
        "search": {"candidates": [{"refseq_pair": 1, "gene_pair": 1},
                                  {"refseq_pair": 1, "gene_pair": 0.15},
                                  {"refseq_pair": 0.15, "gene_pair": 1},
                                  {"refseq_pair": 1, "gene_pair": 0.4}],
                   "neighbours": False, "num_samples": 4, "searcher": "random",
                   "weight_range": list(RANGE)},
        # ASHA off: every trial trains all steps, so the four are the law's four points
        # (ASHA's stops on the dashboard are tested on a page of its own below)
        "asha": {"enabled": False},
        "tracking": {"enabled": True, "experiment": EXPERIMENT},
    }  # fmt: skip
    data.update(kw)
    return from_dict(AnnealConfig, data)


@pytest.fixture(scope="module")
def mix_sweep(dataset, tmp_path_factory, ray_instance):
    """The sweep, run once for this module's tests."""
    from bsm_ray.tune.sweep import run_sweep

    config = _sweep_config(dataset, tmp_path_factory.mktemp("mix-sweep"))
    return config, run_sweep(config)


def _objective(losses: dict[str, float]) -> float:
    return sum(losses[s] for s in SOURCES) / len(SOURCES)


def _losses_at(trial_dir: Path, step: int) -> dict[str, float]:
    m = [m for m in read_metrics(trial_dir) if m["step"] == step and "val/loss" in m][-1]
    return {s: m[f"val/loss/{s}"] for s in SOURCES}


def test_the_law_is_fitted_at_equal_steps_and_its_proposal_is_confirmed(mix_sweep):
    from mlflow.tracking import MlflowClient

    from bsm_ray.tracking.config import resolve_tracking_uri

    config, outcome = mix_sweep
    sweep = outcome.sweep_dir
    summary = json.loads((sweep / "summary.json").read_text())
    law = summary["law"]
    assert law["skipped"] is None, law
    sampled = {t["trial_id"]: t for t in summary["trials"]}
    assert len(sampled) == 4 and not summary["errors"]
    # Fitted on every sampled trial, each at the last step; the coefficients are those of a
    # fit on the trials' own metrics files.
    assert law["fit_step"] == STEPS and sorted(law["fitted_trials"]) == sorted(sampled)
    mixes = [sampled[t]["mix"] for t in law["fitted_trials"]]
    losses = [_losses_at(sweep / "trials" / t, STEPS) for t in law["fitted_trials"]]
    refit = fit_law(mixes, losses, {s: 1.0 for s in SOURCES})
    for s in SOURCES:
        assert law["law"]["coef"][s] == pytest.approx(refit.coef[s], abs=1e-9)
        assert law["law"]["intercept"][s] == pytest.approx(refit.intercept[s], abs=1e-9)
    # The proposal: inside weight_range, and the law's prediction at it.
    proposal = law["proposal"]
    mix = proposal["mix"]
    assert sum(mix.values()) == pytest.approx(1.0)
    assert max(mix.values()) / min(mix.values()) <= RANGE[1] / RANGE[0] * (1 + 1e-6)
    assert all(RANGE[0] - 1e-9 <= w <= RANGE[1] + 1e-9 for w in proposal["raw"].values())
    fitted = MixingLaw(SOURCES, law["law"]["intercept"], law["law"]["coef"],
                       law["law"]["objective_weights"])  # fmt: skip
    assert law["predicted"] == pytest.approx(fitted.predict(mix), abs=1e-9)
    # The confirmation trial: the proposal, trained all steps by the same recipe from the
    # same base, measured like every sampled trial (its own metrics file at the last step).
    conf = law["confirmation"]
    assert conf["proposed"] is True and conf["trial_id"] not in sampled
    assert conf["steps_asha"] == STEPS and conf["mix"] == pytest.approx(mix, abs=1e-6)
    measured = _objective(_losses_at(sweep / "trials" / conf["trial_id"], STEPS))
    assert law["measured"] == pytest.approx(measured, abs=1e-9) == conf["objective_full"]
    info = json.loads((sweep / "trials" / conf["trial_id"] / "trial.json").read_text())
    other = json.loads((sweep / "trials" / law["fitted_trials"][0] / "trial.json").read_text())
    for key in ("init_from", "max_steps", "eval_every", "schedule", "model", "seed"):
        assert info["train"][key] == other["train"][key], key
    assert info["train"]["data"]["val_rows_per_source"] == 16
    best_sampled = min(sampled.values(), key=lambda t: t["objective_full"])
    assert law["best_sampled"]["trial_id"] == best_sampled["trial_id"]
    beats = measured < best_sampled["objective_full"]
    assert law["beats_sampled"] is beats
    # The sweep's choice: the proposal if it beat every sampled mix, else ASHA's winner.
    assert summary["best"]["trial_id"] == (conf["trial_id"] if beats
                                           else summary["winner"]["trial_id"])  # fmt: skip
    nxt = load_config(TrainConfig, str(outcome.best_yaml), [])
    assert nxt.data.mix == pytest.approx(summary["best"]["mix"], abs=1e-6)
    # The ranked table carries the confirmation trial, marked, and the law's lines.
    table = (sweep / "summary.txt").read_text()
    row = next(x for x in table.splitlines() if "law's proposal" in x)
    assert conf["trial_id"][-10:] in row and f"{measured:.4f}" in row
    assert f"predicted objective {law['predicted']:.4f}" in table
    assert f"measured objective {measured:.4f}" in table
    assert ("beats every sampled mix" if beats else "does not beat the best sampled mix") in table
    assert outcome.summary.best.trial_id == summary["best"]["trial_id"]
    # MLflow: the parent run has the law's figures; the confirmation is one of its children.
    client = MlflowClient(resolve_tracking_uri(None))
    parent = client.get_run(outcome.parent_run_id)
    assert parent.data.metrics["sweep/law_predicted"] == pytest.approx(law["predicted"])
    assert parent.data.metrics["sweep/law_measured"] == pytest.approx(measured)
    assert parent.data.metrics["sweep/law_beats_sampled"] == float(beats)
    assert parent.data.tags["bsm_ray.best_trial"] == summary["best"]["trial_id"]
    child = client.get_run(conf["run_id"])
    assert child.data.tags["mlflow.parentRunId"] == outcome.parent_run_id
    assert child.data.tags["bsm_ray.law_proposal"] == "true"
    assert child.info.status == "FINISHED"


def test_too_few_finished_trials_say_so_and_a_fit_caps_repetition(dataset, tmp_path):
    """The law from trial files alone (no Ray: the confirmation is off): with three sources and
    three finished trials it says why it cannot fit; with six it fits and caps the source that
    the proposal would repeat more often than any trial did."""
    from bsm_ray.ingest.shards import read_manifest
    from bsm_ray.tune.sweep import mixing_law, sweep_spec

    three = ["single_dna", "refseq_pair", "gene_pair"]
    config = _sweep_config(dataset, tmp_path, search={
        "candidates": [{"single_dna": 1, "refseq_pair": 1, "gene_pair": 1}],
        "neighbours": False, "num_samples": 6, "weight_range": [0.02, 1.0],
        "regression": {"confirm": False}})  # fmt: skip
    # trials of 6 x 64 Ki tokens: 12% single_dna repeats the sample's single_dna ~3 times
    config.train.global_batch_tokens = 64 * 1024
    weights = {s: 1.0 for s in three}
    sweep_dir = tmp_path / "mix-law"
    spec = sweep_spec(config, sweep_dir, tmp_path / "base", weights, None)
    # A known law in which single_dna's loss falls steeply with its share: the proposal wants
    # more single_dna than the sample corpus holds for STEPS x 1024 tokens.
    truth = MixingLaw(three, {s: 2.0 for s in three},
                      {s: {j: (-0.3 if j == s == "single_dna" else -0.05 if j == s else 0.0)
                           for j in three} for s in three}, weights)  # fmt: skip
    mixes = [{"single_dna": 0.05, "refseq_pair": 0.5, "gene_pair": 0.45},
             {"single_dna": 0.1, "refseq_pair": 0.3, "gene_pair": 0.6},
             {"single_dna": 0.08, "refseq_pair": 0.6, "gene_pair": 0.32},
             {"single_dna": 0.12, "refseq_pair": 0.44, "gene_pair": 0.44},
             {"single_dna": 0.06, "refseq_pair": 0.34, "gene_pair": 0.6},
             {"single_dna": 0.09, "refseq_pair": 0.45, "gene_pair": 0.46}]
    rows = []
    for i, mix in enumerate(mixes):
        trial = sweep_dir / "trials" / f"t{i}"
        trial.mkdir(parents=True)
        losses = truth.predict_losses(mix)
        lines = [{"step": 2, **{f"val/loss/{s}": v + 1 for s, v in losses.items()}},
                 {"step": STEPS, **{f"val/loss/{s}": v for s, v in losses.items()}}]
        (trial / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        rows.append(TrialRow(f"t{i}", mix, None, STEPS, truth.predict(mix),
                             truth.predict(mix), losses))  # fmt: skip
    # Three finished, three stopped at step 2 (no grid check): too few to fit three sources.
    stopped = [TrialRow(r.trial_id, r.mix, None, 2, r.objective_asha + 1, None, {})
               for r in rows[3:]]  # fmt: skip
    few = mixing_law(config, spec, sweep_dir, rows[:3] + stopped, resume=False)
    assert few.proposal is None and few.law is None
    assert few.skipped.startswith("not fitted: 3 of 6 trials trained all 6 steps, and a law "
                                  "over 3 sources needs 5")  # fmt: skip
    assert "grid_check: true" in few.skipped
    assert few.lines() == [f"Mixing law: {few.skipped}."]
    # All six finished: fitted (exactly: the points lie on the law), proposal under the cap.
    out = mixing_law(config, spec, sweep_dir, rows, resume=False)
    assert out.skipped is None and out.confirmation is None
    assert out.law.coef["single_dna"]["single_dna"] == pytest.approx(-0.3, abs=1e-9)
    assert out.loo_rmse == pytest.approx(0.0, abs=1e-9)
    held = read_manifest(dataset)["totals"]["single_dna"]["train"]["tokens"]
    trial_tokens = STEPS * config.train.global_batch_tokens
    most = max(m["single_dna"] for m in mixes) * trial_tokens / held
    assert out.max_repetitions["single_dna"] == pytest.approx(max(1.0, most))
    assert out.proposal.capped == ["single_dna"]
    assert out.repetitions["single_dna"] == pytest.approx(max(1.0, most), rel=1e-4)
    assert out.proposal.predicted == pytest.approx(truth.predict(out.proposal.mix), abs=1e-9)
    # an explicit cap of 1 pass over single_dna's tokens
    one = from_dict(AnnealConfig, {**to_dict(config), "search": {
        **to_dict(config.search), "regression": {"confirm": False, "max_repetitions": 1.0}}})
    capped = mixing_law(one, spec, sweep_dir, rows, resume=False)
    assert capped.proposal.mix["single_dna"] == pytest.approx(
        min(1.0, held / trial_tokens), abs=1e-5)
    assert "Mixing law (per-source log-linear, fitted on 6 trials at step 6" in out.lines()[0]


def _chromium() -> str:
    import shutil

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("the dashboard test needs a real browser: Debian's chromium is not "
                    "installed (`apt-get install chromium`; .ci/run installs it)")
    return exe


def _browser(page: Path, *args: str) -> str:
    """Run headless chromium on `page` after its scripts ran (virtual time), return stdout."""
    import subprocess

    p = subprocess.run([_chromium(), "--headless=new", "--no-sandbox", "--disable-gpu",
                        "--virtual-time-budget=20000", "--window-size=1400,1900", *args,
                        page.resolve().as_uri()], capture_output=True, text=True,
                       timeout=180)  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout


def test_the_dashboard_draws_every_trial_in_a_real_browser(mix_sweep, tmp_path):
    """The page the sweep wrote, loaded in headless chromium: plotly drew every trial (its
    curve's name in the rendered SVG legend), the confirmation trial, the law and the ranked
    table; and a screenshot of it."""
    import re

    config, outcome = mix_sweep
    page = outcome.dashboard
    assert page == outcome.sweep_dir / "dashboard.html" and page.is_file()
    text = page.read_text()
    assert "<script" in text and "src=\"http" not in text  # plotly.js inline: works offline
    assert 'http-equiv="refresh"' not in text  # the final page does not reload itself
    dom = _browser(page, "--dump-dom")
    legend = re.findall(r'<text class="legendtext"[^>]*>([^<]*)</text>', dom)
    summary = json.loads((outcome.sweep_dir / "summary.json").read_text())
    conf = summary["law"]["confirmation"]["trial_id"]
    for t in summary["trials"]:
        assert t["trial_id"] in legend, (t["trial_id"], legend)
    assert f"{conf} (law's proposal)" in legend
    assert any(x.startswith("proposal, predicted") for x in legend), legend
    assert "law through the proposal" in " ".join(legend)
    # the ranked table (a plotly table: its cells are SVG text)
    assert "Ranked trials" in dom and "(law's proposal)" in dom
    shot = tmp_path / "dashboard.png"
    _browser(page, f"--screenshot={shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_a_live_dashboard_marks_asha_stops_in_a_real_browser(tmp_path):
    """The page as a Tune callback writes it mid-sweep (no summary yet), from trial files made
    here: every trial drawn, one X per trial ASHA stopped, the live table; the live page
    reloads itself, the final one does not."""
    import re

    from bsm_ray.tune.dashboard import write_dashboard

    sweep = tmp_path / "sweep"
    stops = {"abc_00001": 2, "abc_00003": 4}
    for i, frac in enumerate((0.5, 0.8, 0.2, 0.35)):
        trial = sweep / "trials" / f"abc_0000{i}"
        trial.mkdir(parents=True)
        info = {"trial_id": trial.name, "params": {"w_a": frac, "w_b": 1 - frac},
                "train": {"objective": "causal", "data": {"mix": {"a": frac, "b": 1 - frac}}}}
        (trial / "trial.json").write_text(json.dumps(info))
        last = stops.get(trial.name, STEPS)
        (trial / "metrics.jsonl").write_text("".join(
            json.dumps({"step": s, "val/loss/a": 3 - 0.1 * s * frac,
                        "val/loss/b": 3 - 0.1 * s * (1 - frac) + i}) + "\n"
            for s in range(2, last + 1, 2)))  # fmt: skip
    weights = {"a": 1.0, "b": 1.0}
    live = write_dashboard(sweep / "live.html", "live", sweep, weights, STEPS, stops)
    assert 'http-equiv="refresh"' in live.read_text()
    # chromium's virtual time would follow the reload forever: load the same page, final
    page = write_dashboard(sweep / "dashboard.html", "live", sweep, weights, STEPS, stops,
                           running=False)  # fmt: skip
    text = page.read_text()
    dom = _browser(page, "--dump-dom")
    legend = re.findall(r'<text class="legendtext"[^>]*>([^<]*)</text>', dom)
    assert sorted(x for x in legend if x.startswith("abc_")) == [f"abc_0000{i}" for i in range(4)]
    assert "stopped by ASHA" in legend
    marks = re.search(r'"name":"stopped by ASHA","text":(\[[^\]]*\]),"x":(\[[^\]]*\])', text)
    assert marks, "no ASHA stop trace in the page"
    assert dict(zip(json.loads(marks.group(1)), json.loads(marks.group(2)), strict=True)) == stops
    assert "stopped at 2" in dom and "stopped at 4" in dom  # the live table
