"""The web detector's prefilter holds to the rules: the detector with it finds exactly what the
detector without it finds (the code before the prefilter, kept here as the reference), on the
sample's documents and on generated text with sequences in many layouts."""

from __future__ import annotations

import json
import random
import re

import pytest

from bsm_ray.ingest.detect import (
    DetectedSequence,
    DetectorConfig,
    candidate_blocks,
    detect_sequences,
)

# --- the reference: detect.py's rules as they were before the prefilter -------------------------

_NUC_UPPER = re.compile(r"[ACGTUN]+")
_NUC_LOWER = re.compile(r"[acgtun]+")
_PROTEIN = re.compile(r"[ACDEFGHIKLMNPQRSTVWYBZXUO*]+")
_DIGITS = re.compile(r"\d+")
_LEAD = "("
_TRAIL = ".,;:)"


def _reference_classify(word: str) -> str | None:
    if _NUC_UPPER.fullmatch(word) or _NUC_LOWER.fullmatch(word):
        return "nuc"
    if _PROTEIN.fullmatch(word):
        return "protein"
    return None


def reference_detect_sequences(
    text: str, config: DetectorConfig | None = None
) -> list[DetectedSequence]:
    """All biological sequences found in `text`, in order of appearance."""
    cfg = config or DetectorConfig()
    found: list[DetectedSequence] = []
    run_kind: str | None = None
    run_blocks: list[str] = []
    run_line = 0

    def close_run() -> None:
        nonlocal run_kind, run_blocks
        if run_kind is not None:
            seq = _reference_accept(run_kind, run_blocks, cfg)
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
            kind = _reference_classify(core) if core else None
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


def _reference_accept(
    kind: str, blocks: list[str], cfg: DetectorConfig
) -> tuple[str, str] | None:
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


# --- generated text -----------------------------------------------------------------------------

_PROSE = ("The gene was cloned and sequenced. Proteins fold; cells divide (see Fig. 2). DNA, RNA "
          "and NASA ACRONYMS LIKE INTERNATIONAL OR MISSISSIPPI appear, as do cat, gag, tag, "
          "attacca, 1998, 3.14 and UNICODE text: café, naïve, Ωmega.").split()  # fmt: skip
_AMINO = "ACDEFGHIKLMNPQRSTVWY"


def _seq(rnd: random.Random) -> str:
    kind = rnd.choice(["dna", "rna", "protein", "short", "lowdiv", "mixed_tu"])
    n = rnd.choice([5, 9, 10, 11, 19, 20, 21, 40, 75, 200])
    if kind == "dna":
        return "".join(rnd.choice("ACGTN") for _ in range(n))
    if kind == "rna":
        return "".join(rnd.choice("ACGU") for _ in range(n))
    if kind == "protein":
        return "".join(rnd.choice(_AMINO) for _ in range(n)) + rnd.choice(["", "*"])
    if kind == "short":
        return "".join(rnd.choice("ACGT") for _ in range(rnd.randint(3, 12)))
    if kind == "lowdiv":
        return "".join(rnd.choice("AC") for _ in range(n))
    return "".join(rnd.choice("ACGTU") for _ in range(n))


def _layout(rnd: random.Random, seq: str) -> str:
    """One sequence as web pages write it."""
    layout = rnd.choice(["inline", "lower", "fasta", "genbank", "groups", "paren", "punct",
                         "crlf", "split_case", "numbered_fasta"])  # fmt: skip
    if layout == "inline":
        return seq
    if layout == "lower":
        return seq.lower()
    if layout == "fasta":
        width = rnd.choice([10, 60, 70])
        lines = [seq[i : i + width] for i in range(0, len(seq), width)]
        return ">seq1 description\n" + "\n".join(lines)
    if layout == "genbank":
        s = seq.lower()
        lines = []
        for i in range(0, len(s), 60):
            groups = " ".join(s[j : j + 10] for j in range(i, min(i + 60, len(s)), 10))
            lines.append(f"{i + 1:>9} {groups}")
        return "ORIGIN\n" + "\n".join(lines) + "\n//"
    if layout == "groups":
        size = rnd.choice([3, 9, 10, 12])
        return " ".join(seq[i : i + size] for i in range(0, len(seq), size))
    if layout == "paren":
        return f"({seq})"
    if layout == "punct":
        return seq + rnd.choice([".", ",", ";", ":", ").", "!"])
    if layout == "crlf":
        return "\r\n".join(seq[i : i + 30] for i in range(0, len(seq), 30))
    if layout == "split_case":
        half = len(seq) // 2
        return seq[:half] + seq[half:].lower()
    return "\n".join(f"{i + 1} {seq[i : i + 20]}" for i in range(0, len(seq), 20))


def _document(rnd: random.Random) -> str:
    parts = []
    for _ in range(rnd.randint(0, 60)):
        if rnd.random() < 0.15:
            parts.append(_layout(rnd, _seq(rnd)))
        else:
            parts.append(rnd.choice(_PROSE))
        parts.append(rnd.choice([" ", " ", " ", "\n", "\n\n", "\t", "\u2028", " \x0b"]))
    return "".join(parts)


_CONFIGS = [
    DetectorConfig(),
    DetectorConfig(min_len=10),
    DetectorConfig(min_block_len=4),
    DetectorConfig(min_len=8, min_block_len=12),
    DetectorConfig(min_distinct_amino=3),
]


def _same(text: str) -> None:
    for cfg in _CONFIGS:
        expected = reference_detect_sequences(text, cfg)
        assert detect_sequences(text, cfg) == expected, (cfg, text[:200])
        # The bound holds: a text the bound rejects for a threshold k has fewer than k sequences.
        assert candidate_blocks(text, cfg) >= len(expected), (cfg, text[:200])


def test_prefilter_keeps_every_answer_on_generated_layouts():
    rnd = random.Random(20)
    texts = [_document(rnd) for _ in range(1500)]
    num_with = sum(len(reference_detect_sequences(t)) >= 3 for t in texts)
    num_without = sum(not reference_detect_sequences(t) for t in texts)
    assert num_with > 100 and num_without > 100  # both answers are exercised
    for text in texts:
        _same(text)


def test_prefilter_keeps_every_answer_on_the_sample_documents():
    from bsm_ray.ingest.samples import sample_inputs

    path = sample_inputs(0, 60_000)["web"][0]
    with open(path, encoding="utf-8") as fh:
        texts = [json.loads(line)["text"] for line in fh if line.strip()]
    assert len(texts) > 100
    for text in texts:
        _same(text)


@pytest.mark.parametrize(
    "text",
    ["", "ACGTACGTACGTACGTACGTAC", "acgtacgtac gtacgtacgt", "ACGTACGTAC\nGTACGTACGT",
     "(ACGTACGTACGTACGTACGTT).", "MKVLAAGIVGLLLAAQPAMA\ud800", "café ACGTACGTACGTACGTACGT",
     "ACGTACGTAC" + "\u00a0" + "GTACGTACGT", "*" * 30, "J" * 40],
)  # fmt: skip
def test_prefilter_edge_cases(text):
    _same(text)
