#!/usr/bin/env python
"""Training throughput: Ray Train + DeepSpeed (one worker) against a plain PyTorch loop.

    python bench/train_throughput.py            # default sizes (bsm-tiny, 256 x 32 x 2), ~2.5 min
    python bench/train_throughput.py --quick    # smoke run, about a minute
    python bench/train_throughput.py --model bsm-110m --micro-batch-rows 1 --accum 2 --steps 5
    python bench/train_throughput.py --ray-health-check-interval 0.05   # see "report" below

Prints figures, asserts nothing on timing. In ONE run, on the SAME model, batch shape, data and
number of torch threads:

1. Steady-state training tokens/s of
   - the real path: `launch(TrainConfig(num_workers=1, cpus_per_worker=T, ...))`, i.e. a Ray
     Train `TorchTrainer` with one worker running `bsm_ray.train.loop.train_loop` under
     DeepSpeed (ZeRO stage `--zero-stage`, default 2 as in the smoke configs; fp32 on CPU);
   - a plain single-process PyTorch loop written here: the same preset from `build_model` (same
     seed and attention), `torch.optim.AdamW` with the same hyper-parameters, the same rows in
     the same order (`MixturePlan` over `causal_windows` of the same prepared dataset, same mix
     and seed), the same micro-batch rows, gradient accumulation (loss / accumulation) and
     gradient clipping (`clip_grad_norm_`), the same LR schedule, and
     `loss.backward(); optimizer.step(); optimizer.zero_grad()`.
   The headline figure is computed the same way for both: the median over the steps after
   `--warmup-steps` of (real tokens of the step, the attention-mask sum) / (the step's wall
   time, measured around the whole step including building the batches). For Ray that is the
   loop's own `train/tokens_per_s` read back from `<storage>/<name>/metrics.jsonl`; for the
   plain loop the same timer is put around the same work. Its ratio Ray+DeepSpeed / plain is
   printed against the goal of the issue (>= 0.9). Over a window from the end of the warm-up
   to the end of the step before the last (the last one also evaluates and checkpoints):
   - "wall": the window's tokens / its wall time, as seen from outside the step timer (for Ray:
     when the step lines appear in metrics.jsonl), so it also pays for what the loop does
     between steps, notably `ray.train.report`. Ray Train's controller collects one report per
     worker every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by default) from a queue of size 1, so
     a loop that reports every step cannot step faster than that, whatever
     `train/tokens_per_s` says; `--ray-health-check-interval S` sets that variable for the Ray
     path to show the difference;
   - "tokens / CPU s": the window's tokens / the CPU time (utime + stime) of the process doing
     the steps (Ray: the worker, its pid from the loop's trace file, /proc/<pid>/stat; it also
     includes what the worker spends while waiting on the report); less sensitive than wall
     time to "CPU steal" (the hypervisor running other guests on this machine's CPUs), which is
     shown for each window (/proc/stat) because on a shared VM it moves the per-step figures by
     tens of percent from one minute to the next.

   Threads: the Ray worker gets `cpus_per_worker = T` (default 1); Ray sets OMP_NUM_THREADS=T
   in the worker from its CPUs (OMP/MKL thread variables are removed from the Ray stage's
   environment so Ray decides, as in a real job). The plain loop runs with OMP_NUM_THREADS=T in
   its environment and `torch.set_num_threads(T)`. Cross-check: the CPU seconds per second of
   step (at most T with T busy threads) is printed for both.

2. Time to the first optimizer step. Ray: `ray.init` (a private local instance, timed and shown
   separately), then from calling `launch()` to the moment the step-1 line appears in
   metrics.jsonl (rank 0 appends it right after step 1; a thread of the driver polls the file
   every 5 ms and stamps each new complete line with the driver's clock, so no clocks of two
   processes are compared, and nothing in the library is changed); the step-0 line (the
   initial evaluation) is shown as well, and the same from the stage process's start (imports
   and ray.init included). Plain: from the stage process's start (its start time from
   /proc/self/stat against /proc/uptime, 10 ms resolution) to the end of the first optimizer
   step. Before the Ray path can take a step, DeepSpeed loads a small C++ op
   (deepspeed_shm_comm) which the first DeepSpeed start on a machine compiles (~90 s, kept in
   ~/.cache/torch_extensions, or $TORCH_EXTENSIONS_DIR): the op cache is listed before and
   after the run, and the run is "warm" when the op was already there and nothing was compiled
   during it.

3. Data: the sample corpus prepared with `prepare_dataset(PrepareConfig(output_dir=<out>/dataset,
   progress=False, sample_synthetic_genome_bp=60000))` (its inputs are cached after the first
   time; the dataset itself takes about a second), causal windows of `--seq-len` tokens, mix
   {"single_protein": 1, "refseq_pair": 1, "web": 1}.

Model: the causal presets are bsm-tiny (2 layers, width 64, 85k parameters, 256 positions) and
the paper sizes bsm-110m / bsm-270m. On a CPU thread bsm-110m trains at ~100 tokens/s, so a few
tens of steps would take many minutes (and its final checkpoint is ~1.4 GB); the default is
therefore bsm-tiny at its full context (seq_len 256) with a large batch (32 rows x 2
accumulation = 16,384 token positions per step, ~0.4 s of compute on one thread), so that
per-step fixed costs (DeepSpeed's engine, the loop's bookkeeping) are small next to the
compute. `--model bsm-110m --micro-batch-rows 1` runs the real size.

Every part runs in its own subprocess of this script (hidden `--stage`, started through the tiny
launcher of bench/_harness.py): prepare, plain, ray, one after the other. The Ray stage starts
its own local Ray instance (`ray.init(address="local", num_cpus=4)`, dashboard off, in a private
temporary directory under /tmp, so it never joins or disturbs another instance on the machine,
e.g. a test session's) and shuts it down at the end. The table goes to stdout and, with every
per-step figure, to `<out>/train_throughput.json` (written atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/, for _harness
import _harness as harness  # noqa: E402

RESULT_NAME = "train_throughput.json"
GOAL_RATIO = 0.9
MIX = {"single_protein": 1.0, "refseq_pair": 1.0, "web": 1.0}
SAMPLE_GENOME_BP = 60_000
RAY_NUM_CPUS = 4
RAY_RUN_NAME = "ray_one_worker"
DEFAULTS = {
    "model": "bsm-tiny",
    "seq_len": 256,
    "micro_batch_rows": 32,
    "accum": 2,
    "steps": 30,
    "warmup_steps": 5,
}
QUICK = {
    "model": "bsm-tiny",
    "seq_len": 128,
    "micro_batch_rows": 8,
    "accum": 2,
    "steps": 3,
    "warmup_steps": 1,
}
SHM_OP = "deepspeed_shm_comm"
# Ray Train V2's controller polls the workers every this many seconds (default 2.0) and takes one
# reported result per poll from a queue of size 1, so a second `ray.train.report` within one
# interval blocks the training loop until the next poll.
HEALTH_CHECK_VAR = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
RAY_DEFAULT_HEALTH_CHECK_S = 2.0


# --- shared by the stages ------------------------------------------------------------------------


def train_config(s: dict, **overrides):
    """The TrainConfig both paths follow (the plain loop reads its hyper-parameters from it)."""
    from bsm_ray.tracking.config import TrackingConfig
    from bsm_ray.train.config import DataConfig, TrainConfig

    fields = dict(
        name=RAY_RUN_NAME,
        model=s["model"],
        objective="causal",
        seq_len=s["seq_len"],
        max_steps=s["max_steps"],
        global_batch_tokens=s["seq_len"] * s["micro_batch_rows"] * s["accum"],
        micro_batch_rows=s["micro_batch_rows"],
        data=DataConfig(dataset=s["dataset"], mix=dict(MIX), val_rows_per_source=s["val_rows"]),
        zero_stage=s["zero_stage"],
        seed=0,
        num_workers=1,
        use_gpu=False,
        cpus_per_worker=s["threads"],
        # Evaluate and checkpoint only at the end (the loop always does both at the last step).
        eval_every=10**9,
        checkpoint_every=10**9,
        keep_checkpoints=1,
        max_failures=0,
        storage_path=s["storage"],
        trace=True,  # per-step (pid, loss, rows) lines: the worker's pid for the CPU-time check
        # No MLflow run or registered version for a benchmark (the plain loop has none either).
        tracking=TrackingConfig(enabled=False),
    )
    fields.update(overrides)
    return TrainConfig(**fields)


def process_start_epoch() -> float | None:
    """Wall-clock (epoch) time at which this process started; None off Linux."""
    try:
        with open("/proc/self/stat") as fh:
            after_comm = fh.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        now = time.time()
    except (OSError, ValueError, IndexError):
        return None
    start_ticks = int(after_comm[19])  # field 22 of /proc/<pid>/stat (fields 1-2 cut off)
    return now - (uptime - start_ticks / os.sysconf("SC_CLK_TCK"))


def proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of process `pid` (all its threads), from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            after_comm = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(after_comm[11]) + int(after_comm[12])) / os.sysconf("SC_CLK_TCK")


def cpu_steal_seconds() -> float | None:
    """Time the hypervisor ran something else on this machine's CPUs (all of them), from
    /proc/stat; None where not available."""
    try:
        with open("/proc/stat") as fh:
            fields = fh.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def window_figures(tokens: int, wall_s, cpu_s, timed_s, steal_s) -> dict:
    """Figures of the wall-clock window over the measured steps (see the module docstring)."""

    def ratio(a, b):
        return a / b if a is not None and b else None

    steal = None
    if steal_s is not None and wall_s:
        steal = steal_s / (wall_s * (os.cpu_count() or 1))
    return {
        "window_tokens": tokens,
        "window_wall_s": wall_s,
        "wall_tokens_per_s": ratio(tokens, wall_s),
        "tokens_per_cpu_s": ratio(tokens, cpu_s),
        "cpu_s_per_step_s": ratio(cpu_s, timed_s),
        "steal_fraction": steal,
    }


def torch_extensions_root() -> Path:
    """Where torch.utils.cpp_extension (and so DeepSpeed's JIT ops) builds and caches ops."""
    env = os.environ.get("TORCH_EXTENSIONS_DIR")
    if env:
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(cache) / "torch_extensions"


def op_cache() -> dict[str, float]:
    """Compiled ops in the torch extensions cache: '<tag>/<op>/<file>.so' -> mtime."""
    root = torch_extensions_root()
    if not root.is_dir():
        return {}
    return {str(p.relative_to(root)): p.stat().st_mtime for p in root.glob("*/*/*.so")}


def steady(values: list[float]) -> dict:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


# --- stages (each in its own subprocess) ---------------------------------------------------------


def stage_prepare(s: dict) -> dict:
    from bsm_ray.data.windows import causal_windows
    from bsm_ray.ingest.prepare import PrepareConfig, prepare_dataset

    t0 = time.perf_counter()
    result = prepare_dataset(
        PrepareConfig(
            output_dir=s["dataset"], progress=False, sample_synthetic_genome_bp=SAMPLE_GENOME_BP
        )
    )
    seconds = time.perf_counter() - t0
    rows = {
        src: {
            split: len(causal_windows(s["dataset"], src, split, s["seq_len"]))
            for split in ("train", "val")
        }
        for src in MIX
    }
    return {
        "seconds": seconds,
        "dataset_sha256": result.manifest["dataset_sha256"],
        "windows": rows,
    }


def stage_plain(s: dict) -> dict:
    started = process_start_epoch()
    t_import = time.perf_counter()
    import numpy as np
    import torch
    import transformers  # noqa: F401  (imported by build_model; counted with the imports)

    from bsm_ray.data.mixing import MixturePlan
    from bsm_ray.data.windows import causal_windows
    from bsm_ray.models.presets import build_model, choose_attention, count_parameters, get_preset
    from bsm_ray.train.schedules import lr_at

    torch.set_num_threads(s["threads"])
    import_seconds = time.perf_counter() - t_import

    config = train_config(s)
    global_rows, accum = config.batch_layout(1)
    mb = config.micro_batch_rows
    t0 = time.perf_counter()
    windows = {src: causal_windows(s["dataset"], src, "train", config.seq_len) for src in MIX}
    weights = dict(config.data.mix)
    plan = MixturePlan(weights, {src: len(w) for src, w in windows.items()}, seed=config.seed)
    windows_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    preset = get_preset(config.model)
    attn, _ = choose_attention(preset, "cpu")
    model = build_model(preset, attn, seed=config.seed)
    model.train()
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=config.schedule.start_lr,
        betas=tuple(config.optim.betas),
        eps=config.optim.eps,
        weight_decay=config.optim.weight_decay,
    )
    model_seconds = time.perf_counter() - t0

    per_step, ends, losses, cpu_at_end, steal_at_end = [], [], [], [], []
    first_step_epoch = None
    for step in range(config.max_steps):
        t0 = time.perf_counter()
        lr = lr_at(config.schedule, step, config.max_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        rows = plan.take(global_rows)
        loss_sum, tokens = 0.0, 0
        for m in range(accum):
            micro = rows[m * mb : (m + 1) * mb]
            ids = np.stack([windows[src].input_ids[r] for src, r in micro])
            mask = np.stack([windows[src].attention_mask[r] for src, r in micro])
            input_ids = ids.astype(np.int64)
            labels = np.where(mask > 0, input_ids, -100)
            batch = {
                "input_ids": torch.from_numpy(input_ids),
                "attention_mask": torch.from_numpy(mask.astype(np.int64)),
                "labels": torch.from_numpy(labels),
            }
            loss = model(**batch).loss
            (loss / accum).backward()
            loss_sum += float(loss.detach())
            tokens += int(batch["attention_mask"].sum())
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad()
        end = time.perf_counter()
        if first_step_epoch is None:
            first_step_epoch = time.time()
        # The step's (source, row id) pairs in consumption order, as the loop's trace has them.
        consumed = [[src, int(windows[src].row_ids[r])] for src, r in rows]
        per_step.append({"step": step + 1, "tokens": tokens, "seconds": end - t0,
                         "tokens_per_s": tokens / (end - t0), "rows": consumed})  # fmt: skip
        ends.append(end)
        cpu_at_end.append(time.process_time())
        steal_at_end.append(cpu_steal_seconds())
        losses.append(loss_sum / accum)

    w = s["warmup_steps"]
    measured = per_step[w:]
    last = len(per_step) - 1  # wall window: end of warm-up .. end of the step before the last
    st0, st1 = steal_at_end[w - 1], steal_at_end[last - 1]
    window = window_figures(
        tokens=sum(p["tokens"] for p in per_step[w:last]),
        wall_s=ends[last - 1] - ends[w - 1],
        cpu_s=cpu_at_end[last - 1] - cpu_at_end[w - 1],
        timed_s=sum(p["seconds"] for p in per_step[w:last]),
        steal_s=st1 - st0 if st0 is not None and st1 is not None else None,
    )
    return {
        "threads": torch.get_num_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "num_parameters": count_parameters(preset),
        "attention": attn,
        "tokens_per_s": steady([p["tokens_per_s"] for p in measured]),
        "step_seconds": steady([p["seconds"] for p in measured]),
        **window,
        "time_to_first_step_s": (first_step_epoch - started) if started else None,
        "breakdown_s": {
            "imports": import_seconds,
            "windows": windows_seconds,
            "model_and_optimizer": model_seconds,
            "first_step": per_step[0]["seconds"],
        },
        "per_step": per_step,
        "loss": losses,
    }


class _MetricsWatcher(threading.Thread):
    """Polls <run>/metrics.jsonl; stamps each new step line with this process's clock, and reads
    the worker's CPU time (its pid from the trace file) at the same moment."""

    def __init__(self, run_dir: Path, interval: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.path = run_dir / "metrics.jsonl"
        self.trace = run_dir / "trace" / "rank0.jsonl"
        self.interval = interval
        self.seen: dict[int, float] = {}  # step -> perf_counter when its line first appeared
        self.seen_epoch: dict[int, float] = {}
        self.cpu: dict[int, float | None] = {}  # step -> worker CPU seconds at that moment
        self.steal: dict[int, float | None] = {}  # step -> machine's CPU steal at that moment
        self.pid: int | None = None
        self._stop_event = threading.Event()
        self._offset = 0
        self._partial = b""

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.poll()
            self._stop_event.wait(self.interval)
        self.poll()

    def poll(self) -> None:
        try:
            size = self.path.stat().st_size
        except OSError:
            return
        if size <= self._offset:
            return
        now, now_epoch = time.perf_counter(), time.time()
        with open(self.path, "rb") as fh:
            fh.seek(self._offset)
            data = fh.read(size - self._offset)
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            if not line.strip():
                continue
            step = int(json.loads(line)["step"])
            if step in self.seen:
                continue
            self.seen[step], self.seen_epoch[step] = now, now_epoch
            if self.pid is None and self.trace.is_file():
                first = self.trace.read_text().split("\n", 1)[0]
                if first.strip():
                    self.pid = int(json.loads(first)["pid"])
            self.cpu[step] = proc_cpu_seconds(self.pid) if self.pid else None
            self.steal[step] = cpu_steal_seconds()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)


def stage_ray(s: dict) -> dict:
    # Ray decides the worker's threads from cpus_per_worker (as in a real job): no inherited
    # thread variables in the environment the local Ray instance (and so the worker) starts with.
    for var in harness.THREAD_VARS:
        os.environ.pop(var, None)
    if s.get("health_check_interval") is not None:  # read by the Train controller (propagated)
        os.environ[HEALTH_CHECK_VAR] = str(s["health_check_interval"])
    started = process_start_epoch()
    t0 = time.perf_counter()
    import ray

    from bsm_ray.models.presets import count_parameters, get_preset
    from bsm_ray.train.context import read_metrics
    from bsm_ray.train.launcher import launch

    import_seconds = time.perf_counter() - t0

    config = train_config(s)
    storage = Path(s["storage"])
    shutil.rmtree(storage, ignore_errors=True)  # a run with the same name would resume
    run_dir = storage / config.name
    ops_before = op_cache()

    # A private local instance, in its own temporary directory (short: Ray puts sockets in it).
    ray_tmp = tempfile.mkdtemp(
        prefix="bsmbench-ray-", dir="/tmp" if os.path.isdir("/tmp") else None
    )
    t0 = time.perf_counter()
    ray.init(
        address="local",
        num_cpus=RAY_NUM_CPUS,
        include_dashboard=False,
        log_to_driver=True,
        _temp_dir=ray_tmp,
    )
    ray_init_seconds = time.perf_counter() - t0
    watcher = _MetricsWatcher(run_dir)
    watcher.start()
    try:
        t_launch, t_launch_epoch = time.perf_counter(), time.time()
        result = launch(config)
        launch_seconds = time.perf_counter() - t_launch
    finally:
        watcher.stop()
        t0 = time.perf_counter()
        ray.shutdown()
        shutdown_seconds = time.perf_counter() - t0
        shutil.rmtree(ray_tmp, ignore_errors=True)
    ops_after = op_cache()

    history = {int(m["step"]): m for m in read_metrics(run_dir)}
    steps = sorted(k for k in history if k >= 1)
    # What the worker consumed, step by step (its trace: (source, row id) pairs and real tokens
    # per source), for the check that both paths trained on the same rows.
    consumed = {}
    for line in watcher.trace.read_text().splitlines() if watcher.trace.is_file() else []:
        t = json.loads(line)
        consumed[int(t["step"])] = {"rows": t["rows"], "tokens": sum(t["tokens"].values())}
    w = s["warmup_steps"]
    measured = [history[k] for k in steps if k > w]
    last = config.max_steps  # evaluates and checkpoints before its line: out of the wall window
    # Tokens per step are not in metrics.jsonl (only tokens/s). The rows are the same, in the same
    # order, from the same windows as in the plain loop, so its per-step token counts (passed in
    # by the driver) are this run's too; they give the step times and the wall figure.
    tokens_by_step = {int(k): v for k, v in (s.get("tokens_by_step") or {}).items()}
    step_seconds = [
        tokens_by_step[int(m["step"])] / m["train/tokens_per_s"]
        for m in measured
        if int(m["step"]) in tokens_by_step and m["train/tokens_per_s"]
    ]
    window: dict = {}
    step_line_interval = None
    wall_steps = range(w + 1, last)
    if w in watcher.seen and (last - 1) in watcher.seen and wall_steps:
        if all(k in tokens_by_step and k in history for k in wall_steps):
            wall_s = watcher.seen[last - 1] - watcher.seen[w]
            step_line_interval = wall_s / len(wall_steps)
            c0, c1 = watcher.cpu.get(w), watcher.cpu.get(last - 1)
            st0, st1 = watcher.steal.get(w), watcher.steal.get(last - 1)
            window = window_figures(
                tokens=sum(tokens_by_step[k] for k in wall_steps),
                wall_s=wall_s,
                cpu_s=c1 - c0 if c0 is not None and c1 is not None else None,
                timed_s=sum(
                    tokens_by_step[k] / history[k]["train/tokens_per_s"] for k in wall_steps
                ),
                steal_s=st1 - st0 if st0 is not None and st1 is not None else None,
            )
    new_ops = sorted(k for k, mtime in ops_after.items() if ops_before.get(k) != mtime)
    shm_before = [k for k in ops_before if f"/{SHM_OP}/" in f"/{k}"]
    checkpoint = result.checkpoint
    return {
        "threads_cpus_per_worker": config.cpus_per_worker,
        "num_parameters": count_parameters(get_preset(config.model)),
        "tokens_per_s": steady([m["train/tokens_per_s"] for m in measured]),
        "per_step": [
            {
                "step": k,
                "tokens_per_s": history[k]["train/tokens_per_s"],
                "loss": history[k]["train/loss"],
                "seen_s_after_launch": (watcher.seen[k] - t_launch if k in watcher.seen else None),
                **consumed.get(k, {"rows": None, "tokens": None}),
            }
            for k in steps
        ],
        "step_seconds": steady(step_seconds) if step_seconds else None,
        **window,
        "step_line_interval_s": step_line_interval,
        "worker_pid": watcher.pid,
        "health_check_interval_s": float(
            os.environ.get(HEALTH_CHECK_VAR, RAY_DEFAULT_HEALTH_CHECK_S)
        ),
        "health_check_interval_from_env": HEALTH_CHECK_VAR in os.environ,
        "ray_init_s": ray_init_seconds,
        "ray_shutdown_s": shutdown_seconds,
        "imports_s": import_seconds,
        "launch_total_s": launch_seconds,
        "launch_to_step0_s": watcher.seen[0] - t_launch if 0 in watcher.seen else None,
        "time_to_first_step_s": watcher.seen[1] - t_launch if 1 in watcher.seen else None,
        "process_start_to_step1_s": (
            watcher.seen_epoch[1] - started if started and 1 in watcher.seen_epoch else None
        ),
        "launch_epoch": t_launch_epoch,
        "final_val_loss": result.metrics.get("val/loss"),
        "initial_val_loss": history.get(0, {}).get("val/loss"),
        "checkpoint": checkpoint,
        "deepspeed_ops_before": sorted(ops_before),
        "deepspeed_ops_compiled_during_run": new_ops,
        "deepspeed_shm_op_cached_before": bool(shm_before),
        "deepspeed_warm": bool(shm_before) and not new_ops,
        "torch_extensions_dir": str(torch_extensions_root()),
    }


STAGE_FUNCTIONS = {"prepare": stage_prepare, "plain": stage_plain, "ray": stage_ray}


# --- the driver (standard library only) ---------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Training tokens/s and time to the first step: Ray Train + DeepSpeed "
        "(1 worker) against a plain PyTorch loop, same model, batch and threads."
    )
    harness.add_out_arg(p, "folder for the dataset, the scratch runs and the JSON result")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run ({QUICK['steps']} measured steps, seq_len "
        f"{QUICK['seq_len']}, {QUICK['micro_batch_rows']} rows x {QUICK['accum']})",
    )
    p.add_argument("--model", help=f"causal preset (default {DEFAULTS['model']})")
    p.add_argument("--seq-len", type=int, help=f"tokens per row (default {DEFAULTS['seq_len']})")
    p.add_argument(
        "--micro-batch-rows",
        type=int,
        help=f"rows per forward/backward (default {DEFAULTS['micro_batch_rows']})",
    )
    p.add_argument(
        "--accum", type=int, help=f"gradient accumulation steps (default {DEFAULTS['accum']})"
    )
    p.add_argument(
        "--steps", type=int, help=f"measured optimizer steps (default {DEFAULTS['steps']})"
    )
    p.add_argument(
        "--warmup-steps",
        type=int,
        help=f"steps before them, not in the medians (default {DEFAULTS['warmup_steps']})",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads in both paths: cpus_per_worker and set_num_threads (1)",
    )
    p.add_argument(
        "--zero-stage",
        type=int,
        default=2,
        choices=(0, 1, 2, 3),
        help="DeepSpeed ZeRO stage of the Ray path (default 2)",
    )
    p.add_argument(
        "--val-rows",
        type=int,
        default=8,
        help="validation rows per source of the Ray path's initial and final "
        "evaluation (default 8)",
    )
    p.add_argument(
        "--ray-health-check-interval",
        type=float,
        help=f"set {HEALTH_CHECK_VAR} for the Ray path (default: unset, Ray's "
        f"{RAY_DEFAULT_HEALTH_CHECK_S:g} s): how often the Train controller collects reports",
    )
    p.add_argument(
        "--keep-runs",
        action="store_true",
        help="keep the Ray run folder (metrics.jsonl, checkpoint) under <out>",
    )
    harness.add_hidden_stage_args(p, STAGE_FUNCTIONS)
    args = p.parse_args(argv)
    harness.fill_defaults(args, QUICK, DEFAULTS)
    if min(args.seq_len - 1, args.micro_batch_rows, args.accum, args.steps, args.threads) < 1:
        p.error("--seq-len >= 2 and --micro-batch-rows, --accum, --steps, --threads >= 1")
    if args.warmup_steps < 1:
        p.error("--warmup-steps must be >= 1 (the wall figure starts at the end of warm-up)")
    if args.steps < 2:
        p.error("--steps must be >= 2")
    if args.threads > RAY_NUM_CPUS:
        p.error(f"--threads must be <= {RAY_NUM_CPUS} (the local Ray instance's CPUs)")
    return args


def build_report(args: argparse.Namespace, settings: dict, results: dict, started: float) -> dict:
    """The JSON report: settings, machine, both paths' figures and their ratios."""
    plain, ray_r = results["plain"], results["ray"]
    ratio = ray_r["tokens_per_s"]["median"] / plain["tokens_per_s"]["median"]

    def path_ratio(key):
        a, b = ray_r.get(key), plain.get(key)
        return a / b if a and b else None

    w, n = args.warmup_steps, args.steps
    return {
        "benchmark": "train_throughput",
        "created_unix": started,
        "wall_seconds": time.time() - started,
        "settings": {
            **settings,
            "global_batch_tokens": args.seq_len * args.micro_batch_rows * args.accum,
            "mix": MIX,
            "sample_synthetic_genome_bp": SAMPLE_GENOME_BP,
            "ray_num_cpus": RAY_NUM_CPUS,
            "measured_steps": f"{w + 1}..{w + n}",
        },
        "machine": harness.machine_info(("torch", "deepspeed", "ray", "transformers", "numpy")),
        "method": "tokens/s = median over the steps after warm-up of (attention-mask tokens of "
        "the step) / (wall time of the whole step incl. batch building): the loop's "
        "train/tokens_per_s from metrics.jsonl for Ray, the same timer in the plain loop; "
        "wall_tokens_per_s = tokens of steps warmup+1..last-1 / time between the end of step "
        "`warmup` and the end of step last-1 as seen from outside the step (Ray: when the lines "
        "appear in metrics.jsonl); tokens_per_cpu_s = the same tokens / CPU time (utime + "
        "stime) of the process doing the steps over that window; steal_fraction = CPU steal "
        "of the machine (/proc/stat) over that window / (window x CPUs)",
        "prepare": results["prepare"],
        "plain": plain,
        "ray": ray_r,
        "ratio": ratio,
        "wall_ratio": path_ratio("wall_tokens_per_s"),
        "tokens_per_cpu_s_ratio": path_ratio("tokens_per_cpu_s"),
        "goal_ratio": GOAL_RATIO,
        "goal_met": ratio >= GOAL_RATIO,
        "driver_peak_rss_mib": harness.peak_rss_mib(),
    }


def print_throughput(report: dict, args: argparse.Namespace) -> None:
    """What was compared, the tokens/s table of both paths and their ratios."""
    fmt = harness.fmt_or_dash  # "-" for a figure a path does not have
    plain, ray_r, settings = report["plain"], report["ray"], report["settings"]
    ratio = report["ratio"]
    wall_ratio, cpu_ratio = report["wall_ratio"], report["tokens_per_cpu_s_ratio"]
    w, n = args.warmup_steps, args.steps
    params = plain["num_parameters"]
    print(
        f"model: {args.model} ({params:,d} parameters), causal LM, fp32 on CPU; batch: seq_len "
        f"{args.seq_len} x {args.micro_batch_rows} rows x {args.accum} accumulation = "
        f"{settings['global_batch_tokens']:,d} token positions per optimizer step"
    )
    print(
        "same in both: preset and seed, rows and their order (MixturePlan over causal_windows "
        f"of {settings['dataset']}), AdamW hyper-parameters, gradient clipping, LR schedule"
    )
    print(
        f"threads: {args.threads} in both (Ray: cpus_per_worker={args.threads}, from which Ray "
        f"sets OMP_NUM_THREADS; plain: OMP_NUM_THREADS={args.threads} and torch.set_num_threads"
        f"({args.threads}), torch reports {plain['threads']}); {os.cpu_count()} CPUs here"
    )
    print(f"measured: steps {w + 1}..{w + n} after {w} warm-up step(s); median per step")
    print()
    header = ("throughput", "tokens/s (median step)", "step s (median)", "tokens/s (wall)",
              "tokens / CPU s", "CPU steal")  # fmt: skip
    lines = [
        [
            label,
            fmt(r["tokens_per_s"]["median"], ",.0f"),
            fmt((r.get("step_seconds") or {}).get("median"), ".3f"),
            fmt(r.get("wall_tokens_per_s"), ",.0f"),
            fmt(r.get("tokens_per_cpu_s"), ",.0f"),
            fmt(None if r.get("steal_fraction") is None else 100 * r["steal_fraction"], ".1f",
                " %"),
        ]
        for label, r in (
            ("plain PyTorch loop (1 process)", plain),
            (f"Ray Train + DeepSpeed ZeRO-{args.zero_stage} (1 worker)", ray_r),
        )
    ]  # fmt: skip
    print(harness.format_columns(header, lines, right={1, 2, 3, 4, 5}))
    print(
        f"ratio Ray+DeepSpeed / plain (median step tokens/s): {ratio:.3f} -> goal >= "
        f"{GOAL_RATIO}: {'met' if report['goal_met'] else 'NOT met'}"
    )
    print(
        f"  other ratios: wall-clock {fmt(wall_ratio, '.3f')}, per CPU second "
        f"{fmt(cpu_ratio, '.3f')}; CPU s per step s: plain "
        f"{fmt(plain.get('cpu_s_per_step_s'), '.2f')} (<= {args.threads} with {args.threads} "
        f"thread(s)), Ray {fmt(ray_r.get('cpu_s_per_step_s'), '.2f')} (with the worker's CPU "
        "between steps)"
    )
    gap = ray_r.get("step_line_interval_s")
    step_s = (ray_r.get("step_seconds") or {}).get("median")
    if gap and step_s and gap > 1.5 * step_s:
        print(
            f"  the Ray path's steps end {gap:.2f} s apart but take {step_s:.3f} s: each "
            "step's ray.train.report waits for the Train controller's next poll "
            f"({HEALTH_CHECK_VAR} = {ray_r['health_check_interval_s']:g} s; results queue "
            "of size 1), time the loop's train/tokens_per_s does not see"
        )
    steals = [r.get("steal_fraction") for r in (plain, ray_r)]
    if any(x is not None and x > 0.05 for x in steals):
        print(
            "  CPU steal above 5 % in a window: the hypervisor gave this machine's CPUs to "
            "others, which slows the steps it hits; the per-CPU-second ratio is less affected"
        )


def print_first_step(plain: dict, ray_r: dict) -> None:
    """The time to the first optimizer step of both paths, and whether DeepSpeed was warm."""
    fmt = harness.fmt_or_dash  # "-" for a figure a path does not have
    b = plain["breakdown_s"]
    header = ("time to the first optimizer step", "seconds", "measured from")
    lines = [
        ["plain PyTorch loop", fmt(plain["time_to_first_step_s"], ".2f"),
         f"stage process start (imports {b['imports']:.2f} s, windows {b['windows']:.2f} s, "
         f"model + optimizer {b['model_and_optimizer']:.2f} s, step 1 {b['first_step']:.2f} s)"],
        ["Ray: ray.init", fmt(ray_r["ray_init_s"], ".2f"),
         f"its call (local instance, {RAY_NUM_CPUS} CPUs; not in the rows below but the last)"],
        ["Ray: launch() -> step 0 line", fmt(ray_r["launch_to_step0_s"], ".2f"),
         "launch() call (step 0 = the initial evaluation's report)"],
        ["Ray: launch() -> step 1 line", fmt(ray_r["time_to_first_step_s"], ".2f"),
         "launch() call (ray.init excluded)"],
        ["Ray: process start -> step 1 line", fmt(ray_r["process_start_to_step1_s"], ".2f"),
         "stage process start (imports, ray.init and launch)"],
    ]  # fmt: skip
    print(harness.format_columns(header, lines, right={1}))
    compiled = ray_r["deepspeed_ops_compiled_during_run"]
    if ray_r["deepspeed_warm"]:
        ds_note = (
            f"warm ({SHM_OP} already compiled in {ray_r['torch_extensions_dir']}, nothing "
            "compiled during this run)"
        )
    else:
        ds_note = "COLD (" + (
            f"compiled during this run: {', '.join(compiled)})"
            if compiled
            else f"{SHM_OP} not in {ray_r['torch_extensions_dir']} before the run)"
        )
    print(
        f"DeepSpeed ops: {ds_note}; the first DeepSpeed start on a machine compiles {SHM_OP} "
        "(~90 s, cached in ~/.cache/torch_extensions), which a cold run's launch() -> step "
        "figures include"
    )


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    # No common imports: the stages time their own (part of the time to the first step).
    if harness.run_stage_from_args(args, STAGE_FUNCTIONS):
        return {}

    out, work_dir = harness.make_out_dirs(args.out, ".stages")
    settings = {
        "model": args.model,
        "seq_len": args.seq_len,
        "micro_batch_rows": args.micro_batch_rows,
        "accum": args.accum,
        "warmup_steps": args.warmup_steps,
        "steps": args.steps,
        "max_steps": args.warmup_steps + args.steps,
        "threads": args.threads,
        "zero_stage": args.zero_stage,
        "val_rows": args.val_rows,
        "health_check_interval": args.ray_health_check_interval,
        "dataset": str(out / "dataset"),
        "storage": str(out / ".train_runs"),
        "quick": bool(args.quick),
    }
    started = time.time()
    results = harness.run_stages(
        __file__, ("prepare", "plain"), settings, work_dir, env=harness.thread_env(args.threads)
    )
    # Same rows in the same order: the Ray stage gets the plain loop's per-step token counts.
    # Its environment sets no thread variables: Ray sizes the worker's from cpus_per_worker.
    tokens_by_step = {str(p["step"]): p["tokens"] for p in results["plain"]["per_step"]}
    ray_settings = {**settings, "tokens_by_step": tokens_by_step}
    results |= harness.run_stages(__file__, ("ray",), ray_settings, work_dir)
    if not args.keep_runs:
        shutil.rmtree(settings["storage"], ignore_errors=True)
    harness.remove_if_empty(work_dir)

    report = build_report(args, settings, results, started)
    result_path = out / RESULT_NAME
    harness.atomic_write_json(result_path, report)
    print_throughput(report, args)
    print()
    print_first_step(report["plain"], report["ray"])
    print(f"-> {result_path}")
    return report


if __name__ == "__main__":
    main()
