"""MLM masking strategies as pure, compiled batch functions (REFERENCE.md section 5).

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

Speed: the strategies run in one compiled pass per row (`masking_kernel.py`, numba), with no
[batch, length] temporaries; the streams and draws are defined here in numpy (`uniforms`,
`arrival_positions`), which the tests use as the specification. Whole-batch numpy versions of
the same rules reached 21x (GeneMask) and 42x (Global) a per-position Python loop; the kernel
reaches the >= 50x the issue asks for (figures: bench/masking_throughput.py, README).

Pure module: numpy (and the numba kernel it calls); no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bsm_ray.data.masking_rules import (  # noqa: F401 - the rules' constants, re-exported
    DNABERT_P,
    GENEMASK_ALL_BELOW,
    GENEMASK_P,
    GLOBAL_P,
    GOLDEN,
    IGNORE_INDEX,
    KERNEL_MODES,
    MIX_M1,
    MIX_M2,
    STRATEGIES,
    STREAM_CENTRE,
    STREAM_GLOBAL_K,
    STREAM_RANDOM_ID,
    STREAM_REPLACE,
)
from bsm_ray.tokenizers.kmer import MASK_ID, UNK_ID


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
    x = x * MIX_M1
    x = x ^ (x >> np.uint64(27))
    x = x * MIX_M2
    return x ^ (x >> np.uint64(31))


def _row_keys(seed: int, sample_ids: np.ndarray, step: int, stream: int) -> np.ndarray:
    """One 64-bit key per row from (seed, stream, step, sample id)."""
    with np.errstate(over="ignore"):
        key = _mix(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * GOLDEN + np.uint64(stream))
        key = _mix(key ^ np.uint64(step & 0xFFFFFFFFFFFFFFFF) * MIX_M1)
        return _mix(key ^ np.asarray(sample_ids, dtype=np.uint64) * MIX_M2)


def _to_unit(bits: np.ndarray) -> np.ndarray:
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def uniforms(seed: int, sample_ids: np.ndarray, step: int, stream: int, length: int) -> np.ndarray:
    """[batch, length] floats in [0, 1): draw i of row r is a pure function of
    (seed, sample id, step, stream, i)."""
    keys = _row_keys(seed, sample_ids, step, stream)
    with np.errstate(over="ignore"):
        index = np.arange(length, dtype=np.uint64) * GOLDEN
        return _to_unit(_mix(keys[:, None] ^ index[None, :]))


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


def arrival_positions(
    eligible: np.ndarray, seed: int, sample_ids: np.ndarray, step: int, stream: int, p: float
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of independent Bernoulli(p) successes at the eligible positions, ordered by
    row, then column.

    Drawn as the arrivals of a Bernoulli process: gaps between successes are Geometric(p)
    (g = 1 + floor(ln(1-u) / ln(1-p))), so a row needs ~p*length draws instead of `length`.
    Draw i of a row never depends on how many draws are taken, so the result is exact and
    deterministic. Rows' eligible positions are contiguous ([CLS] k-mers [SEP] [PAD]...).
    """
    first, last = _bounds(eligible)
    n_max = int((last - first + 1).max(initial=0))
    if n_max <= 0 or p <= 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    keys = _row_keys(seed, sample_ids, step, stream)
    log_q = np.log1p(-p)
    draws = int(p * n_max + 6 * np.sqrt(p * n_max) + 8)
    while True:
        with np.errstate(over="ignore"):
            index = np.arange(draws, dtype=np.uint64) * GOLDEN
            u = _to_unit(_mix(keys[:, None] ^ index[None, :]))
        gaps = 1 + np.floor(np.log1p(-u) / log_q).astype(np.int64)
        pos = first[:, None] - 1 + np.cumsum(gaps, axis=1)
        if (pos[:, -1] > last).all() or draws >= n_max:
            break
        draws = min(2 * draws, n_max)  # a rare row had more arrivals: draw more
    rows, idx = np.nonzero(pos <= last[:, None])  # row-major: ordered by row, then column
    cols = pos[rows, idx]
    keep = eligible[rows, cols]  # always true for the tokenizer's contiguous layout
    return rows[keep], cols[keep]


def bernoulli_arrivals(
    eligible: np.ndarray, seed: int, sample_ids: np.ndarray, step: int, stream: int, p: float
) -> np.ndarray:
    """[batch, length] bool: independent Bernoulli(p) draws at the eligible positions
    (`arrival_positions` as a mask)."""
    out = np.zeros_like(eligible)
    out[arrival_positions(eligible, seed, sample_ids, step, stream, p)] = True
    return out


def _mask(strategy: str, input_ids, attention_mask, rank_table, seed, sample_ids, step, p,
          vocab_size):  # fmt: skip
    """Run the compiled row kernel (masking_kernel.py); returns (MaskedBatch, successes per
    row). Outputs keep the ids' type when it is int32 or int64 (the tokenizer's int32 halves
    the memory and the bytes sent on; the trainer widens on the device)."""
    from bsm_ray.data.masking_kernel import mask_rows

    ids = np.asarray(input_ids)
    if ids.dtype not in (np.int32, np.int64):
        ids = ids.astype(np.int64)
    att = np.asarray(attention_mask)
    if ids.ndim != 2 or att.shape != ids.shape:
        raise ValueError(f"input_ids {ids.shape} and attention_mask {att.shape} must be "
                         "the same [batch, length]")  # fmt: skip
    sample_ids = np.asarray(sample_ids, dtype=np.uint64).reshape(-1)
    if sample_ids.size != ids.shape[0]:
        raise ValueError(f"{sample_ids.size} sample ids for {ids.shape[0]} rows")
    draw_stream = STREAM_GLOBAL_K if strategy == "global" else STREAM_CENTRE
    table = np.zeros(1, dtype=np.int32) if rank_table is None else np.asarray(rank_table)
    if rank_table is not None and ids.size and int(ids.max()) >= table.size:
        # The kernel reads ranks unchecked; ids beyond the table are an error, not a crash.
        raise ValueError(f"token id {int(ids.max())} is outside the rank table ({table.size} "
                         "ids): masking expects the k-mer tokenizer's ids")  # fmt: skip
    out_ids = np.empty(ids.shape, dtype=ids.dtype)
    labels = np.empty(ids.shape, dtype=ids.dtype)
    arrivals = np.empty(ids.shape[0], dtype=np.int64)
    mask_rows(
        ids, att, table,
        _row_keys(seed, sample_ids, step, draw_stream),
        _row_keys(seed, sample_ids, step, STREAM_REPLACE),
        _row_keys(seed, sample_ids, step, STREAM_RANDOM_ID),
        KERNEL_MODES[strategy], float(p), int(vocab_size), out_ids, labels, arrivals,
    )  # fmt: skip
    return MaskedBatch(out_ids, labels, strategy), arrivals


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
    return _mask("dnabert", input_ids, attention_mask, None, seed, sample_ids, step, p,
                 vocab_size)[0]  # fmt: skip


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
    return _mask("genemask", input_ids, attention_mask, rank_table, seed, sample_ids, step, p,
                 vocab_size)[0]  # fmt: skip


def global_k(
    eligible: np.ndarray, seed: int, sample_ids: np.ndarray, step: int, p: float = GLOBAL_P
) -> np.ndarray:
    """k per row: the number of Bernoulli(p) successes over the row's eligible positions."""
    rows, _cols = arrival_positions(eligible, seed, sample_ids, step, STREAM_GLOBAL_K, p)
    return np.bincount(rows, minlength=eligible.shape[0])


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
    out, k = _mask("global", input_ids, attention_mask, rank_table, seed, sample_ids, step, p,
                   vocab_size)  # fmt: skip
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
