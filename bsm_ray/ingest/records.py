"""Reading sequence files (FASTA, GenBank; plain or compressed), validation, the skip ledger.

Files are opened through `bsm_ray.fileio` (compression by magic bytes, byte-order marks, UTF-16,
and every read failure, such as a truncated .gz, as an `InputError`); the readers here add the
record that was being read when a file broke off.

- GenBank is parsed by Biopython (`Bio.SeqIO.parse(handle, "genbank")`), one record at a time.
  Parser errors become one-line `InputError`s naming file, record and reason. Parser *warnings*
  (`BiopythonParserWarning`: a malformed LOCUS line, a bad sequence indent, a missing `//`, a
  location "fixed" by guessing) mean Biopython repaired the record on its own guess:
  `parse_genbank` returns them with each record, and `repaired_record_error` makes the one-line
  error (`parser_warning`, the warning text as detail) that callers raise or count.
  RefSeq pairs read GenBank through `genbank.iter_cds_records`, which gives what this reader
  gives (the same records, warnings and errors) faster, and falls back to it.
- FASTA is read by `iter_fasta`, a line streamer that yields each record's sequence in chunks of
  bounded size: a chromosome-sized record never has to sit in memory in several copies (Biopython's
  FASTA parsers build a list of lines and then join them, two copies of every record). Headers
  follow Biopython's convention (id = title up to the first whitespace), and the test suite checks
  it against `Bio.SeqIO` on Biopython's own FASTA corpus. Line ends may be LF, CRLF or CR (old
  Mac files); a header that is not UTF-8 is read as latin-1 (every byte is a latin-1 letter).
- `Ledger` applies the `--on-invalid {error,skip}` policy: in `error` mode an invalid record
  raises; in `skip` mode it is counted per (source kind, reason) with a few examples, and the
  counts go into the manifest and the job's summary. Nothing is dropped without a count.

Imports Biopython and numpy; no ray, torch or mlflow.
"""

from __future__ import annotations

import warnings
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from bsm_ray.errors import InputError
from bsm_ray.fileio import open_byte_range, open_text, open_text_bytes, open_text_range
from bsm_ray.tokenizers.alphabets import first_invalid

OnInvalid = Literal["error", "skip"]

MAX_EXAMPLES_PER_REASON = 5


@dataclass
class Ledger:
    """Counts what was skipped (per source kind and reason) and what was noted.

    `skipped`: records rejected as invalid (only in `skip` mode; `error` mode raises).
    `notes`: records kept but worth reporting, e.g. accepted biological exceptions such as an
    RNA-edited start codon, and filters that are part of a recipe (web documents with fewer than
    three sequences).
    """

    on_invalid: OnInvalid = "error"
    skipped: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    notes: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def invalid(self, kind: str, error: InputError) -> None:
        """Reject a record: raise in `error` mode, count it in `skip` mode."""
        if self.on_invalid == "error":
            raise error
        self.skipped[kind][error.reason] += 1
        key = f"{kind}/{error.reason}"
        if len(self.examples[key]) < MAX_EXAMPLES_PER_REASON:
            self.examples[key].append(str(error))

    def note(self, kind: str, reason: str, example: str | None = None, count: int = 1) -> None:
        self.notes[kind][reason] += count
        key = f"{kind}/{reason}"
        if example is not None and len(self.examples[key]) < MAX_EXAMPLES_PER_REASON:
            self.examples[key].append(example)

    def merge(self, other: dict) -> None:
        """Add the counts and examples of another ledger (`as_dict` form), as if its records
        had come after this one's: the ledgers of consecutive units add up to the ledger of
        one sequential run."""
        for table_name in ("skipped", "notes"):
            table = getattr(self, table_name)
            for kind, counts in other[table_name].items():
                table[kind].update(counts)
        for key, examples in other["examples"].items():
            room = MAX_EXAMPLES_PER_REASON - len(self.examples[key])
            self.examples[key].extend(examples[: max(room, 0)])

    def num_skipped(self, kind: str | None = None) -> int:
        kinds = [kind] if kind else list(self.skipped)
        return sum(sum(self.skipped[k].values()) for k in kinds)

    def as_dict(self) -> dict:
        return {
            "on_invalid": self.on_invalid,
            "skipped": {k: dict(sorted(v.items())) for k, v in sorted(self.skipped.items())},
            "notes": {k: dict(sorted(v.items())) for k, v in sorted(self.notes.items())},
            "examples": {k: list(v) for k, v in sorted(self.examples.items())},
        }

    def summary_lines(self) -> list[str]:
        lines = []
        for title, table in (("skipped", self.skipped), ("noted", self.notes)):
            for kind, counts in sorted(table.items()):
                for reason, n in sorted(counts.items()):
                    lines.append(f"  {title:8s} {kind:16s} {reason:40s} {n:>10,d}")
        return lines


@dataclass(frozen=True)
class InputPart:
    """A unit's share of one input file, cut at record boundaries by the planner (`units.py`).

    Byte ranges (FASTA, GenBank, JSONL lines) hold [start, stop); `first_line` is the 1-based
    line number of `start` and `first_record` the number of records before it, so messages and
    ids name the same line and record number as a read of the whole file. Parquet parts are row
    groups instead, with `first_record` the rows before the first of them.

    Genome FASTA parts may also start or end inside a chromosome (`mid_record`: `start` is a
    sequence line of record number `first_record`, 0-based). The driver fills in, from a scan
    of the parts before it (`units.resolve_genome_parts`), the record's id, its N-removed
    letters before `start`, and whether the record was already rejected there;
    `record_continues` says the part's last record goes on past `stop`.
    """

    start: int = 0
    stop: int = 0
    first_line: int = 1
    first_record: int = 0
    row_groups: tuple[int, ...] | None = None
    mid_record: bool = False
    record_id: str | None = None
    letters_before: int = 0
    skip_record: bool = False
    record_continues: bool = False


def open_part_bytes(path: str, part: InputPart | None):
    """`open_text_bytes(path)`, or only the bytes of `part`."""
    return open_text_bytes(path) if part is None else open_byte_range(path, part.start, part.stop)


# --- validation ---------------------------------------------------------------------------------


def validate_sequence(seq: str, modality: str, path: str, record: str) -> None:
    """Raise `InputError` if `seq` is empty or has a letter outside the modality's alphabet."""
    if not seq:
        raise InputError(path, record, "empty_sequence")
    bad = first_invalid(seq, modality)
    if bad >= 0:
        raise InputError(
            path,
            record,
            "invalid_character",
            f"{seq[bad]!r} at position {bad + 1} is not in the {modality} IUPAC alphabet",
        )


# --- FASTA --------------------------------------------------------------------------------------


@dataclass
class FastaChunk:
    """A piece of one FASTA record's sequence, in file order.

    `first` is True for the record's first chunk, `last` for its final one; a record whose
    sequence fits in one chunk yields a single chunk with both set.
    """

    record_id: str
    description: str
    index: int  # 0-based record number in the file
    seq: bytes  # raw letters, whitespace removed, case kept
    first: bool
    last: bool


WHITESPACE = b" \t\r\n\v\f"
"""The bytes removed from FASTA sequence lines."""
_READ_BYTES = 1 << 20


def iter_fasta(
    path: str | Path, chunk_bytes: int = 1 << 22, part: InputPart | None = None
) -> Iterator[FastaChunk]:
    """Stream a FASTA file (plain or compressed) as bounded chunks of each record's sequence.

    Chunks hold at most `chunk_bytes` letters, so memory is O(chunk_bytes) whatever the record
    size. The file is read in blocks of up to 1 MiB and line breaks are removed with one
    `bytes.translate` per block (no per-line Python loop). A record with a header and no
    sequence yields one empty chunk (so the caller can reject it as empty). Raises `InputError`
    for data before the first header, for a header with no id, and for a file that cannot be
    read to its end (naming the record being read when it broke off). With `part`, only that
    byte range is read (it starts at a header line; record numbers and line numbers count from
    the file's start). A `mid_record` part starts inside record `part.first_record`, named
    `part.record_id`: its first chunk has `first` False.
    """
    path = str(path)
    record_id: str | None = None
    description = ""
    index = -1 if part is None else part.first_record - 1
    if part is not None and part.mid_record:
        record_id = description = part.record_id or "?"
        index = part.first_record
    buf: list[bytes] = []
    size = 0
    first = record_id is None
    lines_done = 0 if part is None else part.first_line - 1  # newlines before this block
    pending = b""
    held = b""  # a block's final CR, held back: it may be the first half of a CRLF
    with open_part_bytes(path, part) as fh:
        eof = False
        while not eof:
            try:
                block = fh.read1(_READ_BYTES)  # one chunk: data before a failure comes first
            except InputError as exc:  # truncated or corrupt compressed data, I/O error
                raise exc.at(record_id) from None
            if block:
                if held or b"\r" in block:  # CRLF and CR-only line ends -> LF
                    block, held = held + block, b""
                    if block.endswith(b"\r"):
                        block, held = block[:-1], b"\r"
                    block = block.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
                data = pending + block
                cut = data.rfind(b"\n") + 1
                if cut == 0:  # no complete line yet
                    pending = data
                    continue
                data, pending = data[:cut], data[cut:]
            else:
                data, pending, eof = pending + held.replace(b"\r", b"\n"), b"", True
            pos = 0
            while pos < len(data):
                if data[pos] == 0x3E:  # '>' at a line start: a header line
                    end = data.find(b"\n", pos)
                    end = len(data) if end < 0 else end
                    if record_id is not None:
                        yield FastaChunk(record_id, description, index, b"".join(buf), first, True)
                    title = _decode_header(data[pos + 1 : end].strip())
                    if not title:
                        line_no = lines_done + data.count(b"\n", 0, pos) + 1
                        detail = f"empty header at line {line_no}"
                        raise InputError(path, f"#{index + 2}", "malformed_fasta", detail)
                    index += 1
                    record_id, description = title.split(None, 1)[0], title
                    buf, size, first = [], 0, True
                    pos = end + 1
                    continue
                # Sequence lines up to the next header line (or the end of the block).
                nxt = data.find(b"\n>", pos)
                seg_end = len(data) if nxt < 0 else nxt + 1
                letters = data[pos:seg_end].translate(None, WHITESPACE)
                if letters and record_id is None:
                    line_no = lines_done + data.count(b"\n", 0, pos) + 1
                    if data[pos:].startswith((b"LOCUS", b"ID ")):
                        raise InputError(
                            path, None, "malformed_fasta", "looks like GenBank/EMBL, not FASTA"
                        )
                    raise InputError(
                        path, None, "malformed_fasta",
                        f"sequence data before the first '>' header (line {line_no})",
                    )  # fmt: skip
                if letters:
                    buf.append(letters)
                    size += len(letters)
                    while size >= chunk_bytes:
                        joined = b"".join(buf)
                        yield FastaChunk(
                            record_id, description, index, joined[:chunk_bytes], first, False
                        )  # type: ignore[arg-type]
                        buf, size, first = [joined[chunk_bytes:]], size - chunk_bytes, False
                pos = seg_end
            lines_done += data.count(b"\n")
    if record_id is not None:
        yield FastaChunk(record_id, description, index, b"".join(buf), first, True)


def _decode_header(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:  # e.g. an accented organism name from a latin-1 era tool
        return raw.decode("latin-1")


def read_fasta_records(path: str | Path) -> Iterator[tuple[str, str, int, str]]:
    """Whole records (id, description, index, sequence as str) for files of modest records."""
    parts: list[bytes] = []
    for chunk in iter_fasta(path):
        parts.append(chunk.seq)
        if chunk.last:
            yield (
                chunk.record_id,
                chunk.description,
                chunk.index,
                b"".join(parts).decode("ascii", errors="replace"),
            )
            parts = []


# --- GenBank ------------------------------------------------------------------------------------


def _one_line(text: str, limit: int = 160) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def genbank_label(record) -> str:
    """A GenBank record's id for messages and row ids: the accession.version, or the LOCUS name
    where the accession is a placeholder ('.' in files exported by SnapGene and Addgene)."""
    if record.id and record.id not in (".", "<unknown id>"):
        return record.id
    return record.name or record.id


def repaired_record_error(path: str, record: str, repairs: list[str]) -> InputError:
    """The error for a record Biopython had to repair: its first warning, and how many."""
    detail = repairs[0]
    if len(repairs) > 1:
        detail += f"; {len(repairs)} parser warnings in this record"
    return InputError(path, record, "parser_warning", detail)


def next_genbank_record(it: Iterator, path: str, where: str) -> tuple[object | None, list[str]]:
    """The next record of a `Bio.SeqIO.parse(..., "genbank")` iterator (None at its end) and the
    parser warnings raised reading it; its failures as `InputError`s naming `where` (the record
    number, see `parse_genbank`)."""
    from Bio import BiopythonParserWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            record = next(it)
        except StopIteration:
            record = None
        except InputError as exc:  # the file itself broke off or is not text
            detail = f"{exc.record}: {exc.detail}" if exc.record else exc.detail
            raise InputError(path, where, exc.reason, detail) from None
        except Exception as exc:  # Biopython raises ValueError, IndexError, ...
            text = _one_line(str(exc)) or type(exc).__name__
            raise InputError(path, where, "malformed_genbank", text) from None
    repairs = []
    for w in caught:
        if issubclass(w.category, BiopythonParserWarning):
            repairs.append(f"{w.category.__name__}: {_one_line(w.message)}")
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return record, repairs


def parse_genbank(
    path: str | Path, part: InputPart | None = None
) -> Iterator[tuple[object, list[str]]]:
    """Yield (Biopython SeqRecord, parser warnings raised while reading it) from a GenBank file
    (plain or compressed), one record at a time.

    Any parser exception, and any read failure (a truncated .gz, bytes that are not UTF-8),
    becomes an `InputError` naming the record number (and the last good record's id) where it
    happened: `malformed_genbank` for the parser's, the file's own reason otherwise. Warnings
    are caught per record (`warnings.catch_warnings(record=True)`), never printed; warnings
    other than `BiopythonParserWarning` are passed on unchanged. With `part`, only that byte
    range is read (it starts at a LOCUS line; record numbers count from the file's start; the
    "after <id>" of a failure in a part's first record is not known there and left out).
    """
    from Bio import SeqIO

    path = str(path)
    index = 0 if part is None else part.first_record
    first_index = index
    last_id = None
    opened = open_text(path) if part is None else open_text_range(path, part.start, part.stop)
    with opened as handle:
        it = SeqIO.parse(handle, "genbank")
        while True:
            where = f"#{index + 1}" + (f" (after {last_id})" if last_id else "")
            record, repairs = next_genbank_record(it, path, where)
            if record is None:
                if repairs:  # raised while looking for a next record: blame the end of file
                    raise repaired_record_error(path, f"end of file (after {last_id})", repairs)
                break
            index += 1
            last_id = genbank_label(record)
            yield record, repairs
    if index == first_index and (part is None or part.start == 0):
        raise InputError(path, None, "malformed_genbank", "no GenBank record found")


def iter_genbank(path: str | Path) -> Iterator:
    """Yield the SeqRecords of a GenBank file; strict: a record Biopython had to repair (any
    `BiopythonParserWarning`) raises `InputError(parser_warning)` (see `parse_genbank`)."""
    for record, repairs in parse_genbank(path):
        if repairs:
            raise repaired_record_error(str(path), genbank_label(record), repairs)
        yield record
