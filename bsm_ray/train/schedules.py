"""Learning-rate schedules as pure functions of the optimizer step (resumable by construction).

- `warmup_linear`: 0 -> peak over `warmup_steps`, then linear to `end_lr` at `max_steps`
  (GeneMask/DNABERT recipe: peak 8e-4, warmup 500, linear decay to 0).
- `round`: linear from `start_lr` to `end_lr` over the run, after an optional warmup (BSM rounds:
  R1 2e-5 -> 1e-5, R2 1e-5 -> 1e-7, R3 1e-6 -> 0).
- `anneal`: linear from `start_lr` (the round's current LR) to 0 over `max_steps` (the
  annealing trials that choose data mixes).

Pure module: standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class ScheduleConfig:
    """LR schedule (see the module docstring)."""

    kind: Literal["warmup_linear", "round", "anneal", "constant"] = "warmup_linear"
    start_lr: float = 1e-3
    """Peak LR (warmup_linear), the LR at step 0 after warmup (round, anneal)."""
    end_lr: float = 0.0
    """LR at max_steps (warmup_linear, round); anneal always ends at 0."""
    warmup_steps: int = 0
    """Linear warmup from 0 (warmup_linear, round)."""

    def __post_init__(self) -> None:
        if self.start_lr < 0 or self.end_lr < 0 or self.warmup_steps < 0:
            raise ValueError("learning rates and warmup_steps must be >= 0")


def lr_at(schedule: ScheduleConfig, step: int, max_steps: int) -> float:
    """LR for optimizer step `step` (0-based) of a run of `max_steps` steps."""
    if max_steps <= 0:
        raise ValueError("max_steps must be positive")
    if schedule.kind == "constant":
        return schedule.start_lr
    if schedule.kind == "anneal":
        return schedule.start_lr * max(0.0, 1.0 - step / max_steps)
    warm = schedule.warmup_steps
    if step < warm:
        return schedule.start_lr * (step + 1) / warm
    span = max(1, max_steps - warm)
    frac = min(1.0, (step - warm) / span)
    return schedule.start_lr + (schedule.end_lr - schedule.start_lr) * frac
