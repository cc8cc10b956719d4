"""Zero-shot mutation fitness (BSM Appendix C; ProteinGym-style DMS data).

Input: a wild-type sequence and a CSV of variants with measured fitness, one row per variant:

    mutant,DMS_score
    A23G,0.91
    A23G:L45P,-1.20        (several substitutions joined by ':')

Mutations are `<wild-type letter><1-based position><new letter>`. Every mutation is checked
against the wild type; a row that names a position outside it, a letter that is not the wild
type's, a letter outside the modality's alphabet, or an unparsable fitness is an `InputError`
naming the file, the row and the reason (`on_invalid: skip` counts it by reason instead).

Score (causal models, BSM): log p(mutant) - log p(wild type), each the summed log-probability
of the sequence's letters after its modality tag. With `context_dna` (the gene DNA) the
sequence is scored after `<dna>GENE<sep>`, the pair format of pretraining. The metric is the
Spearman correlation between scores and measured fitness.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from bsm_ray.errors import InputError
from bsm_ray.eval.metrics import spearman

_MUTATION = re.compile(r"^([A-Z*])(\d+)([A-Z*])$")


@dataclass
class FitnessConfig:
    """One DMS assay scored zero-shot by a causal model."""

    variants_csv: str = ""
    wild_type: str = ""
    """The wild-type sequence (letters), or a FASTA path whose first record is it."""
    modality: str = "protein"
    mutant_column: str = "mutant"
    fitness_column: str = "DMS_score"
    context_dna: str = ""
    """Optional gene DNA (letters or FASTA path) scored as the pair's first segment."""
    on_invalid: str = "error"
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.modality not in ("dna", "rna", "protein"):
            raise ValueError(f"modality must be dna, rna or protein, got {self.modality!r}")
        if self.on_invalid not in ("error", "skip"):
            raise ValueError(f"on_invalid must be error or skip, got {self.on_invalid!r}")


@dataclass
class Variants:
    mutants: list[str] = field(default_factory=list)
    sequences: list[str] = field(default_factory=list)
    fitness: list[float] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)


def apply_mutations(wild_type: str, mutant: str, modality: str = "protein",
                    where: tuple[str, str] = ("", "")) -> str:  # fmt: skip
    """The mutant sequence, after checking every substitution against the wild type."""
    from bsm_ray.tokenizers.alphabets import first_invalid

    path, record = where
    seq = list(wild_type)
    for part in mutant.strip().split(":"):
        m = _MUTATION.match(part.strip().upper())
        if m is None:
            raise InputError(path, record, "bad_mutation", f"{part!r} is not like A23G")
        old, pos, new = m.group(1), int(m.group(2)), m.group(3)
        if not 1 <= pos <= len(seq):
            raise InputError(path, record, "position_outside_wild_type",
                             f"{part}: wild type has {len(seq)} letters")  # fmt: skip
        if wild_type[pos - 1] != old:
            raise InputError(path, record, "wild_type_mismatch",
                             f"{part}: wild type has {wild_type[pos - 1]} at {pos}")  # fmt: skip
        if first_invalid(new, modality) >= 0:
            raise InputError(path, record, "letter_outside_alphabet",
                             f"{part}: {new!r} is not a {modality} letter")  # fmt: skip
        seq[pos - 1] = new
    return "".join(seq)


def read_variants(cfg: FitnessConfig, wild_type: str) -> Variants:
    out = Variants()
    with open(cfg.variants_csv, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in (cfg.mutant_column, cfg.fitness_column)
                   if c not in (reader.fieldnames or [])]  # fmt: skip
        if missing:
            raise InputError(cfg.variants_csv, None, "missing_column",
                             f"{missing}; the header has {reader.fieldnames}")  # fmt: skip
        for i, row in enumerate(reader, start=2):  # line 1 is the header
            where = (cfg.variants_csv, f"line {i} ({row[cfg.mutant_column]})")
            try:
                try:
                    value = float(row[cfg.fitness_column])
                except (TypeError, ValueError):
                    raise InputError(*where, "bad_fitness",
                                     repr(row[cfg.fitness_column])) from None  # fmt: skip
                if not np.isfinite(value):
                    raise InputError(*where, "bad_fitness", repr(row[cfg.fitness_column]))
                seq = apply_mutations(wild_type, row[cfg.mutant_column], cfg.modality, where)
            except InputError as exc:
                if cfg.on_invalid == "error":
                    raise
                out.skipped[exc.reason] += 1
                continue
            out.mutants.append(row[cfg.mutant_column])
            out.sequences.append(seq)
            out.fitness.append(value)
    return out


def read_sequence(value: str) -> str:
    """Letters as given, or the first record of a FASTA file."""
    from pathlib import Path

    if value and Path(value).is_file():
        from bsm_ray.ingest.records import read_fasta_records

        for _id, _desc, _i, seq in read_fasta_records(value):
            return seq.upper()
        raise InputError(value, None, "empty_fasta", "no record")
    return value.strip().upper()


def sequence_log_probs(model, sequences: list[str], modality: str, context_dna: str = "",
                       batch_size: int = 8) -> np.ndarray:  # fmt: skip
    """Summed log-probability of each sequence's letters (after its tag and any context)."""
    from bsm_ray.eval.central_dogma import score_examples
    from bsm_ray.tokenizers.char import BsmCharTokenizer, format_document

    tok = BsmCharTokenizer()
    prefix = [("dna", context_dna)] if context_dna else []
    examples = [(tok.encode(format_document([*prefix, (modality, s)])), len(s))
                for s in sequences]  # fmt: skip
    return score_examples(model, examples, batch_size=batch_size)


def evaluate(model, cfg: FitnessConfig) -> dict:
    """Scores of every variant and their Spearman correlation with the measured fitness."""
    wild_type = read_sequence(cfg.wild_type)
    context = read_sequence(cfg.context_dna) if cfg.context_dna else ""
    variants = read_variants(cfg, wild_type)
    if len(variants.sequences) < 2:
        usable, skipped = len(variants.sequences), dict(variants.skipped)
        raise InputError(cfg.variants_csv, None, "too_few_variants",
                         f"{usable} usable rows; skipped {skipped}")  # fmt: skip
    logp = sequence_log_probs(model, [wild_type, *variants.sequences], cfg.modality, context,
                              cfg.batch_size)  # fmt: skip
    scores = logp[1:] - logp[0]
    return {
        "variants": len(scores),
        "skipped": dict(variants.skipped),
        "spearman": spearman(scores, variants.fitness),
        "scores": dict(zip(variants.mutants, scores.tolist(), strict=True)),
    }
