#!/usr/bin/env python
"""A resize at real size: bsm-110m on CPU, stopped on 2 workers and resumed on 1.

    python bench/elastic_resize.py                      # bsm-110m, seq_len 1024, ~10 min here
    python bench/elastic_resize.py --model bsm-tiny --seq-len 256    # the same path in a minute

Prints figures, asserts nothing. In one run, on the same data and config (ZeRO-2, fp32 on CPU,
2 rows of `--seq-len` tokens per step, one per worker, `--steps` steps with the LR schedule of
the whole run):

1. the uninterrupted run: 2 Ray Train workers, all `--steps` steps;
2. the same run stopped after `--stop` steps (`stop_at_step`), on 2 workers: its checkpoint's
   size per rank (DeepSpeed's model file, which rank 0 writes, and each rank's ZeRO optimizer
   partition);
3. that run relaunched with `num_workers: 1`: the universal checkpoint conversion's time, and
   the conversion and load together (the loop's own `resize/convert_s`, `resize/load_s`), the
   time from `launch()` to the first resumed step (a thread polls metrics.jsonl), and each
   resumed step's train/loss against the uninterrupted run's (relative difference; only the
   reduction order differs).

Runs in a private local Ray instance (4 logical CPUs, its own temp dir). The table goes to stdout
and, with every figure, to `<out>/elastic_resize.json` (written atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/, for _harness
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout
import _harness as harness  # noqa: E402

RESULT_NAME = "elastic_resize.json"
MIX = {"single_dna": 1.0, "web": 1.0}


def _first_line_time(path: Path, step: int, stamps: dict, stop: threading.Event) -> None:
    """Stamp (driver clock) the moment the line of `step` appears in metrics.jsonl."""
    while not stop.is_set():
        if path.is_file():
            for line in path.read_text().splitlines():
                if line.endswith("}") and json.loads(line).get("step") == step \
                        and "train/loss" in json.loads(line):  # fmt: skip
                    stamps[step] = time.time()
                    return
        time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--model", default="bsm-110m")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--stop", type=int, default=2)
    parser.add_argument("--out", type=Path, default=harness.DEFAULT_OUT)
    args = parser.parse_args()

    import ray

    from bsm_ray.ingest.prepare import PrepareConfig, prepare_dataset
    from bsm_ray.tracking.config import TrackingConfig
    from bsm_ray.train.config import DataConfig, TrainConfig
    from bsm_ray.train.context import read_metrics
    from bsm_ray.train.launcher import launch

    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="elastic-", dir=args.out))
    dataset = args.out / "elastic_dataset"
    if not (dataset / "manifest.json").is_file():
        prepare_dataset(PrepareConfig(output_dir=str(dataset), progress=False))
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             _temp_dir=tempfile.mkdtemp(prefix="ray-bench-", dir="/tmp"))  # fmt: skip
    config = TrainConfig(
        name="uninterrupted", model=args.model, seq_len=args.seq_len,
        global_batch_tokens=2 * args.seq_len, micro_batch_rows=1, max_steps=args.steps,
        data=DataConfig(dataset=str(dataset), mix=dict(MIX), val_rows_per_source=2),
        num_workers=2, zero_stage=2, eval_every=10**6, checkpoint_every=10**6,
        keep_checkpoints=1, max_failures=0, storage_path=str(work),
        tracking=TrackingConfig(enabled=False),
    )  # fmt: skip
    t0 = time.time()
    launch(config)
    uninterrupted_s = time.time() - t0
    cut = replace(config, name="resized", stop_at_step=args.stop)
    t0 = time.time()
    launch(cut)
    stopped_s = time.time() - t0
    checkpoint = next((work / "resized").glob("checkpoint_*"))
    sizes = {}
    for f in sorted((checkpoint / "state").iterdir()):
        sizes[f.name] = f.stat().st_size / 2**20
    stamps: dict[int, float] = {}
    stop = threading.Event()
    watcher = threading.Thread(target=_first_line_time, daemon=True,
                               args=(work / "resized" / "metrics.jsonl", args.stop + 1, stamps,
                                     stop))  # fmt: skip
    watcher.start()
    t0 = time.time()
    launch(replace(cut, num_workers=1, stop_at_step=None))
    resumed_s = time.time() - t0
    stop.set()
    ray.shutdown()

    def losses(name: str) -> dict[int, dict]:
        return {m["step"]: m for m in read_metrics(work / name) if "train/loss" in m}

    want, got = losses("uninterrupted"), losses("resized")
    first = got[args.stop + 1]
    rows = [{"step": s, "world_size": got[s]["train/world_size"],
             "loss": got[s]["train/loss"], "uninterrupted": want[s]["train/loss"],
             "rel_diff": abs(got[s]["train/loss"] - want[s]["train/loss"])
             / abs(want[s]["train/loss"])} for s in sorted(want)]  # fmt: skip
    report = {
        "model": args.model, "seq_len": args.seq_len, "steps": args.steps, "stop": args.stop,
        "checkpoint_mib": sizes, "convert_s": first["resize/convert_s"],
        "load_s": first["resize/load_s"],
        "launch_to_first_resumed_step_s": (stamps[args.stop + 1] - t0
                                           if args.stop + 1 in stamps else None),
        "uninterrupted_run_s": uninterrupted_s, "stopped_run_s": stopped_s,
        "resumed_run_s": resumed_s, "steps_table": rows,
        "machine": harness.machine_info(["torch", "deepspeed", "ray"]),
    }  # fmt: skip
    tmp = args.out / f".{RESULT_NAME}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, args.out / RESULT_NAME)

    print(f"\nresize of {args.model} (seq_len {args.seq_len}, ZeRO-2, fp32 CPU): stopped on 2 "
          f"workers at step {args.stop}, resumed on 1")
    print("checkpoint (per file of the DeepSpeed state):")
    for name, mib in sizes.items():
        print(f"  {name:48s} {mib:9.1f} MiB")
    print(f"universal conversion: {report['convert_s']:.1f} s; conversion and load into 1 "
          f"worker: {report['load_s']:.1f} s; launch() to the first resumed step: "
          f"{report['launch_to_first_resumed_step_s'] or float('nan'):.1f} s")
    print(f"runs: uninterrupted {uninterrupted_s:.0f} s, stopped {stopped_s:.0f} s, resumed "
          f"{resumed_s:.0f} s")
    print(f"{'step':>4} {'workers':>7} {'train/loss':>12} {'uninterrupted':>13} {'rel diff':>9}")
    for r in rows:
        print(f"{r['step']:>4} {r['world_size']:>7} {r['loss']:>12.6f} {r['uninterrupted']:>13.6f} "
              f"{r['rel_diff']:>9.1e}")
    print(f"written: {args.out / RESULT_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
