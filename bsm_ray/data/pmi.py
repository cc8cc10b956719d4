"""k-mer counting and NPMI of k-mers (CM-GEMS / GeneMask, REFERENCE.md section 4).

Counting. `KmerCounter` counts every k-mer for k = 1..max_k over byte sequences, skipping any
window that holds a letter other than uppercase A/C/G/T. It is vectorized: per buffer, the ids
of all windows of length k are built from those of length k-1 with one shift-and-add over the
whole array, then counted with `np.bincount` (no per-base Python loop). Long records are fed
in chunks with the last max_k-1 bases carried over, and windows that start in the carry were
already counted with the previous chunk, so chunking never changes the counts.

NPMI. For a k-mer w with count f >= min_count,

    PMI(w)  = min over segmentations s of w into >= 2 contiguous pieces of
              log p(w) - sum_{piece in s} log p(piece)
    NPMI(w) = PMI(w) * ln f / (ln f + ln c),      c = min_count

with natural logs and p(x) = count(x) / T_len(x). Two definitions of the segmentations:
`max_piece_len=None` allows every piece length (the paper); `max_piece_len=2` only pieces of
length 1 or 2 (the authors' published table). The normaliser T: by default the number of counted
windows of each length (the sum of the counts of that length), so every p is a frequency among
windows of its own length; `total=T` uses one shared T for every length (the authors' table).
Rank 1 is the highest NPMI; ties go to the lower DNABERT id (A,T,C,G letter order).

Pure module: numpy only (parallel counting with Ray lives in `pmi_build.py`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from bsm_ray.tokenizers.kmer import BASE_CODE, BASE_ORDER, NUM_SPECIAL


def kmer_string(code: int, k: int) -> str:
    """Base-4 code (A=0, T=1, C=2, G=3; first letter most significant) -> k-mer string."""
    return "".join(BASE_ORDER[(code >> (2 * (k - 1 - i))) & 3] for i in range(k))


def kmer_code(kmer: str) -> int:
    code = 0
    for letter in kmer:
        code = code * 4 + BASE_ORDER.index(letter)
    return code


@dataclass
class KmerCounter:
    """Counts of every k-mer for k = 1..max_k; `counts[k][code]` (index 0 unused)."""

    max_k: int = 6
    counts: list[np.ndarray] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not 1 <= self.max_k <= 12:
            raise ValueError(f"max_k must be 1..12, got {self.max_k}")
        if not self.counts:
            self.counts = [np.zeros(0, dtype=np.int64)] + [
                np.zeros(4**k, dtype=np.int64) for k in range(1, self.max_k + 1)
            ]

    def add(self, buf: bytes, skip: int = 0) -> None:
        """Count the windows of `buf`, except those starting before `skip` whose k is <= skip.

        `skip` = length of a carry from the previous chunk of the same record: a window of
        length k starting at carry position i was counted with that chunk iff i < skip-(k-1).

        One pass builds the ids of the windows of length K = max_k and counts them; the counts
        of every shorter k follow by summing over the K-mers' suffixes (a K-window's first k
        letters are a k-window at the same position). The few k-windows that are valid where
        the K-window is not (near an invalid letter or the end of the buffer) are added from
        the same ids, shifted.
        """
        big_k = self.max_k
        codes = BASE_CODE[np.frombuffer(buf, dtype=np.uint8)]
        n = codes.size
        if n == 0:
            return
        bad = codes == 4
        any_bad = bool(bad.any())
        letters = codes & 3 if any_bad else codes
        num_big = n - big_k + 1  # K-windows in the buffer
        big_start = max(0, skip - (big_k - 1))
        ids = np.zeros(0, dtype=np.int32)
        bad_big = np.zeros(0, dtype=bool)
        if num_big > 0:
            ids = letters[:num_big].astype(np.int32)
            for j in range(1, big_k):  # Horner over the K letters of every window at once
                ids <<= 2
                ids += letters[j : j + num_big]
            if any_bad:
                bad_big = bad[:num_big].copy()
                for j in range(1, big_k):
                    bad_big |= bad[j : j + num_big]
            valid = ids[big_start:]
            if any_bad:
                valid = valid[~bad_big[big_start:]]
            big_counts = np.bincount(valid, minlength=4**big_k)
            self.counts[big_k] += big_counts
            for k in range(1, big_k):
                self.counts[k] += big_counts.reshape(4**k, -1).sum(axis=1)
        # k-windows counted where the K-window was not: invalid K-window or past the last one.
        bad_k = bad
        for k in range(1, big_k):
            if k > 1:
                bad_k = bad_k[:-1] | bad[k - 1 :]
            start = max(0, skip - (k - 1))
            # The suffix sums above also counted the k-prefixes of K-windows that start in the
            # carry before `start`: those k-windows were counted with the previous chunk.
            for p in range(big_start, min(start, num_big)):
                if not (any_bad and bad_big[p]):
                    self.counts[k][int(ids[p]) >> (2 * (big_k - k))] -= 1
            if any_bad and num_big > 0:
                cand = np.flatnonzero(bad_big[start:] & ~bad_k[start:num_big]) + start
                if cand.size:
                    self.counts[k] += np.bincount(ids[cand] >> (2 * (big_k - k)),
                                                  minlength=4**k)  # fmt: skip
            for p in range(max(start, num_big, 0), n - k + 1):  # at most K-1 tail windows
                if not bad_k[p]:
                    code = 0
                    for letter in letters[p : p + k]:
                        code = code * 4 + int(letter)
                    self.counts[k][code] += 1

    def add_sequences(self, seqs: Iterable[bytes | str]) -> None:
        """Count many short sequences (e.g. genome pieces): joined with 'N', one pass."""
        parts = [s.encode("ascii", errors="replace") if isinstance(s, str) else s for s in seqs]
        if parts:
            self.add(b"N".join(parts))

    def merge(self, other: KmerCounter) -> KmerCounter:
        if other.max_k != self.max_k:
            raise ValueError("cannot merge counts of different max_k")
        for k in range(1, self.max_k + 1):
            self.counts[k] += other.counts[k]
        return self

    def windows(self, k: int) -> int:
        """Number of counted windows of length k."""
        return int(self.counts[k].sum())

    def as_mapping(self) -> dict[str, int]:
        """Every observed 1..max_k-mer -> count (the input of `npmi_from_counts`)."""
        out: dict[str, int] = {}
        for k in range(1, self.max_k + 1):
            for code in np.flatnonzero(self.counts[k]):
                out[kmer_string(int(code), k)] = int(self.counts[k][code])
        return out


def count_fasta(path: str, max_k: int = 6, chunk_bytes: int = 1 << 22) -> KmerCounter:
    """Count k-mers of every record of a FASTA file (plain or gzipped), streaming.

    Letters are uppercased first (soft-masked regions count like the rest).
    """
    from bsm_ray.ingest.records import iter_fasta

    counter = KmerCounter(max_k)
    carry = b""
    for chunk in iter_fasta(path, chunk_bytes=chunk_bytes):
        if chunk.first:
            carry = b""
        buf = carry + chunk.seq.upper()
        counter.add(buf, skip=len(carry))
        carry = buf[-(max_k - 1) :] if max_k > 1 else b""
    return counter


def segmentations(k: int, max_piece_len: int | None = None) -> list[tuple[int, ...]]:
    """Compositions of k into >= 2 parts (piece lengths, in order), parts <= max_piece_len."""
    out = []
    for cuts in itertools.product((0, 1), repeat=k - 1):
        lengths, run = [], 1
        for cut in cuts:
            if cut:
                lengths.append(run)
                run = 1
            else:
                run += 1
        lengths.append(run)
        if len(lengths) >= 2 and (max_piece_len is None or max(lengths) <= max_piece_len):
            out.append(tuple(lengths))
    return sorted(out)


@dataclass
class PmiRow:
    kmer: str
    count: int
    pmi: float
    npmi: float


def pmi_rows(
    counts: Mapping[str, int],
    k: int = 6,
    min_count: int = 101,
    max_piece_len: int | None = None,
    total: float | None = None,
) -> list[PmiRow]:
    """PMI and NPMI of every k-mer in `counts` with count >= min_count, in DNABERT id order.

    `counts` must hold the counts of every 1..k-mer (e.g. `KmerCounter.as_mapping()`); strings
    with letters other than A/C/G/T are ignored.
    """
    if min_count < 2:
        raise ValueError("min_count must be >= 2 (ln c is a term of the normaliser)")
    # Counts and log p per length, as arrays over base-4 codes; -inf where never seen.
    freqs = [np.zeros(0)] + [np.zeros(4**n, dtype=np.float64) for n in range(1, k + 1)]
    for kmer, count in counts.items():
        n = len(kmer)
        if 1 <= n <= k and count > 0 and set(kmer) <= set(BASE_ORDER):
            freqs[n][kmer_code(kmer)] = count
    logp = [np.zeros(0)]
    for n in range(1, k + 1):
        norm = float(total) if total is not None else freqs[n].sum()
        with np.errstate(divide="ignore"):
            logp.append(np.log(freqs[n]) - math.log(norm) if norm > 0 else freqs[n] - np.inf)
    segs = segmentations(k, max_piece_len)
    if not segs:
        raise ValueError(f"no segmentation of a {k}-mer into pieces <= {max_piece_len}")
    codes = np.arange(4**k, dtype=np.int64)
    best = np.full(4**k, -np.inf)  # max over segmentations of sum log p(piece)
    for lengths in segs:
        seg_logp = np.zeros(4**k)
        start = 0
        for n in lengths:
            piece = (codes >> (2 * (k - start - n))) & (4**n - 1)
            seg_logp += logp[n][piece]
            start += n
        np.maximum(best, seg_logp, out=best)
    ln_c = math.log(min_count)
    rows = []
    for code in np.flatnonzero(freqs[k] >= min_count):
        kmer = kmer_string(int(code), k)
        if not np.isfinite(best[code]):
            raise ValueError(f"counts are inconsistent: a piece of {kmer} has no count")
        pmi = float(logp[k][code] - best[code])
        ln_f = math.log(freqs[k][code])
        rows.append(PmiRow(kmer, int(freqs[k][code]), pmi, pmi * ln_f / (ln_f + ln_c)))
    return rows


def npmi_from_counts(
    counts: Mapping[str, int],
    k: int = 6,
    min_count: int = 101,
    max_piece_len: int | None = None,
    total: float | None = None,
) -> dict[str, float]:
    """k-mer -> NPMI for every k-mer with count >= min_count (see the module docstring).

    `max_piece_len=None`: all segmentations (the paper); 2: the authors' table. `total`: one
    shared normaliser for every length; default, the number of counted windows of each length.
    """
    return {r.kmer: r.npmi for r in pmi_rows(counts, k, min_count, max_piece_len, total)}


def rank_kmers(scores: Mapping[str, float]) -> dict[str, int]:
    """Rank 1 = highest score; ties go to the lower DNABERT id (letter order A, T, C, G)."""
    order = sorted(scores, key=lambda w: (-scores[w], kmer_code(w)))
    return {w: i + 1 for i, w in enumerate(order)}


def rank_table(ranks: Mapping[str, int], k: int = 6, vocab_size: int | None = None) -> np.ndarray:
    """Token id -> rank, for masking. Unranked k-mers (below min_count), [UNK] and the special
    tokens get rank `len(ranks) + 1`, worse than every ranked k-mer."""
    vocab_size = vocab_size or NUM_SPECIAL + 4**k
    worst = len(ranks) + 1
    table = np.full(vocab_size, worst, dtype=np.int32)
    for kmer, rank in ranks.items():
        table[NUM_SPECIAL + kmer_code(kmer)] = rank
    return table
