"""CM-Step and CM-GEMS schedules: one-way switch, checkpointable, never from stale state."""

from __future__ import annotations

import json

import pytest

from bsm_ray.data.curriculum import CmGemsSchedule, CmStepSchedule


def test_cm_step_probability_and_draws():
    s = CmStepSchedule(max_steps=10_000, seed=0)
    assert s.global_probability(0) == 0.0
    assert s.global_probability(99) == 0.0
    assert s.global_probability(100) == 0.01
    assert s.global_probability(5_050) == 0.5
    assert s.global_probability(9_999) == 0.99
    assert all(s.strategy(step) == "dnabert" for step in range(100))
    late = [s.strategy(step) for step in range(9_000, 10_000)]
    assert 0.85 < late.count("global") / len(late) < 0.97  # q = 0.90..0.99
    # the same step draws the same strategy everywhere (workers, restarts)
    assert [CmStepSchedule(10_000, 0).strategy(t) for t in range(3000, 3100)] == [
        s.strategy(t) for t in range(3000, 3100)
    ]


def test_cm_gems_switches_once_when_the_drop_falls_below_threshold():
    s = CmGemsSchedule(threshold=1.0)
    assert s.strategy(0) == "genemask"
    assert s.observe(500, 12.0) is False  # first evaluation: no drop to compare yet
    assert s.observe(1000, 9.5) is False  # drop 2.5
    assert s.observe(1500, 8.2) is False  # drop 1.3
    assert s.observe(2000, 7.6) is True  # drop 0.6 < 1.0: switch at 2000
    assert (s.phase, s.switch_step, s.strategy(2001)) == ("global", 2000, "global")
    assert s.observe(2500, 20.0) is False  # one way: a rise does not switch back
    assert s.observe(3000, 2.0) is False
    assert s.phase == "global" and s.switch_step == 2000


def test_cm_gems_state_round_trips_and_resume_stays_global():
    s = CmGemsSchedule(threshold=0.5)
    for step, ppl in ((100, 10.0), (200, 9.0), (300, 8.9)):
        s.observe(step, ppl)
    assert s.phase == "global"
    state = json.loads(json.dumps(s.state_dict()))  # checkpoints store it as JSON
    resumed = CmGemsSchedule()
    resumed.load_state_dict(state)
    assert resumed == s
    assert resumed.strategy(301) == "global"
    resumed.observe(400, 1.0)
    assert resumed.phase == "global" and resumed.switch_step == 300


def test_cm_gems_refuses_stale_or_out_of_order_state():
    fresh = CmGemsSchedule()
    assert fresh.phase == "genemask" and fresh.last_perplexity is None  # no history, ever
    s = CmGemsSchedule()
    s.observe(1000, 5.0)
    with pytest.raises(ValueError, match="stale or out-of-order"):
        s.observe(1000, 4.99)
    with pytest.raises(ValueError, match="stale or out-of-order"):
        s.observe(10, 4.0)
    with pytest.raises(ValueError, match="not finite"):
        s.observe(2000, float("nan"))
    with pytest.raises(ValueError, match="unknown curriculum phase"):
        CmGemsSchedule().load_state_dict({**s.state_dict(), "phase": "bert"})


def test_schedules_drive_batch_masking():
    import numpy as np

    from bsm_ray.data.curriculum import mask_with_schedule
    from bsm_ray.data.pmi import rank_table
    from bsm_ray.tokenizers import KmerTokenizer

    rng = np.random.default_rng(0)
    seqs = ["".join(rng.choice(list("ACGT"), 511)) for _ in range(8)]
    batch = KmerTokenizer(6).encode_batch(seqs)
    ids, am, sid = batch["input_ids"], batch["attention_mask"], np.arange(8)
    ranks = rank_table({"AAAAAA": 1})
    gems = CmGemsSchedule(threshold=1.0)
    assert mask_with_schedule(gems, ids, am, 0, sid, 5, ranks).strategy == "genemask"
    gems.observe(10, 5.0)
    gems.observe(20, 4.5)
    assert mask_with_schedule(gems, ids, am, 0, sid, 21, ranks).strategy == "global"
    step = CmStepSchedule(max_steps=100)
    assert mask_with_schedule(step, ids, am, 0, sid, 0, ranks).strategy == "dnabert"
    assert mask_with_schedule(step, ids, am, 0, sid, 100, ranks).strategy == "global"  # q = 1


def test_cm_gems_relative_rule_is_scale_free():
    """The relative rule switches at the same step whatever the perplexity's scale; the
    absolute rule (the paper's) switches at different steps for the same curve shape."""
    from bsm_ray.data.curriculum import first_switch

    shape = [1.0, 0.8, 0.7, 0.66, 0.65, 0.649]  # falls by 20%, 12.5%, 5.7%, 1.5%, 0.15%
    for scale in (10.0, 4101.0):
        curve = [(100 * i, scale * v) for i, v in enumerate(shape)]
        assert first_switch(curve, 0.02, "relative") == 400  # the first fall under 2%
    small = [(100 * i, 10.0 * v) for i, v in enumerate(shape)]
    large = [(100 * i, 4101.0 * v) for i, v in enumerate(shape)]
    assert first_switch(small, 1.0, "absolute") == 300  # 7.0 -> 6.6: the first drop under 1
    assert first_switch(large, 1.0, "absolute") is None  # drops of 4 or more ppl: never
    s = CmGemsSchedule(threshold=0.1, rule="relative")
    s.observe(10, 50.0)
    assert s.observe(20, 46.0) is True and s.last_drop == pytest.approx(0.08)
    with pytest.raises(ValueError, match="unknown switch rule"):
        CmGemsSchedule(rule="ratio")


def test_cm_gems_state_keeps_the_rule_and_reads_older_checkpoints():
    s = CmGemsSchedule(threshold=0.05, rule="relative")
    s.observe(10, 100.0)
    resumed = CmGemsSchedule()
    resumed.load_state_dict(json.loads(json.dumps(s.state_dict())))
    assert resumed == s and resumed.rule == "relative"
    old = {k: v for k, v in s.state_dict().items() if k not in ("rule", "last_drop")}
    legacy = CmGemsSchedule()
    legacy.load_state_dict({**old, "threshold": 1.0})  # written before the relative rule
    assert legacy.rule == "absolute" and legacy.last_perplexity == 100.0
