"""Detecting biological sequences inside free text (web documents for BSM round 3).

The BSM paper keeps web documents (FineWeb-Edu) that contain three or more biological sequences
and joins the extracted sequences with `<sep>`; it does not say how sequences were found. Our
detector, with every threshold a `DetectorConfig` field:

1. Text is split into lines and lines into whitespace-separated words. Leading "(" and trailing
   ".,;:)" punctuation is stripped from a word; a word that had trailing punctuation ends the
   run it belongs to.
2. A word is a *block* when its letters are all of one case and all in one alphabet:
   nucleotide = A C G T U N (either case, one case per word), protein = the uppercase amino-acid
   alphabet (20 standard + B Z X U O, and '*'). A word that fits both is a nucleotide block.
3. A *run* is a maximal sequence of blocks of the same kind on consecutive words, where words of
   digits only (position numbers in GenBank ORIGIN or numbered FASTA layouts) are skipped and a
   line break does not end the run (wrapped FASTA). A FASTA header line (starting with ">"),
   a blank line, or any other word ends it. Every block of a run but the last must have at least
   `min_block_len` letters; the last may be shorter (the end of a wrapped sequence).
4. A run is a sequence when its letters number at least `min_len` and it is diverse enough:
   nucleotides need at least 3 distinct bases, proteins at least `min_distinct_amino` distinct
   letters (this rejects capitalised words and acronyms). Nucleotide runs with U and no T are
   RNA, otherwise DNA; a run with both T and U is rejected.

Examples: "the primer ATGCGTACGTTAGC ..." (14 nt, below min_len 20) is not a sequence;
"1 atgaccatga ttacgccaag 21 cttgcatgcc tgcaggtcga" is one DNA sequence of 40 nt.

Prefilter (same answers, most text never reaches the per-word rules): the first block of a
run has at least m = min(min_len, min_block_len) letters (a run of one block has min_len of
them; in a longer run the first block is not the last), and a block is a substring of the text
of letters of one class: uppercase letters but J and '*' (nucleotide or protein), or lowercase
a c g t u n. So a text with fewer than k such substrings of m letters (counted without overlap,
which counts every first block at least once) holds fewer than k sequences. `candidate_blocks`
counts them with one `bytes.translate` (classes -> 'U' / 'l', everything else -> ' ') and two
`bytes.count`s, all in C; `detect_sequences` returns [] when there is none, and
the bound lets a caller with a threshold (web documents: 3) skip the rest.

Pure module: standard library only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NUC_UPPER = re.compile(r"[ACGTUN]+")
_NUC_LOWER = re.compile(r"[acgtun]+")
_PROTEIN = re.compile(r"[ACDEFGHIKLMNPQRSTVWYBZXUO*]+")
_DIGITS = re.compile(r"\d+")
_CLASSES = bytes(
    ord("U") if (65 <= b <= 90 and b != ord("J")) or b == ord("*")
    else ord("l") if b in b"acgtun" else ord(" ")
    for b in range(256)
)  # fmt: skip
_LEAD = "("
_TRAIL = ".,;:)"


@dataclass
class DetectorConfig:
    """Thresholds of the web-text sequence detector (see the module docstring)."""

    min_len: int = 20
    """Fewest letters for a run to count as a sequence."""
    min_block_len: int = 10
    """Fewest letters of every block of a run except its last."""
    min_distinct_amino: int = 8
    """Fewest distinct letters of a protein run (rejects words like 'MISSISSIPPI')."""


@dataclass
class DetectedSequence:
    modality: str  # dna / rna / protein
    seq: str  # uppercase letters
    line: int  # 1-based line where the run starts


def candidate_blocks(text: str, config: DetectorConfig | None = None) -> int:
    """An upper bound on the number of sequences in `text` (see the module docstring)."""
    cfg = config or DetectorConfig()
    m = min(cfg.min_len, cfg.min_block_len)
    if m < 1:
        return len(text) + 1  # no bound: every text goes through the rules
    classes = text.encode("utf-8", "surrogatepass").translate(_CLASSES)
    return classes.count(b"U" * m) + classes.count(b"l" * m)


def _classify(word: str) -> str | None:
    if _NUC_UPPER.fullmatch(word) or _NUC_LOWER.fullmatch(word):
        return "nuc"
    if _PROTEIN.fullmatch(word):
        return "protein"
    return None


def detect_sequences(text: str, config: DetectorConfig | None = None) -> list[DetectedSequence]:
    """All biological sequences found in `text`, in order of appearance."""
    cfg = config or DetectorConfig()
    if candidate_blocks(text, cfg) == 0:
        return []
    found: list[DetectedSequence] = []
    run_kind: str | None = None
    run_blocks: list[str] = []
    run_line = 0

    def close_run() -> None:
        nonlocal run_kind, run_blocks
        if run_kind is not None:
            seq = _accept(run_kind, run_blocks, cfg)
            if seq is not None:
                found.append(DetectedSequence(seq[0], seq[1], run_line))
        run_kind, run_blocks = None, []

    for line_no, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith(">"):
            close_run()
            continue
        for raw in stripped.split():
            word = raw.lstrip(_LEAD)
            core = word.rstrip(_TRAIL)
            ends_run = core != word
            if _DIGITS.fullmatch(core):
                if ends_run:
                    close_run()
                continue
            kind = _classify(core) if core else None
            # A block continues the run only if the previous block was long enough to be a
            # full line/group of a sequence (a short block ends a sequence).
            continues = (
                kind is not None and kind == run_kind and len(run_blocks[-1]) >= cfg.min_block_len
            )
            if not continues:
                close_run()
                if kind is not None:
                    run_kind, run_blocks, run_line = kind, [core], line_no
            else:
                run_blocks.append(core)
            if ends_run:
                close_run()
    close_run()
    return found


def _accept(kind: str, blocks: list[str], cfg: DetectorConfig) -> tuple[str, str] | None:
    seq = "".join(blocks).upper()
    if len(seq) < cfg.min_len:
        return None
    letters = set(seq)
    if kind == "nuc":
        if "T" in letters and "U" in letters:
            return None
        if len(letters & set("ACGTU")) < 3:
            return None
        return ("rna" if "U" in letters else "dna"), seq
    if len(letters) < cfg.min_distinct_amino:
        return None
    return "protein", seq
