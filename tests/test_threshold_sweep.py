"""CM-GEMS's switch threshold, chosen by a sweep that can tell thresholds apart.

- validation masks are the same before and after a switch (the measure trials are compared on);
- on 2 workers the switch follows the perplexity summed over both ranks: a rank-local rule
  would switch at another step, and no rank does;
- a tiny threshold sweep end to end: trials switch at different steps, their objectives
  differ, the table / summary / MLflow carry the switch step, and the winner's threshold is
  the next round's.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from bsm_ray.data.curriculum import first_switch
from bsm_ray.tracking.config import TrackingConfig
from bsm_ray.train.config import DataConfig, MaskingConfig, TrainConfig
from bsm_ray.train.context import read_metrics
from bsm_ray.train.schedules import ScheduleConfig

NEVER = -1e9  # a relative drop is never below this: the run stays in GeneMask


class _Engine:
    """Stands in for the DeepSpeed engine in `evaluate` (the loss itself is recorded below)."""

    def eval(self) -> None:
        pass

    def train(self) -> None:
        pass


def test_validation_masks_are_the_same_before_and_after_a_switch(monkeypatch):
    import torch

    from bsm_ray.data.masking import apply_mask
    from bsm_ray.data.pmi import rank_table
    from bsm_ray.data.windows import TokenWindows
    from bsm_ray.tokenizers import KmerTokenizer
    from bsm_ray.train import batches, loop

    ranks = rank_table({"ACGTAC": 1, "GGGCCC": 2, "TTTAAA": 3})
    monkeypatch.setattr(batches, "pmi_rank_table", lambda path: ranks)
    config = TrainConfig(objective="mlm", model="bert-tiny", micro_batch_rows=4,
                         masking=MaskingConfig(strategy="cm_gems", switch_threshold=1e9),
                         data=DataConfig(val_rows_per_source=8))  # fmt: skip
    rng = np.random.default_rng(3)
    enc = KmerTokenizer(6).encode_batch(["".join(rng.choice(list("ACGT"), 300)) for _ in range(8)])
    windows = {"genome": TokenWindows("genome", enc["input_ids"], enc["attention_mask"],
                                      np.arange(100, 108))}
    masker = batches.Masker(config)
    ctx = SimpleNamespace(rank=0, world_size=1)

    def val_batches():
        """The batches `evaluate` scores (recorded where the loss is computed)."""
        seen = []

        def record(model, batch, objective):
            seen.append({k: v.clone() for k, v in batch.items()})
            return torch.tensor(1.0)

        monkeypatch.setattr(loop, "token_loss_sum", record)
        loop.evaluate(_Engine(), config, ctx, windows, masker, torch.device("cpu"))
        return seen

    before = val_batches()
    masker.schedule.observe(10, 100.0)
    assert masker.schedule.observe(20, 99.0) is True  # now in Global
    after = val_batches()
    assert len(before) == len(after) == 2
    for b, a in zip(before, after, strict=True):
        assert torch.equal(b["input_ids"], a["input_ids"]) and torch.equal(b["labels"], a["labels"])
    # ... and they are the fixed DNABERT masks (masking.eval_strategy) at the fixed step
    ids, am = enc["input_ids"][:4], enc["attention_mask"][:4]
    want = apply_mask("dnabert", ids, am, config.seed, np.arange(100, 104), batches.VAL_MASK_STEP,
                      ranks)  # fmt: skip
    assert np.array_equal(before[0]["labels"].numpy(), want.labels)
    # the control: the curriculum's own masks did change with the switch
    gene = apply_mask("genemask", ids, am, config.seed, np.arange(100, 104), 21, ranks)
    now = masker(ids, am, np.arange(100, 104), 21)
    assert now.strategy == "global" and not np.array_equal(now.labels, gene.labels)


def _gems(dataset: str, storage: Path, threshold: float, **kw) -> TrainConfig:
    base = dict(
        name="gems", model="bert-tiny", objective="mlm", global_batch_tokens=16 * 512,
        micro_batch_rows=8, max_steps=14,
        schedule=ScheduleConfig(kind="warmup_linear", start_lr=1e-2, end_lr=1e-3, warmup_steps=1),
        data=DataConfig(dataset=dataset, val_rows_per_source=24),
        masking=MaskingConfig(strategy="cm_gems", switch_rule="relative",
                              switch_threshold=threshold),
        num_workers=2, eval_every=2, checkpoint_every=14, storage_path=str(storage),
        tracking=TrackingConfig(enabled=False), trace=True,
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def _curriculum_lines(run_dir: Path, rank: int) -> list[dict]:
    path = Path(run_dir) / "trace" / f"curriculum_rank{rank}.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def gems_reference(dataset, tmp_path_factory, ray_instance):
    """A 2-worker CM-GEMS run that never switches: the perplexities the rule sees (summed over
    ranks) and each rank's own. Its final model is also the threshold sweep's base."""
    from bsm_ray.train.launcher import launch

    config = _gems(dataset, tmp_path_factory.mktemp("gems-ref"), NEVER, name="never")
    return config, launch(config)


def test_every_rank_switches_at_the_step_of_the_aggregated_perplexity(gems_reference, tmp_path):
    from bsm_ray.train.launcher import launch

    config, ref = gems_reference
    lines = {r: _curriculum_lines(ref.run_dir, r) for r in (0, 1)}
    aggregated = [(x["step"], x["curriculum_ppl"]) for x in lines[0]]
    assert aggregated == [(x["step"], x["curriculum_ppl"]) for x in lines[1]]  # one value
    local = {r: [(x["step"], x["local_ppl"]) for x in lines[r]] for r in (0, 1)}
    assert local[0] != local[1]  # the ranks evaluate different rows
    # A threshold at which a rank-local rule would switch at another step than the global one.
    drops = sorted({(a - b) / a for seq in (aggregated, local[0], local[1])
                    for (_, a), (_, b) in zip(seq, seq[1:], strict=False)})  # fmt: skip
    chosen = None
    for lo, hi in zip(drops, drops[1:], strict=False):
        t = (lo + hi) / 2
        at = first_switch(aggregated, t, "relative")
        if at is not None and at < config.max_steps and any(
            first_switch(local[r], t, "relative") != at for r in (0, 1)
        ):
            chosen = (t, at)
            break
    assert chosen is not None, (aggregated, local)
    threshold, want = chosen

    result = launch(_gems(config.data.dataset, tmp_path, threshold, name="switching"))
    switches = [m for m in read_metrics(result.run_dir) if "mask/switch_step" in m]
    assert [m["mask/switch_step"] for m in switches] == [want]
    for rank in (0, 1):
        seen = _curriculum_lines(result.run_dir, rank)
        # the same perplexities as the reference run up to the switch (deterministic)
        assert [x["curriculum_ppl"] for x in seen] == pytest.approx(
            [p for s, p in aggregated if s <= want], rel=1e-6)
        assert seen[-1]["phase"] == "global" and seen[-1]["step"] == want
        steps = [json.loads(x) for x in (Path(result.run_dir) / "trace" / f"rank{rank}.jsonl")
                 .read_text().splitlines()]  # fmt: skip
        phases = {s["step"]: s["strategies"] for s in steps}
        assert all(phases[s] == (["genemask"] if s <= want else ["global"]) for s in phases), (
            rank, phases)
        if first_switch(local[rank], threshold, "relative") != want:
            print(f"rank {rank} alone would have switched at "
                  f"{first_switch(local[rank], threshold, 'relative')}, not {want}")


def test_threshold_sweep_end_to_end(gems_reference, tmp_path):
    """Two trials whose thresholds switch at different steps: distinct objectives, the switch
    step in the table, summary.json and the MLflow child runs, the winner's threshold in
    best_mix.yaml, and the objective-against-threshold plot."""
    from mlflow.tracking import MlflowClient

    from bsm_ray.config import from_dict, load_config
    from bsm_ray.tracking.config import resolve_tracking_uri
    from bsm_ray.tune.config import AnnealConfig
    from bsm_ray.tune.sweep import run_sweep

    config, ref = gems_reference
    train = json.loads(json.dumps(config.__dict__, default=lambda o: o.__dict__))
    train.update(num_workers=1, trace=False, max_steps=10,
                 tracking={"enabled": True, "experiment": "threshold-sweep-test"})
    sweep = from_dict(AnnealConfig, {
        "name": "thresholds", "storage_path": str(tmp_path), "train": train,
        "base": {"path": ref.final_model}, "steps": 10, "eval_every": 2, "start_lr": 1e-3,
        # 0.9: the first comparison switches (a relative drop is < 1 whenever ppl falls);
        # 1e-6: switches only once the curriculum perplexity stops falling
        "search": {"switch_threshold": [1e-6, 0.9], "threshold_candidates": [0.9, 1e-6],
                   "num_samples": 2, "searcher": "random"},
        "objective": {"genome": 1.0}, "asha": {"enabled": False},
        "tracking": {"enabled": True, "experiment": "threshold-sweep-test"},
    })  # fmt: skip
    outcome = run_sweep(sweep)
    rows = {r.threshold: r for r in outcome.summary.rows}
    assert set(rows) == {0.9, 1e-6}
    assert all(r.mix == {"genome": 1.0} for r in rows.values())  # what MLM trials train on
    assert rows[0.9].switch_step == 4  # evaluations at 2, 4, ...: the first drop is at 4
    assert rows[1e-6].switch_step != 4
    objectives = {t: r.objective_full for t, r in rows.items()}
    assert objectives[0.9] != pytest.approx(objectives[1e-6], rel=1e-6, abs=0)
    assert outcome.summary.undecided() is None
    winner = min(rows.values(), key=lambda r: r.objective_full)
    assert outcome.summary.winner.trial_id == winner.trial_id
    # the next round: the winner's threshold with the rule it was tuned under
    nxt = load_config(TrainConfig, str(outcome.best_yaml), [])
    assert nxt.masking.switch_threshold == pytest.approx(winner.threshold)
    assert nxt.masking.switch_rule == "relative" and nxt.masking.strategy == "cm_gems"
    # results carry the switch step
    summary = json.loads((outcome.sweep_dir / "summary.json").read_text())
    assert {t["switch_step"] for t in summary["trials"]} == {r.switch_step for r in rows.values()}
    table = (outcome.sweep_dir / "summary.txt").read_text()
    assert "switch" in table.splitlines()[0] and "WARNING" not in table
    assert outcome.plot.is_file() and outcome.plot.stat().st_size > 0
    client = MlflowClient(resolve_tracking_uri(None))
    for r in rows.values():
        run = client.get_run(r.run_id)
        label = str(r.switch_step) if r.switch_step is not None else "never"
        assert run.data.tags["bsm_ray.switch_step"] == label
        assert run.data.tags["bsm_ray.switch_rule"] == "relative"
        assert run.data.tags["bsm_ray.mix"] == json.dumps({"genome": 1.0})
        if r.switch_step is not None:
            assert run.data.metrics["mask/switch_step"] == r.switch_step


def test_a_sweep_whose_thresholds_change_nothing_says_so():
    from bsm_ray.tune.space import TrialRow, summarize

    def row(i, t, obj, switch):
        return TrialRow(f"t{i}", {"genome": 1.0}, t, 10, obj, obj, {}, switch_step=switch)

    same = summarize([row(0, 0.1, 7.3438, None), row(1, 1.0, 7.3438, None)], 10)
    assert "same objective" in same.undecided()
    switch = summarize([row(0, 0.1, 7.30, 4), row(1, 1.0, 7.31, 4)], 10)
    assert "same point (step 4)" in switch.undecided()
    assert summarize([row(0, 0.1, 7.30, 4), row(1, 1.0, 7.31, 6)], 10).undecided() is None
