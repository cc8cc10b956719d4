"""Parquet shard schemas, atomic shard writing, and the dataset manifest.

Layout of a prepared dataset (`output_dir`):

    manifest.json                       counts, token counts, hashes, skips (see `Manifest`)
    <kind>/<split>/part-<unit>-<n>.parquet   kind in DOC_KINDS or "genome"; split in train/val;
                                        <unit>: the unit of preparation work (ingest/units.py)

In an object store (`output_dir` an `s3://`, `gs://`, ... URI, see `bsm_ray.outputs`) the
shards sit one level down, in a version prefix named by the manifest's `version` field
(`<output_dir>/<version>/<kind>/<split>/...`): a prefix cannot be renamed there, so a new
version is written beside the old one and published by writing `manifest.json` last (one
object: readers see the old dataset or the new one). Shard paths in the manifest are relative
to the version prefix, so `dataset_sha256` does not depend on where the dataset lives.

Schemas (documented here and in the README; changing a field is a format change):

DOC_SCHEMA, one row per causal-LM document (kinds single_dna, single_rna, single_protein,
refseq_pair, gene_pair, web):
    doc_id         string   unique within the kind
    kind           string   the source kind
    modalities     list<string>  modality of each segment, in order (dna / rna / protein)
    text           large_string  the BSM text form: "<dna>ACGT<sep><protein>MK" (tokenizers/char.py)
    num_tokens     int64    BSM token ids in `text` (tags and <sep> included, no <eos>)
    source_file    string   input file the row came from
    source_record  string   record / document id inside that file

GENOME_SCHEMA, one row per MLM genome piece (GeneMask recipe, kind "genome"):
    piece_id       string   "<chrom>:<offset>"
    chrom          string   FASTA record id
    offset         int64    0-based start in the chromosome after uppercase N removal
    seq            string   511 or 6..510 nt, ACGT only
    num_kmers      int32    len(seq) - 5 (6-mers)
    source_file    string

Each shard is written to a temporary file and renamed into place, so a crash never leaves a
half-written shard under a final name. The manifest lists every shard with its row count, token
count and sha256; `dataset_sha256` hashes those entries, so one string identifies the data.

Imports pyarrow; no ray, torch or mlflow.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from bsm_ray.fileio import sha256_file
from bsm_ray.outputs import OutputDir, is_uri

DOC_KINDS = ("single_dna", "single_rna", "single_protein", "refseq_pair", "gene_pair", "web")
GENOME_KIND = "genome"
SPLITS = ("train", "val")
MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
ROW_GROUP_ROWS = 2048
ROW_GROUP_BYTES = 32 << 20
"""A row group ends at this many rows or bytes of text: row groups are the units the training
streams are cut into (bsm_ray.data.stream_plan), so they stay small."""

DOC_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("kind", pa.string()),
        ("modalities", pa.list_(pa.string())),
        ("text", pa.large_string()),
        ("num_tokens", pa.int64()),
        ("source_file", pa.string()),
        ("source_record", pa.string()),
    ]
)

GENOME_SCHEMA = pa.schema(
    [
        ("piece_id", pa.string()),
        ("chrom", pa.string()),
        ("offset", pa.int64()),
        ("seq", pa.string()),
        ("num_kmers", pa.int32()),
        ("source_file", pa.string()),
    ]
)


@dataclass
class ShardList:
    """The shards of one (kind, split), as `build_manifest` takes them (like a ShardWriter's)."""

    kind: str
    split: str
    shards: list


def schema_for(kind: str) -> pa.Schema:
    return GENOME_SCHEMA if kind == GENOME_KIND else DOC_SCHEMA


@dataclass
class ShardInfo:
    path: str  # relative to the dataset root
    num_rows: int
    num_tokens: int
    num_bytes: int
    sha256: str


class ShardWriter:
    """Buffers rows of one (kind, split) and writes them as numbered Parquet shards.

    A shard is flushed when `rows_per_shard` rows or `bytes_per_shard` bytes of text are
    buffered, whichever comes first (long chromosome chunks would otherwise make huge shards).
    """

    def __init__(
        self,
        root: str | Path | OutputDir,
        kind: str,
        split: str,
        rows_per_shard: int = 50_000,
        bytes_per_shard: int = 256 << 20,
        compression: str = "zstd",
        stem: str = "part",
    ) -> None:
        self.out = OutputDir.of(root)
        self.kind = kind
        self.split = split
        self.schema = schema_for(kind)
        self.rows_per_shard = rows_per_shard
        self.bytes_per_shard = bytes_per_shard
        self.compression = compression
        self.stem = stem  # shard files: <stem>-00000.parquet, ...
        self._columns: dict[str, list] = {name: [] for name in self.schema.names}
        self._buffered_bytes = 0
        self._buffered_tokens = 0
        self.shards: list[ShardInfo] = []
        self._token_field = "num_kmers" if kind == GENOME_KIND else "num_tokens"
        self._text_field = "seq" if kind == GENOME_KIND else "text"

    @property
    def num_buffered(self) -> int:
        return len(self._columns[self.schema.names[0]])

    def add(self, row: dict[str, Any]) -> None:
        for name, values in self._columns.items():
            values.append(row[name])
        self._buffered_bytes += len(row[self._text_field])
        self._buffered_tokens += int(row[self._token_field])
        if self.num_buffered >= self.rows_per_shard or self._buffered_bytes >= self.bytes_per_shard:
            self.flush()

    def flush(self) -> None:
        if self.num_buffered == 0:
            return
        table = pa.table(self._columns, schema=self.schema)
        rel = f"{self.kind}/{self.split}/{self.stem}-{len(self.shards):05d}.parquet"
        bounds = row_group_bounds(self._columns[self._text_field])

        def write(tmp: Path) -> None:
            with pq.ParquetWriter(tmp, self.schema, compression=self.compression) as out:
                for start, stop in bounds:
                    out.write_table(table.slice(start, stop - start))

        size, digest = self.out.write_file(rel, write)
        self.shards.append(
            ShardInfo(
                path=rel,
                num_rows=table.num_rows,
                num_tokens=self._buffered_tokens,
                num_bytes=size,
                sha256=digest,
            )
        )
        self._columns = {name: [] for name in self.schema.names}
        self._buffered_bytes = 0
        self._buffered_tokens = 0

    def close(self) -> list[ShardInfo]:
        self.flush()
        return self.shards


def row_group_bounds(texts: list[str]) -> list[tuple[int, int]]:
    """[start, stop) row ranges of at most ROW_GROUP_ROWS rows and, past its first row, at most
    ROW_GROUP_BYTES of text each."""
    bounds, start, size = [], 0, 0
    for i, text in enumerate(texts):
        if i > start and (i - start >= ROW_GROUP_ROWS or size + len(text) > ROW_GROUP_BYTES):
            bounds.append((start, i))
            start, size = i, 0
        size += len(text)
    bounds.append((start, len(texts)))
    return bounds


@dataclass
class Manifest:
    """What a prepared dataset holds; written last, atomically, as `manifest.json`."""

    format_version: int
    created_unix: float
    bsm_ray_version: str
    config: dict[str, Any]
    tokenizers: dict[str, str]  # name -> vocabulary fingerprint
    inputs: list[dict[str, Any]]  # path, kind, bytes, sha256, synthetic
    shards: dict[str, dict[str, list[dict[str, Any]]]]  # kind -> split -> [ShardInfo]
    totals: dict[str, dict[str, dict[str, int]]]  # kind -> split -> {rows, tokens}
    ledger: dict[str, Any]  # skipped / noted counts per kind and reason, with examples
    stats: dict[str, Any] = field(default_factory=dict)  # builder statistics (bp, pieces, ...)
    dataset_sha256: str = ""
    version: str | None = None  # object stores: the prefix holding the shards (module docstring)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, sort_keys=False)


def build_manifest(
    config: dict[str, Any],
    tokenizers: dict[str, str],
    inputs: list[dict[str, Any]],
    writers: list[ShardWriter],
    ledger: dict[str, Any],
    stats: dict[str, Any],
) -> Manifest:
    from bsm_ray import __version__

    shards: dict[str, dict[str, list[dict[str, Any]]]] = {}
    totals: dict[str, dict[str, dict[str, int]]] = {}
    for w in writers:
        infos = [s.__dict__ for s in w.shards]
        shards.setdefault(w.kind, {})[w.split] = infos
        totals.setdefault(w.kind, {})[w.split] = {
            "rows": sum(s.num_rows for s in w.shards),
            "tokens": sum(s.num_tokens for s in w.shards),
        }
    digest = hashlib.sha256()
    for kind in sorted(shards):
        for split in sorted(shards[kind]):
            for s in shards[kind][split]:
                digest.update(f"{s['path']}\t{s['sha256']}\n".encode())
    return Manifest(
        format_version=FORMAT_VERSION,
        created_unix=time.time(),
        bsm_ray_version=__version__,
        config=config,
        tokenizers=tokenizers,
        inputs=inputs,
        shards=shards,
        totals=totals,
        ledger=ledger,
        stats=stats,
        dataset_sha256=digest.hexdigest(),
    )


def write_manifest(root: str | Path | OutputDir, manifest: Manifest) -> str:
    out = OutputDir.of(root)
    out.write_text(MANIFEST_NAME, manifest.to_json())
    return out.uri(MANIFEST_NAME)


def read_manifest(root: str | Path) -> dict[str, Any]:
    return json.loads(OutputDir(root).read_text(MANIFEST_NAME))


def shards_root(root: str | Path, manifest: dict[str, Any]) -> str:
    """Where the manifest's shard paths start: the dataset directory, or its version prefix."""
    version = manifest.get("version")
    return OutputDir(root).uri(version) if version else str(root)


def verify_dataset(root: str | Path) -> list[str]:
    """Re-hash every shard listed in the manifest; return the problems found (empty if none)."""
    manifest = read_manifest(root)
    base = OutputDir(shards_root(root, manifest))
    problems = []
    for splits in manifest["shards"].values():
        for infos in splits.values():
            for info in infos:
                where = base.uri(info["path"])
                if not base.exists(info["path"]):
                    problems.append(f"{where}: missing")
                    continue
                if base.remote:
                    data = base.read_bytes(info["path"])
                    source, digest = pa.BufferReader(data), hashlib.sha256(data).hexdigest()
                else:  # streamed: a local shard may be large
                    source, digest = where, sha256_file(where)
                if digest != info["sha256"]:
                    problems.append(f"{where}: sha256 differs from the manifest")
                elif pq.ParquetFile(source).metadata.num_rows != info["num_rows"]:
                    problems.append(f"{where}: row count differs from the manifest")
    return problems


def shard_paths(root: str | Path, kind: str, split: str) -> list[Path]:
    """The shard files of one kind and split, in manifest order (a local dataset: training
    reads local paths; see the README on datasets in object stores)."""
    if is_uri(root):
        raise ValueError(f"{root}: training reads a local dataset directory (copy or mount it)")
    root = Path(root)
    manifest = read_manifest(root)
    return [root / s["path"] for s in manifest["shards"].get(kind, {}).get(split, [])]
