"""The training loop, written once against `TrainContext` (Ray Train worker or local process).

Per optimizer step (all ranks compute the same global plan, each takes its slice, so no data
coordination is needed and a restart continues from the saved plan position):

    rows = plan.take(global_rows)                    # (source, row) in mix order
    my_rows = rows[rank * per_rank : (rank + 1) * per_rank]
    (data.streaming: plan.take_sources(...) names the sources of my slice and this worker's
     Ray Data streams supply the rows; bsm_ray.train.streaming)
    for each micro-batch of my_rows:                 # gradient accumulation
        loss = engine(batch).loss; engine.backward(loss); engine.step()

DeepSpeed does ZeRO (stage 0-3 from the config), gradient accumulation and clipping; the LR is
set from `schedules.lr_at(step)` before every step, so the schedule needs no state of its own.
fp32 on CPU, bf16 on GPU. Causal LM loss is transformers' shifted cross-entropy (padding is
-100); MLM loss covers masked positions only (labels -100 elsewhere), masks from
`bsm_ray.data.masking`, deterministic in (seed, row id, step).

Metrics (namespaced): train/loss, train/lr, train/tokens_per_s, train/mfu, val/loss/<source>,
val/loss, val/ppl, data/mix/<source> (realized fraction of real tokens, all workers),
data/repeats/<source>.

Imports torch and deepspeed (inside `train_loop`, after choosing the accelerator).
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
from bsm_ray.models import build_model, choose_attention, count_parameters, get_preset
from bsm_ray.models.presets import flops_per_token
from bsm_ray.train.checkpointing import (
    STATE_TAG,
    install_safe_loader,
    load_rng,
    read_trainer_state,
    save_rng,
    write_trainer_state,
)
from bsm_ray.train.config import TrainConfig
from bsm_ray.train.context import TrainContext
from bsm_ray.train.schedules import lr_at


def deepspeed_config(config: TrainConfig, world_size: int, use_bf16: bool) -> dict[str, Any]:
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
    return ds


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


class _Masker:
    """MLM masking of a batch for a step, following the configured strategy or curriculum."""

    def __init__(self, config: TrainConfig) -> None:
        from bsm_ray.data.curriculum import CmGemsSchedule, CmStepSchedule

        self.config = config
        strategy = config.masking.strategy
        self.rank_table = None
        if strategy != "dnabert" or config.masking.eval_strategy != "dnabert":
            self.rank_table = _load_rank_table(config.masking.pmi_table)
        self.schedule = None
        if strategy == "cm_step":
            self.schedule = CmStepSchedule(max_steps=config.max_steps, seed=config.seed)
        elif strategy == "cm_gems":
            self.schedule = CmGemsSchedule(threshold=config.masking.switch_threshold,
                                           rule=config.masking.switch_rule)  # fmt: skip

    def strategy(self, step: int) -> str:
        return self.schedule.strategy(step) if self.schedule else self.config.masking.strategy

    def __call__(self, ids: np.ndarray, mask: np.ndarray, row_ids: np.ndarray, step: int,
                 strategy: str | None = None):  # fmt: skip
        """Masks for `step` with the curriculum's strategy, or with `strategy` when given
        (validation: a fixed strategy at a fixed step)."""
        from bsm_ray.data.masking import apply_mask

        return apply_mask(strategy or self.strategy(step), ids, mask, self.config.seed, row_ids,
                          step, self.rank_table)  # fmt: skip


def resolve_pmi_table(path: str | None) -> str:
    """The NPMI table's path; None means the sample corpus's table, built once and cached."""
    if path is not None:
        return path
    from bsm_ray.data.pmi_build import PmiConfig, build_pmi_table
    from bsm_ray.data.samples import cache_dir

    path = str(cache_dir() / "npmi_6mer_sample.parquet")
    if not Path(path).is_file():
        build_pmi_table(PmiConfig(output=path, progress=False, parallel="local"))
    return path


def _load_rank_table(path: str | None) -> np.ndarray:
    from bsm_ray.data.pmi_build import load_rank_table

    return load_rank_table(resolve_pmi_table(path))


def _batch_tensors(config, windows, rows, masker, step, device, strategy=None):
    """Tensors for one micro-batch of (source, row) pairs of in-memory windows."""
    return _tensors(config, _window_rows(config, windows, rows, masker, step, strategy), device)


def _window_rows(config, windows, rows, masker, step, strategy=None) -> dict[str, np.ndarray]:
    """(source, row) pairs of in-memory windows as numpy columns, MLM rows masked for `step`
    (with the curriculum's strategy, or `strategy` when given)."""
    out = {
        "input_ids": np.stack([windows[s].input_ids[r] for s, r in rows]),
        "attention_mask": np.stack([windows[s].attention_mask[r] for s, r in rows]),
        "row_id": np.array([windows[s].row_ids[r] for s, r in rows], dtype=np.int64),
        "source": np.array([s for s, _ in rows]),
    }
    if config.objective == "mlm":
        masked = masker(out["input_ids"], out["attention_mask"], out["row_id"], step, strategy)
        out["input_ids"], out["labels"] = masked.input_ids, masked.labels
    return out


def row_labels(config, rows: dict[str, np.ndarray]) -> np.ndarray:
    """Labels of numpy rows: MLM's masked positions, or the ids with -100 on padding (causal)."""
    if config.objective == "mlm":
        return rows["labels"]
    return np.where(rows["attention_mask"] > 0, rows["input_ids"], -100)


def _tensors(config, rows: dict[str, np.ndarray], device) -> dict:
    """Model inputs on `device` from numpy columns."""
    ids, mask, labels = rows["input_ids"], rows["attention_mask"], row_labels(config, rows)
    return {
        "input_ids": to_device(np.ascontiguousarray(ids), device),  # widened to int64 there
        "attention_mask": to_device(np.ascontiguousarray(mask), device),
        "labels": to_device(np.ascontiguousarray(labels), device),
    }


def to_device(array: np.ndarray, device):
    """A numpy batch as an int64 tensor on `device`. It travels in its own (narrower) type and
    is widened on the device; on CUDA through pinned memory, copied without blocking the host
    (the copy is ordered before the kernels that use it)."""
    import torch

    t = torch.from_numpy(array)
    if device.type == "cuda":
        t = t.pin_memory().to(device, non_blocking=True)
    else:
        t = t.to(device)
    return t.long()


def num_targets(batch, objective: str) -> int:
    """Positions that carry a loss: shifted labels (causal LM) or masked positions (MLM), of a
    batch of tensors or of numpy columns with "labels"."""
    labels = batch["labels"]
    if objective == "causal":
        return int((labels[:, 1:] != -100).sum())
    return int((labels != -100).sum())


def token_loss_sum(model, batch, objective: str):
    """The sum of per-token cross-entropies over the batch's targets (a 0-d fp32 tensor).

    Computed from the logits, not from the model's mean loss: a sum divided by the *global*
    target count is what makes a step's gradient independent of how its rows are split into
    micro-batches and workers, and a micro-batch without targets gives 0, not 0/0. Causal LM:
    logits at t predict the token at t + 1 (transformers' shift); padding labels are -100."""
    import torch.nn.functional as F

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"]
    if objective == "causal":
        logits, labels = logits[:, :-1], labels[:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                           ignore_index=-100, reduction="sum")  # fmt: skip


def _all_reduce_sum(values: list[float], device) -> list[float]:
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()


def _reduce_loss(loss_sum) -> float:
    """The step's loss summed over ranks (one all-reduce, the step's one host sync)."""
    import torch
    import torch.distributed as dist

    t = loss_sum.detach().to(torch.float64).reshape(1)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return float(t.item())


VAL_MASK_STEP = 0
"""Validation masks are drawn for this step, so every evaluation (of every run) sees the same."""


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
                batch = _batch_tensors(config, val_windows, rows, masker, VAL_MASK_STEP, device,
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
        metrics["val/ppl"] = math.exp(min(50.0, metrics["val/loss"]))
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
    """The model (fresh from its preset, or `init_from`), AdamW and the DeepSpeed engine, with
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
    if config.init_from:
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
    forward passes), as torchtitan and OLMo-core do. DeepSpeed averages gradients over ranks
    (divides by `world_size`), so each micro-batch's sum is scaled by world_size / targets and
    `scale_wrt_gas=False` stops DeepSpeed dividing by the accumulation steps as well: the
    gradient is then the same for any world size and micro-batch size. DeepSpeed accumulates
    and steps at the last micro-batch. Returns this rank's summed token loss as a device tensor
    (no host sync in here)."""
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


def train_loop(config: TrainConfig, ctx: TrainContext) -> dict[str, Any]:
    """Train; return the final metrics (val/loss, train/loss, step, checkpoint path)."""
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if config.use_gpu else "cpu")

    device = ctx.device()
    preset = get_preset(config.model)
    engine, attn, attn_reason = build_engine(config, ctx.world_size, device)
    install_safe_loader(engine)
    global_rows, accum = config.batch_layout(ctx.world_size)
    per_rank = global_rows // ctx.world_size

    weights = config.trained_mix
    if config.data.streaming:
        from bsm_ray.train.streaming import WorkerStreams, load_positions, stream_units

        train_windows = None
        units = stream_units(config, list(weights))
        num_rows = {s: sum(u.num_rows for u in us) for s, us in units.items()}
    else:
        train_windows = ctx.windows("train")
        num_rows = {s: len(w) for s, w in train_windows.items()}
    val_windows = ctx.windows("val")
    plan = MixturePlan(weights, num_rows, seed=config.seed)
    masker = _Masker(config) if config.objective == "mlm" else None
    positions = None

    step = 0
    resumed_from = None
    with ctx.latest_checkpoint() as checkpoint:
        if checkpoint is not None:
            engine.load_checkpoint(str(checkpoint), tag=STATE_TAG)
            state = read_trainer_state(checkpoint)
            step = int(state["step"])
            plan.state = MixState.from_dict(state["mix"])
            if masker is not None and masker.schedule is not None and state.get("curriculum"):
                masker.schedule.load_state_dict(state["curriculum"])
            load_rng(checkpoint, ctx.rank)
            resumed_from = int(state["step"])
            if config.data.streaming:
                positions = load_positions(checkpoint, ctx.rank, ctx.world_size)
    streams = None
    if config.data.streaming:
        phase = None
        if masker is not None:
            phase = "cm_step" if config.masking.strategy == "cm_step" else masker.strategy(step)
        streams = WorkerStreams(config, units, ctx.rank, ctx.world_size, per_rank, step, phase,
                                positions)  # fmt: skip

    num_params = count_parameters(preset)
    fpt = flops_per_token(preset, config.row_len, num_params)
    peak = config.peak_flops or measure_peak_flops(device) * ctx.world_size
    if ctx.is_rank0:
        print(f"[bsm_ray] model {preset.name}: {num_params:,} parameters, attention {attn} "
              f"({attn_reason}); ZeRO-{config.zero_stage}; {ctx.world_size} worker(s); "
              f"{global_rows} rows/step = {micro_rows_desc(config, accum)}"
              + (f"; resumed at step {resumed_from}" if resumed_from is not None else ""),
              flush=True)  # fmt: skip
    trace = _Trace(ctx, config) if config.trace else None
    tracker = _tracker(config, ctx)
    metrics: dict[str, Any] = {}
    if resumed_from is None:  # the starting point, so every run shows how far loss fell
        initial = evaluate(engine, config, ctx, val_windows, masker, device)
        ctx.log({"step": 0, **initial})
        if tracker is not None:
            tracker.log(initial, 0, flush=True)
    names = list(weights)
    tokens_by_source = {s: 0.0 for s in names}
    # Step time runs from the end of one step to the end of the next, so tokens/s includes
    # everything between steps (batch building, evaluation, checkpoints, reporting).
    t0 = time.perf_counter()
    while step < config.max_steps:
        lr = lr_at(config.schedule, step, config.max_steps)
        for group in engine.optimizer.param_groups:
            group["lr"] = lr
        mine = slice(ctx.rank * per_rank, (ctx.rank + 1) * per_rank)
        if streams is not None:
            rows = streams.rows(plan.take_sources(global_rows)[mine])
        else:
            rows = _window_rows(config, train_windows, plan.take(global_rows)[mine], masker, step)
        mb = config.micro_batch_rows
        micro_batches = [_tensors(config, {k: v[m * mb : (m + 1) * mb] for k, v in rows.items()},
                                  device) for m in range(accum)]  # fmt: skip
        real = rows["attention_mask"].sum(axis=1)
        my_tokens = [float(real[rows["source"] == s].sum()) for s in names]
        global_targets, step_tokens = count_step(row_labels(config, rows), config.objective,
                                                 my_tokens, device)  # fmt: skip
        loss_sum = optimizer_step(engine, micro_batches, config.objective, global_targets,
                                  ctx.world_size)  # fmt: skip
        loss_total = _reduce_loss(loss_sum)  # the one host sync after the step
        now = time.perf_counter()
        elapsed, t0 = now - t0, now
        step += 1
        for s, n in zip(names, step_tokens, strict=True):
            tokens_by_source[s] += n
        tokens_per_s = sum(step_tokens) / elapsed
        total_tokens = sum(tokens_by_source.values())
        metrics = {
            "step": step,
            "train/loss": loss_total / max(global_targets, 1.0),  # per target token
            "train/lr": lr,
            "train/tokens_per_s": tokens_per_s,
            "train/mfu": tokens_per_s * fpt / peak,
            **{f"data/mix/{s}": n / total_tokens for s, n in tokens_by_source.items()},
            **{f"data/repeats/{s}": n for s, n in
               (streams.repeats() if streams is not None else plan.repeats()).items()},
        }  # fmt: skip
        grad_norm = engine.get_global_grad_norm()  # ZeRO 1-3 (before clipping); None at 0
        if grad_norm is not None:
            metrics["train/grad_norm"] = float(grad_norm)
        if masker is not None:
            metrics["mask/strategy_global"] = float(masker.strategy(step - 1) == "global")
        if trace is not None:
            trace.write(step, metrics["train/loss"], rows, names,
                        masker.strategy(step - 1) if masker is not None else None)
        is_last = step == config.max_steps
        if step % config.eval_every == 0 or is_last:
            metrics.update(evaluate(engine, config, ctx, val_windows, masker, device))
            if masker is not None:
                metrics.update(observe_curriculum(engine, config, ctx, val_windows, masker,
                                                  device, step, trace))  # fmt: skip
                if metrics.get("mask/switch_step") == step:
                    if streams is not None:  # rows consumed from now on: the new phase
                        streams.switch(masker.schedule.phase, step)
                    if tracker is not None:
                        tracker.set_tags({"bsm_ray.switch_step": step})
        # Every step is logged (rank 0, locally); Ray Train gets a report only with evaluations
        # and checkpoints: each report waits for the Train controller's next poll, so a report
        # per step would cap the step rate. The rule is the same on every rank.
        reporting = step % config.checkpoint_every == 0 or step % config.eval_every == 0
        if tracker is not None:  # before the report: a sweep may stop the trial at a report
            tracker.log(metrics, step, flush=reporting or is_last)
        if step % config.checkpoint_every == 0 or is_last:
            probe = _probe_batch(config, val_windows, device) if is_last else None
            directory = _save_checkpoint(engine, ctx, config, step, plan, masker, is_last, probe,
                                         streams)  # fmt: skip
            ctx.report(metrics, checkpoint_dir=directory)
        elif step % config.eval_every == 0:
            ctx.report(metrics)
        else:
            ctx.log(metrics)
    if tracker is not None:
        tracker.close()
    return metrics


def _tracker(config: TrainConfig, ctx: TrainContext):
    """Rank 0's MLflow logger into the run named by `tracking.run_id` (created by the caller)."""
    if not (ctx.is_rank0 and config.tracking.enabled and config.tracking.run_id):
        return None
    from bsm_ray.tracking.runs import RunLogger

    return RunLogger(config.tracking, config.tracking.run_id, fallback_dir=ctx.run_dir)


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
        })  # fmt: skip
    if final:
        diff = export_model(engine, ctx, config, directory / "final_model", probe)
        if diff is not None:
            print(f"[bsm_ray] exported the final model: reloaded with from_pretrained, max "
                  f"|logit difference| {diff:.2g} on a validation batch", flush=True)
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


class _Trace:
    """Per-step JSON lines: loss and the (source, row) pairs this rank consumed; CM-GEMS runs
    also one line per evaluation of the switch rule (`curriculum_rank<r>.jsonl`)."""

    def __init__(self, ctx: TrainContext, config: TrainConfig) -> None:
        run_dir = ctx.run_dir
        if run_dir is None:
            raise ValueError("trace: true needs a local storage_path")
        self.path = run_dir / "trace" / f"rank{ctx.rank}.jsonl"
        self.curriculum_path = run_dir / "trace" / f"curriculum_rank{ctx.rank}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.pid = os.getpid()

    def write(self, step: int, loss: float, rows: dict[str, np.ndarray], names: list[str],
              strategy: str | None = None) -> None:  # fmt: skip
        """The step's (source, row id) pairs in consumption order and real tokens per source;
        MLM rows also the masking strategies used."""
        real = rows["attention_mask"].sum(axis=1)
        line = {
            "pid": self.pid, "step": step, "loss": loss,
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
