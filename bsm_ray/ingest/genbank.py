"""GenBank records as RefSeq pairs read them: CDS features and the sequence, fast, Biopython exact.

`iter_cds_records` gives, per GenBank record, what `build_refseq_pairs` uses of it (a
`CdsRecord`: the record's label, molecule type, sequence and CDS features) with the parser
warnings Biopython raised reading it: the same records, values, warnings and errors as
`records.parse_genbank`, i.e. as `Bio.SeqIO.parse(handle, "genbank")`, in about half its time.

Design choices:
- Biopython is the reference and the fallback. The file is cut into record texts the way
  Biopython's scanner reads it (from a `LOCUS` line to the first `//` line); each text is first
  read by the fast path below, and read again by `Bio.SeqIO` whenever the fast path meets
  anything outside the common clean layout, any warning or any exception. A record the fast
  path accepts is one where Biopython's own reading could not have warned or failed.
- The fast path runs Biopython's own code for most of a record: the LOCUS line, the header
  lines, every CDS location and the misc lines go through `GenBankScanner`'s methods into
  Biopython's `_FeatureConsumer`, so ids, names, molecule type and locations are Biopython's by
  construction. What it does itself, each time only in a layout where Biopython cannot warn or
  fail (anything else goes to Biopython's code):
  - cutting the feature table into features: one regular expression a feature, in the layout
    `InsdcScanner.parse_features` reads (key in column 6, location from column 22 without
    spaces, continuation lines indented 21);
  - a feature whose qualifier lines are all plain (`/key`, `/key=value` without a quote,
    `/key="..."` without a quote inside, closing at a line end) and whose location is plain
    ranges (`a..b` with 1 <= a <= b, complemented or joined) is not a `SeqFeature` at all
    unless it is a CDS; a CDS gets Biopython's location and its `CDS_QUALIFIERS` made as
    `parse_feature` and the consumer make them (`_plain_cds_qualifiers`);
  - any other feature goes through `parse_feature` and, where it is not then plainly clean,
    the consumer, so its warnings are Biopython's;
  - the ORIGIN letters: one regular expression checks every line's layout, one
    `bytes.translate` keeps the letters.
- Text is read in blocks (a `readline` per line through the checked text wrapper was a third of
  the job's time). A read failure (bytes that are not UTF-8, a truncated .gz) must hit the same
  record as Biopython's line-by-line reading: records are handed out only once text at least
  `_LOOKAHEAD_CHARS` past their end has decoded (more than the 8 KiB Biopython's reader decodes
  ahead), and after a failure the file is read again by `parse_genbank` from the first record
  not handed out, which then raises exactly where it does.
- CDS translation (`fast_cds`): for a CDS of plain A/C/G/T in one of the tables without
  dual-coding stop codons, codons are translated by one numpy lookup built from Biopython's own
  codon tables; whatever is not that clean case (ambiguous letters, codon_start other than 1,
  a failed start/stop check, parts in other records) returns None and is done by Biopython.

Imports Biopython and numpy; no ray, torch or mlflow.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache, lru_cache

import numpy as np

from bsm_ray.errors import InputError
from bsm_ray.fileio import open_text, open_text_range
from bsm_ray.ingest.records import InputPart, genbank_label, next_genbank_record, parse_genbank

_READ_CHARS = 1 << 20
# Biopython's text reader decodes 8 KiB of bytes at a time (>= 8 Ki characters of them is
# more than enough): a record ending this far before the text that failed to decode was read
# whole by Biopython too.
_LOOKAHEAD_CHARS = 1 << 16
_LOCUS = "LOCUS       "

# A sequence line as Biopython reads it without a warning: 9 columns of spaces and digits
# (at least one digit: an all-blank line warns), a space, then letters and spaces.
_SEQ_LINES = re.compile(r"(?:[ 0-9]{8}[0-9] [A-Za-z ]*\n)*")
_NOT_LETTERS = b" 0123456789\n"
# A feature in the clean layout: its first line (5 spaces, the key from column 6), then its
# continuation lines (21 spaces). Biopython also takes blank lines into a feature: not here.
_FEATURE = re.compile(r"(     [^ \n][^\n]*)\n((?: {21}[^\n]*\n)*)")
# A qualifier line Biopython reads without a warning or an error: `/key`, `/key=value` (no
# quote) or `/key="..."` (no quote inside, on continuation lines, closing at a line end).
_PLAIN_QUALIFIERS = re.compile(r'(?: {21} */[^\n="]*(?:="[^"]*"|=[^"\n]*)?\n)*')
_PLAIN_QUALIFIER = re.compile(r' {21} */([^\n="]*)(=("[^"]*"|[^"\n]*))?\n')
# Feature locations Biopython parses without a warning whatever the record: plain ranges.
_RANGE = r"<?\d+\.\.>?\d+"
_JOIN = rf"join\({_RANGE}(?:,{_RANGE})+\)"
_LOCATION = rf"(?:{_RANGE}|{_JOIN}|complement\((?:{_RANGE}|{_JOIN})\))"
_PLAIN_LOCATION = re.compile(_LOCATION)
_RANGE_ENDS = re.compile(r"(\d+)\.\.>?(\d+)")


# The CDS qualifiers `build_refseq_pairs` reads. The fast path gives a CDS only these (and any
# other whose value the consumer had to check for quotes); Biopython's full reading gives all.
CDS_QUALIFIERS = frozenset({
    "codon_start", "exception", "gene", "locus_tag", "protein_id", "pseudo", "pseudogene",
    "trans_splicing", "transl_except", "transl_table", "translation",
})  # fmt: skip


@dataclass
class CdsRecord:
    """What `build_refseq_pairs` reads of a GenBank record."""

    label: str
    """`genbank_label`: the accession.version, or the LOCUS name where the accession is '.'."""
    molecule_type: str
    """Biopython's `annotations["molecule_type"]` ('' when the record does not say)."""
    seq: bytes | None
    """The sequence (ASCII, upper case); None when the record has no sequence data."""
    cds: list = field(default_factory=list)
    """The record's CDS features, Biopython `SeqFeature`s, in file order (qualifiers: at least
    `CDS_QUALIFIERS`)."""


def cds_record(record) -> CdsRecord:
    """The `CdsRecord` of a Biopython SeqRecord."""
    from Bio.Seq import UndefinedSequenceError

    try:
        seq: bytes | None = bytes(record.seq).upper()
    except UndefinedSequenceError:
        seq = None
    return CdsRecord(
        genbank_label(record),
        record.annotations.get("molecule_type", ""),
        seq,
        [f for f in record.features if f.type == "CDS"],
    )


# --- the record reader --------------------------------------------------------------------------


def _record_end(buf: str, start: int) -> int:
    """End (past its line end) of the first `//` line after the LOCUS line at `start`, or -1."""
    pos = buf.find("\n", start)
    while pos >= 0:
        pos = buf.find("\n//", pos)
        if pos < 0:
            return -1
        eol = buf.find("\n", pos + 3)
        rest = buf[pos + 3 : len(buf) if eol < 0 else eol]
        if not rest.strip():  # Biopython: line.rstrip() == "//"
            return -1 if eol < 0 else eol + 1
        pos = pos + 1
    return -1


def _record_start(buf: str, pos: int) -> int:
    """Start of the next line at or after `pos` beginning with 'LOCUS       ', or -1."""
    if buf.startswith(_LOCUS, pos):
        return pos
    found = buf.find("\n" + _LOCUS, pos)
    return -1 if found < 0 else found + 1


def iter_cds_records(
    path: str, part: InputPart | None = None
) -> Iterator[tuple[CdsRecord, list[str]]]:
    """(CdsRecord, parser warnings) per GenBank record, exactly as `parse_genbank` gives them
    (and its errors, at the same record); see the module docstring."""
    path = str(path)
    index = 0 if part is None else part.first_record
    first_index = index
    last_id = None
    buf, pos, eof = "", 0, False
    opened = open_text(path) if part is None else open_text_range(path, part.start, part.stop)
    with opened as handle:
        while True:
            start = _record_start(buf, pos)
            end = -1 if start < 0 else _record_end(buf, start)
            # A record is read once it is whole and text far enough past it decoded (or EOF).
            if not eof and (end < 0 or len(buf) - end < _LOOKAHEAD_CHARS):
                try:
                    # Reads grow with the record, so a huge record is not copied quadratically.
                    block = handle.read(max(_READ_CHARS, len(buf) - pos))
                except InputError:
                    break  # Biopython's reading decides where this fails (below)
                keep = start if start >= 0 else max(pos, buf.rfind("\n", pos) + 1)
                buf, pos = buf[keep:] + block, 0
                eof = not block
                continue
            if start < 0:  # the end of the file (lines after the last record are skipped)
                if index == first_index and (part is None or part.start == 0):
                    raise InputError(path, None, "malformed_genbank", "no GenBank record found")
                return
            if end < 0:  # EOF inside the record: Biopython warns or fails on it
                end = len(buf)
            text, pos = buf[start:end], end
            where = f"#{index + 1}" + (f" (after {last_id})" if last_id else "")
            record = _read_record(path, text, where)
            index += 1
            last_id = record[0].label
            yield record
    # A read failed: Biopython reads the file again from the first record not handed out.
    replay = parse_genbank(path, part)
    for _ in range(index - first_index):
        next(replay)
    for seq_record, repairs in replay:
        yield cds_record(seq_record), repairs


def _read_record(path: str, text: str, where: str) -> tuple[CdsRecord, list[str]]:
    """One record's text: the fast path, or Biopython's whole reading where it gives up."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            fast = _scan_record(text)
        except Exception:  # whatever Biopython's code raised on it: it raises again below
            fast = None
    if fast is not None and not caught:
        return fast, []
    from Bio import SeqIO

    record, repairs = next_genbank_record(
        iter(SeqIO.parse(io.StringIO(text), "genbank")), path, where
    )
    if record is None:  # not reachable: the text starts with a LOCUS line
        raise InputError(path, where, "malformed_genbank", "no GenBank record found")
    return cds_record(record), repairs


@lru_cache(maxsize=1)
def _scanner():
    from Bio.GenBank.Scanner import GenBankScanner

    return GenBankScanner(debug=0)


def _scan_record(text: str) -> CdsRecord | None:
    """The fast reading of one record's text; None where it is not the clean layout.

    Mirrors `InsdcScanner.feed` (find_start, parse_header, parse_features, parse_footer) with
    Biopython's own consumer and per-feature and header code; gives up (None) wherever
    Biopython's loops would warn, fail or take a rare branch.
    """
    from Bio.GenBank import _FeatureConsumer
    from Bio.GenBank.utils import FeatureValueCleaner

    scanner = _scanner()
    seq_headers = scanner.SEQUENCE_HEADERS
    feature_start = scanner.FEATURE_START_MARKERS
    indent = scanner.FEATURE_QUALIFIER_INDENT
    # The last line must be the '//' (else Biopython warns about a premature end).
    body = text[:-1] if text.endswith("\n") else text
    last_nl = body.rfind("\n")
    if last_nl < 0 or body[last_nl + 1 :].rstrip() != "//":
        return None
    seq_end = last_nl + 1  # start of the '//' line

    def line_at(pos: int) -> tuple[str, int]:  # (line without its end, start of the next)
        eol = text.find("\n", pos)
        return text[pos:eol], eol + 1

    consumer = _FeatureConsumer(use_fuzziness=1, feature_cleaner=FeatureValueCleaner())
    locus, pos = line_at(0)
    scanner._feed_first_line(consumer, locus + "\n")  # find_start keeps the line end
    # Header lines up to FEATURES (parse_header).
    header = []
    while True:
        if pos >= seq_end:
            return None
        raw, nxt = line_at(pos)
        line = raw.rstrip()
        if line in feature_start:
            break
        if line[:12].rstrip() in seq_headers:
            return None  # no feature table
        header.append(line)
        pos = nxt
    scanner._feed_header_lines(consumer, header)
    while pos < seq_end and line_at(pos)[0].rstrip() in feature_start:
        pos = line_at(pos)[1]
    # The feature table (parse_features + _feed_feature_table), one regex match a feature.
    consumer.start_feature_table()
    while True:
        if pos >= seq_end:
            return None
        if text[pos] != " " and text[pos : pos + 12].split("\n", 1)[0].rstrip() in seq_headers:
            break
        m = _FEATURE.match(text, pos)
        if m is None:
            return None  # blank or unusual lines: Biopython's own loop decides
        line = m.group(1).rstrip()
        if len(line) <= indent or line[indent] == " " or " " in line[indent:]:
            return None  # "line too short", "over indented" or a location with spaces
        key = line[2:indent].strip()
        location = line[indent:]
        continuation = m.group(2)
        pos = m.end()
        if (
            location[-1] != ","
            and _PLAIN_QUALIFIERS.fullmatch(continuation) is not None
            and _plain_location(location)
        ):
            if key == "CDS":  # Biopython's location; the qualifiers as its consumer makes them
                consumer.feature_key(key)
                consumer.location(location)
                consumer.data.features[-1].qualifiers.update(_plain_cds_qualifiers(continuation))
            continue  # else nothing Biopython could warn about, and not needed
        feature_lines = [location] + [x[indent:].strip() for x in continuation.split("\n")[:-1]]
        key, location, qualifiers = scanner.parse_feature(key, feature_lines)
        if key == "CDS" or not _plainly_clean(location, qualifiers):
            consumer.feature_key(key)
            consumer.location(location)
            for q_key, q_value in qualifiers:
                if key == "CDS" and q_key not in CDS_QUALIFIERS and _plain_value(q_value):
                    continue  # not read by RefSeq pairs, and nothing to warn about
                consumer.feature_qualifier(
                    q_key, q_value if q_value is None else q_value.replace("\n", " ")
                )
    # The footer: misc lines (BASE COUNT, ORIGIN), then the sequence (parse_footer).
    misc = []
    while pos < seq_end:
        raw, nxt = line_at(pos)
        if not (raw[:12].rstrip() in seq_headers or raw[:12] == " " * 12 or raw[:3] == "WGS"):
            break
        if raw.startswith("CONTIG"):
            return None
        misc.append(raw.rstrip())
        pos = nxt
    block = text[pos:seq_end]
    if _SEQ_LINES.fullmatch(block) is None:
        return None  # blank, CONTIG, badly indented or unusual sequence lines
    scanner._feed_misc_lines(consumer, misc)
    consumer.sequence(block.encode("ascii").translate(None, _NOT_LETTERS).decode("ascii"))
    consumer.record_end("//")
    record = consumer.data
    if (
        record.id is None
        or record.name == "<unknown name>"
        or record.description == "<unknown description>"
    ):
        return None  # parse_records raises on these
    return cds_record(record)


def _plain_cds_qualifiers(continuation: str) -> dict[str, list[str]]:
    """The `CDS_QUALIFIERS` of a feature whose continuation lines fullmatch `_PLAIN_QUALIFIERS`,
    as `parse_feature` and `_FeatureConsumer.feature_qualifier` make them there: each line
    stripped, a quoted value's lines joined (blank ones dropped, then by spaces) and unquoted,
    `/key` alone -> '', a translation without its whitespace."""
    qualifiers: dict[str, list[str]] = {}
    for key, equals, value in _PLAIN_QUALIFIER.findall(continuation):
        if not equals:
            key = key.rstrip()
            if key in CDS_QUALIFIERS and key not in qualifiers:
                qualifiers[key] = [""]
            continue
        if key not in CDS_QUALIFIERS:
            continue
        if key == "translation":  # the cleaner removes all whitespace (the quotes stay ends)
            value = "".join(value.split())
        elif "\n" in value:
            first, *rest = value.split("\n")
            value = " ".join([first.rstrip()] + [x.strip() for x in rest if x.strip()])
        else:
            value = value.rstrip()
        if len(value) > 1 and value[0] == '"' and value[-1] == '"':
            value = value[1:-1]
        qualifiers.setdefault(key, []).append(value)
    return qualifiers


def _plain_location(location: str) -> bool:
    """True for plain ranges (`a..b`, 1 <= a <= b, complemented or joined) Biopython parses
    without a warning whatever the record."""
    return _PLAIN_LOCATION.fullmatch(location) is not None and all(
        1 <= int(a) <= int(b) for a, b in _RANGE_ENDS.findall(location)
    )


def _plainly_clean(location: str, qualifiers: list) -> bool:
    """True if Biopython's consumer cannot warn on this feature (see the module docstring)."""
    return _plain_location(location) and all(_plain_value(value) for _key, value in qualifiers)


def _plain_value(value: str | None) -> bool:
    """True if the consumer cannot warn on this qualifier value: no '"' inside its quotes."""
    if value is None or '"' not in value:
        return True
    if len(value) > 1 and value[0] == '"' and value[-1] == '"':
        value = value[1:-1]  # as the consumer strips them
    return '"' not in value


# --- CDS sequence and translation ---------------------------------------------------------------

_COMPLEMENT = bytes.maketrans(b"ACGT", b"TGCA")
_BASE_INDEX = bytes.maketrans(b"ACGT", b"\0\1\2\3")  # A/C/G/T -> 0..3 (all a CDS may hold)
_CODON_WEIGHTS = np.array([16, 4, 1], dtype=np.uint8)  # codon index = 16 a + 4 b + c < 64


@dataclass(frozen=True)
class _FastTable:
    """A codon table as 64 amino-acid letters ('*' for stops), codons ordered ACGT."""

    amino_acids: np.ndarray
    start_codons: frozenset[bytes]
    stop_codons: frozenset[bytes]


@cache
def _fast_table(table_id: int) -> _FastTable | None:
    """Biopython's table `table_id` (the one `Seq.translate` uses), or None where the fast path
    does not apply (a table with dual-coding stop codons: Biopython warns on every use)."""
    from Bio.Data import CodonTable

    table = CodonTable.ambiguous_generic_by_id[table_id]
    forward = table.forward_table
    if [c for c in table.stop_codons if c in forward]:
        return None
    letters = []
    for a in "ACGT":
        for b in "ACGT":
            for c in "ACGT":
                codon = a + b + c
                try:
                    letters.append(forward[codon])
                except (KeyError, CodonTable.TranslationError):
                    if codon not in table.stop_codons:
                        return None
                    letters.append("*")
    return _FastTable(
        np.frombuffer("".join(letters).encode("ascii"), dtype=np.uint8).copy(),
        frozenset(c.encode("ascii") for c in table.start_codons),
        frozenset(c.encode("ascii") for c in table.stop_codons),
    )


def acgt_only(seq: bytes) -> bool:
    return not seq.translate(None, b"ACGT")


def reverse_complement_acgt(seq: bytes) -> bytes:
    """Reverse complement of plain A/C/G/T bytes (what Biopython gives for them)."""
    return seq.translate(_COMPLEMENT)[::-1]


def fast_cds(feature, seq: bytes, table_id: int) -> tuple[str, str] | None:
    """(spliced CDS, protein) of a clean CDS, exactly `str(feature.extract(seq)).upper()` and
    `feature.translate(seq, table=table_id, cds=True)`; None when it is not the clean case
    (then Biopython does both, with its messages)."""
    location = feature.location
    codon_start = feature.qualifiers.get("codon_start")
    if location is None or (codon_start is not None and codon_start[0] != "1"):
        return None
    pieces = []
    for part in location.parts:
        if part.ref or part.ref_db:
            return None
        piece = seq[int(part.start) : int(part.end)]
        if not acgt_only(piece):
            return None
        pieces.append(reverse_complement_acgt(piece) if part.strand == -1 else piece)
    spliced = b"".join(pieces)
    table = _fast_table(table_id)
    n = len(spliced)
    if (
        table is None
        or n % 3
        or spliced[:3] not in table.start_codons
        or spliced[-3:] not in table.stop_codons
    ):
        return None
    codons = np.frombuffer(spliced.translate(_BASE_INDEX), dtype=np.uint8).reshape(-1, 3)
    inner = table.amino_acids.take(codons[1:-1] @ _CODON_WEIGHTS).tobytes()
    if b"*" in inner:
        return None  # an internal stop: Biopython's error message
    return spliced.decode("ascii"), "M" + inner.decode("ascii")
