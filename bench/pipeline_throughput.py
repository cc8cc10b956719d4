#!/usr/bin/env python
"""End-to-end MLM pipeline throughput: Parquet -> tokenize (tasks) -> mask (actors) -> batches
on a consumer task (no model), next to the pure masking function in the same run.

    python bench/pipeline_throughput.py                 # 20 Mbp synthetic genome, GeneMask
    python bench/pipeline_throughput.py --quick         # 2 Mbp
    python bench/pipeline_throughput.py --strategy global --genome-mbp 50 --actors 2

Prints figures, asserts nothing. "Per CPU core" divides by the CPUs the Ray instance was given
(`--cpus`, default: this machine's cores), which the tokenize tasks, the masking actors and the
consumer share.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--genome-mbp", type=float, default=20.0)
    p.add_argument("--strategy", default="genemask", choices=["dnabert", "genemask", "global"])
    p.add_argument("--actors", type=int, default=1)
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--out", default=str(REPO_ROOT / "bench" / "out"))
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.genome_mbp = 2.0

    import numpy as np
    import pyarrow.parquet as pq
    import ray

    from bsm_ray.data.builders import GenomeConfig, stable_hash
    from bsm_ray.data.masking import apply_mask
    from bsm_ray.data.pipeline import masked_genome_dataset
    from bsm_ray.data.pmi_build import PmiConfig, build_pmi_table, load_rank_table
    from bsm_ray.data.prepare import PrepareConfig, prepare_dataset
    from bsm_ray.data.samples import write_synthetic_genome
    from bsm_ray.data.shards import shard_paths
    from bsm_ray.fileio import atomic_write_text
    from bsm_ray.tokenizers import KmerTokenizer

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="pipeline-", dir=out))
    genome_bp = int(args.genome_mbp * 1e6)
    genome = write_synthetic_genome(work / "genome.fa", genome_bp, seed=0)
    dataset = work / "dataset"
    prepare_dataset(PrepareConfig(sample=False, output_dir=str(dataset), progress=False,
                                  genome=GenomeConfig(fasta=[str(genome)])))  # fmt: skip
    table = work / "npmi.parquet"
    build_pmi_table(PmiConfig(output=str(table), progress=False, parallel="local"))

    # Baseline in this process, one core: the pure masking function on pre-tokenized rows.
    pieces = [r for path in shard_paths(dataset, "genome", "train")
              for r in pq.read_table(path, columns=["piece_id", "seq"]).to_pylist()]  # fmt: skip
    enc = KmerTokenizer(6).encode_batch([r["seq"] for r in pieces])
    sid = np.array([stable_hash("piece", r["piece_id"]) for r in pieces], dtype=np.uint64)
    ranks = load_rank_table(table)
    real_tokens = int(np.maximum(enc["attention_mask"].sum(axis=1) - 2, 0).sum())
    apply_mask(args.strategy, enc["input_ids"][:1], enc["attention_mask"][:1], 0, sid[:1], 0,
               ranks)  # compiles the kernel or loads it from the cache: not timed  # fmt: skip
    t0 = time.perf_counter()
    for i in range(0, len(pieces), args.batch_size):
        sl = slice(i, i + args.batch_size)
        apply_mask(args.strategy, enc["input_ids"][sl], enc["attention_mask"][sl], 0, sid[sl], 0,
                   ranks)  # fmt: skip
    pure_s = time.perf_counter() - t0

    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False,
             _temp_dir=tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # fmt: skip
    ray.data.DataContext.get_current().enable_progress_bars = False

    @ray.remote(num_cpus=0)
    def consume(ds, batch_size: int) -> tuple[int, int, float]:
        """A training worker without a model: pull masked batches, count tokens."""
        start = time.perf_counter()
        rows = masked = 0
        for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy"):
            rows += len(batch["input_ids"])
            masked += int((batch["labels"] != -100).sum())
        return rows, masked, time.perf_counter() - start

    ds = masked_genome_dataset(dataset, "train", strategy=args.strategy, pmi_table=str(table),
                               num_actors=args.actors, batch_size=args.batch_size)  # fmt: skip
    t0 = time.perf_counter()
    rows, masked, consume_s = ray.get(consume.remote(ds, args.batch_size))
    pipe_s = time.perf_counter() - t0
    ray.shutdown()

    result = {
        "genome_bp": genome_bp,
        "strategy": args.strategy,
        "rows": rows,
        "real_tokens": real_tokens,
        "masked_tokens": masked,
        "cpus": args.cpus,
        "actors": args.actors,
        "pipeline_seconds": pipe_s,
        "pipeline_tokens_per_s": real_tokens / pipe_s,
        "pipeline_tokens_per_s_per_cpu": real_tokens / pipe_s / args.cpus,
        "pure_masking_seconds": pure_s,
        "pure_masking_tokens_per_s": real_tokens / pure_s,
    }
    atomic_write_text(out / "pipeline_throughput.json", json.dumps(result, indent=2))
    print(
        f"genome {genome_bp / 1e6:.1f} Mbp -> {rows:,} pieces, {real_tokens:,} real 6-mer "
        f"tokens; strategy {args.strategy}; Ray instance with {args.cpus} CPUs, "
        f"{args.actors} masking actor(s)"
    )
    print(f"{'stage':52s} {'seconds':>8s} {'tokens/s':>14s}")
    print(
        f"{'pure masking function (this process, one core)':52s} {pure_s:8.2f} "
        f"{real_tokens / pure_s / 1e6:11.2f} M"
    )
    print(
        f"{'pipeline: Parquet -> tokenize -> mask (actors) -> consumer':52s} {pipe_s:8.2f} "
        f"{real_tokens / pipe_s / 1e6:11.2f} M"
    )
    print(
        f"{'  per CPU core of the Ray instance':52s} {'':8s} "
        f"{real_tokens / pipe_s / args.cpus / 1e6:11.2f} M  (goal >= 1 M masked tokens/s/core)"
    )
    print(f"-> {out / 'pipeline_throughput.json'}")
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return result


if __name__ == "__main__":
    main()
