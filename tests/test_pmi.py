"""k-mer counting and NPMI: exact values on corpora small enough to compute by hand."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest

from bsm_ray.data.pmi import (
    KmerCounter,
    count_fasta,
    kmer_code,
    npmi_from_counts,
    pmi_rows,
    rank_kmers,
    rank_table,
    segmentations,
)
from bsm_ray.data.pmi_build import PmiConfig, build_pmi_table, load_rank_table


def _naive_counts(seqs: list[str], max_k: int) -> Counter:
    """Reference counting: every window of every length, skipping non-ACGT windows."""
    out: Counter = Counter()
    for seq in seqs:
        for k in range(1, max_k + 1):
            for i in range(len(seq) - k + 1):
                w = seq[i : i + k]
                if set(w) <= set("ACGT"):
                    out[w] += 1
    return out


def test_counts_match_naive_and_skip_non_acgt():
    rng = np.random.default_rng(0)
    seqs = ["".join(rng.choice(list("ACGTN"), p=[0.24] * 4 + [0.04], size=300)) for _ in range(5)]
    counter = KmerCounter(6)
    counter.add_sequences(seqs)
    assert counter.as_mapping() == dict(_naive_counts(seqs, 6))


def test_chunked_counting_equals_whole(tmp_path):
    rng = np.random.default_rng(1)
    seq = "".join(rng.choice(list("ACGTn"), p=[0.24] * 4 + [0.04], size=20_000))
    path = tmp_path / "g.fa"
    path.write_text(">c1\n" + "\n".join(seq[i : i + 61] for i in range(0, len(seq), 61)) + "\n")
    whole = count_fasta(str(path), chunk_bytes=1 << 22).as_mapping()
    chunked = count_fasta(str(path), chunk_bytes=997).as_mapping()
    assert whole == chunked == dict(_naive_counts([seq.upper()], 6))


def test_npmi_by_hand_acacac():
    # Corpus ACACAC. 1-mers: A=3, C=3 (6 windows); 2-mers: AC=3, CA=2 (5 windows).
    counts = KmerCounter(2)
    counts.add(b"ACACAC")
    m = counts.as_mapping()
    assert m == {"A": 3, "C": 3, "AC": 3, "CA": 2}
    npmi = npmi_from_counts(m, k=2, min_count=2)
    # PMI(AC) = ln(3/5) - ln(3/6) - ln(3/6) = ln 2.4; NPMI = PMI * ln 3 / (ln 3 + ln 2)
    assert npmi["AC"] == pytest.approx(0.5367911986624645, abs=1e-12)
    # PMI(CA) = ln(2/5) - 2 ln(1/2) = ln 1.6; NPMI = PMI * ln 2 / (ln 2 + ln 2) = ln(1.6) / 2
    assert npmi["CA"] == pytest.approx(0.23500181462286782, abs=1e-12)
    assert rank_kmers(npmi) == {"AC": 1, "CA": 2}
    # Shared normaliser T = 10: p(A) = p(C) = p(AC) = 0.3, p(CA) = 0.2
    shared = npmi_from_counts(m, k=2, min_count=2, total=10)
    assert shared["AC"] == pytest.approx(-math.log(0.3) * math.log(3) / math.log(6), abs=1e-12)
    assert shared["CA"] == pytest.approx(math.log(0.2 / 0.09) / 2, abs=1e-12)
    # min_count drops rare k-mers (CA was seen twice)
    assert set(npmi_from_counts(m, k=2, min_count=3)) == {"AC"}


def _reference_npmi(counts, k, min_count, max_piece):
    """Independent brute force: enumerate segmentations recursively, pure Python."""
    totals = Counter()
    for w, c in counts.items():
        totals[len(w)] += c

    def logp(w):
        return math.log(counts[w] / totals[len(w)])

    def segs(w):
        if not w:
            yield []
            return
        for n in range(1, len(w) + 1):
            if max_piece is None or n <= max_piece:
                for rest in segs(w[n:]):
                    yield [w[:n], *rest]

    out = {}
    for w, f in counts.items():
        if len(w) == k and f >= min_count:
            best = max(sum(logp(p) for p in s) for s in segs(w) if len(s) >= 2)
            pmi = logp(w) - best
            out[w] = pmi * math.log(f) / (math.log(f) + math.log(min_count))
    return out


def test_all_segmentations_vs_max_piece_2_rank_differently():
    corpus = "CGACGACACGAGAACACGC"
    counter = KmerCounter(4)
    counter.add(corpus.encode())
    m = counter.as_mapping()
    paper = npmi_from_counts(m, k=4, min_count=2)
    authors = npmi_from_counts(m, k=4, min_count=2, max_piece_len=2)
    for ours, ref in ((paper, _reference_npmi(m, 4, 2, None)),
                      (authors, _reference_npmi(m, 4, 2, 2))):  # fmt: skip
        assert ours.keys() == ref.keys()
        for w in ours:
            assert ours[w] == pytest.approx(ref[w], abs=1e-12)
    # CACG: its best split has a 3-letter piece (CAC|G, C|ACG), which max-piece-2 forbids, so
    # its PMI is larger there and it moves from a three-way tie to the top.
    assert paper["CACG"] == pytest.approx(paper["ACGA"]) == pytest.approx(paper["CGAC"])
    assert authors["CACG"] > authors["ACGA"]
    assert rank_kmers(paper) == {"ACGA": 1, "CACG": 2, "CGAC": 3, "ACAC": 4}  # ties: DNABERT id
    assert rank_kmers(authors)["CACG"] == 1


def test_segmentations_counts():
    assert len(segmentations(6)) == 31  # 2^5 compositions minus the whole word
    assert len(segmentations(6, 2)) == 13  # compositions of 6 into 1s and 2s
    assert segmentations(3) == [(1, 1, 1), (1, 2), (2, 1)]


def test_rank_table_by_token_id():
    table = rank_table({"AAAAAA": 2, "GGGGGG": 1})
    assert table.shape == (4101,)
    assert table[5] == 2 and table[4100] == 1  # AAAAAA=5, GGGGGG=4100
    assert table[0] == table[1] == table[2] == table[6] == 3  # specials, unranked: worst
    assert kmer_code("AAAAAT") == 1


def test_build_pmi_table_job_on_sample(tmp_path):
    out = tmp_path / "npmi.parquet"
    result = build_pmi_table(PmiConfig(output=str(out), progress=False))
    table = pq.read_table(out)
    assert table.column_names == ["kmer", "count", "pmi", "npmi", "rank"]
    assert table.num_rows == 4096
    ranked = table.filter(table["rank"].is_valid())
    assert ranked.num_rows == result.num_kmers_scored > 2000
    ranks = sorted(ranked["rank"].to_pylist())
    assert ranks == list(range(1, len(ranks) + 1))
    # rank 1 has the highest NPMI; below min_count there is no score
    best = ranked.sort_by([("rank", "ascending")])
    npmis = best["npmi"].to_pylist()
    assert npmis == sorted(npmis, reverse=True)
    assert all(c >= 20 for c in ranked["count"].to_pylist())
    # Real mammalian sequence: simple repeats lead, as in the authors' human table
    top = set(best["kmer"].to_pylist()[:10])
    assert {"CACACA", "ACACAC", "TGTGTG", "GTGTGT"} <= top
    assert "CCTCCC" in top or "GGGAGG" in top
    table_ids = load_rank_table(out)
    assert table_ids[5 + kmer_code(best["kmer"][0].as_py())] == 1


def test_kmer_id_order_is_dnabert():
    assert [kmer for kmer, _ in zip(map("".join, itertools.product("ATCG", repeat=2)),
                                     range(3), strict=False)] == ["AA", "AT", "AC"]  # fmt: skip
    assert [kmer_code(w) for w in ("AA", "AT", "AC", "AG", "GG")] == [0, 1, 2, 3, 15]


def test_pmi_rows_are_consistent_with_npmi():
    counter = KmerCounter(3)
    counter.add(b"ACGTACGTTACGAACG" * 20)
    rows = pmi_rows(counter.as_mapping(), k=3, min_count=5)
    for r in rows:
        assert r.npmi == pytest.approx(r.pmi * math.log(r.count) / math.log(r.count * 5))


def test_ray_parallel_counting_equals_local(tmp_path, ray_instance):
    """Genome shards counted as one Ray task per shard give exactly the local table."""
    from bsm_ray.ingest.builders import GenomeConfig
    from bsm_ray.ingest.prepare import PrepareConfig, prepare_dataset
    from bsm_ray.ingest.samples import write_synthetic_genome

    genome = write_synthetic_genome(tmp_path / "g.fa", 400_000, seed=2)
    ds = tmp_path / "ds"
    prepare_dataset(
        PrepareConfig(
            sample=False,
            output_dir=str(ds),
            progress=False,
            rows_per_shard=200,
            genome=GenomeConfig(fasta=[str(genome)]),
        )
    )
    common = dict(sample=False, datasets=[str(ds)], min_count=5, progress=False)
    local = build_pmi_table(
        PmiConfig(output=str(tmp_path / "l.parquet"), parallel="local", **common)
    )
    remote = build_pmi_table(
        PmiConfig(output=str(tmp_path / "r.parquet"), parallel="ray", **common)
    )
    assert not local.parallel and remote.parallel
    assert local.windows == remote.windows
    assert pq.read_table(tmp_path / "l.parquet").equals(pq.read_table(tmp_path / "r.parquet"))


@pytest.mark.parametrize("max_k", [1, 2, 3, 6])
def test_counting_edge_cases_match_naive(max_k, tmp_path):
    rng = np.random.default_rng(max_k)
    # pieces shorter than k, N runs, lowercase (counted after upper() in count_fasta only)
    seqs = ["".join(rng.choice(list("ACGTN"), p=[0.22] * 4 + [0.12], size=int(n)))
            for n in rng.integers(0, 15, size=200)]  # fmt: skip
    counter = KmerCounter(max_k)
    counter.add_sequences(seqs)
    assert counter.as_mapping() == dict(_naive_counts(seqs, max_k))
    seq = "".join(rng.choice(list("ACGTN"), p=[0.22] * 4 + [0.12], size=3000))
    path = tmp_path / "c.fa"
    path.write_text(">r\n" + seq + "\n>s\n" + seq[:7] + "\n")
    for chunk in (1, 2, 5, 7, 64):
        got = count_fasta(str(path), max_k=max_k, chunk_bytes=chunk).as_mapping()
        assert got == dict(_naive_counts([seq, seq[:7]], max_k)), chunk
