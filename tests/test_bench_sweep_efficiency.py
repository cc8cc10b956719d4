"""bench/sweep_efficiency.py's replay, on curves whose answer is known: trials whose ranking
never changes over steps (so every scheduler that keeps the best of each rung keeps the grid's
winner), fed to Ray Tune's own ASHA and AsyncHyperBand objects. No training, no Ray instance."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.sweep_efficiency import replay_async, replay_sync_sh  # noqa: E402

MAX_T, EVERY = 40, 10


def _curves(n: int) -> list[dict]:
    # trial i's objective is 2 + i/100 - step/1000 at every step: trial 0 is best throughout
    steps = list(range(EVERY, MAX_T + 1, EVERY))
    return [{"trial_id": f"t{i}", "steps": steps,
             "objective": [2 + i / 100 - s / 1000 for s in steps]} for i in range(n)]


def test_synchronous_successive_halving_spends_what_its_definition_says():
    curves = _curves(16)
    spent, winner = replay_sync_sh(curves, MAX_T, 10, 2)
    # 16 trials to 10, the best 8 on to 20, the best 4 of those on to 40 (the last rung)
    assert spent == 8 * 10 + 4 * 20 + 4 * 40
    assert winner == 0


@pytest.mark.parametrize("kind", ["asha", "async_hyperband"])
def test_ray_schedulers_replayed_keep_a_winner_that_leads_from_the_start(kind):
    curves = _curves(16)
    best_first = list(range(16))
    spent, winner = replay_async(kind, curves, best_first, 1, MAX_T, 10, 2)
    assert winner == 0 and spent < 16 * MAX_T
    # worst first, one at a time: each new trial beats all before it, so none is stopped early
    # by ASHA's rungs (each is the best so far), and the grid is trained in full
    worst_first = list(reversed(range(16)))
    spent, winner = replay_async("asha", curves, worst_first, 1, MAX_T, 10, 2)
    assert winner == 0 and spent == 16 * MAX_T
