"""`build_pmi_table`: count k-mers over FASTA files and genome shards, compute NPMI, write Parquet.

Counting runs locally for small inputs and as one Ray task per input file when the input is
large (`parallel: auto` switches at `ray_min_bytes`), merging the per-file counts; a Ray
cluster is joined when `RAY_ADDRESS` is set. The table (`kmer, count, pmi, npmi, rank`, every
4^k k-mer, NPMI and rank null below `min_count`) is written atomically; its Parquet metadata
holds the config and the number of counted windows of every length.

Imports ray lazily (only when counting in parallel); pyarrow, numpy.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from bsm_ray.data.pmi import KmerCounter, count_fasta, kmer_string, pmi_rows, rank_kmers
from bsm_ray.errors import BsmRayError, InputError
from bsm_ray.fileio import atomic_path


@dataclass
class PmiConfig:
    """Config of `jobs/build_pmi.py`."""

    output: str = "data/pmi/npmi_6mer.parquet"
    """Parquet table to write (kmer, count, pmi, npmi, rank)."""
    sample: bool = True
    """Count the sample corpus's real mammalian sequence (hg18 + mm9 rows of a UCSC alignment
    shipped in Biopython's sdist). Set false to count only the inputs below."""
    fasta: list[str] = field(default_factory=list)
    """Genome FASTA files (plain or gzipped) to count."""
    datasets: list[str] = field(default_factory=list)
    """Prepared datasets (jobs/prepare_data.py) whose genome shards (train split) are counted."""
    k: int = 6
    """Length of the k-mers scored (all 1..k-mers are counted)."""
    min_count: int = 20
    """k-mers seen fewer times get no NPMI (the paper: 101, on three human chromosomes; the
    sample holds 160 thousand windows, so the default is lower)."""
    max_piece_len: int | None = None
    """None: every segmentation (the paper); 2: pieces of length 1-2 (the authors' table)."""
    total: float | None = None
    """Shared normaliser T for every length; None: the counted windows of each length."""
    parallel: Literal["auto", "ray", "local"] = "auto"
    """Count with one Ray task per file (ray), in this process (local), or by input size."""
    ray_min_bytes: int = 256 << 20
    """With parallel: auto, inputs at least this large are counted with Ray."""
    progress: bool = True

    def __post_init__(self) -> None:
        self.fasta = [os.path.expanduser(p) for p in self.fasta]
        self.datasets = [os.path.expanduser(p) for p in self.datasets]
        if not 2 <= self.k <= 8:
            raise ValueError(f"k must be 2..8, got {self.k}")


@dataclass
class PmiResult:
    output: Path
    num_kmers_scored: int
    windows: dict[int, int]
    top: list[tuple[str, float]]
    seconds: float
    parallel: bool

    def summary(self) -> str:
        lines = [
            f"NPMI table {self.output}: {self.num_kmers_scored} k-mers scored "
            f"({self.windows[max(self.windows)]:,} windows of length {max(self.windows)}, "
            f"{'Ray' if self.parallel else 'local'} counting, {self.seconds:.1f} s)",
            "  rank  kmer      npmi",
        ]
        lines += [f"  {i + 1:>4d}  {w}  {v:8.4f}" for i, (w, v) in enumerate(self.top)]
        return "\n".join(lines)


def _count_input(kind: str, path: str, max_k: int) -> KmerCounter:
    """Counts of one input file: a FASTA file or a genome shard (Parquet, `seq` column)."""
    if kind == "fasta":
        return count_fasta(path, max_k=max_k)
    counter = KmerCounter(max_k)
    for batch in pq.ParquetFile(path).iter_batches(columns=["seq"], batch_size=8192):
        counter.add_sequences(batch.column("seq").to_pylist())
    return counter


def _inputs(config: PmiConfig) -> list[tuple[str, str]]:
    from bsm_ray.ingest.shards import shard_paths

    items = [("fasta", p) for p in config.fasta]
    if config.sample:
        from bsm_ray.ingest.samples import sample_inputs

        items = [("fasta", p) for p in sample_inputs()["pmi_fasta"]] + items
    for ds in config.datasets:
        if not (Path(ds) / "manifest.json").is_file():
            raise InputError(ds, None, "not_a_dataset", "no manifest.json (run prepare_data)")
        items += [("shard", str(p)) for p in shard_paths(ds, "genome", "train")]
    for _kind, path in items:
        if not Path(path).is_file():
            raise InputError(path, None, "file_not_found")
    if not items:
        raise BsmRayError("no input to count: give fasta, datasets or sample: true")
    return items


def count_inputs(config: PmiConfig) -> tuple[KmerCounter, bool]:
    """Counts over every input; (counter, whether Ray was used)."""
    items = _inputs(config)
    size = sum(Path(p).stat().st_size for _k, p in items)
    use_ray = config.parallel == "ray" or (
        config.parallel == "auto" and size >= config.ray_min_bytes and len(items) > 1
    )
    total = KmerCounter(config.k)
    if not use_ray:
        for kind, path in tqdm(items, desc="count k-mers", unit="file",
                               disable=not config.progress, file=sys.stderr):  # fmt: skip
            total.merge(_count_input(kind, path, config.k))
        return total, False
    import ray

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=False)
    task = ray.remote(num_cpus=1)(lambda kind, path, k: _count_input(kind, path, k).counts)
    pending = [task.remote(kind, path, config.k) for kind, path in items]
    with tqdm(total=len(pending), desc="count k-mers (Ray)", unit="file",
              disable=not config.progress, file=sys.stderr) as bar:  # fmt: skip
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for counts in ray.get(done):
                total.merge(KmerCounter(config.k, counts=list(counts)))
            bar.update(len(done))
    return total, True


def build_pmi_table(config: PmiConfig) -> PmiResult:
    t0 = time.time()
    counter, used_ray = count_inputs(config)
    counts = counter.as_mapping()
    rows = pmi_rows(counts, config.k, config.min_count, config.max_piece_len, config.total)
    ranks = rank_kmers({r.kmer: r.npmi for r in rows})
    by_kmer = {r.kmer: r for r in rows}
    kmers = [kmer_string(code, config.k) for code in range(4**config.k)]
    table = pa.table(
        {
            "kmer": kmers,
            "count": pa.array(counter.counts[config.k], type=pa.int64()),
            "pmi": pa.array(
                [by_kmer[w].pmi if w in by_kmer else None for w in kmers], type=pa.float64()
            ),  # fmt: skip
            "npmi": pa.array(
                [by_kmer[w].npmi if w in by_kmer else None for w in kmers], type=pa.float64()
            ),  # fmt: skip
            "rank": pa.array([ranks.get(w) for w in kmers], type=pa.int32()),
        }
    )
    windows = {k: counter.windows(k) for k in range(1, config.k + 1)}
    meta = {"bsm_ray.pmi": json.dumps({"config": asdict(config), "windows": windows})}
    table = table.replace_schema_metadata(meta)
    out = Path(config.output)
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)
    top = sorted(ranks, key=ranks.get)[:10]
    return PmiResult(out, len(rows), windows, [(w, by_kmer[w].npmi) for w in top],
                     time.time() - t0, used_ray)  # fmt: skip


def load_rank_table(path: str | os.PathLike, vocab_size: int = 4101) -> np.ndarray:
    """Token id -> NPMI rank from a table written by `build_pmi_table` (for masking).

    Unranked k-mers, [UNK] and the special tokens get a rank worse than every ranked k-mer.
    """
    from bsm_ray.data.pmi import rank_table

    table = pq.read_table(path, columns=["kmer", "rank"])
    ranks = {w: r for w, r in zip(table["kmer"].to_pylist(), table["rank"].to_pylist(),
                                  strict=True) if r is not None}  # fmt: skip
    k = len(table["kmer"][0].as_py())
    return rank_table(ranks, k=k, vocab_size=vocab_size)
