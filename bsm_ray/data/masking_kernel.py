"""The compiled row kernel behind `bsm_ray.data.masking` (numba, nopython, cached on disk).

One pass per row, no temporary [batch, length] arrays: eligibility and bounds, the Bernoulli
arrivals, the strategy's spans, the 80/10/10 replacement. It draws exactly the numbers the
module's numpy functions define (`_row_keys`, `uniforms`, `arrival_positions`), so the masks are
the ones the rules in masking.py describe; tests compare it with per-position reference loops.

Compiled once per process and signature (int32 or int64 ids); `cache=True` keeps the machine
code under `__pycache__`, so later processes (Ray actors, training workers) load it.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from bsm_ray.data.masking_rules import (
    GENEMASK_ALL_BELOW,
    GOLDEN,
    IGNORE_INDEX,
    KERNEL_MODES,
    MIX_M1,
    MIX_M2,
)
from bsm_ray.tokenizers.kmer import MASK_ID, NUM_SPECIAL, UNK_ID

DNABERT, GENEMASK = KERNEL_MODES["dnabert"], KERNEL_MODES["genemask"]
_INV53 = 1.0 / (1 << 53)
_NONE = np.int64(1) << 62  # a key above every real one (ineligible positions)


@njit(inline="always")
def _unit(key, i):
    """Draw i of a row's stream: splitmix64(key ^ i * golden) as a float in [0, 1)."""
    x = key ^ (np.uint64(i) * GOLDEN)
    x = x ^ (x >> np.uint64(30))
    x = x * MIX_M1
    x = x ^ (x >> np.uint64(27))
    x = x * MIX_M2
    x = x ^ (x >> np.uint64(31))
    return float(x >> np.uint64(11)) * _INV53


@njit(inline="always")
def _span(masked, elig, lo, hi, first, last):
    for j in range(max(lo, first), min(hi, last) + 1):
        if elig[j]:
            masked[j] = True


@njit(inline="always")
def _insertion_sort(a, n):
    for i in range(1, n):
        x = a[i]
        q = i
        while q > 0 and a[q - 1] > x:
            a[q] = a[q - 1]
            q -= 1
        a[q] = x


@njit(cache=True, nogil=True)
def mask_rows(ids, att, rank_table, draw_keys, replace_keys, random_keys, mode, p, vocab_size,
              out_ids, labels, arrivals):  # fmt: skip
    """Mask every row of `ids` into `out_ids` / `labels`; `arrivals[b]` = row b's successes
    (centres for DNABERT/GeneMask, k for Global). Keys are the rows' stream keys."""
    batch, length = ids.shape
    log_q = math.log1p(-p)
    elig = np.empty(length, np.bool_)
    masked = np.empty(length, np.bool_)
    hits = np.empty(length, np.int64)
    best = np.empty(length, np.int64)  # composite keys rank * length + position
    keys = np.empty(length, np.int64)
    n_random = vocab_size - NUM_SPECIAL
    for b in range(batch):
        row = ids[b]
        arow = att[b]
        # Simple loops the compiler vectorizes: copy, fill, eligibility, then the bounds.
        out_ids[b, :] = row
        labels[b, :] = IGNORE_INDEX
        for j in range(length):
            t = row[j]
            elig[j] = (arow[j] != 0) & ((t > MASK_ID) | (t == UNK_ID))
        first = 0
        while first < length and not elig[first]:
            first += 1
        last = length - 1
        while last >= first and not elig[last]:
            last -= 1
        if first == length:
            first, last = -1, -1
        else:
            masked[first : last + 1] = False
        arrivals[b] = 0
        if first < 0:
            continue
        # Bernoulli(p) successes as the arrivals of a Bernoulli process (geometric gaps).
        n = 0
        pos = first - 1
        i = 0
        while True:
            pos += 1 + math.floor(math.log1p(-_unit(draw_keys[b], i)) / log_q)
            if pos > last:
                break
            if elig[pos]:
                hits[n] = pos
                n += 1
            i += 1
        arrivals[b] = n
        if mode == DNABERT:
            for h in range(n):
                _span(masked, elig, hits[h] - 2, hits[h] + 3, first, last)
        elif mode == GENEMASK:
            for h in range(n):
                c = hits[h]
                _span(masked, elig, c - 2, c + 3, first, last)
                bk = -1  # the best (rank, position) in the centre's clipped 6-span
                for j in range(max(c - 2, first), min(c + 3, last) + 1):
                    if elig[j]:
                        kk = np.int64(rank_table[np.uintp(row[j])]) * length + j
                        if bk < 0 or kk < bk:
                            bk = kk
                best[h] = bk
            _insertion_sort(best, n)
            keep = n if n <= GENEMASK_ALL_BELOW else (n + 1) // 2
            for h in range(keep):
                j0 = best[h] % length
                _span(masked, elig, j0 - 5, j0 + 5, first, last)
        elif n > 0:  # GLOBAL: the 11-spans of the k = n best-ranked positions
            for j in range(first, last + 1):  # a branch-free gather the compiler vectorizes
                keys[j] = np.int64(rank_table[np.uintp(row[j])]) * length + j if elig[j] else _NONE
            cnt = 0
            thr = _NONE  # the k-th best key so far, once k are held
            for j in range(first, last + 1):
                kk = keys[j]
                if kk >= thr:
                    continue
                q = cnt if cnt < n else n - 1
                cnt = min(cnt + 1, n)
                while q > 0 and best[q - 1] > kk:
                    best[q] = best[q - 1]
                    q -= 1
                best[q] = kk
                if cnt == n:
                    thr = best[n - 1]
            for h in range(cnt):
                j0 = best[h] % length
                _span(masked, elig, j0 - 5, j0 + 5, first, last)
        for j in range(first, last + 1):  # 80% [MASK], 10% random k-mer, 10% unchanged
            if masked[j]:
                labels[b, j] = row[j]
                u = _unit(replace_keys[b], j)
                if u < 0.8:
                    out_ids[b, j] = MASK_ID
                elif u < 0.9:
                    out_ids[b, j] = NUM_SPECIAL + int(_unit(random_keys[b], j) * n_random)
