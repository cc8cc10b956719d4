#!/usr/bin/env python
"""End-to-end MLM pipeline throughput: Parquet -> tokenize -> mask (actors) -> batches taken by
a training worker's `StreamReader` (no model), next to the pure masking function in the same run.

    python bench/pipeline_throughput.py                 # 100 Mbp synthetic genome, GeneMask
    python bench/pipeline_throughput.py --quick         # 2 Mbp
    python bench/pipeline_throughput.py --strategy global --genome-mbp 50 --actors 2

Prints figures, asserts nothing. "Per CPU core" divides by the CPUs the Ray instance was given
(`--cpus`, default: this machine's cores), which the reading/masking actors (Ray Data fuses the
read task into the masking actor) and the consumer share. Two rates: over the whole stream
(start-up included) and steady state (from the first batch the worker receives).
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
    p.add_argument("--genome-mbp", type=float, default=100.0)
    p.add_argument("--strategy", default="genemask", choices=["dnabert", "genemask", "global"])
    p.add_argument("--actors", type=int, default=2)
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--take", type=int, default=64, help="rows the worker takes at a time")
    p.add_argument("--out", default=str(REPO_ROOT / "bench" / "out"))
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.genome_mbp = 2.0

    import numpy as np
    import pyarrow.parquet as pq
    import ray

    from bsm_ray.data.masking import apply_mask
    from bsm_ray.data.pipeline import StreamReader, StreamSpec
    from bsm_ray.data.pmi_build import PmiConfig, build_pmi_table, load_rank_table
    from bsm_ray.fileio import atomic_write_text
    from bsm_ray.ingest.builders import GenomeConfig, stable_hash
    from bsm_ray.ingest.prepare import PrepareConfig, prepare_dataset
    from bsm_ray.ingest.samples import write_synthetic_genome
    from bsm_ray.ingest.shards import shard_paths
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
    def worker(spec: StreamSpec, total_rows: int, take: int) -> tuple[int, int, float, ...]:
        """A training worker without a model: take masked rows from its stream, count tokens."""
        start = time.perf_counter()
        reader = StreamReader(spec, rank=0, world=1)
        rows = masked = 0
        first = None
        while rows < total_rows:
            batch = reader.take(min(take, total_rows - rows))
            first = first or time.perf_counter()
            rows += len(batch["row_id"])
            masked += int((batch["labels"] != -100).sum())
        end = time.perf_counter()
        return rows, masked, end - start, end - first, first - start

    spec = StreamSpec(str(dataset), "genome", strategy=args.strategy, pmi_table=str(table),
                      mask_actors=args.actors, rows_per_dataset=len(pieces))  # fmt: skip
    t0 = time.perf_counter()
    rows, masked, consume_s, steady_s, first_s = ray.get(
        worker.remote(spec, len(pieces), args.take))  # fmt: skip
    pipe_s = time.perf_counter() - t0
    ray.shutdown()
    first_rows = min(args.take, rows)
    steady_tokens = real_tokens * (rows - first_rows) / rows

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
        "first_batch_seconds": first_s,
        "steady_seconds": steady_s,
        "steady_tokens_per_s": steady_tokens / steady_s,
        "steady_tokens_per_s_per_cpu": steady_tokens / steady_s / args.cpus,
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
        f"{real_tokens / pipe_s / args.cpus / 1e6:11.2f} M"
    )
    print(
        f"{'  steady state (after the first batch)':52s} {steady_s:8.2f} "
        f"{steady_tokens / steady_s / 1e6:11.2f} M"
    )
    print(
        f"{'  steady state per CPU core':52s} {'':8s} "
        f"{steady_tokens / steady_s / args.cpus / 1e6:11.2f} M  "
        f"(goal >= 1 M masked tokens/s/core)"
    )
    print(f"-> {out / 'pipeline_throughput.json'}")
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return result


if __name__ == "__main__":
    main()
