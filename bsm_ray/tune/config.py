"""The annealing sweep's config (`jobs/anneal_mix.py`). Pure module.

A sweep = a base checkpoint + a trial recipe (a `TrainConfig`: model, batch, workers) + a search
space over mixes (and, for CM-GEMS, the switch threshold) + ASHA + an objective.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from bsm_ray.tracking.config import TrackingConfig
from bsm_ray.train.config import TrainConfig


@dataclass
class BaseConfig:
    """Weights every trial starts from."""

    path: str | None = None
    """A Hugging Face model folder (a round's final_model/), a run checkpoint folder holding
    final_model/, or a registry URI (models:/<name>/<version>, models:/<name>@<alias>).
    None: train a short base run first (`steps` steps on `mix` with the trial recipe) and reuse
    it on later sweeps of the same name."""
    steps: int = 30
    mix: dict[str, float] = field(
        default_factory=lambda: {"single_dna": 1.0, "single_rna": 1.0, "single_protein": 1.0}
    )
    """Mix of the base run (round 1: single-modal)."""
    start_lr: float = 3e-3
    end_lr: float = 3e-4
    num_workers: int = 0
    """Workers of the base run; 0 runs it in this process (real DeepSpeed, no Train start-up)."""
    optimizer_state: bool | None = None
    """Trials start from the base's AdamW moments as well as its weights, continuing the round
    as the paper's annealing does (at each trial's own world size). None: when the base is a
    training checkpoint (or a run folder with one, or the base run); a model folder or a
    registry version has weights only."""


@dataclass
class RegressionConfig:
    """The fitted mixing law (bsm_ray.tune.law): after the trials, fit validation loss on the
    mix from the trials that trained all `steps`, propose the mix it predicts best, and run that
    mix as one more trial (the confirmation) to measure it like the others."""

    enabled: bool = True
    """Fit, propose and confirm (a sweep of one source, or one that tunes the CM-GEMS threshold,
    says why it has no law)."""
    max_repetitions: float | None = None
    """Repetition cap of the proposal: the most times the confirmation trial may pass over a
    source's training tokens. None: the most any fitted trial repeated it (the law knows
    nothing of repetition beyond what the trials saw); never below one pass."""
    confirm: bool = True
    """Run the proposal as one confirmation trial (the same steps as the others)."""


@dataclass
class SearchConfig:
    """Where trials sample mixes (token ratios) and thresholds."""

    candidates: list[dict[str, float]] = field(default_factory=list)
    """Mixes evaluated first, e.g. the paper's {single: 10, refseq_pair: 2, gene_pair: 1}."""
    neighbours: bool = True
    """Also evaluate the neighbours of the first candidate: each weight doubled or halved."""
    num_samples: int = 8
    """Trials in all: the fixed points above, then points chosen by the searcher."""
    searcher: Literal["optuna", "random"] = "optuna"
    """optuna: TPE (Bayesian) over log-weights; random: log-uniform points on the simplex."""
    weight_range: tuple[float, float] = (0.02, 1.0)
    """Range of the raw (unnormalised) weight of each source; the mix is the weights normalised."""
    switch_threshold: tuple[float, float] | None = None
    """cm_gems trials: log-uniform range of the perplexity-drop threshold to tune (None: fixed)."""
    threshold_candidates: list[float] = field(default_factory=list)
    """cm_gems: thresholds evaluated first (paired with the first candidate mix, if any)."""
    regression: RegressionConfig = field(default_factory=RegressionConfig)
    """The fitted mixing law and its confirmation trial (on by default)."""


@dataclass
class AshaConfig:
    """ASHA early stopping on optimizer steps."""

    enabled: bool = True
    grace_period: int = 200
    """Steps every trial runs before it can be stopped."""
    reduction_factor: int = 2


@dataclass
class AnnealConfig:
    """An annealing sweep: every trial anneals the base weights for `steps` steps on its mix."""

    name: str = "anneal"
    """Sweep name: results under <storage_path>/<name>/; --resume continues it."""
    storage_path: str = "runs"
    train: TrainConfig = field(default_factory=TrainConfig)
    """The trial recipe (model, batch, workers, data.dataset); its data.mix names the sources
    when search.candidates is empty, and schedule.start_lr is the round's LR."""
    base: BaseConfig = field(default_factory=BaseConfig)
    steps: int = 1000
    """Steps per trial; the LR anneals linearly from the round's LR to 0 over them."""
    start_lr: float | None = None
    """LR at the start of the anneal; None: train.schedule.start_lr."""
    eval_every: int = 100
    """Validation (and checkpoint) interval: ASHA decides at these steps."""
    search: SearchConfig = field(default_factory=SearchConfig)
    asha: AshaConfig = field(default_factory=AshaConfig)
    objective: dict[str, float] = field(default_factory=dict)
    """Weights of per-source validation losses in the objective; empty: equal weights over the
    swept sources that have a validation split."""
    max_concurrent: int = 0
    """Concurrent trials; 0: as many as the cluster's CPUs (GPUs) hold trial workers."""
    grid_check: bool = False
    """After the sweep, run every trial ASHA stopped to `steps` (resuming its checkpoint) and
    report whether the full grid's winner is ASHA's."""
    next_round: str | None = None
    """A round config (e.g. jobs/configs/bsm_round2.yaml) to write the winning mix into;
    None: the trial recipe with its round schedule."""
    tracking: TrackingConfig = field(
        default_factory=lambda: TrackingConfig(enabled=True, experiment="bsm_ray-anneal")
    )
    worker_logs: bool = False
    """Stream every Ray worker's output to this driver (trial progress is shown either way)."""
    trial_drivers_on_head: bool = True
    """Run trial drivers (and so their Ray Train controllers, which Ray attaches to the
    driver's node) on the head node. A worker node lost mid-sweep then takes only training
    workers with it: the surviving controller releases its placement group and restarts from
    the last checkpoint. A controller lost with its node leaves its placement group holding
    CPUs elsewhere, and the sweep can wait on it forever (ray-project/ray#65147). Turn off
    only for a head without room for a driver (512 MiB each, no CPU)."""

    def __post_init__(self) -> None:
        if self.steps <= 0 or self.eval_every <= 0:
            raise ValueError("steps and eval_every must be positive")
        if self.search.num_samples <= 0:
            raise ValueError("search.num_samples must be positive")
        lo, hi = self.search.weight_range
        if not 0 < lo <= hi:
            raise ValueError(f"search.weight_range must satisfy 0 < low <= high, got {lo}, {hi}")
        reps = self.search.regression.max_repetitions
        if reps is not None and reps <= 0:
            raise ValueError(f"search.regression.max_repetitions must be positive, got {reps}")


@dataclass
class SweepSpec:
    """What every trial of a running sweep shares, shipped to each Tune trial (typed, so a
    trial gets the same strict checking as a config; built by `sweep.sweep_spec`)."""

    sweep_dir: str
    """<storage_path>/<name>: trials write under trials/<id>/."""
    train: TrainConfig
    """The trial recipe; a trial sets its mix, threshold, schedule, steps and base on a copy."""
    sources: list[str]
    """The swept sources, in the order of the raw weights `w_<source>`."""
    steps: int
    eval_every: int
    base: str
    """The Hugging Face model folder every trial starts from."""
    start_lr: float
    """The anneal's first LR (linearly to 0 over `steps`)."""
    objective: dict[str, float]
    """Weights of the per-source validation losses in the objective."""
    tracking: TrackingConfig
    parent_run_id: str | None = None
