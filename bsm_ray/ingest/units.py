"""Units of preparation work: planned from the input, run anywhere, recorded, deduplicated.

A unit is fixed by the input and the config, never by the number of workers:
- FASTA (single-modal) and GenBank files are cut into byte ranges of about `unit_bytes`,
  each starting at a record (a '>' header line, a LOCUS line): a record is never split;
- genome FASTA files are cut at the first line start after every `unit_bytes`, inside a
  chromosome too. A chromosome's piece boundaries follow from its seeded stream of piece
  lengths, which is cheap to draw: a unit draws it from the chromosome's start, finds the
  first piece that starts in its range, cuts every piece that starts there, and reads on past
  its end to finish the last one. What it needs from the units before it (the chromosome's
  N-removed letters before its start, and whether the chromosome was rejected there) comes
  from a scan of those units (`scan_genome_part`, about ten times faster than cutting),
  resolved in input order by `resolve_genome_parts`;
- JSONL web documents into line-aligned byte ranges; Parquet web documents by row group;
- compressed files, files with a byte-order mark or CR line ends, and the gene map with its
  FASTA files are one unit each.

`plan_input` reads a file once: its sha256 (for the manifest) and the cut points, with the
line and record numbers before each cut, so a unit names the same line and record numbers,
and builds the same ids, as a read of the whole file.

`run_unit` runs one unit's builder over its part with a ledger of its own, writes its shards
(`<kind>/<split>/part-<unit>-<n>.parquet`) straight into the dataset's staging directory, and
records the outcome as `_units/u<unit>.p<phase>.json` (shard list, ledger, statistics, rows,
the error that stopped it): finished units are not run again after a crash. Phase 1 runs
every unit with nothing seen before it and also writes the keys it checked for duplicates
(record ids per kind, chromosome ids per genome file, genome piece digests) to
`_units/u<unit>.keys.parquet`. `earlier_keys` finds, by hash partition of the keys, the keys of
each unit that an earlier unit already had; only units with such keys run again (phase 2),
with those keys marked seen, which gives exactly what one sequential run gives: the first
occurrence in input order wins. Everything per record (splits, pair composition, genome piece
lengths) is already seeded per item, so a unit's rows do not depend on where it runs.

Imports pyarrow, Biopython (through the builders); no ray, torch or mlflow.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bsm_ray.errors import InputError
from bsm_ray.fileio import check_readable_file, sniff_format
from bsm_ray.ingest.builders import (
    BuildContext,
    build_gene_pairs,
    build_genome_pieces,
    build_refseq_pairs,
    build_single,
    build_web,
)
from bsm_ray.ingest.records import InputPart, Ledger, iter_fasta
from bsm_ray.ingest.shards import ShardInfo, ShardWriter
from bsm_ray.outputs import OutputDir, join
from bsm_ray.tokenizers.alphabets import first_invalid

UNITS_DIR = "_units"
KEY_BUCKETS = 16
"""Hash partitions of the duplicate keys (fixed: the partition of a key never depends on the
number of workers)."""
FAULT_ENV = "BSM_RAY_PREPARE_FAULT_UNIT"
"""Tests: a unit whose index is this value fails (to check resumption after a crash)."""
_BLOCK = 8 << 20
# The line start that opens a record, per format (JSONL: every line).
_MARKERS = {"fasta": b">", "genbank": b"LOCUS", "jsonl": b"", "genome": b""}
# What counts as a record start when a unit may begin inside a record (genome: any line).
_RECORD_STARTS = {"genome": b"\n>"}


@dataclass(frozen=True)
class Source:
    """One input of the preparation, in input order: a builder over one or more files."""

    kind: str  # shard kind (single_dna, refseq_pair, ..., genome)
    builder: str  # single, refseq, gene_pairs, web, genome
    index: int  # position in its config list (config.single[index], ...)
    paths: tuple[str, ...]  # the input files; paths[0] names the input in messages
    layout: str | None  # fasta, genbank, jsonl, parquet: how it may be cut; None: whole


@dataclass(frozen=True)
class Unit:
    index: int
    source: int  # index into the plan's sources
    part: InputPart | None  # None: the whole input


def _layout_of_web(path: str) -> str:
    return "parquet" if path.endswith(".parquet") or sniff_format(path) == "parquet" else "jsonl"


def plan_input(path: str, layout: str | None, unit_bytes: int) -> dict[str, Any]:
    """sha256, size and the parts of one input file (one read of the file).

    Returns {"sha256", "bytes", "parts": [InputPart as dict] or None (the whole file)}.
    """
    check_readable_file(path)
    size = os.path.getsize(path)
    digest = hashlib.sha256()
    fmt = sniff_format(path) if size else None
    if layout == "web":
        layout = _layout_of_web(path)
    splittable = layout in _MARKERS and fmt is None and size > unit_bytes
    if layout == "parquet" and fmt == "parquet":
        parts = _parquet_parts(path)
        with open(path, "rb") as fh:
            while block := fh.read(_BLOCK):
                digest.update(block)
        return {"sha256": digest.hexdigest(), "bytes": size, "parts": parts}
    cuts: list[tuple[int, int, int]] = [(0, 1, 0)]  # (start, first_line, first_record)
    pattern = b"\n" + _MARKERS.get(layout or "", b"")
    records_at = _RECORD_STARTS.get(layout or "", pattern)
    longest = max(len(pattern), len(records_at))
    tail = b"\n" if splittable and longest > 1 else b""  # the file start is a line start
    lines = records = 0  # newlines and record starts in the blocks before this one
    target = unit_bytes
    has_cr = False
    block_start = 0
    with open(path, "rb") as fh:
        while block := fh.read(_BLOCK):
            digest.update(block)
            if not splittable:
                continue
            if block_start == 0 and block.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")):
                splittable = False  # a byte-order mark: read whole, as the text layer decides
                continue
            has_cr = has_cr or b"\r" in block
            data = tail + block
            data_start = block_start - len(tail)
            search = 0
            while True:
                at = data.find(pattern, max(target - data_start - 1, search))
                if at < 0:
                    break
                cut = data_start + at + 1
                if cut >= size:
                    break
                first_line = lines + block.count(b"\n", 0, max(0, cut - block_start)) + 1
                cuts.append((cut, first_line, records + data.count(records_at, 0, at)))
                target, search = cut + unit_bytes, at + 1
            records += data.count(records_at)  # no match fits in the tail alone
            lines += block.count(b"\n")
            tail = data[-(longest - 1) :] if longest > 1 else b""
            block_start += len(block)
    if not splittable or has_cr or len(cuts) == 1:
        return {"sha256": digest.hexdigest(), "bytes": size, "parts": None}
    stops = [c[0] for c in cuts[1:]] + [size]
    mid = [False] * len(cuts)
    if layout == "genome":  # a cut at a sequence line: the part starts inside a record
        with open(path, "rb") as fh:
            for i, (start, _line, _rec) in enumerate(cuts[1:], 1):
                fh.seek(start)
                mid[i] = fh.read(1) != b">"
    parts = []
    for i, ((start, line, rec), stop) in enumerate(zip(cuts, stops, strict=True)):
        after = i + 1 < len(cuts) and mid[i + 1]
        parts.append(asdict(InputPart(start, stop, line, rec - 1 if mid[i] else rec,
                                      mid_record=mid[i], record_continues=after)))  # fmt: skip
    return {"sha256": digest.hexdigest(), "bytes": size, "parts": parts}


def _parquet_parts(path: str) -> list[dict] | None:
    try:
        meta = pq.ParquetFile(path).metadata
    except (pa.ArrowException, OSError):
        return None  # the builder reports the malformed file
    if meta.num_row_groups < 2:
        return None
    parts, rows = [], 0
    for g in range(meta.num_row_groups):
        parts.append(asdict(InputPart(first_record=rows, row_groups=(g,))))
        rows += meta.row_group(g).num_rows
    return parts


def part_from_dict(d: dict | None) -> InputPart | None:
    if d is None:
        return None
    groups = d.get("row_groups")
    return InputPart(**{**d, "row_groups": tuple(groups) if groups is not None else None})


# --- genome parts inside a chromosome ------------------------------------------------------------


def scan_genome_part(path: str, part: InputPart) -> dict[str, Any]:
    """What the parts after `part` need to know about it, from one fast read of its bytes.

    Returns {"lead": the N-removed letters of the record `part` starts inside (mid_record
    parts) and whether a letter outside the DNA alphabet ends it, "records": the ids of the
    records that start in `part`, "last": the same counts for the last of them, "broken":
    the file could not be read to the part's end (the unit itself reports why)}."""
    lead: dict | None = {"letters": 0, "bad": False} if part.mid_record else None
    segment, records, broken = lead, [], False
    try:
        for chunk in iter_fasta(path, part=replace(part, record_id="?")):
            if chunk.first:
                records.append(chunk.record_id)
                segment = {"letters": 0, "bad": False}
            if segment is None or segment["bad"]:
                continue
            raw = chunk.seq.upper()
            bad = first_invalid(raw, "dna")
            if bad >= 0:
                raw, segment["bad"] = raw[:bad], True
            segment["letters"] += len(raw) - raw.count(b"N")
    except InputError:
        broken = True
    return {"lead": lead, "records": records, "last": segment if records else None,
            "broken": broken}  # fmt: skip


def resolve_genome_parts(parts: list[InputPart], scans: list[dict]) -> list[InputPart]:
    """Fill in each mid_record part's record id, its letters before the part, and whether the
    record was rejected before it (a duplicate id, a letter outside the DNA alphabet), from
    the scans of the parts before it, in file order (see `scan_genome_part`)."""
    out: list[InputPart] = []
    seen: set[str] = set()
    chrom, letters, rejected, broken = None, 0, False, False
    for part, scan in zip(parts, scans, strict=True):
        if part.mid_record:
            part = replace(part, record_id=chrom, letters_before=letters,
                           skip_record=rejected or broken)  # fmt: skip
            if scan["lead"] is not None:
                letters += scan["lead"]["letters"]
                rejected = rejected or scan["lead"]["bad"]
        for rid in scan["records"]:
            chrom, letters, rejected = rid, 0, rid in seen
            seen.add(rid)
        if scan["last"] is not None:
            letters = scan["last"]["letters"]
            rejected = rejected or scan["last"]["bad"]
        broken = broken or scan["broken"]
        out.append(part)
    return out


# --- running a unit ------------------------------------------------------------------------------


def _rows(config, source: Source, part: InputPart | None, ctx: BuildContext):
    if source.builder == "single":
        return build_single(config.single[source.index], ctx, config.max_doc_letters, part=part)
    if source.builder == "refseq":
        return build_refseq_pairs(config.refseq, source.paths[0], ctx, part=part)
    if source.builder == "gene_pairs":
        return build_gene_pairs(config.gene_pairs, ctx)
    if source.builder == "web":
        return build_web(config.web, source.paths[0], ctx, part=part)
    return build_genome_pieces(config.genome, source.paths[0], ctx, part=part)


def unit_result_rel(index: int, phase: int) -> str:
    """A unit's recorded result, relative to the staging directory."""
    return f"{UNITS_DIR}/u{index:05d}.p{phase}.json"


def unit_keys_rel(index: int) -> str:
    """A unit's duplicate keys (phase 1), relative to the staging directory."""
    return f"{UNITS_DIR}/u{index:05d}.keys.parquet"


def unit_keys_path(staging: str | Path, index: int) -> str:
    return join(str(staging), unit_keys_rel(index))


def shard_stem(index: int) -> str:
    return f"part-{index:05d}"


def preseen_digest(preseen: dict[str, list[bytes]] | None) -> str:
    """A short hash of the keys a phase-2 unit starts with (its result file must match it)."""
    digest = hashlib.sha256()
    for scope in sorted(preseen or {}):
        for key in sorted(preseen[scope]):
            digest.update(scope.encode() + b"\x1f" + key + b"\x1e")
    return digest.hexdigest()[:16]


def _as_key(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


def run_unit(
    config,
    source: Source,
    unit: Unit,
    staging: str,
    run_token: str,
    preseen: dict[str, list[bytes]] | None = None,
) -> dict[str, Any]:
    """Run one unit and record it (see the module docstring); returns the recorded result.

    `preseen` (phase 2): keys marked seen before the unit starts, {scope: [key bytes]}; ids
    are stored as UTF-8 bytes, piece digests as they are. `config` is the expanded
    PrepareConfig (sample inputs added). An `InputError` that stops the unit (the first
    invalid record in error mode) is recorded, not raised: the driver raises the first one in
    input order.
    """
    phase = 2 if preseen else 1
    if os.environ.get(FAULT_ENV) == str(unit.index):
        raise RuntimeError(f"unit {unit.index}: injected failure ({FAULT_ENV})")
    root = OutputDir(staging)  # a local directory or an object-store prefix
    ctx = BuildContext(
        ledger=Ledger(on_invalid=config.on_invalid),
        seed=config.seed,
        val_fraction=config.val_fraction,
        progress=False,
    )
    for scope, keys in (preseen or {}).items():
        if scope == "genome_pieces":
            ctx.seen[scope] = set(keys)
        else:
            ctx.seen[scope] = {k.decode("utf-8") for k in keys}
    stem = shard_stem(unit.index)
    for stale in root.files(source.kind):  # a rerun replaces the unit's shards
        if stale.rsplit("/", 1)[-1].startswith(f"{stem}-"):
            root.remove(stale)
    writers: dict[tuple[str, str], ShardWriter] = {}
    num_rows, aborted, error = 0, False, None
    try:
        try:
            for split, row in _rows(config, source, unit.part, ctx):
                writer = writers.get((source.kind, split))
                if writer is None:
                    writer = writers[(source.kind, split)] = ShardWriter(
                        root, source.kind, split, rows_per_shard=config.rows_per_shard, stem=stem
                    )
                writer.add(row)
                num_rows += 1
        except InputError as exc:  # the file broke off: rows so far are kept (skip mode)
            ctx.ledger.invalid(source.kind, exc)
            aborted = True
    except InputError as exc:
        error = [exc.path, exc.record, exc.reason, exc.detail]
    for writer in writers.values():
        writer.close()
    if phase == 1:
        _write_keys(root, unit_keys_rel(unit.index), ctx.seen)
    result = {
        "unit": unit.index,
        "phase": phase,
        "preseen": preseen_digest(preseen) if preseen else None,
        "run_token": run_token,
        "shards": [[k, s, [info.__dict__ for info in w.shards]]
                   for (k, s), w in sorted(writers.items())],  # fmt: skip
        "ledger": ctx.ledger.as_dict(),
        "stats": dict(ctx.stats),
        "records_read": dict(ctx.records_read),
        "num_rows": num_rows,
        "aborted": aborted,
        "error": error,
    }
    root.write_text(unit_result_rel(unit.index, phase), json.dumps(result))
    return result


def key_bucket(scope: str, key: bytes) -> int:
    """The hash partition of a duplicate key (piece digests are hashes already)."""
    if scope == "genome_pieces":
        return key[0] % KEY_BUCKETS
    return hashlib.blake2b(scope.encode() + b"\x1f" + key, digest_size=1).digest()[0] % KEY_BUCKETS


def _write_keys(root: OutputDir, rel: str, seen: dict[str, set]) -> None:
    scopes, keys, buckets = [], [], []
    for scope, values in seen.items():
        for value in values:
            key = _as_key(value)
            scopes.append(scope)
            keys.append(key)
            buckets.append(key_bucket(scope, key))
    table = pa.table({"scope": pa.array(scopes, pa.string()), "key": pa.array(keys, pa.binary()),
                      "bucket": pa.array(buckets, pa.int8())})  # fmt: skip
    root.write_file(rel, lambda tmp: pq.write_table(table, tmp))


def result_error(result: dict) -> InputError | None:
    return InputError(*result["error"]) if result["error"] else None


def result_shards(result: dict) -> list[tuple[str, str, list[ShardInfo]]]:
    return [(k, s, [ShardInfo(**i) for i in infos]) for k, s, infos in result["shards"]]


# --- duplicates across units ---------------------------------------------------------------------


def earlier_keys_in_buckets(
    keys_files: list[tuple[int, str]], buckets: list[int]
) -> dict[int, dict]:
    """For some hash partitions: {unit: {scope: [keys an earlier unit (lower index) had]}}.

    A key's partition depends on the key alone, so each partition is decided on its own: on
    a cluster one task per partition, in one process all partitions in one pass."""
    tables = []
    for unit, path in keys_files:
        table = pq.read_table(path, columns=["scope", "key", "bucket"])
        if len(buckets) < KEY_BUCKETS:
            table = table.filter(pc.is_in(table["bucket"], pa.array(buckets, pa.int8())))
        if table.num_rows == 0:
            continue
        table = table.select(["scope", "key"])
        tables.append(table.append_column("unit", pa.array([unit] * table.num_rows, pa.int32())))
    if not tables:
        return {}
    table = pa.concat_tables(tables)
    first = table.group_by(["scope", "key"]).aggregate([("unit", "min")])
    joined = table.join(first, keys=["scope", "key"])
    later = joined.filter(pc.greater(joined["unit"], joined["unit_min"]))
    out: dict[int, dict[str, list[bytes]]] = {}
    for unit, scope, key in zip(later["unit"].to_pylist(), later["scope"].to_pylist(),
                                later["key"].to_pylist(), strict=True):  # fmt: skip
        out.setdefault(unit, {}).setdefault(scope, []).append(key)
    return out


def merge_earlier_keys(parts: list[dict[int, dict]]) -> dict[int, dict[str, list[bytes]]]:
    out: dict[int, dict[str, list[bytes]]] = {}
    for part in parts:
        for unit, scopes in part.items():
            for scope, keys in scopes.items():
                out.setdefault(unit, {}).setdefault(scope, []).extend(keys)
    return out


def counter_sum(counters: list[dict]) -> Counter:
    total: Counter = Counter()
    for c in counters:
        total.update(c)
    return total
