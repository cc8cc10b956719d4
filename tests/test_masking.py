"""Masking strategies: exact rules (against per-row reference loops), fractions, invariants."""

from __future__ import annotations

import numpy as np
import pytest

from bsm_ray.data.masking import (
    IGNORE_INDEX,
    apply_mask,
    dnabert_mask,
    eligible_positions,
    genemask_mask,
    global_mask,
)
from bsm_ray.data.pmi import count_fasta, npmi_from_counts, rank_kmers, rank_table
from bsm_ray.tokenizers import KmerTokenizer
from bsm_ray.tokenizers.kmer import CLS_ID, MASK_ID, PAD_ID, SEP_ID


@pytest.fixture(scope="module")
def real_ranks():
    """Rank table from real mammalian sequence (hg18 + mm9 rows shipped in Biopython's sdist)."""
    from bsm_ray.ingest.samples import sample_inputs

    counter = count_fasta(sample_inputs()["pmi_fasta"][0])
    return rank_table(rank_kmers(npmi_from_counts(counter.as_mapping(), min_count=20)))


@pytest.fixture(scope="module")
def random_rows():
    """10,000 rows of 506 random-DNA 6-mer tokens (511-nt pieces), 512 positions."""
    rng = np.random.default_rng(0)
    letters = np.frombuffer(b"ACGT", dtype=np.uint8)
    seqs = [letters[rng.integers(0, 4, 511)].tobytes() for _ in range(10_000)]
    batch = KmerTokenizer(6).encode_batch(seqs)
    return batch["input_ids"], batch["attention_mask"], np.arange(10_000)


def _fraction(masked, ids, am):
    return masked.masked.sum() / eligible_positions(ids, am).sum()


def test_masked_fractions_match_the_papers(random_rows, real_ranks):
    ids, am, sid = random_rows
    assert eligible_positions(ids, am).sum() == 10_000 * 506
    dnabert = _fraction(dnabert_mask(ids, am, 0, sid, 0), ids, am)
    genemask = _fraction(genemask_mask(ids, am, real_ranks, 0, sid, 0), ids, am)
    glob = _fraction(global_mask(ids, am, real_ranks, 0, sid, 0), ids, am)
    assert abs(dnabert - 0.139) < 0.005, dnabert
    assert abs(genemask - 0.153) < 0.005, genemask
    assert abs(glob - 0.121) < 0.005, glob


def _span(center, before, after, first, last):
    return set(range(max(first, center - before), min(last, center + after) + 1))


def _row_bounds(ids_row, am_row):
    real = [j for j in range(len(ids_row)) if am_row[j] and ids_row[j] > SEP_ID]
    return real[0], real[-1]


def _reference(strategy, ids, am, ranks, seed, sid, step):
    """Per-row, per-position loops implementing the docstring rules literally.

    The random decisions (which positions are centres, k per row) come from the module's own
    draws, so both implementations decide identically; everything else is re-derived here.
    """
    from bsm_ray.data import masking as m

    length = ids.shape[1]
    eligible = m.eligible_positions(ids, am)
    if strategy == "global":
        ks = m.global_k(eligible, seed, sid, step)
    else:
        p = m.DNABERT_P if strategy == "dnabert" else m.GENEMASK_P
        centre_marks = m.bernoulli_arrivals(eligible, seed, sid, step, m.STREAM_CENTRE, p)
    out = []
    for r in range(ids.shape[0]):
        first, last = _row_bounds(ids[r], am[r])
        masked: set[int] = set()
        if strategy in ("dnabert", "genemask"):
            centres = [c for c in range(length) if centre_marks[r, c]]
            assert all(first <= c <= last for c in centres)
            for c in centres:
                masked |= _span(c, 2, 3, first, last)
            if strategy == "genemask" and centres:
                best = []
                for c in centres:
                    window = range(max(first, c - 2), min(last, c + 3) + 1)
                    j = min(window, key=lambda j: (ranks[ids[r, j]], j))
                    best.append((ranks[ids[r, j]], j, c))
                best.sort()
                n = len(best)
                keep = best if n <= 8 else best[: (n + 1) // 2]
                for _rank, j, _c in keep:
                    masked |= _span(j, 5, 5, first, last)
        else:
            order = sorted(range(first, last + 1), key=lambda j: (ranks[ids[r, j]], j))
            for j in order[: ks[r]]:
                masked |= _span(j, 5, 5, first, last)
        row = np.zeros(length, dtype=bool)
        row[sorted(masked)] = True
        out.append(row)
    return np.array(out)


def test_bernoulli_arrivals_are_bernoulli(random_rows):
    """Geometric-gap sampling gives independent Bernoulli(p) draws at every eligible position."""
    from bsm_ray.data.masking import bernoulli_arrivals

    ids, am, sid = random_rows
    eligible = eligible_positions(ids, am)
    marks = bernoulli_arrivals(eligible, 0, sid, 0, 1, 0.025)
    assert not (marks & ~eligible).any()
    per_position = marks[:, 1:507].mean(axis=0)  # 10,000 draws per position
    assert abs(per_position.mean() - 0.025) < 0.0005
    assert np.abs(per_position - 0.025).max() < 0.0075  # ~4.8 sigma of 10,000 draws
    counts = marks.sum(axis=1)  # Binomial(506, 0.025): mean 12.65, variance 12.33
    assert abs(counts.mean() - 12.65) < 0.15 and abs(counts.var() - 12.33) < 0.8


@pytest.mark.parametrize("strategy", ["dnabert", "genemask", "global"])
def test_kernel_equals_reference_loop(strategy, random_rows, real_ranks):
    ids, am, sid = random_rows
    rng = np.random.default_rng(5)
    # variable lengths with padding: cut rows short and pad them
    ids, am = ids[:300].copy(), am[:300].copy()
    for r in range(0, 300, 3):
        n = int(rng.integers(1, 506))
        ids[r, n + 1] = SEP_ID
        ids[r, n + 2 :] = PAD_ID
        am[r, n + 2 :] = 0
    got = apply_mask(strategy, ids, am, 7, sid[:300], 11, real_ranks).masked
    ref = _reference(strategy, ids, am, real_ranks, 7, sid[:300], 11)
    assert np.array_equal(got, ref)


def test_specials_never_masked_and_spans_stay_inside(random_rows, real_ranks):
    ids, am, sid = random_rows
    ids, am = ids[:2000].copy(), am[:2000].copy()
    ids[::2, 20] = SEP_ID  # short rows: [CLS] 19 k-mers [SEP] [PAD]...
    ids[::2, 21:] = PAD_ID
    am[::2, 21:] = 0
    eligible = eligible_positions(ids, am)
    for strategy in ("dnabert", "genemask", "global"):
        out = apply_mask(strategy, ids, am, 1, sid[:2000], 3, real_ranks)
        assert not (out.masked & ~eligible).any()
        special = np.isin(ids, [CLS_ID, SEP_ID, PAD_ID])
        assert np.array_equal(out.input_ids[special], ids[special])
        assert (out.labels[~out.masked] == IGNORE_INDEX).all()
        assert np.array_equal(out.labels[out.masked], ids[out.masked])


def test_global_masks_exactly_the_k_best_ranked_11_spans(random_rows, real_ranks):
    ids, am, sid = random_rows
    out, k = global_mask(ids[:500], am[:500], real_ranks, 0, sid[:500], 0, return_k=True)
    assert 5 < k.mean() < 9  # ~ Binomial(506, 0.0136), mean 6.9
    for r in range(500):
        ranks = real_ranks[ids[r, 1:507]]
        order = np.lexsort((np.arange(506), ranks))[: k[r]] + 1  # positions of the k best
        expected = np.zeros(512, dtype=bool)
        for j in order:
            expected[max(1, j - 5) : min(506, j + 5) + 1] = True
        assert np.array_equal(out.masked[r], expected)


def test_ranks_are_looked_up_by_content_not_position(real_ranks):
    tok = KmerTokenizer(6)
    best = int(np.argmin(real_ranks))  # token id of the rank-1 k-mer
    kmer = tok.vocab[best]
    rng = np.random.default_rng(3)
    for at in (30, 200, 400):
        seq = list(rng.choice(list("AT"), size=511))  # AT-only background: no CACACA...
        seq[at - 1 : at - 1 + 6] = list(kmer)
        batch = tok.encode_batch(["".join(seq)])
        ids, am = batch["input_ids"], batch["attention_mask"]
        assert ids[0, at] == best
        # Find a seed whose k >= 1; the 11-span must be centred on the planted k-mer.
        for seed in range(100):
            out, k = global_mask(ids, am, real_ranks, seed, np.array([0]), 0, return_k=True)
            if k[0] == 1:
                assert np.flatnonzero(out.masked[0]).tolist() == list(range(at - 5, at + 6))
                break
        else:
            pytest.fail("no seed gave k = 1")


def test_replacement_80_10_10(random_rows):
    ids, am, sid = random_rows
    out = dnabert_mask(ids, am, 0, sid, 0)
    masked = out.masked
    to_mask = (out.input_ids == MASK_ID) & masked
    unchanged = (out.input_ids == ids) & masked
    random = masked & ~to_mask & ~unchanged
    n = masked.sum()
    assert abs(to_mask.sum() / n - 0.8) < 0.005
    assert abs(random.sum() / n - 0.1) < 0.005
    assert abs(unchanged.sum() / n - 0.1) < 0.005  # random ids equal the original ~1/4096
    assert out.input_ids[random].min() >= 5 and out.input_ids[random].max() <= 4100


def test_deterministic_per_sample_and_step(random_rows, real_ranks):
    ids, am, sid = random_rows
    ids, am, sid = ids[:64], am[:64], sid[:64]
    ids.setflags(write=False)  # Ray Data hands batches over read-only
    a = genemask_mask(ids, am, real_ranks, 3, sid, 10)
    perm = np.random.default_rng(0).permutation(64)
    b = genemask_mask(ids[perm], am[perm], real_ranks, 3, sid[perm], 10)
    assert np.array_equal(a.input_ids[perm], b.input_ids)  # batch order does not matter
    half = genemask_mask(ids[:32], am[:32], real_ranks, 3, sid[:32], 10)
    assert np.array_equal(half.labels, a.labels[:32])  # nor batch composition
    assert not np.array_equal(genemask_mask(ids, am, real_ranks, 3, sid, 11).labels, a.labels)
    assert not np.array_equal(genemask_mask(ids, am, real_ranks, 4, sid, 10).labels, a.labels)


def test_unknown_strategy_and_missing_table():
    ids = np.array([[CLS_ID, 5, 6, SEP_ID]])
    am = np.ones_like(ids)
    with pytest.raises(ValueError, match="unknown masking strategy"):
        apply_mask("bert", ids, am, 0, np.array([0]), 0)
    with pytest.raises(ValueError, match="needs an NPMI rank table"):
        apply_mask("global", ids, am, 0, np.array([0]), 0)
    with pytest.raises(ValueError, match="outside the rank table"):
        apply_mask("genemask", np.array([[CLS_ID, 5, 9000, SEP_ID]]), am, 0, np.array([0]), 0,
                   np.zeros(4101, dtype=np.int32))  # fmt: skip


def test_kernel_keeps_the_id_type_and_draws_k_like_the_specification(random_rows, real_ranks):
    """int32 in, int32 out (the tokenizer's type), same values as int64 in; Global's k per row
    is the count `global_k` (the numpy definition of the draws) gives."""
    from bsm_ray.data.masking import global_k

    ids, am, sid = random_rows
    ids, am, sid = ids[:256], am[:256], sid[:256]
    assert ids.dtype == np.int32
    for strategy in ("dnabert", "genemask", "global"):
        narrow = apply_mask(strategy, ids, am, 2, sid, 5, real_ranks)
        wide = apply_mask(strategy, ids.astype(np.int64), am.astype(np.int64), 2, sid, 5,
                          real_ranks)  # fmt: skip
        assert narrow.input_ids.dtype == narrow.labels.dtype == np.int32
        assert wide.input_ids.dtype == wide.labels.dtype == np.int64
        assert np.array_equal(narrow.input_ids, wide.input_ids)
        assert np.array_equal(narrow.labels, wide.labels)
    _, k = global_mask(ids, am, real_ranks, 2, sid, 5, return_k=True)
    assert np.array_equal(k, global_k(eligible_positions(ids, am), 2, sid, 5))
