"""Decontamination: remove from pretraining shards every sequence that appears in an
evaluation set (REFERENCE.md section 6; BSM removed 57 Central Dogma test items this way).

A pretraining row's sequences are its `<sep>`-separated segments (document kinds) or its piece
(`genome`). They are compared with every sequence of each evaluation set, after upper-casing
and reading U as T, by two rules:

- **exact**: the segment equals an evaluation sequence or contains one whole (candidates are
  found through the evaluation sequences' first k-mer, then checked as substrings);
- **overlap**: at least `min_overlap` of the segment's k-mers (k = `k`) occur in the set's
  sequences, which catches a pretraining segment that lies inside an evaluation sequence (a
  CDS inside a gene with flanks) or differs from one by a few letters.

A row is removed if any of its segments matches any set. The output is a new dataset (shards +
manifest, built in a staging directory and published whole); its manifest and
`decontamination.json` report, per evaluation set, rule, kind and split, how many rows were
removed, with examples. Nothing is removed silently, and the input dataset is never modified.

Evaluation sets are files: FASTA (`.fa`, `.fasta`, `.fna`, `.faa`, ...), CSV/TSV with a header,
or Parquet; from tables every column named in `columns` that exists is read. A file with no
sequence column is an error naming the file and the columns it has.

Each input shard is one unit of work, run in this process or as a Ray task (`parallel`), that
writes its own output shards (named after it); the driver adds up the reports in shard order,
so the output and its `dataset_sha256` are the same either way.

k-mers are hashed with a vectorized rolling hash (numpy, uint64 arithmetic mod 2**64) and
looked up in a sorted array; no per-letter Python loop.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow.parquet as pq

from bsm_ray.config import to_dict
from bsm_ray.errors import BsmRayError, InputError
from bsm_ray.fileio import atomic_write_text
from bsm_ray.ingest.shards import (
    DOC_KINDS,
    GENOME_KIND,
    SPLITS,
    ShardInfo,
    ShardList,
    ShardWriter,
    build_manifest,
    read_manifest,
    shard_paths,
    write_manifest,
)

FASTA_SUFFIXES = (".fa", ".fasta", ".fna", ".faa", ".ffn", ".nu", ".pro", ".seq")
_BASE = np.uint64(0x100000001B3)  # FNV prime as the rolling-hash base


@dataclass
class DecontaminateConfig:
    """Remove evaluation sequences from a prepared dataset (see the module docstring)."""

    dataset: str = "data/sample"
    output_dir: str = "data/sample-decontaminated"
    eval_sets: dict[str, list[str]] = field(default_factory=dict)
    """Set name -> files (FASTA, CSV/TSV, Parquet)."""
    columns: list[str] = field(
        default_factory=lambda: ["sequence", "seq", "dna", "protein", "rna", "wild_type"]
    )
    """Table columns read as sequences (those that exist)."""
    k: int = 20
    """k-mer length of the overlap rule (also the shortest evaluation sequence considered)."""
    min_overlap: float = 0.5
    """Fraction of a segment's k-mers found in a set that makes it contaminated."""
    rows_per_shard: int = 50_000
    overwrite: bool = False
    parallel: Literal["auto", "ray", "local"] = "auto"
    """One unit per input shard, run here (local), as Ray tasks (ray), or as Ray tasks when
    RAY_ADDRESS names a cluster (auto); the output is the same either way."""
    num_workers: int | None = None
    """With Ray: the most shards decontaminated at once (None: the cluster's CPUs)."""
    progress: bool = True

    def __post_init__(self) -> None:
        if self.k < 4:
            raise ValueError(f"k must be >= 4, got {self.k}")
        if not 0.0 < self.min_overlap <= 1.0:
            raise ValueError(f"min_overlap must be in (0, 1], got {self.min_overlap}")


def normalize(seq: str) -> str:
    return seq.upper().replace("U", "T")


def kmer_hashes(seq: str, k: int) -> np.ndarray:
    """uint64 hashes of every k-mer of `seq` (empty when shorter than k)."""
    codes = np.frombuffer(seq.encode("ascii", errors="replace"), dtype=np.uint8)
    n = codes.size - k + 1
    if n <= 0:
        return np.zeros(0, dtype=np.uint64)
    codes = codes.astype(np.uint64)
    h = np.zeros(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(k):
            h = h * _BASE + codes[j : j + n]
    return h


def read_eval_sequences(path: str, columns: list[str]) -> list[str]:
    """The sequences of one evaluation file (normalized)."""
    from bsm_ray.ingest.records import read_fasta_records

    p = Path(path)
    if not p.is_file():
        raise InputError(path, None, "missing_file", "evaluation set file not found")
    name = p.name.lower().removesuffix(".gz")
    if name.endswith(FASTA_SUFFIXES):
        return [normalize(seq) for _id, _desc, _i, seq in read_fasta_records(p)]
    if name.endswith(".parquet"):
        table = pq.read_table(p)
    elif name.endswith((".csv", ".tsv", ".txt")):
        from pyarrow import csv

        delimiter = "\t" if name.endswith((".tsv", ".txt")) else ","
        table = csv.read_csv(p, parse_options=csv.ParseOptions(delimiter=delimiter))
    else:
        formats = f"FASTA ({', '.join(FASTA_SUFFIXES)}), .csv/.tsv or .parquet"
        raise InputError(path, None, "unknown_format", f"use {formats}")
    found = [c for c in columns if c in table.column_names]
    if not found:
        raise InputError(path, None, "no_sequence_column",
                         f"columns {table.column_names}; looked for {columns}")  # fmt: skip
    return [normalize(str(v)) for c in found for v in table.column(c).to_pylist() if v]


class EvalIndex:
    """The k-mers and first k-mers of one evaluation set, for both rules."""

    def __init__(self, name: str, sequences: list[str], k: int) -> None:
        self.name, self.k = name, k
        kept = sorted({s for s in sequences if len(s) >= k})
        self.num_sequences, self.too_short = len(kept), len(set(sequences)) - len(kept)
        hashes = [kmer_hashes(s, k) for s in kept]
        self.kmers = np.unique(np.concatenate(hashes)) if hashes else np.zeros(0, np.uint64)
        self.by_first: dict[int, list[str]] = defaultdict(list)
        for s, h in zip(kept, hashes, strict=True):
            self.by_first[int(h[0])].append(s)
        self._firsts = np.array(sorted(self.by_first), dtype=np.uint64)

    def _member(self, hashes: np.ndarray, table: np.ndarray) -> np.ndarray:
        if table.size == 0:
            return np.zeros(hashes.size, dtype=bool)
        at = np.minimum(np.searchsorted(table, hashes), table.size - 1)
        return table[at] == hashes

    def match(self, segment: str, hashes: np.ndarray, min_overlap: float) -> str | None:
        """'exact', 'overlap' or None for one normalized segment and its k-mer hashes."""
        if hashes.size == 0:
            return None
        hits = self._member(hashes, self._firsts)
        for h in np.unique(hashes[hits]):
            if any(s in segment for s in self.by_first[int(h)]):
                return "exact"
        if self._member(hashes, self.kmers).mean() >= min_overlap:
            return "overlap"
        return None


def row_segments(kind: str, row: dict) -> list[str]:
    """A row's sequences, normalized: the tagged segments of a document, or a genome piece."""
    if kind == GENOME_KIND:
        return [normalize(row["seq"])]
    out = []
    for part in row["text"].split("<sep>"):
        if part.startswith("<"):
            part = part[part.index(">") + 1 :]
        out.append(normalize(part))
    return out


def decontaminate(cfg: DecontaminateConfig) -> dict:
    """Write the decontaminated dataset; return the report (also in the new manifest)."""
    from bsm_ray.ingest.prepare import TaskRunner, publish_dataset

    if not cfg.eval_sets:
        raise BsmRayError("decontaminate: no eval_sets given")
    src = Path(cfg.dataset)
    manifest = read_manifest(src)
    final = Path(cfg.output_dir)
    if final.resolve() == src.resolve():
        raise BsmRayError(f"{final}: the output must differ from the input dataset")
    if final.exists() and not cfg.overwrite:
        raise BsmRayError(f"{final}: exists (set overwrite: true to replace it)")
    indexes = [EvalIndex(name, [s for f in files for s in read_eval_sequences(f, cfg.columns)],
                         cfg.k) for name, files in cfg.eval_sets.items()]  # fmt: skip
    t0 = time.time()
    removed: dict[str, Counter] = {ix.name: Counter() for ix in indexes}
    examples: dict[str, list[str]] = {ix.name: [] for ix in indexes}
    scanned: Counter = Counter()
    staging = final.with_name(f".{final.name}.staging-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    # One unit per input shard (fixed by the input): each writes its own output shards named
    # after it, so the output does not depend on where the units ran.
    calls = [(kind, split, str(path), str(staging), indexes, cfg)
             for kind in (*DOC_KINDS, GENOME_KIND) for split in SPLITS
             for path in shard_paths(src, kind, split)]  # fmt: skip
    try:
        results = TaskRunner(cfg).map(decontaminate_shard, calls, "decontaminate")
        shard_lists: dict[tuple[str, str], list] = {}
        for (kind, split, *_rest), r in zip(calls, results, strict=True):
            scanned[f"{kind}/{split}"] += r["scanned"]
            shard_lists.setdefault((kind, split), []).extend(ShardInfo(**i) for i in r["shards"])
            for name, counts in r["removed"].items():
                removed[name].update(counts)
                examples[name].extend(r["examples"][name][: 5 - len(examples[name])])
        writers = [ShardList(kind, split, infos) for (kind, split), infos in shard_lists.items()]
        report = {
            "source_dataset": str(src),
            "source_dataset_sha256": manifest.get("dataset_sha256", ""),
            "k": cfg.k,
            "min_overlap": cfg.min_overlap,
            "rows_scanned": dict(scanned),
            "eval_sets": {
                ix.name: {
                    "sequences": ix.num_sequences,
                    "shorter_than_k_ignored": ix.too_short,
                    "rows_removed": sum(removed[ix.name].values()),
                    "removed_by_kind_split_rule": dict(removed[ix.name]),
                    "examples": examples[ix.name],
                }
                for ix in indexes
            },
            "seconds": round(time.time() - t0, 3),
        }
        ledger = dict(manifest.get("ledger", {}))
        ledger["decontamination"] = report
        new = build_manifest(
            config={**manifest.get("config", {}), "decontaminate": to_dict(cfg)},
            tokenizers=manifest.get("tokenizers", {}),
            inputs=manifest.get("inputs", []),
            writers=[w for w in writers if w.shards],
            ledger=ledger,
            stats=manifest.get("stats", {}),
        )
        write_manifest(staging, new)
        atomic_write_text(staging / "decontamination.json", json.dumps(report, indent=2))
        publish_dataset(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return report


def decontaminate_shard(kind, split, path, staging, indexes, cfg) -> dict:
    """One input shard's rows without the contaminated ones, written as shards named after it
    into `staging`; returns the shard list, rows scanned, removals and examples per set."""
    writer = ShardWriter(Path(staging), kind, split, rows_per_shard=cfg.rows_per_shard,
                         stem=Path(path).stem)  # fmt: skip
    removed: dict[str, Counter] = {ix.name: Counter() for ix in indexes}
    examples: dict[str, list[str]] = {ix.name: [] for ix in indexes}
    rows = pq.read_table(path).to_pylist()
    for row in rows:
        hit = _first_match(kind, row, indexes, cfg)
        if hit is None:
            writer.add(row)
            continue
        name, rule = hit
        removed[name][f"{kind}/{split}/{rule}"] += 1
        if len(examples[name]) < 5:
            key = row.get("doc_id") or row.get("piece_id")
            examples[name].append(f"{kind}/{split} {key} ({rule})")
    writer.close()
    return {"shards": [i.__dict__ for i in writer.shards], "scanned": len(rows),
            "removed": {n: dict(c) for n, c in removed.items()}, "examples": examples}  # fmt: skip


def _first_match(kind, row, indexes, cfg) -> tuple[str, str] | None:
    for segment in row_segments(kind, row):
        hashes = kmer_hashes(segment, cfg.k)
        for ix in indexes:
            rule = ix.match(segment, hashes, cfg.min_overlap)
            if rule is not None:
                return ix.name, rule
    return None


def format_report(report: dict) -> str:
    lines = [f"decontaminated {report['source_dataset']} (k={report['k']}, "
             f"min_overlap={report['min_overlap']}):"]  # fmt: skip
    for name, r in report["eval_sets"].items():
        lines.append(f"  {name}: {r['sequences']} sequences, {r['rows_removed']} rows removed "
                     f"{r['removed_by_kind_split_rule'] or ''}")  # fmt: skip
        lines += [f"    e.g. {e}" for e in r["examples"]]
    return "\n".join(lines)
