"""Builders: input files -> shard rows, one builder per source kind of the two papers.

Every builder is a generator of `(split, row)` pairs with the shard schemas of `shards.py`.
Invalid records go to the `Ledger` (raise or count, per `--on-invalid`); recipe filters and
accepted biological exceptions are noted there too, so every input record is accounted for.

Randomness is derived per item from `(seed, stable id)` with `item_rng`, never from a shared
stream, so the output does not depend on file order, chunk sizes or parallelism.

Builders and their rules:
- `build_single`: FASTA -> single-modal documents (`<dna>ACGT...`). Records are streamed in
  chunks; a record longer than `max_doc_letters` becomes several documents
  (`<id>/part<k>`); a record's documents are released only once the whole record validated.
- `build_refseq_pairs`: GenBank -> one pair document per CDS: gene DNA (CDS span + flank,
  introns kept, reverse-complemented on the minus strand), RNA (spliced CDS, T->U) and protein
  (the `/translation` qualifier, checked against Biopython's translation with the record's
  table). Any 2 or 3 of them, in shuffled order. Records come from `genbank.iter_cds_records`
  and clean CDS are spliced and translated by `genbank.fast_cds`: Biopython's values, faster.
- `build_gene_pairs`: gene id -> accessions TSV + FASTA -> documents of 2 or 3 related
  sequences of one gene, in shuffled order, every sequence used once.
- `build_web`: JSONL / Parquet text documents -> the detected sequences of documents with at
  least `min_sequences` of them, joined by `<sep>` (detector: `detect.py`).
- `build_genome_pieces`: FASTA genomes -> GeneMask pieces (REFERENCE.md section 3), streamed.

Imports Biopython, numpy and pyarrow; no ray, torch or mlflow.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import os
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

from bsm_ray.errors import InputError
from bsm_ray.fileio import (
    numbered_lines,
    open_byte_range,
    open_text,
    sniff_format,
    undecodable_line_error,
)
from bsm_ray.ingest.detect import DetectorConfig, candidate_blocks, detect_sequences
from bsm_ray.ingest.genbank import (
    acgt_only,
    fast_cds,
    iter_cds_records,
    reverse_complement_acgt,
)
from bsm_ray.ingest.records import (
    WHITESPACE,
    InputPart,
    Ledger,
    iter_fasta,
    open_part_bytes,
    read_fasta_records,
    repaired_record_error,
    validate_sequence,
)
from bsm_ray.tokenizers.alphabets import first_invalid, guess_modality
from bsm_ray.tokenizers.char import BsmCharTokenizer, format_document

Row = dict
_TOKENIZER = BsmCharTokenizer()


def _expand(paths: list[str]) -> list[str]:
    """'~' in config paths means the user's home, as in a shell."""
    return [os.path.expanduser(p) for p in paths]


def stable_hash(*parts: object) -> int:
    """A 64-bit hash of `parts` that is the same in every process (unlike `hash()`)."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


def item_rng(seed: int, *key: object) -> np.random.Generator:
    """An RNG for one item, derived from the run seed and the item's stable id."""
    return np.random.default_rng([seed, stable_hash(*key)])


def split_of(seed: int, key: str, val_fraction: float) -> str:
    """Deterministic train/val assignment by a hash of the group key (no leakage within a group)."""
    u = stable_hash("split", seed, key) / 2.0**64
    return "val" if u < val_fraction else "train"


@dataclass
class BuildContext:
    """What every builder shares in one run: the skip ledger, the seed, the val fraction,
    statistics (bp read, pieces, ...), records read per input file and the ids seen per kind."""

    ledger: Ledger = field(default_factory=Ledger)
    seed: int = 0
    val_fraction: float = 0.0
    progress: bool = False
    stats: Counter = field(default_factory=Counter)
    records_read: Counter = field(default_factory=Counter)
    """Records (FASTA records, GenBank records, documents, gene-map lines) read per input path,
    valid or not: what a file that gave no row is reported with."""
    seen: dict[str, set] = field(default_factory=lambda: defaultdict(set))

    def split(self, key: str) -> str:
        return split_of(self.seed, key, self.val_fraction)


def doc_row(
    doc_id: str, kind: str, segments: list[tuple[str, str]], source_file: str, source_record: str
) -> Row:
    text = format_document(segments)
    return {
        "doc_id": doc_id,
        "kind": kind,
        "modalities": [m for m, _ in segments],
        "text": text,
        "num_tokens": _TOKENIZER.count_tokens(text),
        "source_file": source_file,
        "source_record": source_record,
    }


def shuffled_combination(
    rng: np.random.Generator, members: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """Any 2 or 3 of `members` in shuffled order: every ordered arrangement equally likely.

    With 3 members there are 12 arrangements (6 ordered pairs, 6 orders of the triple); with 2
    members, 2 (both orders).
    """
    if len(members) < 2:
        raise ValueError("need at least two members to pair")
    sizes, cdf = _arrangement_sizes(len(members))
    # `rng.choice(sizes, p=p)`, as numpy computes it: one uniform draw, searched in the
    # cumulative probabilities (the test suite holds the two to the same draws).
    size = sizes[bisect.bisect_right(cdf, rng.random())]
    order = rng.permutation(len(members))[:size]
    return [members[i] for i in order]


@cache
def _arrangement_sizes(num_members: int) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Sizes 2 and 3 (where there are enough members) and the cumulative probabilities numpy's
    `choice` uses for them, proportional to the number of ordered arrangements of each size:
    m! / (m - n)! for n of m members."""
    sizes = tuple(n for n in (2, 3) if n <= num_members)
    weights = np.array([math.prod(range(num_members - n + 1, num_members + 1)) for n in sizes])
    cdf = (weights / weights.sum()).cumsum()
    cdf /= cdf[-1]
    return sizes, tuple(float(c) for c in cdf)


# --- single-modal -------------------------------------------------------------------------------


@dataclass
class SingleInput:
    """One FASTA file of single-modal sequences."""

    path: str
    """FASTA file (plain or gzipped)."""
    modality: str
    """dna, rna or protein: the alphabet every record is checked against."""
    t_to_u: bool = False
    """For RNA files written in DNA letters (cDNA): convert T to U before validation."""

    def __post_init__(self) -> None:
        self.path = os.path.expanduser(self.path)
        if self.modality not in ("dna", "rna", "protein"):
            raise ValueError(f"modality must be dna, rna or protein, got {self.modality!r}")


def build_single(
    spec: SingleInput, ctx: BuildContext, max_doc_letters: int, part: InputPart | None = None
) -> Iterator[tuple[str, Row]]:
    kind = f"single_{spec.modality}"
    ledger, seen_ids = ctx.ledger, ctx.seen[kind]
    path = spec.path
    pending: list[tuple[str, bytes]] = []
    skipping = False
    offset = 0
    doc_part = 0
    record_id = ""
    for chunk in iter_fasta(path, chunk_bytes=max_doc_letters, part=part):
        if chunk.first:
            ctx.records_read[path] += 1
            pending, skipping, offset, doc_part = [], False, 0, 0
            record_id = chunk.record_id
            if record_id in seen_ids:
                ledger.invalid(kind, InputError(path, record_id, "duplicate_id"))
                skipping = True
            seen_ids.add(record_id)
        if skipping:
            continue
        seq = chunk.seq.upper()
        if spec.t_to_u:
            seq = seq.replace(b"T", b"U")
        bad = first_invalid(seq, spec.modality)
        if bad >= 0:
            letter = chr(seq[bad]) if seq[bad] < 128 else "non-ASCII"
            ledger.invalid(
                kind,
                InputError(
                    path,
                    record_id,
                    "invalid_character",
                    f"{letter!r} at position {offset + bad + 1} is not in the "
                    f"{spec.modality} IUPAC alphabet",
                ),
            )
            skipping, pending = True, []
            continue
        if seq:
            pending.append((f"{record_id}/part{doc_part}", seq))
            doc_part += 1
        offset += len(seq)
        if chunk.last:
            if offset == 0:
                ledger.invalid(kind, InputError(path, record_id, "empty_sequence"))
                continue
            split = ctx.split(record_id)
            if len(pending) == 1:  # the usual case: the whole record is one document
                pending = [(record_id, pending[0][1])]
            for doc_id, piece in pending:
                segments = [(spec.modality, piece.decode("ascii"))]
                yield split, doc_row(doc_id, kind, segments, path, record_id)
            ctx.stats[f"{kind}/records"] += 1
            ctx.stats[f"{kind}/letters"] += offset
            pending = []


# --- RefSeq pairs from GenBank ------------------------------------------------------------------


@dataclass
class RefSeqConfig:
    """RefSeq DNA/RNA/protein pairs from GenBank records."""

    genbank: list[str] = field(default_factory=list)
    """GenBank files (plain or gzipped)."""
    flank_bp: int = 0
    """Bases added on each side of the CDS span for the gene DNA (clamped to the record)."""
    accepted_exceptions: list[str] = field(
        default_factory=lambda: ["rna_edited_start", "trans_spliced", "annotated_exception"]
    )
    """Annotated exceptions under which a /translation that differs from Biopython's
    translation is kept (and noted by reason) instead of rejected."""

    def __post_init__(self) -> None:
        self.genbank = _expand(self.genbank)


def _feature_label(feature, index: int) -> str:
    q = feature.qualifiers
    for key in ("protein_id", "locus_tag", "gene"):
        if key in q:
            return q[key][0]
    return f"cds{index}"


def translation_check(feature, record_seq, table: int) -> tuple[str, str | None]:
    """(Biopython's translation of the CDS, None) or (best effort translation, problem)."""
    from Bio.Data.CodonTable import TranslationError

    try:
        return str(feature.translate(record_seq, table=table, cds=True)), None
    except TranslationError as exc:
        plain = str(feature.translate(record_seq, table=table, cds=False)).rstrip("*")
        return plain, str(exc).splitlines()[0]


def gene_dna(feature, record_seq, flank_bp: int) -> tuple[str | None, str | None]:
    """Gene DNA: the CDS span with introns, plus flanks, in the CDS's orientation.

    `record_seq` is a Biopython Seq, or the record's letters as bytes (plain A/C/G/T spans are
    then cut and reverse-complemented as bytes; any other letter goes through Seq, so the
    result is the same).
    Returns (dna, None) or (None, reason) when the CDS has no single contiguous locus
    (trans-spliced parts on different strands or far apart, or parts wrapping the origin).
    """
    loc = feature.location
    parts = loc.parts
    strands = {p.strand for p in parts}
    if len(strands) != 1 or "trans_splicing" in feature.qualifiers:
        return None, "trans_spliced_no_gene_dna"
    starts = [int(p.start) for p in parts]
    ordered = starts == sorted(starts) or starts == sorted(starts, reverse=True)
    if not ordered:
        return None, "origin_spanning_no_gene_dna"
    start = max(0, int(loc.start) - flank_bp)
    end = min(len(record_seq), int(loc.end) + flank_bp)
    dna = record_seq[start:end]
    if isinstance(dna, bytes):
        if acgt_only(dna):
            return (reverse_complement_acgt(dna) if strands == {-1} else dna).decode(), None
        from Bio.Seq import Seq

        dna = Seq(dna)
    if strands == {-1}:
        dna = dna.reverse_complement()
    return str(dna).upper(), None


def build_refseq_pairs(
    config: RefSeqConfig, path: str, ctx: BuildContext, part: InputPart | None = None
) -> Iterator[tuple[str, Row]]:
    """Pair documents of the CDS of one GenBank file (see the module docstring).

    Records come from `iter_cds_records` (Biopython's values, read fast); a clean CDS is
    spliced and translated by `fast_cds`, any other by Biopython (`feature.extract`,
    `translation_check`), so every row and ledger entry is what Biopython's path gives.
    """
    from Bio.Data.CodonTable import unambiguous_dna_by_id
    from Bio.Seq import Seq

    kind = "refseq_pair"
    ledger, seen_ids = ctx.ledger, ctx.seen[kind]
    for record, repairs in iter_cds_records(path, part):
        ctx.records_read[path] += 1
        rid = record.label
        if repairs:  # Biopython guessed at part of this record: none of it is trusted
            ledger.invalid(kind, repaired_record_error(path, rid, repairs))
            continue
        if rid in seen_ids:
            ledger.invalid(kind, InputError(path, rid, "duplicate_id"))
            continue
        seen_ids.add(rid)
        if record.molecule_type.lower() == "protein":
            ledger.invalid(
                kind,
                InputError(
                    path,
                    rid,
                    "protein_record",
                    "a GenPept (protein) record: its CDS points into a nucleotide record not given",
                ),
            )
            continue
        if record.seq is None:
            ledger.invalid(kind, InputError(path, rid, "no_sequence", "record has no ORIGIN data"))
            continue
        seq_bytes = record.seq
        record_seq = None  # the Seq, made for the first CDS that needs Biopython
        cds_features = record.cds
        ctx.stats["refseq_pair/cds_seen"] += len(cds_features)
        if not cds_features:
            ledger.note(kind, "record_without_cds", rid)
        for index, feature in enumerate(cds_features):
            label = _feature_label(feature, index)
            where = f"{rid} CDS {label}"
            q = feature.qualifiers
            if "pseudo" in q or "pseudogene" in q:
                ledger.note(kind, "pseudo_cds_skipped", where)
                continue
            table_text = q.get("transl_table", ["1"])[0]
            if not table_text.isdigit() or int(table_text) not in unambiguous_dna_by_id:
                ledger.invalid(kind, InputError(path, where, "bad_transl_table", repr(table_text)))
                continue
            table = int(table_text)
            try:
                fast = fast_cds(feature, seq_bytes, table)
            except Exception:  # e.g. an unknown position: Biopython says what is wrong below
                fast = None
            if fast is not None:  # plain A/C/G/T, starts and stops as the table says
                rna_dna, ours = fast
                problem = None
            else:
                if record_seq is None:
                    record_seq = Seq(record.seq)
                try:
                    rna_dna = str(feature.extract(record_seq)).upper()
                except Exception as exc:  # a location pointing into another record, out of range
                    ledger.invalid(
                        kind, InputError(path, where, "bad_cds_location", str(exc)[:120])
                    )
                    continue
                try:
                    validate_sequence(rna_dna, "dna", path, where)
                except InputError as exc:
                    ledger.invalid(kind, exc)
                    continue
                ours, problem = translation_check(feature, record_seq, table)
            annotated = q.get("translation", [None])[0]
            if annotated is None:
                if problem:
                    ledger.invalid(kind, InputError(path, where, "untranslatable_cds", problem))
                    continue
                protein = ours
                ledger.note(kind, "translation_from_sequence", where)
            else:
                protein = annotated.replace(" ", "").upper()
                if protein != ours:
                    reason = _explain_mismatch(feature, protein, ours)
                    if reason not in config.accepted_exceptions:
                        detail = f"annotated {protein[:12]}... vs Biopython {ours[:12]}..."
                        if problem:
                            detail += f"; {problem}"
                        ledger.invalid(kind, InputError(path, where, reason, detail))
                        continue
                    ledger.note(kind, f"kept_{reason}", where)
            try:
                validate_sequence(protein, "protein", path, where)
            except InputError as exc:
                ledger.invalid(kind, exc)
                continue
            members = [("rna", rna_dna.replace("T", "U")), ("protein", protein)]
            dna, no_dna_reason = gene_dna(feature, seq_bytes, config.flank_bp)
            if dna is None:
                ledger.note(kind, no_dna_reason, where)
            else:
                members.insert(0, ("dna", dna))
            doc_id = f"{rid}|{label}|{index}"
            rng = item_rng(ctx.seed, kind, doc_id)
            segments = shuffled_combination(rng, members)
            split = ctx.split(f"{rid}|{q.get('locus_tag', [label])[0]}")
            ctx.stats["refseq_pair/docs"] += 1
            yield split, doc_row(doc_id, kind, segments, path, where)


def _explain_mismatch(feature, annotated: str, ours: str) -> str:
    """Name why an annotated translation differs from Biopython's.

    Annotated exceptions (GenBank /exception, /trans_splicing, /transl_except) explain
    a difference; anything else is a plain `translation_mismatch`.
    """
    q = feature.qualifiers
    exception = " ".join(q.get("exception", [])).lower()
    same_but_first = annotated[1:] == ours[1:] and annotated[:1] == "M"
    if "rna editing" in exception and same_but_first:
        return "rna_edited_start"
    if "trans_splicing" in q:
        return "trans_spliced"
    if exception or "transl_except" in q:
        return "annotated_exception"
    if same_but_first:
        return "non_atg_start_unannotated"
    return "translation_mismatch"


# --- gene-related pairs -------------------------------------------------------------------------


@dataclass
class GenePairsConfig:
    """Gene-related sequences: a TSV mapping gene id -> accession, and FASTA files holding them."""

    tsv: str | None = None
    """Tab-separated gene_id, accession[, modality]; a first line starting 'gene_id' is a header."""
    fasta: list[str] = field(default_factory=list)
    """FASTA files holding the accessions (matched with and without the .version suffix)."""

    def __post_init__(self) -> None:
        self.tsv = os.path.expanduser(self.tsv) if self.tsv else self.tsv
        self.fasta = _expand(self.fasta)


# RefSeq accession prefixes -> modality (NCBI RefSeq conventions).
_ACCESSION_MODALITY = {
    "NM_": "rna", "XM_": "rna", "NR_": "rna", "XR_": "rna",
    "NP_": "protein", "XP_": "protein", "YP_": "protein", "WP_": "protein", "AP_": "protein",
    "NC_": "dna", "NG_": "dna", "NT_": "dna", "NW_": "dna", "NZ_": "dna", "AC_": "dna",
}  # fmt: skip


def modality_from_accession(accession: str) -> str | None:
    return _ACCESSION_MODALITY.get(accession[:3])


def _read_gene_map(path: str, ctx: BuildContext) -> dict[str, list[tuple[str, str | None]]]:
    genes: dict[str, list[tuple[str, str | None]]] = defaultdict(list)
    kind = "gene_pair"
    ledger = ctx.ledger
    with open_text(path) as fh:
        for line_no, line in numbered_lines(fh):
            line = line.rstrip("\n\r")
            if not line.strip() or line.startswith("#"):
                continue
            cols = line.split("\t")
            if line_no == 1 and cols[0].strip().lower() == "gene_id":
                continue
            ctx.records_read[path] += 1
            if len(cols) not in (2, 3) or not cols[0].strip() or not cols[1].strip():
                ledger.invalid(
                    kind,
                    InputError(
                        path,
                        f"line {line_no}",
                        "malformed_tsv_line",
                        "expected gene_id<TAB>accession[<TAB>modality]",
                    ),
                )
                continue
            modality = cols[2].strip().lower() if len(cols) == 3 else None
            if modality is not None and modality not in ("dna", "rna", "protein"):
                ledger.invalid(
                    kind,
                    InputError(path, f"line {line_no}", "unknown_modality", repr(cols[2])),
                )
                continue
            genes[cols[0].strip()].append((cols[1].strip(), modality))
    return genes


def build_gene_pairs(config: GenePairsConfig, ctx: BuildContext) -> Iterator[tuple[str, Row]]:
    kind = "gene_pair"
    ledger = ctx.ledger
    if config.tsv is None:
        return
    genes = _read_gene_map(config.tsv, ctx)
    wanted: dict[str, tuple[str, str | None]] = {}  # accession (and versionless) -> gene, mod
    for gene_id, accs in genes.items():
        for acc, modality in accs:
            wanted[acc] = (gene_id, modality)
    # Stream the FASTA files once, keeping only the sequences the map asks for.
    found: dict[str, tuple[str, str, str]] = {}  # accession -> (modality, seq, path)
    rejected: set[str] = set()
    versionless = {a.split(".")[0]: a for a in wanted}
    for path in config.fasta:
        num_found = len(found)
        try:
            for rid, _desc, _idx, seq in read_fasta_records(path):
                ctx.records_read[path] += 1
                key = rid if rid in wanted else versionless.get(rid.split(".")[0], "")
                if not key:
                    continue
                if key in found:
                    ledger.invalid(kind, InputError(path, rid, "duplicate_id"))
                    continue
                _gene, modality = wanted[key]
                seq = seq.upper()
                modality = modality or modality_from_accession(key) or guess_modality(seq)
                if modality == "rna" and "T" in seq and "U" not in seq:
                    seq = seq.replace("T", "U")  # transcripts are stored in DNA letters
                try:
                    validate_sequence(seq, modality, path, rid)
                except InputError as exc:
                    ledger.invalid(kind, exc)
                    rejected.add(key)  # counted once, as invalid, not again as missing
                    continue
                found[key] = (modality, seq, path)
        except InputError as exc:  # the file broke off: the other files still count
            ledger.invalid(kind, exc)
            continue
        if len(found) == num_found:  # this file gave no sequence to any gene
            n = ctx.records_read[path]
            detail = f"{n} record{'s' if n != 1 else ''} read, none in the gene map {config.tsv}"
            detail = detail if n else "no records in the file"
            ledger.invalid(kind, InputError(path, None, "no_rows", detail))
    for gene_id in sorted(genes):
        members = []
        for acc, _mod in genes[gene_id]:
            if acc in found:
                members.append((acc, found[acc]))
            elif acc not in rejected:
                ledger.invalid(
                    kind, InputError(config.tsv, f"gene {gene_id}", "accession_not_found", acc)
                )
        if len(members) < 2:
            ledger.note(kind, "gene_fewer_than_2_sequences", gene_id)
            continue
        rng = item_rng(ctx.seed, kind, gene_id)
        order = rng.permutation(len(members))
        groups = partition_2_or_3(rng, len(members))
        split = ctx.split(gene_id)
        start = 0
        for g, size in enumerate(groups):
            chosen = [members[i] for i in order[start : start + size]]
            start += size
            segments = [(m, s) for _acc, (m, s, _p) in chosen]
            accs = ",".join(acc for acc, _ in chosen)
            ctx.stats["gene_pair/docs"] += 1
            yield (
                split,
                doc_row(
                    f"{gene_id}|{g}", kind, segments, chosen[0][1][2], f"gene {gene_id}: {accs}"
                ),
            )


def partition_2_or_3(rng: np.random.Generator, n: int) -> list[int]:
    """Split n >= 2 items into groups of 2 or 3 (random sizes, never a group of 1)."""
    sizes = []
    remaining = n
    while remaining > 3:
        size = int(rng.choice([2, 3])) if remaining != 4 else 2
        sizes.append(size)
        remaining -= size
    sizes.append(remaining)
    return sizes


# --- web interleaved ----------------------------------------------------------------------------


@dataclass
class WebConfig:
    """Web documents with interleaved biological sequences (BSM round 3)."""

    documents: list[str] = field(default_factory=list)
    """JSONL files (one JSON object per line) or Parquet files with a text column."""
    text_field: str = "text"
    """Name of the text field / column."""
    id_field: str = "id"
    """Field holding a document id; '<file>:<line>' when absent."""
    min_sequences: int = 3
    """Keep documents with at least this many detected sequences (the paper: 3)."""
    detector: DetectorConfig = field(default_factory=DetectorConfig)

    def __post_init__(self) -> None:
        self.documents = _expand(self.documents)


def _parquet_error(path: str, exc: Exception, where: str | None = None) -> InputError:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
    return InputError(path, where, "malformed_parquet", text)


def _parquet_batches(path: str, columns: list[str], part: InputPart | None = None):
    """Yield a Parquet file's column names, then record batches of those `columns` it has (of
    the row groups of `part` only, when given). A file that is not Parquet, is cut short (no
    footer) or has a corrupt page raises `InputError(malformed_parquet)`, naming the row where
    the failure starts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
    except (pa.ArrowException, OSError) as exc:
        raise _parquet_error(path, exc) from None
    yield names
    rows = 0 if part is None else part.first_record
    batches = pf.iter_batches(
        columns=[c for c in columns if c in names], batch_size=4096,
        row_groups=None if part is None else list(part.row_groups or ()),
    )  # fmt: skip
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as exc:
            raise _parquet_error(path, exc, f"row {rows + 1}") from None
        rows += batch.num_rows
        yield batch


def _iter_text_documents(
    path: str, cfg: WebConfig, ctx: BuildContext, part: InputPart | None = None
) -> Iterator[tuple[str, str]]:
    kind = "web"
    ledger = ctx.ledger
    # Parquet by its leading magic bytes, or by name (so an empty or garbled .parquet file is
    # reported as bad Parquet, not as bad JSON lines).
    if path.endswith(".parquet") or sniff_format(path) == "parquet":
        batches = _parquet_batches(path, [cfg.text_field, cfg.id_field], part)
        names = next(batches)
        if cfg.text_field not in names:
            raise InputError(path, None, "missing_text_column", cfg.text_field)
        has_id = cfg.id_field in names
        row = 0 if part is None else part.first_record
        for batch in batches:
            texts = batch.column(cfg.text_field).to_pylist()
            ids = batch.column(cfg.id_field).to_pylist() if has_id else [None] * len(texts)
            for text, doc_id in zip(texts, ids, strict=True):
                row += 1
                ctx.records_read[path] += 1
                if not isinstance(text, str):
                    ledger.invalid(kind, InputError(path, f"row {row}", "missing_text"))
                    continue
                yield (str(doc_id) if doc_id is not None else f"{path}:{row}"), text
        return
    # JSONL: one JSON value per LF-separated line; each line is decoded on its own, so a line
    # that is not UTF-8 is one invalid document, not the end of the file.
    with open_part_bytes(path, part) as fh:
        for line_no, raw in numbered_lines(fh, 1 if part is None else part.first_line):
            if not raw.strip():
                continue
            ctx.records_read[path] += 1
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                ledger.invalid(kind, undecodable_line_error(path, line_no, raw, exc))
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                ledger.invalid(kind, InputError(path, f"line {line_no}", "malformed_json", exc.msg))
                continue
            text = obj.get(cfg.text_field) if isinstance(obj, dict) else None
            if not isinstance(text, str):
                ledger.invalid(
                    kind, InputError(path, f"line {line_no}", "missing_text", cfg.text_field)
                )
                continue
            doc_id = obj.get(cfg.id_field)
            yield (str(doc_id) if doc_id is not None else f"{path}:{line_no}"), text


def build_web(
    cfg: WebConfig, path: str, ctx: BuildContext, part: InputPart | None = None
) -> Iterator[tuple[str, Row]]:
    kind = "web"
    ledger, seen_ids = ctx.ledger, ctx.seen[kind]
    for doc_id, text in _iter_text_documents(path, cfg, ctx, part):
        ctx.stats["web/documents_read"] += 1
        if doc_id in seen_ids:
            ledger.invalid(kind, InputError(path, doc_id, "duplicate_id"))
            continue
        seen_ids.add(doc_id)
        # The prefilter's bound: most prose is rejected here without the per-word rules.
        few = candidate_blocks(text, cfg.detector) < cfg.min_sequences
        found = [] if few else detect_sequences(text, cfg.detector)
        if len(found) < cfg.min_sequences:
            ledger.note(kind, f"fewer_than_{cfg.min_sequences}_sequences")
            continue
        segments = [(s.modality, s.seq) for s in found]
        ctx.stats["web/sequences"] += len(found)
        yield ctx.split(doc_id), doc_row(doc_id, kind, segments, path, doc_id)


# --- genome pieces (GeneMask recipe) ------------------------------------------------------------


@dataclass
class GenomeConfig:
    """Genome pieces for MLM pretraining, the GeneMask recipe (REFERENCE.md section 3)."""

    fasta: list[str] = field(default_factory=list)
    """Genome FASTA files (one record per chromosome; plain or gzipped)."""
    val_fraction: float = 0.1
    """Fraction of pieces in the validation split (the recipe: 90/10)."""
    max_start_offset: int = 1000
    """Each chromosome starts being cut at a random offset below this."""
    full_piece_nt: int = 511
    """Length of a full piece (506 6-mers)."""
    full_piece_prob: float = 0.5
    """Probability that a piece is full length; otherwise uniform in [min_piece_nt, full-1]."""
    min_piece_nt: int = 6
    """Shortest piece (one 6-mer)."""
    dedup: bool = True
    """Remove exact duplicate pieces (kept: the first seen)."""

    def __post_init__(self) -> None:
        self.fasta = _expand(self.fasta)
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 6 <= self.min_piece_nt < self.full_piece_nt:
            raise ValueError("need 6 <= min_piece_nt < full_piece_nt")


_ACGT = np.zeros(256, dtype=bool)
_ACGT[np.frombuffer(b"ACGT", dtype=np.uint8)] = True
_LENGTH_BLOCK = 4096  # piece lengths are drawn in fixed blocks: output independent of chunking


class _PieceLengths:
    """The seeded stream of piece lengths for one chromosome (peek without consuming)."""

    def __init__(self, rng: np.random.Generator, cfg: GenomeConfig) -> None:
        self.rng, self.cfg = rng, cfg
        self.buf = np.zeros(0, dtype=np.int64)
        self.pos = 0

    def peek(self, n: int) -> np.ndarray:
        while self.buf.size - self.pos < n:
            full = self.rng.random(_LENGTH_BLOCK) < self.cfg.full_piece_prob
            short = self.rng.integers(self.cfg.min_piece_nt, self.cfg.full_piece_nt, _LENGTH_BLOCK)
            block = np.where(full, self.cfg.full_piece_nt, short)
            self.buf = np.concatenate([self.buf[self.pos :], block])
            self.pos = 0
        return self.buf[self.pos : self.pos + n]

    def consume(self, n: int) -> None:
        self.pos += n


def build_genome_pieces(
    cfg: GenomeConfig,
    path: str,
    ctx: BuildContext,
    chunk_bytes: int = 1 << 22,
    part: InputPart | None = None,
) -> Iterator[tuple[str, Row]]:
    """Stream one genome FASTA into pieces; memory O(chunk_bytes) per chromosome.

    Per chromosome: uppercase (soft-masking dropped), delete every N (joining across gaps),
    skip a random offset < max_start_offset, then cut consecutive pieces; a piece holding any
    letter other than ACGT (IUPAC ambiguity codes) is dropped and counted; the tail shorter than
    the next drawn length is dropped and counted in bp. A non-IUPAC character makes the
    chromosome invalid from that point (raise, or skip the rest of it and count); the whole
    pieces before it are kept, whatever the chunking. With `part`, only the pieces that start
    in it are cut (see `ingest/units.py` for parts inside a chromosome).
    """
    from tqdm import tqdm

    with tqdm(desc=f"  {Path(path).name}", unit="bp", unit_scale=True, leave=False,
              disable=not ctx.progress) as progress:  # fmt: skip
        yield from _genome_pieces(cfg, path, ctx, chunk_bytes, progress, part)


def genome_chrom_scope(path: str) -> str:
    """The `BuildContext.seen` key of one genome file's chromosome ids (duplicates are
    looked for within a file; pieces are deduplicated across every file)."""
    return f"genome_chroms:{path}"


def _with_final(chunks):
    """(chunk, is it the part's final chunk) for each chunk."""
    prev = None
    for chunk in chunks:
        if prev is not None:
            yield prev, False
        prev = chunk
    if prev is not None:
        yield prev, True


def _genome_pieces(cfg, path, ctx, chunk_bytes, progress, part):
    """Cut the pieces that START in `part` (all of them without one); see the module of units
    for parts that begin or end inside a chromosome."""
    kind = "genome"
    ledger = ctx.ledger
    carry = b""
    lengths: _PieceLengths | None = None
    skip_left = 0  # start-offset letters still to skip (counted)
    drop_left = 0  # letters of a piece that started in an earlier part (not counted here)
    stub = 0  # letters of that piece before this part, if the chromosome ends inside it
    offset = 0  # position of carry[0] in the N-removed chromosome
    nonn = 0  # N-removed letters of this chromosome before this chunk
    invalid = False
    chrom = ""
    chrom_bp = 0  # letters read of this chromosome in this part, N included
    seen_chroms = ctx.seen[genome_chrom_scope(path)]
    for chunk, final in _with_final(iter_fasta(path, chunk_bytes=chunk_bytes, part=part)):
        progress.update(len(chunk.seq))
        if chunk.first or chunk.record_id != chrom:
            carry, offset, nonn, invalid, chrom_bp, drop_left, stub = b"", 0, 0, False, 0, 0, 0
            chrom = chunk.record_id
            rng = item_rng(ctx.seed, kind, chrom)
            start_offset = int(rng.integers(0, cfg.max_start_offset)) if cfg.max_start_offset else 0
            lengths = _PieceLengths(rng, cfg)
            if chunk.first:
                ctx.records_read[path] += 1
                if chrom in seen_chroms:
                    ledger.invalid(kind, InputError(path, chrom, "duplicate_id"))
                    invalid = True
                seen_chroms.add(chrom)
                ctx.stats["genome/chromosomes"] += 1
                skip_left = start_offset
            else:  # a part that begins inside this chromosome
                invalid = part.skip_record
                offset = nonn = part.letters_before
                skip_left, drop_left, stub = _enter(lengths, start_offset, offset)
        if invalid:
            continue
        ends_here = chunk.last and not (final and part is not None and part.record_continues)
        raw = chunk.seq.upper()
        bad_raw = first_invalid(raw, "dna")  # N is a DNA letter: removed below
        if bad_raw >= 0:
            bad_char = chr(raw[bad_raw])
            raw = raw[:bad_raw]  # what comes before the bad letter is cut as usual
        ctx.stats["genome/bp_read"] += len(raw)
        chrom_bp += len(raw)
        if ends_here and chunk.first and chrom_bp == 0 and bad_raw < 0:
            ledger.invalid(kind, InputError(path, chrom, "empty_sequence"))
            continue
        seq = raw.replace(b"N", b"")
        ctx.stats["genome/n_removed"] += len(raw) - len(seq)
        bad_at = nonn + len(seq)  # N-removed position of the bad letter, if any
        nonn += len(seq)
        if skip_left:
            dropped = min(skip_left, len(seq))
            seq, skip_left = seq[dropped:], skip_left - dropped
            offset += dropped
            ctx.stats["genome/start_offset_bp"] += dropped
        if drop_left:
            dropped = min(drop_left, len(seq))
            seq, drop_left = seq[dropped:], drop_left - dropped
            offset += dropped
            stub += dropped
        buf = carry + seq
        consumed = yield from _cut(buf, offset, lengths, cfg, chrom, path, ctx)
        carry = buf[consumed:]
        offset += consumed
        if bad_raw >= 0:
            ledger.invalid(
                kind,
                InputError(
                    path,
                    chrom,
                    "invalid_character",
                    f"{bad_char!r} at N-removed position {bad_at + 1}",
                ),
            )
            invalid = True  # the rest of this chromosome is skipped (pieces before it are kept)
            continue
        if ends_here:
            ctx.stats["genome/tail_bp_dropped"] += stub if drop_left else len(carry)
            carry = b""
        elif chunk.last and not skip_left and not drop_left and carry:
            # The chromosome goes on in the next part: finish the piece that starts here.
            need = int(lengths.peek(1)[0]) - len(carry)
            more = _letters_after(path, part.stop, need)
            yield from _cut(carry + more, offset, lengths, cfg, chrom, path, ctx)


def _enter(lengths: _PieceLengths, start_offset: int, at: int) -> tuple[int, int, int]:
    """Position `lengths` at the first piece that starts at or after N-removed position `at`.

    Returns (start-offset letters still to skip, letters to drop that belong to the piece
    started before `at`, and that piece's letters before `at`)."""
    if at <= start_offset:
        return start_offset - at, 0, 0
    pos = start_offset
    while True:
        block = lengths.peek(1 << 12)
        ends = pos + np.cumsum(block)
        n = int(np.searchsorted(ends, at, side="left"))  # pieces that end before `at`
        if n < block.size:
            lengths.consume(n + 1)  # and the one that holds `at`
            begin = pos if n == 0 else int(ends[n - 1])
            return 0, int(ends[n]) - at, at - begin
        lengths.consume(block.size)
        pos = int(ends[-1])


def _letters_after(path: str, start: int, need: int) -> bytes:
    """Up to `need` N-removed, uppercased letters of the chromosome that goes on at byte
    `start` (a sequence line): fewer where it ends, or where a letter outside the DNA alphabet
    comes first (the piece is then not whole)."""
    out: list[bytes] = []
    have = 0
    with open_byte_range(path, start, os.path.getsize(path)) as fh:
        for line in fh:
            if line.startswith(b">"):
                break
            letters = line.translate(None, WHITESPACE).upper()
            bad = first_invalid(letters, "dna")
            if bad >= 0:
                letters = letters[:bad]
            letters = letters.replace(b"N", b"")
            out.append(letters)
            have += len(letters)
            if bad >= 0 or have >= need:
                break
    return b"".join(out)[:need]


def _cut(buf, offset, lengths, cfg, chrom, path, ctx):
    """Yield every whole piece that fits in `buf`; return the number of bytes consumed.

    Lengths are peeked in batches and only the ones used are consumed, so the tail carried to
    the next chunk is cut with the same lengths it would get in one big buffer.
    """
    # Positions of letters other than ACGT (IUPAC codes; N was removed): usually none.
    bad_pos = np.flatnonzero(~_ACGT[np.frombuffer(buf, dtype=np.uint8)])
    salt = (ctx.seed % 2**128).to_bytes(16, "little")
    seen_pieces = ctx.seen["genome_pieces"]
    batch = len(buf) // cfg.min_piece_nt + 1  # no more pieces than this can fit
    pos = 0
    while True:
        ends = pos + np.cumsum(lengths.peek(min(batch, 1 << 16)))
        fit = int(np.searchsorted(ends, len(buf), side="right"))
        if fit == 0:
            return pos
        lengths.consume(fit)
        ends = ends[:fit]
        starts = np.concatenate([[pos], ends[:-1]])
        if bad_pos.size:
            nonacgt = np.searchsorted(bad_pos, ends) - np.searchsorted(bad_pos, starts)
        else:
            nonacgt = np.zeros(fit, dtype=np.int64)
        for s, e, nb in zip(starts.tolist(), ends.tolist(), nonacgt.tolist(), strict=True):
            piece = buf[s:e]
            if nb:
                ctx.ledger.note("genome", "piece_with_non_acgt_dropped")
                continue
            # One seeded hash per piece serves both duplicate removal and the split.
            digest = hashlib.blake2b(piece, digest_size=16, salt=salt).digest()
            if cfg.dedup:
                if digest in seen_pieces:
                    ctx.ledger.note("genome", "duplicate_piece_dropped")
                    continue
                seen_pieces.add(digest)
            u = int.from_bytes(digest[:8], "little") / 2.0**64
            split = "val" if u < cfg.val_fraction else "train"
            ctx.stats["genome/pieces"] += 1
            yield (
                split,
                {
                    "piece_id": f"{chrom}:{offset + s}",
                    "chrom": chrom,
                    "offset": offset + s,
                    "seq": piece.decode("ascii"),
                    "num_kmers": e - s - 5,
                    "source_file": path,
                },
            )
        pos = int(ends[-1])
