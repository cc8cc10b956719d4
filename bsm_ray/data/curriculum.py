"""CM-Step and CM-GEMS masking schedules: small, checkpointable state machines.

CM-Step (stateless but for max_steps): at step s, a batch uses Global masking with probability
    q = floor(s / (max_steps / 100)) / 100
and DNABERT random masking otherwise; the coin is a pure function of (seed, step), so every
worker and every restart draws the same strategy for the same step.

CM-GEMS: GeneMask until the drop between two consecutive evaluation perplexities falls below
`threshold`, then Global for the rest of the run. One-way: it switches once. Two rules:
- `absolute` (the paper's): ppl_prev - ppl < threshold (1.0 in the paper). Its meaning depends
  on the perplexity's scale: a 6-mer vocabulary starts near 4,101, so early drops are hundreds.
- `relative`: (ppl_prev - ppl) / ppl_prev < threshold, a fraction per evaluation. It does not
  depend on the vocabulary or the model's size, so a sweep range carries over from a 5M LOGO
  on CPU to DNABERT on GPUs (keep `eval_every` in the same proportion of the run).
Its whole state (phase, last perplexity, last evaluation step, switch step) is returned by
`state_dict()` and restored by `load_state_dict()` from the training checkpoint, and only from
there: a fresh schedule starts in GeneMask with no history, so no stale file can switch it
(the authors' code read a perplexity log left in the output folder). Evaluations must come in
increasing step order; an out-of-order one is refused rather than silently used. Under data
parallelism the trainer passes the perplexity aggregated over all workers, so every worker
takes the same decision at the same step.

Pure module: standard library and numpy.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from bsm_ray.data.masking import uniforms

PHASES = ("genemask", "global")
SWITCH_RULES = ("absolute", "relative")


def perplexity_drop(previous: float, current: float, rule: str) -> float:
    """The quantity the CM-GEMS rule compares with its threshold (see the module docstring)."""
    if rule not in SWITCH_RULES:
        raise ValueError(f"unknown switch rule {rule!r}: one of {SWITCH_RULES}")
    drop = previous - current
    return drop if rule == "absolute" else drop / previous


def first_switch(perplexities: list[tuple[int, float]], threshold: float,
                 rule: str) -> int | None:  # fmt: skip
    """The step at which a fresh CM-GEMS schedule switches on this sequence of (step, ppl)."""
    schedule = CmGemsSchedule(threshold=threshold, rule=rule)
    for step, ppl in perplexities:
        if schedule.observe(step, ppl):
            return step
    return None


@dataclass
class CmStepSchedule:
    """CM-Step: Global with probability q(step) rising by 1% every max_steps/100 steps."""

    max_steps: int
    seed: int = 0

    def global_probability(self, step: int) -> float:
        if self.max_steps <= 0:
            raise ValueError("max_steps must be positive")
        return math.floor(step / (self.max_steps / 100)) / 100

    def strategy(self, step: int) -> str:
        coin = uniforms(self.seed, np.zeros(1, dtype=np.uint64), step, 7, 1)[0, 0]
        return "global" if coin < self.global_probability(step) else "dnabert"

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        self.max_steps, self.seed = int(state["max_steps"]), int(state["seed"])


@dataclass
class CmGemsSchedule:
    """CM-GEMS: GeneMask -> Global once the eval perplexity drop falls below `threshold`."""

    threshold: float = 1.0
    rule: str = "absolute"
    phase: str = "genemask"
    last_perplexity: float | None = None
    last_eval_step: int | None = None
    switch_step: int | None = None
    last_drop: float | None = None
    """The rule's last measured drop (absolute or relative), for the logs."""

    def __post_init__(self) -> None:
        if self.rule not in SWITCH_RULES:
            raise ValueError(f"unknown switch rule {self.rule!r}: one of {SWITCH_RULES}")

    def strategy(self, step: int) -> str:  # noqa: ARG002 - same signature as CmStepSchedule
        return self.phase

    def observe(self, step: int, perplexity: float) -> bool:
        """Record an evaluation (perplexity aggregated over all workers); True if it switched.

        The switch takes effect for the batches after `step`.
        """
        if not math.isfinite(perplexity):
            raise ValueError(f"evaluation perplexity at step {step} is not finite: {perplexity}")
        if self.last_eval_step is not None and step <= self.last_eval_step:
            raise ValueError(
                f"evaluation at step {step} comes after one at step {self.last_eval_step}: "
                "stale or out-of-order curriculum state"
            )
        switched = False
        if self.phase == "genemask" and self.last_perplexity is not None:
            drop = perplexity_drop(self.last_perplexity, perplexity, self.rule)
            self.last_drop = float(drop)
            if drop < self.threshold:
                self.phase = "global"
                self.switch_step = step
                switched = True
        self.last_perplexity = float(perplexity)
        self.last_eval_step = int(step)
        return switched

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        if state.get("phase") not in PHASES:
            raise ValueError(f"unknown curriculum phase {state.get('phase')!r}")
        rule = state.get("rule", "absolute")  # checkpoints from before the relative rule
        if rule not in SWITCH_RULES:
            raise ValueError(f"unknown switch rule {rule!r} in the curriculum state")
        self.threshold = float(state["threshold"])
        self.rule = rule
        self.phase = state["phase"]
        self.last_perplexity = state["last_perplexity"]
        self.last_eval_step = state["last_eval_step"]
        self.switch_step = state["switch_step"]
        self.last_drop = state.get("last_drop")


def mask_with_schedule(
    schedule: CmStepSchedule | CmGemsSchedule,
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    seed: int,
    sample_ids: np.ndarray,
    step: int,
    rank_table: np.ndarray,
    vocab_size: int = 4101,
):
    """Mask one batch with the strategy the schedule picks for `step` (CM-Step / CM-GEMS)."""
    from bsm_ray.data.masking import apply_mask

    strategy = schedule.strategy(step)
    return apply_mask(strategy, input_ids, attention_mask, seed, sample_ids, step, rank_table,
                      vocab_size)  # fmt: skip
