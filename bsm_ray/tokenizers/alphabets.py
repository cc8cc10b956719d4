"""Sequence alphabets (IUPAC) and fast alphabet checks.

Used by both the tokenizers and the ingestion validation, so the letters a modality accepts
are defined once. All alphabets are uppercase: ingestion uppercases input (lowercase in FASTA
is soft-masking, which we do not keep), and the tokenizers are case-sensitive on purpose
(DNABERT tokens must never be lowercased, REFERENCE.md section 1).

Pure module: numpy only.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Modality = Literal["dna", "rna", "protein"]
MODALITIES: tuple[str, ...] = ("dna", "rna", "protein")

# IUPAC nucleotide codes: the 4 bases, N, and the ambiguity codes.
DNA_ALPHABET = "ACGTNRYSWKMBDHV"
RNA_ALPHABET = "ACGUNRYSWKMBDHV"
# 20 standard amino acids, B (D/N), Z (E/Q), X (any), U (selenocysteine), O (pyrrolysine),
# and '*' for a stop (kept: translated ORFs and some FASTA files end with it).
PROTEIN_ALPHABET = "ACDEFGHIKLMNPQRSTVWYBZXUO*"

ALPHABETS: dict[str, str] = {
    "dna": DNA_ALPHABET,
    "rna": RNA_ALPHABET,
    "protein": PROTEIN_ALPHABET,
}


def _membership_table(letters: str) -> np.ndarray:
    table = np.zeros(256, dtype=bool)
    table[np.frombuffer(letters.encode("ascii"), dtype=np.uint8)] = True
    return table


_VALID = {name: _membership_table(letters) for name, letters in ALPHABETS.items()}
_LETTER_BYTES = {name: letters.encode("ascii") for name, letters in ALPHABETS.items()}


def first_invalid(seq: bytes | str, modality: str) -> int:
    """Index of the first character outside the modality's alphabet, or -1 if all are valid.

    Vectorized: one table lookup over the byte buffer (no per-character Python loop).
    """
    if isinstance(seq, str):
        seq = seq.encode("ascii", errors="replace")  # non-ASCII -> '?', which is invalid
    if not seq.translate(None, _LETTER_BYTES[modality]):  # the common case, all valid: one pass
        return -1
    arr = np.frombuffer(seq, dtype=np.uint8)
    ok = _VALID[modality][arr]
    if ok.all():
        return -1
    return int(np.argmin(ok))


def guess_modality(seq: str) -> str:
    """Best guess of a sequence's modality from its letters (uppercase input).

    Protein if any letter is outside the nucleotide codes; RNA if it has U and no T;
    DNA otherwise. A short all-ACGT peptide would be called DNA: give the modality
    explicitly where it is known.
    """
    letters = set(seq)
    if letters <= set(DNA_ALPHABET):
        return "dna"
    if letters <= set(RNA_ALPHABET):
        return "rna"
    return "protein"
