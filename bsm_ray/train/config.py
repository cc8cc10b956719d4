"""Training configs: one strict dataclass tree per run, loaded from YAML with `--set` overrides.

Pure module: no ray, torch or deepspeed (configs are shipped to Ray workers as plain data).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal

from bsm_ray.tracking.config import TrackingConfig
from bsm_ray.train.schedules import ScheduleConfig


@dataclass
class DataConfig:
    """What the run trains on."""

    dataset: str = "data/sample"
    """A dataset prepared by jobs/prepare_data.py (built from the sample corpus if missing and
    this is the default path)."""
    mix: dict[str, float] = field(default_factory=lambda: {"single_dna": 1.0})
    """Source kind -> token ratio (causal LM). MLM runs train on the 'genome' kind."""
    val_rows_per_source: int = 64
    """Validation rows evaluated per source (the first rows of each source's val split)."""
    streaming: bool = False
    """Stream the train split through Ray Data into each worker (read and pack in tasks, mask
    in actors; bsm_ray.data.pipeline), resuming at the next unconsumed row. False: every worker
    holds the train windows in memory (small datasets, annealing trials)."""
    mask_actors: int = 1
    """Streaming MLM: masking actors per worker."""
    stream_cpus: float = 1.0
    """Streaming: CPUs reserved by each read task and masking actor."""
    stream_lanes: int | None = None
    """Streaming: the run's streams per source, fixed for the whole run whatever its world size
    (each worker streams lanes/world_size of them; `bsm_ray.train.streaming`). None: the
    largest worker count (`num_workers`, or its max). Every world size the run can take must
    divide it."""


@dataclass
class MaskingConfig:
    """MLM masking (DNABERT / LOGO)."""

    strategy: Literal["dnabert", "genemask", "global", "cm_step", "cm_gems"] = "dnabert"
    """dnabert random spans, genemask, global, or the curricula cm_step / cm_gems."""
    pmi_table: str | None = None
    """NPMI table (jobs/build_pmi.py) for genemask / global / cm_*; None: the sample's table."""
    switch_threshold: float = 1.0
    """cm_gems: switch to Global once the drop between two consecutive evaluations of the
    curriculum perplexity (`curriculum/ppl`) falls below this, in `switch_rule`'s units."""
    switch_rule: Literal["absolute", "relative"] = "absolute"
    """cm_gems: `absolute` (the paper's): ppl_prev - ppl, in perplexity units, so its meaning
    depends on the model and vocabulary; `relative`: (ppl_prev - ppl) / ppl_prev per evaluation,
    the same at every scale (sweep ranges carry over between models)."""
    eval_strategy: Literal["dnabert", "genemask", "global"] = "dnabert"
    """Masks of every validation measure (val/loss, val/loss/<source>, val/ppl: what sweeps and
    promotion compare): this strategy at a fixed seed and step, whatever the curriculum's phase,
    so runs in different phases are scored on identical masks."""


@dataclass
class OptimConfig:
    """AdamW and gradient clipping."""

    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 0.01
    grad_clip: float = 1.0


@dataclass
class TrainConfig:
    """A pretraining run (BSM causal LM or DNABERT/LOGO masked LM)."""

    name: str = "run"
    """Run name: a fresh launch with the same name and storage resumes from its checkpoint."""
    model: str = "bsm-tiny"
    """Model preset (bsm_ray/models/presets.py)."""
    objective: Literal["causal", "mlm"] = "causal"
    seq_len: int = 256
    """Tokens per row (causal); MLM rows are 512 positions."""
    max_steps: int = 20
    """Optimizer steps."""
    global_batch_tokens: int = 8192
    """Tokens per optimizer step over all workers; micro-batches x accumulation x workers."""
    micro_batch_rows: int = 4
    """Rows per worker per forward/backward."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    zero_stage: int = 2
    """DeepSpeed ZeRO stage 0-3."""
    attention: Literal["auto", "eager", "sdpa", "flash_attention_2"] = "auto"
    """auto: flash_attention_2 when flash-attn and a GPU are there, else SDPA."""
    fused_adamw: bool | None = None
    """torch's fused AdamW kernel; None: on CUDA."""
    compile: bool = False
    """torch.compile the model (DeepSpeed `engine.compile()`)."""
    seed: int = 0
    num_workers: int | list[int] = 2
    """Ray Train workers; 0 runs the loop in this process without Ray. `[min, max]`: an elastic
    run (Ray Train's elastic policy): it starts once `min` workers fit, asks for `max`, and
    restarts from its last checkpoint at whatever size the cluster gives after a worker is lost
    or resources change. The global batch stays `global_batch_tokens`; accumulation is derived
    from the size of the moment."""
    use_gpu: bool = False
    cpus_per_worker: int = 1
    worker_resources: dict[str, float] = field(default_factory=dict)
    """Custom Ray resources each worker needs besides its CPUs (and GPU), e.g. {spot_slot: 1}
    to place workers only on nodes that advertise the resource."""
    elastic_resize_interval_s: float = 60.0
    """Elastic runs: how often Ray Train looks for more resources to grow the worker group
    (ScalingConfig.elastic_resize_monitor_interval_s)."""
    stop_at_step: int | None = None
    """End this launch after this step, with a checkpoint, keeping the schedule of `max_steps`;
    a relaunch of the same run continues from it (a run trained in segments: queue slots,
    moving it to another cluster or size)."""
    eval_every: int = 10
    checkpoint_every: int = 10
    """Steps between checkpoints (a checkpoint is also written at the end)."""
    keep_checkpoints: int = 2
    max_failures: int = 1
    """Worker-group restarts Ray Train may do (resuming from the last checkpoint)."""
    storage_path: str = "runs"
    """Where runs, checkpoints and metrics live (a local path or a cloud URI)."""
    init_from: str | None = None
    """Start from these weights (a Hugging Face model folder, e.g. the previous round's
    final_model/) instead of a fresh initialisation; or from a training checkpoint (a folder
    with DeepSpeed state and trainer_state.json): its weights and AdamW moments, at this run's
    world size, with this run's own step, data position and schedule (annealing trials)."""
    peak_flops: float | None = None
    """Device peak FLOP/s for MFU; measured with a matmul at start-up when None."""
    round: int | None = None
    """BSM round (1..3), set by jobs/pretrain.py --round; recorded on the registered version."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """MLflow: rank 0 logs params, metrics and lineage tags; the driver logs the config, the
    NPMI table and plots, and registers the final model."""
    trace: bool = False
    """Write per-step (loss, rows consumed) and worker pids under <run>/trace/ (tests, audits)."""
    deepspeed: dict[str, Any] = field(default_factory=dict)
    """DeepSpeed config merged last over the one derived from this config (nested dicts key by
    key), e.g. {zero_optimization: {overlap_comm: true, offload_optimizer: {device: cpu}}}.
    Top-level keys are limited to DeepSpeed's sections (`loop.DEEPSPEED_PASS_THROUGH`; the
    batch sizes are derived); DeepSpeed validates what is inside them."""

    def __post_init__(self) -> None:
        self.storage_path = os.path.expanduser(self.storage_path)
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage must be 0..3, got {self.zero_stage}")
        if self.max_steps <= 0 or self.micro_batch_rows <= 0 or self.seq_len <= 1:
            raise ValueError("max_steps, micro_batch_rows and seq_len must be positive")
        if isinstance(self.num_workers, list | tuple):
            low, high = (list(self.num_workers) + [None, None])[:2]
            if (len(self.num_workers) != 2 or not all(isinstance(x, int) for x in (low, high))
                    or not 1 <= low <= high):  # fmt: skip
                raise ValueError(f"num_workers: an int or [min, max] with 1 <= min <= max, got "
                                 f"{self.num_workers}")  # fmt: skip
            self.num_workers = int(low) if low == high else [int(low), int(high)]
        elif self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")

    @property
    def worker_range(self) -> tuple[int, int]:
        """(min, max) workers; (0, 0) runs in this process."""
        if isinstance(self.num_workers, list):
            return self.num_workers[0], self.num_workers[1]
        return self.num_workers, self.num_workers

    @property
    def max_workers(self) -> int:
        """The most workers the run can have (1 for an in-process run)."""
        return max(1, self.worker_range[1])

    @property
    def lanes(self) -> int:
        """Streams per source of a streaming run (`data.stream_lanes`, or the max workers)."""
        return self.data.stream_lanes or self.max_workers

    def size_problem(self, size: int) -> str | None:
        """Why the run cannot take `size` workers (its batch layout, its stream lanes), or
        None when it can."""
        try:
            rows, _ = self.batch_layout(size)
        except ValueError as exc:
            return str(exc)
        if self.data.streaming and (self.lanes % size or rows % self.lanes):
            return (f"{size} workers and {rows} rows per step do not split into the "
                    f"{self.lanes} stream lanes")  # fmt: skip
        return None

    def world_sizes(self) -> list[int]:
        """The worker counts in `num_workers`'s range that the run can take."""
        low, high = self.worker_range
        return [n for n in range(max(1, low), max(1, high) + 1) if self.size_problem(n) is None]

    def check_world_sizes(self) -> list[int]:
        """The sizes the run can take (an elastic run takes only those; `bsm_ray.train.elastic`
        rounds the cluster's count down to one). Raises ValueError, saying why, when a fixed
        size cannot be taken or no size of a range can."""
        sizes = self.world_sizes()
        low, high = self.worker_range
        if low == high and not sizes:
            raise ValueError(self.size_problem(max(1, low)))
        if not sizes:
            why = "; ".join(f"{n}: {self.size_problem(n)}" for n in range(low, high + 1))
            raise ValueError(f"num_workers {self.num_workers}: the run can take none of these "
                             f"sizes ({why})")  # fmt: skip
        return sizes

    @property
    def trained_mix(self) -> dict[str, float]:
        """Source kind -> token ratio the run trains on: `data.mix` (causal LM), the genome
        pieces (MLM, whatever `data.mix` says)."""
        return {"genome": 1.0} if self.objective == "mlm" else dict(self.data.mix)

    @property
    def row_len(self) -> int:
        return 512 if self.objective == "mlm" else self.seq_len

    def batch_layout(self, world_size: int) -> tuple[int, int]:
        """(global rows per step, gradient accumulation steps) for `world_size` workers.

        global rows = global_batch_tokens / row_len; it must split evenly into
        world_size x micro_batch_rows x accumulation.
        """
        row_len = self.row_len
        if self.global_batch_tokens % row_len:
            raise ValueError(
                f"global_batch_tokens {self.global_batch_tokens} is not a multiple of the row "
                f"length {row_len}"
            )
        rows = self.global_batch_tokens // row_len
        per_step = world_size * self.micro_batch_rows
        if rows % per_step:
            raise ValueError(
                f"{rows} rows per step do not split into {world_size} workers x "
                f"{self.micro_batch_rows} rows per micro-batch"
            )
        return rows, rows // per_step
