"""The training loop, written once against `TrainContext` (Ray Train worker or local process).

    Trainer(config, ctx)      setup and resume: engine, data plan, streams, curriculum state
    trainer.train()           the loop below, top to bottom
        batch = trainer.next_batch()           # this rank's slice of the global plan
        metrics = trainer.train_step(batch)    # counts, forward/backward, the optimizer step
        trainer.maybe_evaluate(metrics)        # val/* on fixed masks, then hooks (CM-GEMS)
        trainer.maybe_checkpoint(metrics)      # hooks log, then checkpoint / report

Every rank computes the same global plan (`plan.take(global_rows)`, `bsm_ray.data.mixing`) and
takes rows [rank * per_rank, (rank + 1) * per_rank), so no data coordination is needed and a
restart continues from the saved plan position (data.streaming: `plan.take_sources` names the
sources of the slice and this worker's Ray Data streams supply the rows; `streaming.py`).

The loss of a step is the sum of per-token losses over the global batch divided by the global
number of targets, counted from the rows before the forward passes with one all-reduce
(torchtitan, OLMo-core): the gradient of a fixed global batch is the same for any world size
and micro-batch size, and train and validation loss are the same quantity. DeepSpeed does ZeRO
(stage 0-3), accumulation and clipping; the LR comes from `schedules.lr_at(step)` before every
step, so the schedule has no state. fp32 on CPU, bf16 on GPU.

Side concerns are hooks (`TrainerHook`): the MLflow logger, the CM-GEMS switch and the trace
lines; the step itself has no branch for them.

Metrics (namespaced): train/loss, train/lr, train/world_size, train/tokens_per_s, train/mfu,
train/grad_norm (ZeRO 1-3), resize/{from,to,convert_s,load_s} (the first step after a resize;
load_s includes the conversion), val/loss/<source>, val/loss, val/ppl, data/mix/<source>
(realized fraction of real tokens, all workers), data/repeats/<source>; MLM:
mask/strategy_global; CM-GEMS: curriculum/ppl, curriculum/<rule>_drop, mask/switch_step.

Imports torch and deepspeed (inside the functions, after choosing the accelerator).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from bsm_ray.data.mixing import MixState, MixturePlan
from bsm_ray.log import get_logger
from bsm_ray.models import build_model, choose_attention, count_parameters, get_preset
from bsm_ray.models.presets import flops_per_token
from bsm_ray.train.batches import (
    VAL_MASK_STEP,
    Masker,
    batch_tensors,
    num_targets,
    row_labels,
    rows_to_tensors,
    token_loss_sum,
    window_rows,
)
from bsm_ray.train.checkpointing import (
    STATE_TAG,
    install_safe_loader,
    is_training_checkpoint,
    load_rng,
    read_trainer_state,
    save_rng,
    saved_world_size,
    seed_rng,
    write_trainer_state,
)
from bsm_ray.train.config import TrainConfig
from bsm_ray.train.context import TrainContext
from bsm_ray.train.schedules import lr_at

logger = get_logger(__name__)

# Top-level DeepSpeed sections `train.deepspeed` may set (DeepSpeed validates what is inside
# them, but accepts any unknown top-level key silently, so the list is ours). The batch keys
# are derived from `global_batch_tokens` and the world size, so they are not among them.
DEEPSPEED_PASS_THROUGH = (
    "zero_optimization", "bf16", "fp16", "gradient_clipping", "communication_data_type",
    "prescale_gradients", "gradient_predivide_factor", "sparse_gradients",
    "activation_checkpointing", "flops_profiler", "comms_logger", "wall_clock_breakdown",
    "memory_breakdown", "steps_per_print", "zero_allow_untested_optimizer", "data_types",
    "aio", "checkpoint", "compile", "timers", "seq_parallel_communication_data_type",
)  # fmt: skip


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`base` with `extra` merged in, nested dicts key by key."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def deepspeed_config(config: TrainConfig, world_size: int, use_bf16: bool) -> dict[str, Any]:
    """DeepSpeed's config: the batch layout, clipping, ZeRO stage and bf16 from the run's
    config, then `config.deepspeed` merged last (offload, overlap_comm, bucket sizes...)."""
    _, accum = config.batch_layout(world_size)
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": config.micro_batch_rows,
        "gradient_accumulation_steps": accum,
        "gradient_clipping": config.optim.grad_clip,
        "zero_optimization": {"stage": config.zero_stage},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if use_bf16:
        ds["bf16"] = {"enabled": True}
    unknown = sorted(set(config.deepspeed) - set(DEEPSPEED_PASS_THROUGH))
    if unknown:
        raise ValueError(f"deepspeed: unknown or derived top-level key(s) {unknown}; allowed: "
                         f"{', '.join(DEEPSPEED_PASS_THROUGH)} (batch sizes come from "
                         f"global_batch_tokens and micro_batch_rows)")  # fmt: skip
    return _merge(ds, config.deepspeed)


def measure_peak_flops(device) -> float:
    """Achieved dense matmul FLOP/s on this device (fp32 CPU / bf16 GPU), for MFU."""
    import torch

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n = 4096 if device.type == "cuda" else 512
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 0.3:
        a @ b
        reps += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def _all_reduce(t, op=None):
    """`t` reduced over ranks in place (summed unless `op`; a no-op on one process); returns
    it."""
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM if op is None else op)
    return t


def _all_reduce_sum(values: list[float], device) -> list[float]:
    import torch

    return _all_reduce(torch.tensor(values, dtype=torch.float64, device=device)).tolist()


def _all_reduce_max(value: float, device) -> float:
    import torch
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=device)
    return float(_all_reduce(t, dist.ReduceOp.MAX).item())


def _reduce_loss(loss_sum) -> float:
    """The step's loss summed over ranks (one all-reduce, the step's one host sync)."""
    import torch

    return float(_all_reduce(loss_sum.detach().to(torch.float64).reshape(1)).item())


def _eval_sums(engine, config, ctx, val_windows, masker, device, strategy) -> list[float]:
    """This rank's [loss sum, target count] per validation source (sorted by name), MLM rows
    masked with `strategy` at VAL_MASK_STEP."""
    import torch

    engine.eval()
    sums: list[float] = []
    with torch.no_grad():
        for source in sorted(val_windows):
            win = val_windows[source]
            n = min(len(win), config.data.val_rows_per_source)
            mine = list(range(ctx.rank, n, ctx.world_size))
            loss_sum, count = 0.0, 0
            for i in range(0, len(mine), config.micro_batch_rows):
                rows = [(source, r) for r in mine[i : i + config.micro_batch_rows]]
                batch = batch_tensors(config, val_windows, rows, masker, VAL_MASK_STEP, device,
                                       strategy)  # fmt: skip
                targets = num_targets(batch, config.objective)
                if targets:  # the same definition as the training loss: a sum over targets
                    loss_sum += float(token_loss_sum(engine, batch, config.objective))
                    count += targets
            sums += [loss_sum, count]
    engine.train()
    return sums


def _perplexity(sums: list[float]) -> float | None:
    """exp(token-weighted mean loss) of [loss sum, count, ...] pairs; None without targets."""
    count = sum(sums[1::2])
    return math.exp(min(50.0, sum(sums[0::2]) / count)) if count else None


def evaluate(engine, config, ctx, val_windows, masker, device) -> dict[str, float]:
    """Loss per validation source (token-weighted over all workers) and overall: the measure
    runs are compared on. MLM rows are masked with `masking.eval_strategy` at a fixed step,
    never with the curriculum's phase, so a run that switched and one that did not are scored
    on identical masks."""
    strategy = config.masking.eval_strategy if config.objective == "mlm" else None
    local = _eval_sums(engine, config, ctx, val_windows, masker, device, strategy)
    totals = _all_reduce_sum(local, device)
    metrics: dict[str, float] = {}
    for i, source in enumerate(sorted(val_windows)):
        if totals[2 * i + 1]:
            metrics[f"val/loss/{source}"] = totals[2 * i] / totals[2 * i + 1]
    if sum(totals[1::2]):
        metrics["val/loss"] = sum(totals[0::2]) / sum(totals[1::2])
        metrics["val/ppl"] = _perplexity(totals)
    return metrics


def observe_curriculum(engine, config, ctx, val_windows, masker, device, step: int,
                       trace=None) -> dict[str, float]:
    """CM-GEMS's switch rule at an evaluation. It observes `curriculum/ppl`: the validation
    perplexity under GeneMask masks (the phase it decides to leave, as in the paper's rule) at
    a fixed step, summed over all workers with one all-reduce, so every rank takes the same
    decision at the same step. A rank-local perplexity would let ranks switch apart; the trace
    (`trace: true`) records each rank's local one next to the aggregated one to show this.
    Returns the curriculum metrics (and `mask/switch_step` when it switched at `step`)."""
    schedule = masker.schedule
    if schedule is None or not hasattr(schedule, "observe") or schedule.phase != "genemask":
        return {}
    local = _eval_sums(engine, config, ctx, val_windows, masker, device, "genemask")
    ppl = _perplexity(_all_reduce_sum(local, device))
    if ppl is None:
        return {}
    switched = schedule.observe(step, ppl)
    out = {"curriculum/ppl": ppl}
    if schedule.last_drop is not None:
        out[f"curriculum/{schedule.rule}_drop"] = schedule.last_drop
    if switched:
        out["mask/switch_step"] = step
    if trace is not None:
        trace.write_curriculum(step, ppl, _perplexity(local), schedule.phase)
    return out


def build_engine(config: TrainConfig, world_size: int, device):
    """The model (fresh from its preset, or `init_from` when that is a model folder; a training
    checkpoint is loaded into the engine by `Trainer`), AdamW and the DeepSpeed engine, with
    the fast path where the device has it: bf16 and fused AdamW on CUDA, flash-attn or SDPA
    (`config.attention` overrides), `torch.compile` when `config.compile`.
    Returns (engine, attention implementation, why)."""
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if device.type == "cuda" else "cpu")
    import deepspeed
    import torch

    preset = get_preset(config.model)
    if config.attention == "auto":
        attn, attn_reason = choose_attention(preset, device.type)
    else:
        attn, attn_reason = config.attention, "set by the config"
    use_bf16 = device.type == "cuda"
    if config.init_from and not is_training_checkpoint(config.init_from):
        from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

        cls = AutoModelForCausalLM if preset.family == "bsm" else AutoModelForMaskedLM
        model = cls.from_pretrained(config.init_from, attn_implementation=attn)
    else:
        model = build_model(preset, attn, seed=config.seed)
    fused = config.fused_adamw if config.fused_adamw is not None else device.type == "cuda"
    if fused:
        model = model.to(device)  # fused AdamW wants its parameters on the device
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.schedule.start_lr, betas=tuple(config.optim.betas),
        eps=config.optim.eps, weight_decay=config.optim.weight_decay, fused=fused,
    )  # fmt: skip
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer,
        config=deepspeed_config(config, world_size, use_bf16),
    )  # fmt: skip
    if config.compile:
        engine.compile()
    return engine, attn, attn_reason


def optimizer_step(engine, micro_batches: list[dict], objective: str, global_targets: float,
                   world_size: int):  # fmt: skip
    """One optimizer step whose loss is the sum of per-token losses over the *global* batch
    divided by its number of targets (`global_targets`, counted over all ranks before the
    forward passes). DeepSpeed averages gradients over ranks (divides by `world_size`), so each
    micro-batch's sum is scaled by world_size / targets, and `scale_wrt_gas=False` stops
    DeepSpeed dividing by the accumulation steps as well. DeepSpeed accumulates and steps at
    the last micro-batch. Returns this rank's summed token loss as a device tensor (no host
    sync in here)."""
    scale = world_size / max(global_targets, 1.0)
    total = None
    for batch in micro_batches:
        loss_sum = token_loss_sum(engine, batch, objective)
        engine.backward(loss_sum * scale, scale_wrt_gas=False)
        engine.step()
        total = loss_sum.detach() if total is None else total + loss_sum.detach()
    return total


def count_step(labels: np.ndarray, objective: str, tokens: list[float],
               device) -> tuple[float, list[float]]:  # fmt: skip
    """(targets of the global batch, real tokens per source over all ranks): this rank's counts
    (from its rows' numpy labels, so no device sync) summed over ranks with one all-reduce,
    before the forward passes that need the target count."""
    mine = float(num_targets({"labels": labels}, objective))
    totals = _all_reduce_sum([mine, *tokens], device)
    return totals[0], totals[1:]


# ----------------------------------------------------------------------------- hooks


class TrainerHook:
    """A side concern of the loop. Each method may read the trainer and add to `metrics`."""

    def after_step(self, trainer: Trainer, rows: dict[str, np.ndarray], metrics: dict) -> None:
        """After the optimizer step (every rank), with the rows it trained on."""

    def after_evaluate(self, trainer: Trainer, metrics: dict) -> None:
        """After the validation metrics of an evaluation step are in `metrics`."""

    def before_report(self, trainer: Trainer, metrics: dict, flush: bool) -> None:
        """Before the step's metrics go to Ray Train (a sweep may stop the trial there)."""

    def after_train(self, trainer: Trainer) -> None:
        """Once, after the last step."""


class CurriculumHook(TrainerHook):
    """CM-GEMS: the switch rule at each evaluation (`observe_curriculum`); a switch moves the
    streams to the new phase for the rows consumed from then on."""

    def after_evaluate(self, trainer: Trainer, metrics: dict) -> None:
        t = trainer
        metrics.update(observe_curriculum(t.engine, t.config, t.ctx, t.val_windows, t.masker,
                                          t.device, t.step, t.trace))  # fmt: skip
        if metrics.get("mask/switch_step") == t.step and t.streams is not None:
            t.streams.switch(t.masker.schedule.phase, t.step)


class TrackerHook(TrainerHook):
    """Rank 0's MLflow logger into the run named by `tracking.run_id` (created by the caller):
    every step's metrics (flushed at reports), the switch step as a tag."""

    def __init__(self, config: TrainConfig, ctx: TrainContext) -> None:
        from bsm_ray.tracking.runs import RunLogger

        self.logger = RunLogger(config.tracking, config.tracking.run_id, fallback_dir=ctx.run_dir)

    def log_initial(self, metrics: dict) -> None:
        self.logger.log(metrics, 0, flush=True)

    def before_report(self, trainer: Trainer, metrics: dict, flush: bool) -> None:
        self.logger.log(metrics, trainer.step, flush=flush)
        if metrics.get("mask/switch_step") == trainer.step:
            self.logger.set_tags({"bsm_ray.switch_step": trainer.step})

    def after_train(self, trainer: Trainer) -> None:
        self.logger.close()


class TraceHook(TrainerHook):
    """`trace: true`: per-step JSON lines of the rows this rank consumed (tests, audits)."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace

    def after_step(self, trainer: Trainer, rows: dict[str, np.ndarray], metrics: dict) -> None:
        masker = trainer.masker
        self.trace.write(trainer.step, metrics["train/loss"], rows, trainer.names,
                         masker.strategy(trainer.step - 1) if masker is not None else None)


# ----------------------------------------------------------------------------- the trainer


class Trainer:
    """One run's engine, data plan, streams and curriculum, resumed from the latest checkpoint
    when there is one; `train()` runs the loop."""

    def __init__(self, config: TrainConfig, ctx: TrainContext) -> None:
        os.environ.setdefault("DS_ACCELERATOR", "cuda" if config.use_gpu else "cpu")
        self.config, self.ctx = config, ctx
        self.device = ctx.device()
        self.preset = get_preset(config.model)
        self.engine, attn, attn_reason = build_engine(config, ctx.world_size, self.device)
        install_safe_loader(self.engine)
        self.global_rows, self.accum = config.batch_layout(ctx.world_size)
        self.per_rank = self.global_rows // ctx.world_size
        weights = config.trained_mix
        self.names = list(weights)
        self.train_windows, units = None, None
        if config.data.streaming:
            from bsm_ray.train.streaming import stream_units

            units = stream_units(config, self.names)
            num_rows = {s: sum(u.num_rows for u in us) for s, us in units.items()}
        else:
            self.train_windows = ctx.windows("train")
            num_rows = {s: len(w) for s, w in self.train_windows.items()}
        self.val_windows = ctx.windows("val")
        self.plan = MixturePlan(weights, num_rows, seed=config.seed)
        self.masker = Masker(config) if config.objective == "mlm" else None
        self.step, self._stream_positions = 0, None
        self.resize: dict[str, Any] | None = None
        self.init_state: dict[str, Any] | None = None
        self.lanes = config.lanes
        self.resumed_from = self._resume()
        self.streams = self._streams(units) if config.data.streaming else None
        num_params = count_parameters(self.preset)
        self.flops_per_token = flops_per_token(self.preset, config.row_len, num_params)
        self.peak = config.peak_flops or measure_peak_flops(self.device) * ctx.world_size
        if ctx.is_rank0:
            logger.info(f"model {self.preset.name}: {num_params:,} parameters, attention "
                  f"{attn} ({attn_reason}); ZeRO-{config.zero_stage}; {ctx.world_size} "
                  f"worker(s); {self.global_rows} rows/step = {micro_rows_desc(config, self.accum)}"
                  + (f"; resumed at step {self.resumed_from}" if self.resumed_from is not None
                     else ""))  # fmt: skip
        self.trace = Trace(ctx, config) if config.trace else None
        self.tracker = (TrackerHook(config, ctx) if ctx.is_rank0 and config.tracking.enabled
                        and config.tracking.run_id else None)  # fmt: skip
        self.hooks: list[TrainerHook] = [h for h in (
            CurriculumHook() if self.masker is not None else None,
            TraceHook(self.trace) if self.trace is not None else None,
            self.tracker,
        ) if h is not None]  # fmt: skip
        self.tokens_by_source = {s: 0.0 for s in self.names}
        if self.tracker is not None and self.resize is not None:
            r = self.resize
            self.tracker.logger.set_tags({f"bsm_ray.resize.step_{r['step']}":
                                          f"{r['from']} -> {r['to']} workers, conversion "
                                          f"{r['convert_s']:.1f} s"})  # fmt: skip

    def _resume(self) -> int | None:
        """Load the latest checkpoint, if any: engine, step, plan position, curriculum, RNG
        (and, streaming, the stream positions of this rank's lanes). A checkpoint written by
        another world size loads through DeepSpeed's universal format (`_load_resized`).
        Returns the step resumed at."""
        with self.ctx.latest_checkpoint() as checkpoint:
            if checkpoint is None:
                self._init_from_checkpoint()
                return None
            state = read_trainer_state(checkpoint)
            self.step = int(state["step"])
            if self._load_engine_state(checkpoint, state):
                load_rng(checkpoint, self.ctx.rank)
            else:  # per-rank state is re-derived from (seed, step, rank) at a new size
                seed_rng(self.config.seed, self.step, self.ctx.rank)
            self.plan.state = MixState.from_dict(state["mix"])
            schedule = self.masker.schedule if self.masker is not None else None
            if schedule is not None and state.get("curriculum"):
                schedule.load_state_dict(state["curriculum"])
            if self.config.data.streaming:
                from bsm_ray.train.streaming import load_positions

                if self.config.data.stream_lanes is None:  # the run's lanes, from its start
                    self.lanes = int(state.get("lanes") or self.lanes)
                self._stream_positions = load_positions(checkpoint, self.lanes, self.ctx.rank,
                                                        self.ctx.world_size)  # fmt: skip
            return self.step

    def _load_engine_state(self, checkpoint: Path, state: dict) -> bool:
        """Weights, optimizer moments and step from `checkpoint` into the engine: directly when
        it was written by this world size (True), else through the universal format."""
        saved = int(state.get("world_size") or saved_world_size(checkpoint))
        if saved == self.ctx.world_size or self.config.zero_stage == 0:
            self.engine.load_checkpoint(str(checkpoint), tag=STATE_TAG)  # the fast path
            return True
        self.resize = self._load_resized(checkpoint, saved)
        if self.ctx.is_rank0 and self.step:
            logger.info(f"resize at step {self.step}: {saved} -> {self.ctx.world_size} workers")
        return False

    def _init_from_checkpoint(self) -> None:
        """A fresh run whose `init_from` is a training checkpoint (an annealing trial from the
        round's checkpoint) starts from its weights and AdamW moments, at this run's own world
        size; its step, data position and schedule are its own."""
        init = self.config.init_from
        if not init or not is_training_checkpoint(init):
            return
        checkpoint = Path(init.removeprefix("file://"))
        state = read_trainer_state(checkpoint)
        if state.get("model") not in (None, self.config.model):
            from bsm_ray.errors import ConfigError

            raise ConfigError(f"{checkpoint}: a {state['model']} checkpoint; this run trains "
                              f"{self.config.model}")  # fmt: skip
        self._load_engine_state(checkpoint, state)
        self.resize = None  # a start from another run is not a resize of this one
        seed_rng(self.config.seed, 0, self.ctx.rank)
        self.init_state = {"checkpoint": str(checkpoint), "step": int(state["step"])}
        if self.ctx.is_rank0:
            logger.info(f"started from {checkpoint} (step {state['step']}) with its optimizer "
                        f"state (AdamW moments)")

    def _load_resized(self, checkpoint: Path, saved: int) -> dict[str, Any]:
        """Load a checkpoint written by `saved` workers into this world size: the first worker
        of each node converts it to DeepSpeed's universal format in a node-local folder, then
        every worker loads its new partitions (weights, Adam moments, step). Returns what the
        resize was (step, sizes, seconds), which rank 0 prints and the run is tagged with."""
        import shutil

        import torch.distributed as dist

        from bsm_ray.train.universal import convert_to_universal, load_universal, universal_folder

        out = universal_folder(checkpoint, self.step, self.config.storage_path, self.config.name)
        t0 = time.perf_counter()
        convert_s = convert_to_universal(checkpoint, out) if self.ctx.local_rank == 0 else 0.0
        if dist.is_initialized():
            dist.barrier()
        load_universal(self.engine, out)
        if dist.is_initialized():
            dist.barrier()
        if self.ctx.local_rank == 0:
            shutil.rmtree(out, ignore_errors=True)
        resize = {"step": self.step, "from": saved, "to": self.ctx.world_size,
                  "convert_s": _all_reduce_max(convert_s, self.device),
                  "resume_s": time.perf_counter() - t0}  # fmt: skip
        if self.ctx.is_rank0:
            logger.info(f"{checkpoint}: written by {saved} worker(s), loaded into "
                        f"{self.ctx.world_size}: universal checkpoint conversion "
                        f"{resize['convert_s']:.1f} s, loaded in {resize['resume_s']:.1f} s "
                        f"(ZeRO-{self.config.zero_stage} partitions and AdamW moments)")
        return resize

    def _streams(self, units):
        from bsm_ray.train.streaming import WorkerStreams

        phase = None
        if self.masker is not None:
            cm_step = self.config.masking.strategy == "cm_step"
            phase = "cm_step" if cm_step else self.masker.strategy(self.step)
        return WorkerStreams(self.config, units, self.ctx.rank, self.ctx.world_size,
                             self.per_rank, self.step, phase, self._stream_positions,
                             self.lanes)  # fmt: skip

    def train(self) -> dict[str, Any]:
        """Train to `max_steps`; return the final metrics."""
        metrics: dict[str, Any] = {}
        if self.resumed_from is None:  # the starting point, so every run shows how far it fell
            self.initial_evaluation()
        # Step time runs from the end of one step to the end of the next, so tokens/s includes
        # everything between steps (batch building, evaluation, checkpoints, reporting).
        self.t0 = time.perf_counter()
        while self.step < self.end_step:
            metrics = self.train_step(self.next_batch())
            self.maybe_evaluate(metrics)
            self.maybe_checkpoint(metrics)
        for hook in self.hooks:
            hook.after_train(self)
        return metrics

    def initial_evaluation(self) -> None:
        initial = evaluate(self.engine, self.config, self.ctx, self.val_windows, self.masker,
                           self.device)  # fmt: skip
        self.ctx.log({"step": 0, **initial})
        if self.tracker is not None:
            self.tracker.log_initial(initial)

    def next_batch(self) -> dict[str, np.ndarray]:
        """This rank's rows of the next global batch (numpy columns; MLM rows masked)."""
        mine = slice(self.ctx.rank * self.per_rank, (self.ctx.rank + 1) * self.per_rank)
        if self.streams is not None:
            return self.streams.rows(self.plan.take_sources(self.global_rows)[mine])
        return window_rows(self.config, self.train_windows, self.plan.take(self.global_rows)[mine],
                           self.masker, self.step)  # fmt: skip

    def train_step(self, rows: dict[str, np.ndarray]) -> dict[str, Any]:
        """One optimizer step on this rank's `rows`; returns the step's metrics."""
        config, ctx = self.config, self.ctx
        lr = lr_at(config.schedule, self.step, config.max_steps)
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr
        rows = {**rows, "labels": row_labels(config, rows)}  # once, for counts and tensors
        mb = config.micro_batch_rows
        micro_batches = [rows_to_tensors(config, {k: v[m * mb : (m + 1) * mb]
                                                  for k, v in rows.items()}, self.device)
                         for m in range(self.accum)]  # fmt: skip
        real = rows["attention_mask"].sum(axis=1)
        my_tokens = [float(real[rows["source"] == s].sum()) for s in self.names]
        targets, step_tokens = count_step(rows["labels"], config.objective, my_tokens,
                                          self.device)  # fmt: skip
        loss_sum = optimizer_step(self.engine, micro_batches, config.objective, targets,
                                  ctx.world_size)  # fmt: skip
        loss_total = _reduce_loss(loss_sum)  # the one host sync after the step
        now = time.perf_counter()
        elapsed, self.t0 = now - self.t0, now
        self.step += 1
        for s, n in zip(self.names, step_tokens, strict=True):
            self.tokens_by_source[s] += n
        tokens_per_s = sum(step_tokens) / elapsed
        total_tokens = sum(self.tokens_by_source.values())
        repeats = self.streams.repeats() if self.streams is not None else self.plan.repeats()
        metrics = {
            "step": self.step,
            "train/loss": loss_total / max(targets, 1.0),  # per target token
            "train/lr": lr,
            "train/world_size": ctx.world_size,
            "train/tokens_per_s": tokens_per_s,
            "train/mfu": tokens_per_s * self.flops_per_token / self.peak,
            **{f"data/mix/{s}": n / total_tokens for s, n in self.tokens_by_source.items()},
            **{f"data/repeats/{s}": n for s, n in repeats.items()},
        }  # fmt: skip
        if self.resize is not None and self.step == self.resize["step"] + 1:
            metrics.update({"resize/from": self.resize["from"], "resize/to": self.resize["to"],
                            "resize/convert_s": self.resize["convert_s"],
                            "resize/load_s": self.resize["resume_s"]})  # fmt: skip
        grad_norm = self.engine.get_global_grad_norm()  # ZeRO 1-3 (before clipping); None at 0
        if grad_norm is not None:
            metrics["train/grad_norm"] = float(grad_norm)
        if self.masker is not None:
            metrics["mask/strategy_global"] = float(self.masker.strategy(self.step - 1)
                                                    == "global")  # fmt: skip
        for hook in self.hooks:
            hook.after_step(self, rows, metrics)
        return metrics

    @property
    def is_last(self) -> bool:
        return self.step == self.config.max_steps

    @property
    def end_step(self) -> int:
        """Where this launch stops: `max_steps`, or `stop_at_step` when that comes first."""
        stop = self.config.stop_at_step
        return self.config.max_steps if stop is None else min(stop, self.config.max_steps)

    def maybe_evaluate(self, metrics: dict[str, Any]) -> None:
        """Validation metrics at `eval_every` and at the last step, then the hooks'."""
        if self.step % self.config.eval_every and not self.is_last:
            return
        metrics.update(evaluate(self.engine, self.config, self.ctx, self.val_windows,
                                self.masker, self.device))  # fmt: skip
        for hook in self.hooks:
            hook.after_evaluate(self, metrics)

    def maybe_checkpoint(self, metrics: dict[str, Any]) -> None:
        """Hooks log the step; a checkpoint (and report) at `checkpoint_every` and at the end,
        a report at evaluations, a local log line otherwise. Ray Train gets reports only with
        evaluations and checkpoints: each report waits for the Train controller's next poll,
        so a report per step would cap the step rate. The rule is the same on every rank."""
        config, step = self.config, self.step
        checkpointing = (step % config.checkpoint_every == 0 or self.is_last
                         or step == self.end_step)
        reporting = checkpointing or step % config.eval_every == 0
        for hook in self.hooks:
            hook.before_report(self, metrics, flush=reporting)
        if checkpointing:
            probe = _probe_batch(config, self.val_windows, self.device) if self.is_last else None
            directory = _save_checkpoint(self.engine, self.ctx, config, step, self.plan,
                                         self.masker, self.is_last, probe, self.streams)
            self.ctx.report(metrics, checkpoint_dir=directory)
        elif reporting:
            self.ctx.report(metrics)
        else:
            self.ctx.log(metrics)


def train_loop(config: TrainConfig, ctx: TrainContext) -> dict[str, Any]:
    """Train; return the final metrics (val/loss, train/loss, step, checkpoint path)."""
    return Trainer(config, ctx).train()


def micro_rows_desc(config: TrainConfig, accum: int) -> str:
    return f"{config.micro_batch_rows} rows x {accum} accumulation per worker"


def _save_checkpoint(engine, ctx, config, step, plan, masker, final: bool, probe=None,
                     streams=None) -> Path:  # fmt: skip
    import torch.distributed as dist

    directory = ctx.new_checkpoint_dir()
    engine.save_checkpoint(str(directory), tag=STATE_TAG)
    save_rng(directory, ctx.rank)
    if streams is not None:
        streams.save(directory)
    if ctx.is_rank0:
        write_trainer_state(directory, {
            "step": step,
            "mix": plan.state.as_dict(),
            "curriculum": masker.schedule.state_dict() if masker and masker.schedule else None,
            "name": config.name,
            "model": config.model,
            "world_size": ctx.world_size,
            "lanes": streams.lanes if streams is not None else None,
        })  # fmt: skip
    if final:
        diff = export_model(engine, ctx, config, directory / "final_model", probe)
        if diff is not None:
            logger.info(f"exported the final model: reloaded with from_pretrained, max "
                  f"|logit difference| {diff:.2g} on a validation batch")
            write_trainer_state(directory, {**read_trainer_state(directory),
                                            "export_max_abs_logit_diff": diff})
    if dist.is_initialized():
        dist.barrier()
    return directory


def export_model(engine, ctx, config, directory: Path, probe) -> float | None:
    """Rank 0 writes the model in Hugging Face format (safetensors) with its tokenizer, reloads
    it with `from_pretrained` and returns the largest logit difference against the training
    model on `probe` (input_ids, attention_mask); other ranks return None.

    Under ZeRO-3 the parameters are gathered for the save (every rank takes part) and the
    probe forward runs on every rank (its parameter gathers are collective)."""
    import deepspeed
    import torch

    from bsm_ray.train.export import max_logit_diff, probe_logits, save_hf

    model = engine.module
    reference = probe_logits(model, *probe)
    gather = (
        deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)
        if config.zero_stage == 3
        else contextlib.nullcontext()
    )
    with gather:
        if ctx.is_rank0:
            save_hf(model, config.model, directory)
    if not ctx.is_rank0:
        return None
    dtype = next(model.parameters()).dtype
    diff = max_logit_diff(reference, directory, *probe, dtype=dtype)
    if diff > (1e-3 if dtype == torch.float32 else 0.1):
        raise RuntimeError(f"{directory}: the exported model's logits differ from the training "
                           f"model's by {diff:.3g} (max |difference| on a validation batch)")
    return diff


def _probe_batch(config, val_windows, device):
    """A fixed batch for the export check: the first rows of the first validation source that
    has rows, else (no validation rows at all) a synthetic row cycling through the vocabulary;
    any input shows whether the exported weights give the training model's logits."""
    import torch

    filled = [s for s in sorted(val_windows) if len(val_windows[s])]
    if filled:
        win = val_windows[filled[0]]
        n = min(2, len(win))
        ids, mask = win.input_ids[:n].astype(np.int64), win.attention_mask[:n].astype(np.int64)
    else:
        vocab = get_preset(config.model).vocab_size
        ids = (np.arange(min(config.row_len, 64), dtype=np.int64) % vocab)[None, :]
        mask = np.ones_like(ids)
    return torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)


class Trace:
    """Per-step JSON lines: loss and the (source, row) pairs this rank consumed; CM-GEMS runs
    also one line per evaluation of the switch rule (`curriculum_rank<r>.jsonl`)."""

    def __init__(self, ctx: TrainContext, config: TrainConfig) -> None:
        run_dir = ctx.run_dir
        if run_dir is None:
            raise ValueError("trace: true needs a local storage_path")
        self.path = run_dir / "trace" / f"rank{ctx.rank}.jsonl"
        self.curriculum_path = run_dir / "trace" / f"curriculum_rank{ctx.rank}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.pid, self.world_size = os.getpid(), ctx.world_size

    def write(self, step: int, loss: float, rows: dict[str, np.ndarray], names: list[str],
              strategy: str | None = None) -> None:  # fmt: skip
        """The step's (source, row id) pairs in consumption order and real tokens per source;
        MLM rows also the masking strategies used."""
        real = rows["attention_mask"].sum(axis=1)
        line = {
            "pid": self.pid, "world_size": self.world_size, "step": step, "loss": loss,
            "rows": [[str(s), int(r)] for s, r in zip(rows["source"], rows["row_id"], strict=True)],
            "tokens": {s: int(real[rows["source"] == s].sum()) for s in names},
        }  # fmt: skip
        if "strategy" in rows:
            line["strategies"] = sorted({str(x) for x in rows["strategy"]})
        elif strategy is not None:
            line["strategies"] = [strategy]
        self._append(line)

    def write_curriculum(self, step: int, ppl: float, local_ppl: float | None, phase: str):
        """The switch rule's input at an evaluation: the aggregated perplexity it used, this
        rank's own perplexity (what a rank-local rule would have used) and the phase after."""
        self._append({"pid": self.pid, "step": step, "curriculum_ppl": ppl,
                      "local_ppl": local_ppl, "phase": phase}, self.curriculum_path)

    def _append(self, line: dict, path: Path | None = None) -> None:
        with open(path or self.path, "a") as fh:
            fh.write(json.dumps(line) + "\n")
            fh.flush()
