#!/usr/bin/env python
"""Training throughput of the real training step on one device, as tokens/s and MFU.

    python bench/gpu_throughput.py                          # GPU: bsm-110m, bsm-270m, dnabert-6
    python bench/gpu_throughput.py --presets bsm-110m --micro-batch-rows 32 --steps 50
    python bench/gpu_throughput.py --cpu                    # CPU: bsm-tiny, bert-tiny (CI)
    python bench/gpu_throughput.py --variants baseline,+sdpa,+fused_adamw

The step is the trainer's own (`bsm_ray.train.loop.build_engine` + `optimizer_step`): the model
preset from `bsm_ray.models`, AdamW, the DeepSpeed engine (ZeRO stage from the variant, bf16 on
CUDA, fp32 on CPU), the configured attention, batches copied to the device the way the loop
copies them (`to_device`: pinned memory, non-blocking). Batches are synthetic token rows of the
paper context length (BSM 1024 characters, DNABERT 512 positions with the DNABERT span mask
applied by `bsm_ray.data.masking`), built before timing and cycled.

Optimizations are applied one after the other ("before and after each"), each row keeping the
ones above it:

    baseline            eager attention, unfused AdamW, ZeRO-2
    +sdpa               PyTorch scaled_dot_product_attention (flash kernel on CUDA)
    +flash_attention_2  the flash-attn package (skipped with the reason when not installed)
    +fused_adamw        torch's fused AdamW kernel
    +zero0              ZeRO stage 0 (one device: nothing to shard, no partitioning overhead)
    +compile            torch.compile (DeepSpeed engine.compile())

Per row: tokens/s and step time as medians over `--steps` timed steps after `--warmup` steps
(CUDA events on the GPU, no host sync inside a step; `perf_counter` on CPU), peak memory
(`torch.cuda.max_memory_allocated`, or the process's peak RSS on CPU, which only grows), and
MFU = tokens/s x FLOPs per token (6N + 12 x layers x hidden x context) / the device's dense
matmul rate measured at the start of the same run (bf16 on CUDA, fp32 on CPU). Writes
`<out>/gpu_throughput.json`; asserts nothing on timing.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import atomic_write_json, format_columns, peak_rss_mib  # noqa: E402

PAPER_CONTEXT = {"bsm-110m": 1024, "bsm-270m": 1024, "dnabert-6": 512, "logo": 512,
                 "bsm-tiny": 256, "bert-tiny": 512}  # fmt: skip
LADDER: list[tuple[str, dict]] = [
    ("baseline", {"attention": "eager", "fused_adamw": False, "zero_stage": 2, "compile": False}),
    ("+sdpa", {"attention": "sdpa"}),
    ("+flash_attention_2", {"attention": "flash_attention_2"}),
    ("+fused_adamw", {"fused_adamw": True}),
    ("+zero0", {"zero_stage": 0}),
    ("+compile", {"compile": True}),
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu", action="store_true",
                   help="run on CPU with the tiny presets (what CI runs)")
    p.add_argument("--presets", default=None,
                   help="comma-separated presets (default: bsm-110m,bsm-270m,dnabert-6 on GPU, "
                        "bsm-tiny,bert-tiny on CPU)")  # fmt: skip
    p.add_argument("--variants", default=None,
                   help="comma-separated ladder rows (default: all on GPU; on CPU all but "
                        "+compile, which compiles for minutes there)")  # fmt: skip
    p.add_argument("--micro-batch-rows", type=int, default=None,
                   help="rows per step (default 16 on GPU, 4 on CPU)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 30 GPU / 4 CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (default 10 / 2)")
    p.add_argument("--out", default="bench/out", help="folder for gpu_throughput.json")
    return p.parse_args(argv)


def init_single_process(device) -> None:
    """A one-rank process group (DeepSpeed needs one): NCCL on CUDA, gloo on CPU."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1",
                      LOCAL_RANK="0")  # fmt: skip
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)


def matmul_rate(device, seconds: float) -> float:
    """Dense matmul FLOP/s: bf16 8192^3 on CUDA, fp32 1024^3 on CPU; best of three windows."""
    import torch

    cuda = device.type == "cuda"
    n, dtype = (8192, torch.bfloat16) if cuda else (1024, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(3):
        if cuda:
            torch.cuda.synchronize()
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 3:
            a @ b
            reps += 1
            if cuda and reps % 8:
                continue
            if cuda:
                torch.cuda.synchronize()
        if cuda:
            torch.cuda.synchronize()
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0))
    return best


def synthetic_batches(preset, seq_len: int, rows: int, count: int, seed: int = 0):
    """`count` numpy batches (input_ids, attention_mask, labels) of `rows` x `seq_len`."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        if preset.family == "bsm":
            from bsm_ray.tokenizers.char import BOS_ID, EOS_ID

            ids = rng.integers(5, 34, size=(rows, seq_len), dtype=np.int64)  # character ids
            ids[:, 0], ids[:, -1] = BOS_ID, EOS_ID
            mask = np.ones_like(ids)
            labels = ids.copy()
        else:
            from bsm_ray.data.masking import apply_mask
            from bsm_ray.tokenizers.kmer import CLS_ID, SEP_ID

            ids = rng.integers(5, 4101, size=(rows, seq_len), dtype=np.int64)  # 6-mer ids
            ids[:, 0], ids[:, -1] = CLS_ID, SEP_ID
            mask = np.ones_like(ids)
            m = apply_mask("dnabert", ids, mask, seed, np.arange(rows) + i * rows, i)
            ids, labels = m.input_ids.astype(np.int64), m.labels.astype(np.int64)
        out.append((ids, mask, labels))
    return out


def run_variant(preset_name: str, settings: dict, args, device, peak: float) -> dict:
    import torch

    from bsm_ray.models import count_parameters, get_preset
    from bsm_ray.models.presets import flops_per_token
    from bsm_ray.tracking.config import TrackingConfig
    from bsm_ray.train.batches import num_targets, to_device
    from bsm_ray.train.config import TrainConfig
    from bsm_ray.train.loop import build_engine, optimizer_step

    preset = get_preset(preset_name)
    seq_len = PAPER_CONTEXT[preset_name]
    rows = args.micro_batch_rows
    objective = "causal" if preset.family == "bsm" else "mlm"
    config = TrainConfig(
        name="bench", model=preset_name, objective=objective, seq_len=seq_len,
        global_batch_tokens=rows * (512 if objective == "mlm" else seq_len),
        micro_batch_rows=rows, num_workers=1, use_gpu=device.type == "cuda",
        tracking=TrackingConfig(enabled=False), **settings,
    )  # fmt: skip
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    engine, attn, _ = build_engine(config, 1, device)
    batches = synthetic_batches(preset, config.row_len, rows, count=4)
    tokens_per_step = rows * config.row_len

    def step(i: int):
        ids, mask, labels = batches[i % len(batches)]
        batch = {"input_ids": to_device(ids, device), "attention_mask": to_device(mask, device),
                 "labels": to_device(labels, device)}  # fmt: skip
        targets = num_targets({"labels": labels}, objective)  # one worker: its own count
        return optimizer_step(engine, [batch], objective, targets, 1) / max(targets, 1)

    t_first = time.perf_counter()
    for i in range(args.warmup):
        loss = step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    warmup_s = time.perf_counter() - t_first
    times: list[float] = []
    if device.type == "cuda":
        events = [torch.cuda.Event(enable_timing=True) for _ in range(args.steps + 1)]
        events[0].record()
        for i in range(args.steps):
            loss = step(args.warmup + i)
            events[i + 1].record()
        torch.cuda.synchronize()  # the only sync: after the timed steps
        times = [events[i].elapsed_time(events[i + 1]) / 1000 for i in range(args.steps)]
        peak_mem = torch.cuda.max_memory_allocated() / 2**30
    else:
        for i in range(args.steps):
            t0 = time.perf_counter()
            loss = step(args.warmup + i)
            float(loss)  # CPU: the step is synchronous anyway
            times.append(time.perf_counter() - t0)
        peak_mem = peak_rss_mib() / 1024
    final_loss = float(loss)
    step_s = statistics.median(times)
    tps = tokens_per_step / step_s
    num_params = count_parameters(preset)
    fpt = flops_per_token(preset, config.row_len, num_params)
    engine = None  # free it before the next variant
    gc.collect()
    return {"preset": preset_name, "params": num_params, "context": config.row_len,
            "rows": rows, "attention": attn, "settings": settings,
            "tokens_per_s": tps, "step_ms": step_s * 1000, "step_ms_all": [t * 1000 for t in times],
            "peak_mem_gib": peak_mem, "mfu": tps * fpt / peak, "flops_per_token": fpt,
            "warmup_s": warmup_s, "loss": final_loss}  # fmt: skip


def skip_reason(name: str, device) -> str | None:
    import importlib.util

    if name == "+flash_attention_2":
        if device.type != "cuda":
            return "needs a CUDA device"
        if importlib.util.find_spec("flash_attn") is None:
            return "flash-attn not installed (pip install -e '.[gpu]')"
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    cuda = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(0)
    presets = (args.presets or ("bsm-110m,bsm-270m,dnabert-6" if cuda else "bsm-tiny,bert-tiny")
               ).split(",")  # fmt: skip
    names = [n for n, _ in LADDER]
    wanted = args.variants.split(",") if args.variants else [n for n in names
                                                             if cuda or n != "+compile"]
    unknown = set(wanted) - set(names)
    if unknown:
        print(f"error: unknown variants {sorted(unknown)}; choose from {names}", file=sys.stderr)
        return 2
    args.micro_batch_rows = args.micro_batch_rows or (16 if cuda else 4)
    args.steps = args.steps or (30 if cuda else 4)
    args.warmup = args.warmup if args.warmup is not None else (10 if cuda else 2)
    init_single_process(device)
    peak = matmul_rate(device, 3.0 if cuda else 1.0)
    dev_name = torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu"
    print(f"device: {dev_name}; measured dense matmul "
          f"{'bf16' if cuda else 'fp32'} {peak / 1e12:.1f} TFLOP/s; torch {torch.__version__}",
          flush=True)  # fmt: skip
    results, skipped = [], []
    for preset in presets:
        settings: dict = {}
        for name, change in LADDER:
            reason = skip_reason(name, device)
            if reason is not None:
                if name in wanted:
                    skipped.append({"preset": preset, "variant": name, "reason": reason})
                continue
            settings = {**settings, **change}
            if name not in wanted:
                continue
            print(f"[{preset} {name}] ...", flush=True)
            r = run_variant(preset, settings, args, device, peak)
            r["variant"] = name
            results.append(r)
            print(f"[{preset} {name}] {r['tokens_per_s']:,.0f} tokens/s, step "
                  f"{r['step_ms']:.1f} ms, peak {r['peak_mem_gib']:.2f} GiB, "
                  f"MFU {r['mfu']:.1%}", flush=True)  # fmt: skip
    header = ["preset", "variant", "attention", "tokens/s", "step ms", "peak GiB", "MFU",
              "vs baseline"]  # fmt: skip
    lines = []
    for r in results:
        base = next(x for x in results if x["preset"] == r["preset"])
        lines.append([r["preset"], r["variant"], r["attention"], f"{r['tokens_per_s']:,.0f}",
                      f"{r['step_ms']:.1f}", f"{r['peak_mem_gib']:.2f}", f"{r['mfu']:.1%}",
                      f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x"])  # fmt: skip
    print()
    print(format_columns(header, lines, right={3, 4, 5, 6, 7}))
    for s in skipped:
        print(f"skipped {s['preset']} {s['variant']}: {s['reason']}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "gpu_throughput.json", {
        "device": dev_name, "cuda": cuda, "matmul_flops": peak, "torch": torch.__version__,
        "micro_batch_rows": args.micro_batch_rows, "steps": args.steps, "warmup": args.warmup,
        "results": results, "skipped": skipped,
    })  # fmt: skip
    print(f"\nwrote {out / 'gpu_throughput.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
