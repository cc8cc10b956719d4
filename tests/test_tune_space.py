"""The sweep's pure parts: search space, fixed points, objective, summary (no Ray)."""

from __future__ import annotations

import math

import pytest

from bsm_ray.config import from_dict
from bsm_ray.errors import ConfigError
from bsm_ray.tracking.config import TrackingConfig
from bsm_ray.tune.config import AnnealConfig, SweepSpec
from bsm_ray.tune.space import (
    THRESHOLD_KEY,
    TrialRow,
    fixed_points,
    format_table,
    mix_of,
    neighbours,
    normalize,
    objective_of,
    objective_weights,
    param_key,
    raw_point,
    summarize,
    swept_sources,
)
from bsm_ray.tune.sweep import trial_concurrency, trial_train_config

PAPER = {"single_dna": 10, "refseq_pair": 2, "gene_pair": 1}


def _config(**kw) -> AnnealConfig:
    data = {"search": {"candidates": [PAPER], "num_samples": 8}, **kw}
    return from_dict(AnnealConfig, data)


def test_candidates_and_neighbours_round_trip_through_raw_weights():
    config = _config()
    points = fixed_points(config, tune_threshold=False)
    sources = swept_sources(config)
    assert sources == ["single_dna", "refseq_pair", "gene_pair"]
    assert len(points) == 7  # 10:2:1 and its six neighbours, all distinct
    mixes = [mix_of(p, sources) for p in points]
    assert mixes[0] == pytest.approx({"single_dna": 10 / 13, "refseq_pair": 2 / 13,
                                      "gene_pair": 1 / 13})  # fmt: skip
    expected = [normalize(m) for m in neighbours(PAPER)]
    for got, want in zip(mixes[1:], expected, strict=True):
        assert got == pytest.approx(want)
    for p in points:  # inside the log-uniform range the searcher samples
        assert all(0.02 <= v <= 1.0 for v in p.values())


def test_neighbours_that_normalise_to_the_same_mix_are_evaluated_once():
    config = _config(search={"candidates": [{"a": 1, "b": 1}, {"a": 2, "b": 2}],
                             "num_samples": 8})  # fmt: skip
    points = fixed_points(config, tune_threshold=False)
    mixes = [tuple(round(v, 6) for v in mix_of(p, ["a", "b"]).values()) for p in points]
    assert len(mixes) == len(set(mixes)) == 3  # 1:1, 2:1, 1:2


def test_bad_candidates_are_clear_errors():
    with pytest.raises(ConfigError, match="below search.weight_range"):
        raw_point({"a": 100, "b": 1}, ["a", "b"], (0.02, 1.0))
    with pytest.raises(ConfigError, match="names \\['c'\\]"):
        raw_point({"a": 1, "c": 1}, ["a", "b"], (0.02, 1.0))
    with pytest.raises(ConfigError, match="positive sum"):
        normalize({"a": 0, "b": 0})
    with pytest.raises(ConfigError, match="exceed search.num_samples=3"):
        fixed_points(_config(search={"candidates": [PAPER], "num_samples": 3}), False)


def test_threshold_points_for_cm_gems():
    config = _config(search={"candidates": [PAPER], "neighbours": False, "num_samples": 4,
                             "switch_threshold": [0.01, 1.0],
                             "threshold_candidates": [0.05, 0.5]})  # fmt: skip
    points = fixed_points(config, tune_threshold=True)
    assert [p[THRESHOLD_KEY] for p in points] == pytest.approx([0.1, 0.05, 0.5])
    with pytest.raises(ConfigError, match="outside"):
        fixed_points(_config(search={"num_samples": 4, "switch_threshold": [0.1, 1.0],
                                     "threshold_candidates": [5.0]}), True)  # fmt: skip


def test_objective_weights_and_value():
    config = _config()
    weights = objective_weights(config, {"single_dna", "refseq_pair", "gene_pair", "web"})
    assert weights == {"single_dna": 1.0, "refseq_pair": 1.0, "gene_pair": 1.0}
    metrics = {"val/loss/single_dna": 1.0, "val/loss/refseq_pair": 2.0, "val/loss/gene_pair": 4.0}
    assert objective_of(metrics, weights) == pytest.approx(7 / 3)
    assert objective_of(metrics, {"single_dna": 3, "gene_pair": 1}) == pytest.approx(7 / 4)
    assert objective_of({"val/loss/single_dna": 1.0}, weights) is None
    with pytest.raises(ConfigError, match="no validation split"):
        objective_weights(_config(objective={"single_rna": 1.0}), {"single_dna"})
    with pytest.raises(ConfigError, match="none of the swept sources"):
        objective_weights(config, {"web"})


def _row(tid, steps, obj, full=None, mix=None):
    return TrialRow(tid, mix or {"a": 0.5, "b": 0.5}, None, steps, obj, full, {})


def test_summary_counts_asha_steps_and_compares_winners():
    rows = [_row("t1", 40, 1.50, 1.50), _row("t2", 10, 1.70, 1.45), _row("t3", 20, 1.60, 1.55),
            _row("t4", 40, 1.52, 1.52)]  # fmt: skip
    s = summarize(rows, 40)
    assert s.asha_steps == 110 and s.grid_steps == 160
    assert s.winner.trial_id == "t1"  # ASHA picks among trials that ran all steps
    assert s.grid_winner.trial_id == "t2" and s.same_winner is False
    table = format_table(s)
    assert table.splitlines()[1].split()[1] == "t2" and "<- winner" in table
    no_grid = summarize([_row("t1", 40, 1.5, 1.5), _row("t2", 10, 1.7)], 40)
    assert no_grid.grid_winner is None and no_grid.same_winner is None
    with pytest.raises(ConfigError, match="no trial finished"):
        summarize([_row("t2", 10, 1.7)], 40)


def test_trial_concurrency_fits_workers_into_the_cluster():
    config = _config(train={"num_workers": 2, "cpus_per_worker": 1})
    assert trial_concurrency(config, {"CPU": 4}) == 2
    assert trial_concurrency(config, {"CPU": 5}) == 2
    assert trial_concurrency(config, {"CPU": 64}) == 8  # never more than the trials
    gpu = _config(train={"num_workers": 8, "cpus_per_worker": 8, "use_gpu": True})
    assert trial_concurrency(gpu, {"CPU": 256, "GPU": 16}) == 2
    assert trial_concurrency(gpu, {"CPU": 4, "GPU": 0}) == 1  # autoscaler will add nodes
    assert trial_concurrency(_config(max_concurrent=3), {"CPU": 1}) == 3


def test_trial_config_is_the_recipe_with_mix_anneal_and_base():
    config = _config(train={"model": "bsm-tiny", "seq_len": 128, "global_batch_tokens": 4096,
                            "masking": {"strategy": "cm_gems"}})  # fmt: skip
    sources = swept_sources(config)
    spec = SweepSpec(sweep_dir="/tmp/sweep", train=config.train, sources=sources, steps=1000,
                     eval_every=100, base="/models/round1", start_lr=1e-5,
                     tracking=TrackingConfig(enabled=False), objective={})  # fmt: skip
    params = {param_key(s): w for s, w in zip(sources, (1.0, 0.2, 0.1), strict=True)}
    params[THRESHOLD_KEY] = 0.3
    tc = trial_train_config(spec, params, "abc_00001", None)
    assert tc.name == "abc_00001" and tc.storage_path == "/tmp/sweep/trials"
    assert tc.data.mix == pytest.approx({"single_dna": 1 / 1.3, "refseq_pair": 0.2 / 1.3,
                                         "gene_pair": 0.1 / 1.3})  # fmt: skip
    assert tc.schedule.kind == "anneal" and tc.schedule.start_lr == 1e-5
    assert tc.max_steps == 1000 and tc.eval_every == tc.checkpoint_every == 100
    assert tc.init_from == "/models/round1" and tc.masking.switch_threshold == 0.3
    assert not tc.tracking.enabled
    assert math.isclose(sum(tc.data.mix.values()), 1.0)
