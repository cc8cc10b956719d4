"""MLM masking strategies as pure, vectorized batch functions (REFERENCE.md section 5).

Every function takes `input_ids` [batch, length] (DNABERT k-mer ids: `[CLS] k-mers [SEP] [PAD]`)
and `attention_mask` [batch, length], and returns a `MaskedBatch`: the masked input ids and the
labels (the original id at masked positions, -100 elsewhere).

Shared skeleton:
- Eligible positions are the real k-mer tokens: attended, and not [CLS]/[SEP]/[PAD]/[MASK]
  ([UNK] k-mers are real positions). Spans are clipped to [first, last] eligible position,
  so no span ever touches [CLS], [SEP] or padding.
- A DNABERT "centre" c masks the 6-span c-2..c+3; a "PMI token" j masks the 11-span j-5..j+5.
- Masked positions are replaced 80% by [MASK], 10% by a random k-mer id, 10% left unchanged.
- Ranks are looked up by *content*: rank_table[token id at the position] (the authors' code
  used the position index instead; REFERENCE.md section 5 says why we do not).

Strategies:
- `dnabert`: centres ~ Bernoulli(p=0.025) over eligible positions.
- `genemask`: centres ~ Bernoulli(0.0176); each keeps its 6-span; each centre's best-ranked k-mer
  inside its (clipped) 6-span is found (ties: lower position); the best-ranked half of the
  centres (ceil(n/2) of n, all of them when n <= 8; ties: lower position) also mask the 11-span
  around that k-mer.
- `global`: k = number of Bernoulli(p=0.0136) successes over the eligible positions; the 11-spans
  of the row's k best-ranked positions (ties: lower position) are masked; overlaps merge.
- CM-Step and CM-GEMS choose one of these per batch (`curriculum.py` holds their schedules).

Randomness and determinism: every random number is a counter-based hash (splitmix64) of
(seed, sample id, step, stream, index), so a row's mask depends only on those, not on batch
composition, order, worker count or restarts. Bernoulli(p) draws over a row's eligible positions
(DNABERT and GeneMask centres, Global's k) are taken as the arrivals of a Bernoulli process:
draw i of the row's stream gives the gap 1 + floor(ln(1 - u_i) / ln(1 - p)) to the next success,
starting before the first eligible position. That is the same distribution as one draw per
position with ~p*length draws instead of `length`. It assumes a row's eligible positions are
contiguous, which the tokenizer's `[CLS] k-mers [SEP] [PAD]...` layout guarantees ([UNK] k-mers
count as eligible). The replacement of masked position j uses draw j of the replacement streams.
No per-position Python loop: numpy over the whole batch.

Pure module: numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bsm_ray.tokenizers.kmer import MASK_ID, NUM_SPECIAL, UNK_ID

IGNORE_INDEX = -100
DNABERT_P = 0.025
GENEMASK_P = 0.0176
GLOBAL_P = 0.0136
GENEMASK_ALL_BELOW = 8  # with this many centres or fewer, every centre gets its 11-span
STRATEGIES = ("dnabert", "genemask", "global")

# Random streams (one per use of randomness, so they never alias).
_S_CENTRE, _S_REPLACE, _S_RANDOM_ID, _S_GLOBAL_K = 1, 2, 3, 4
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@dataclass
class MaskedBatch:
    input_ids: np.ndarray  # [batch, length] int64, masked
    labels: np.ndarray  # [batch, length] int64, original id where masked, -100 elsewhere
    strategy: str

    @property
    def masked(self) -> np.ndarray:
        return self.labels != IGNORE_INDEX


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer (uint64 in, uint64 out), vectorized."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def _row_keys(seed: int, sample_ids: np.ndarray, step: int, stream: int) -> np.ndarray:
    """One 64-bit key per row from (seed, stream, step, sample id)."""
    with np.errstate(over="ignore"):
        key = _mix(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * _GOLDEN + np.uint64(stream))
        key = _mix(key ^ np.uint64(step & 0xFFFFFFFFFFFFFFFF) * _M1)
        return _mix(key ^ np.asarray(sample_ids, dtype=np.uint64) * _M2)


def _to_unit(bits: np.ndarray) -> np.ndarray:
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def uniforms(seed: int, sample_ids: np.ndarray, step: int, stream: int, length: int) -> np.ndarray:
    """[batch, length] floats in [0, 1): draw i of row r is a pure function of
    (seed, sample id, step, stream, i)."""
    keys = _row_keys(seed, sample_ids, step, stream)
    with np.errstate(over="ignore"):
        index = np.arange(length, dtype=np.uint64) * _GOLDEN
        return _to_unit(_mix(keys[:, None] ^ index[None, :]))


def _uniforms_at(keys: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The same draws as `uniforms`, only at the given (row, index) pairs (sparse)."""
    with np.errstate(over="ignore"):
        return _to_unit(_mix(keys[rows] ^ cols.astype(np.uint64) * _GOLDEN))


def eligible_positions(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Real k-mer tokens: attended and not [CLS]/[SEP]/[PAD]/[MASK]."""
    # Ids 0..4 are [PAD] [UNK] [CLS] [SEP] [MASK]: eligible = [UNK] or a k-mer id (>= 5).
    ids = input_ids
    return (attention_mask != 0) & ((ids > MASK_ID) | (ids == UNK_ID))


def _bounds(eligible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and last eligible position of each row (last < first for a row with none)."""
    length = eligible.shape[1]
    any_ = eligible.any(axis=1)
    first = np.where(any_, eligible.argmax(axis=1), 0)
    last = np.where(any_, length - 1 - eligible[:, ::-1].argmax(axis=1), -1)
    return first, last


def bernoulli_arrivals(
    eligible: np.ndarray, seed: int, sample_ids: np.ndarray, step: int, stream: int, p: float
) -> np.ndarray:
    """[batch, length] bool: independent Bernoulli(p) draws at the eligible positions.

    Drawn as the arrivals of a Bernoulli process: gaps between successes are Geometric(p)
    (g = 1 + floor(ln(1-u) / ln(1-p))), so a row needs ~p*length draws instead of `length`.
    Draw i of a row never depends on how many draws are taken, so the result is exact and
    deterministic. Rows' eligible positions are contiguous ([CLS] k-mers [SEP] [PAD]...).
    """
    batch, length = eligible.shape
    first, last = _bounds(eligible)
    n_max = int((last - first + 1).max(initial=0))
    out = np.zeros_like(eligible)
    if n_max <= 0 or p <= 0:
        return out
    keys = _row_keys(seed, sample_ids, step, stream)
    log_q = np.log1p(-p)
    draws = int(p * n_max + 6 * np.sqrt(p * n_max) + 8)
    while True:
        with np.errstate(over="ignore"):
            index = np.arange(draws, dtype=np.uint64) * _GOLDEN
            u = _to_unit(_mix(keys[:, None] ^ index[None, :]))
        gaps = 1 + np.floor(np.log1p(-u) / log_q).astype(np.int64)
        pos = first[:, None] - 1 + np.cumsum(gaps, axis=1)
        if (pos[:, -1] > last).all() or draws >= n_max:
            break
        draws = min(2 * draws, n_max)  # a rare row had more arrivals: draw more
    hit = pos <= last[:, None]
    rows = np.broadcast_to(np.arange(batch)[:, None], pos.shape)[hit]
    out[rows, pos[hit]] = True
    return out & eligible


def _dilate(marks: np.ndarray, before: int, after: int) -> np.ndarray:
    """out[j] = any(marks[j-after .. j+before]): each mark at c covers c-before .. c+after."""
    out = marks.copy()
    length = marks.shape[1]
    for d in range(1, before + 1):  # mark at c covers c-d
        out[:, : length - d] |= marks[:, d:]
    for d in range(1, after + 1):  # mark at c covers c+d
        out[:, d:] |= marks[:, : length - d]
    return out


def _replace(
    input_ids: np.ndarray,
    masked: np.ndarray,
    seed: int,
    sample_ids: np.ndarray,
    step: int,
    vocab_size: int,
    strategy: str,
) -> MaskedBatch:
    """80% [MASK], 10% random k-mer id, 10% unchanged; labels -100 where not masked.

    Random numbers are drawn only at the masked positions.
    """
    ids = np.array(input_ids, dtype=np.int64, copy=True)  # inputs may be read-only (Ray Data)
    flat = np.flatnonzero(masked)  # flat indices are cheaper than (row, col) pairs
    labels = np.full(ids.shape, IGNORE_INDEX, dtype=np.int64)
    labels.reshape(-1)[flat] = ids.reshape(-1)[flat]
    rows, cols = np.divmod(flat, ids.shape[1])
    u = _uniforms_at(_row_keys(seed, sample_ids, step, _S_REPLACE), rows, cols)
    ids_flat = ids.reshape(-1)
    ids_flat[flat[u < 0.8]] = MASK_ID
    to_random = (u >= 0.8) & (u < 0.9)
    r = _uniforms_at(
        _row_keys(seed, sample_ids, step, _S_RANDOM_ID), rows[to_random], cols[to_random]
    )
    ids_flat[flat[to_random]] = NUM_SPECIAL + (r * (vocab_size - NUM_SPECIAL)).astype(np.int64)
    return MaskedBatch(ids, labels, strategy)


def dnabert_mask(
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    seed: int,
    sample_ids: np.ndarray,
    step: int,
    p: float = DNABERT_P,
    vocab_size: int = 4101,
) -> MaskedBatch:
    """DNABERT random spans: centres ~ Bernoulli(p), each masks c-2..c+3 (clipped)."""
    eligible = eligible_positions(input_ids, attention_mask)
    centres = bernoulli_arrivals(eligible, seed, sample_ids, step, _S_CENTRE, p)
    masked = _dilate(centres, 2, 3) & eligible
    return _replace(input_ids, masked, seed, sample_ids, step, vocab_size, "dnabert")


def _worst_rank(rank_table: np.ndarray) -> int:
    return int(rank_table.max()) + 1


def genemask_mask(
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    rank_table: np.ndarray,
    seed: int,
    sample_ids: np.ndarray,
    step: int,
    p: float = GENEMASK_P,
    vocab_size: int = 4101,
) -> MaskedBatch:
    """GeneMask: DNABERT centres (p=0.0176) + 11-spans around the best PMI k-mer of the best
    half of the centres (all when <= 8)."""
    eligible = eligible_positions(input_ids, attention_mask)
    batch, length = input_ids.shape
    centres = bernoulli_arrivals(eligible, seed, sample_ids, step, _S_CENTRE, p)
    masked = _dilate(centres, 2, 3) & eligible
    rows, cols = np.nonzero(centres)
    if rows.size:
        # Best (rank, position) in each centre's 6-span c-2..c+3, as one composite key
        # rank*length + position (min wins, ties -> lower position); only the spans are read.
        worst = _worst_rank(rank_table)
        window = np.clip(cols[:, None] + np.arange(-2, 4)[None, :], 0, length - 1)
        win_rows = rows[:, None]
        ranks = rank_table[input_ids[win_rows, window]].astype(np.int64)
        ranks[~eligible[win_rows, window]] = worst + 1
        best_key = (ranks * length + window).min(axis=1)
        # Order centres within their row by their best k-mer's (rank, position).
        order = np.lexsort((best_key, rows))
        rows_o, best_pos_o = rows[order], best_key[order] % length
        counts = np.bincount(rows_o, minlength=batch)
        first = np.cumsum(counts) - counts
        within = np.arange(rows_o.size) - first[rows_o]
        n = counts[rows_o]
        keep = (n <= GENEMASK_ALL_BELOW) | (within < (n + 1) // 2)
        pmi_marks = np.zeros_like(centres)
        pmi_marks[rows_o[keep], best_pos_o[keep]] = True
        masked |= _dilate(pmi_marks, 5, 5) & eligible
    return _replace(input_ids, masked, seed, sample_ids, step, vocab_size, "genemask")


def global_k(
    eligible: np.ndarray, seed: int, sample_ids: np.ndarray, step: int, p: float = GLOBAL_P
) -> np.ndarray:
    """k per row: the number of Bernoulli(p) successes over the row's eligible positions."""
    return bernoulli_arrivals(eligible, seed, sample_ids, step, _S_GLOBAL_K, p).sum(axis=1)


def global_mask(
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    rank_table: np.ndarray,
    seed: int,
    sample_ids: np.ndarray,
    step: int,
    p: float = GLOBAL_P,
    vocab_size: int = 4101,
    return_k: bool = False,
):
    """Global PMI masking: the 11-spans of the row's k best-ranked positions, k ~ Bin(n, p)."""
    eligible = eligible_positions(input_ids, attention_mask)
    batch, length = input_ids.shape
    k = global_k(eligible, seed, sample_ids, step, p)
    masked = np.zeros_like(eligible)
    kmax = int(k.max(initial=0))
    if kmax:
        # Composite key rank*length + position: unique per row, so one row sort orders the
        # positions by rank with ties to the lower position. int32 when it fits (fast sort).
        worst = _worst_rank(rank_table)
        dtype = np.int32 if (worst + 2) * length < 2**31 else np.int64
        key = rank_table[input_ids].astype(dtype)
        key *= length
        key += np.arange(length, dtype=dtype)[None, :]
        key[~eligible] = np.iinfo(dtype).max
        kmax = min(kmax, length)
        top = np.sort(key, axis=1)[:, :kmax]
        chosen = np.arange(kmax)[None, :] < k[:, None]
        marks = np.zeros_like(eligible)
        rows = np.broadcast_to(np.arange(batch)[:, None], top.shape)[chosen]
        marks[rows, top[chosen] % length] = True
        masked = _dilate(marks, 5, 5) & eligible
    out = _replace(input_ids, masked, seed, sample_ids, step, vocab_size, "global")
    return (out, k) if return_k else out


def apply_mask(
    strategy: str,
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    seed: int,
    sample_ids: np.ndarray,
    step: int,
    rank_table: np.ndarray | None = None,
    vocab_size: int = 4101,
) -> MaskedBatch:
    """Dispatch by strategy name ("dnabert", "genemask", "global")."""
    if strategy == "dnabert":
        return dnabert_mask(input_ids, attention_mask, seed, sample_ids, step,
                            vocab_size=vocab_size)  # fmt: skip
    if strategy not in ("genemask", "global"):
        raise ValueError(f"unknown masking strategy {strategy!r}; choose from {STRATEGIES}")
    if rank_table is None:
        raise ValueError(f"{strategy} masking needs an NPMI rank table")
    fn = genemask_mask if strategy == "genemask" else global_mask
    return fn(input_ids, attention_mask, rank_table, seed, sample_ids, step,
              vocab_size=vocab_size)  # fmt: skip
