"""GeneMask genome pieces (REFERENCE.md section 3): lengths, N removal, determinism, dedup."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from bsm_ray.errors import InputError
from bsm_ray.ingest.builders import BuildContext, GenomeConfig, build_genome_pieces
from bsm_ray.ingest.records import Ledger
from bsm_ray.ingest.samples import write_synthetic_genome


def _pieces(path, cfg=None, seed=0, chunk_bytes=1 << 22, on_invalid="error"):
    ctx = BuildContext(Ledger(on_invalid=on_invalid), seed=seed)
    out = list(build_genome_pieces(cfg or GenomeConfig(), str(path), ctx, chunk_bytes=chunk_bytes))
    return out, ctx.ledger, ctx.stats


def _random_genome(tmp_path: Path, bp: int, seed: int = 0, name="g.fa") -> tuple[Path, str]:
    rng = np.random.default_rng(seed)
    seq = np.frombuffer(b"ACGT", dtype=np.uint8)[rng.integers(0, 4, bp)].tobytes().decode()
    path = tmp_path / name
    path.write_text(">chr1\n" + "\n".join(seq[i : i + 60] for i in range(0, bp, 60)) + "\n")
    return path, seq


@pytest.fixture(scope="module")
def two_mbp(tmp_path_factory):
    return _random_genome(tmp_path_factory.mktemp("genome"), 2_000_000)


def test_piece_length_distribution(two_mbp):
    path, seq = two_mbp
    out, ledger, stats = _pieces(path)
    lengths = np.array([len(row["seq"]) for _s, row in out])
    assert lengths.min() >= 6 and lengths.max() == 511
    full = (lengths == 511).mean()
    assert abs(full - 0.5) < 0.02  # half the pieces are 511 nt (506 6-mers)
    short = lengths[lengths < 511]
    # the rest uniform on 6..510: mean 258, every length possible
    assert abs(short.mean() - 258) < 6
    assert short.min() == 6 and short.max() == 510
    assert np.all([row["num_kmers"] == len(row["seq"]) - 5 for _s, row in out])
    # consecutive, non-overlapping, in chromosome coordinates, from a start offset < 1000
    offsets = np.array([row["offset"] for _s, row in out])
    assert 0 <= offsets[0] < 1000
    assert np.array_equal(offsets[1:], offsets[:-1] + lengths[:-1])
    for _s, row in out[:50]:
        assert seq[row["offset"] : row["offset"] + len(row["seq"])] == row["seq"]
    # every base accounted for: start offset + pieces + dropped tail
    assert stats["genome/start_offset_bp"] + lengths.sum() + stats["genome/tail_bp_dropped"] == len(
        seq
    )
    # 90/10 split
    val = np.mean([s == "val" for s, _ in out])
    assert abs(val - 0.1) < 0.02


def test_output_does_not_depend_on_chunk_size(two_mbp):
    path, _ = two_mbp
    big, _, _ = _pieces(path, chunk_bytes=1 << 22)
    small, _, _ = _pieces(path, chunk_bytes=4099)
    assert [r["piece_id"] for _s, r in big] == [r["piece_id"] for _s, r in small]
    assert [s for s, _ in big] == [s for s, _ in small]


def test_seeded_and_different_per_seed(two_mbp):
    path, _ = two_mbp
    a, _, _ = _pieces(path, seed=3)
    b, _, _ = _pieces(path, seed=3)
    c, _, _ = _pieces(path, seed=4)
    assert [r["piece_id"] for _s, r in a] == [r["piece_id"] for _s, r in b]
    assert [r["piece_id"] for _s, r in a] != [r["piece_id"] for _s, r in c]


def test_uppercase_n_removed_joining_across_gaps_and_softmask_uppercased(tmp_path):
    left, right = "ACGTTGCA" * 40, "GGCCAATT" * 40
    path = tmp_path / "gap.fa"
    path.write_text(">c\n" + left.lower() + "\n" + "N" * 123 + "\n" + right + "\n")
    cfg = GenomeConfig(max_start_offset=0, full_piece_prob=1.0, val_fraction=0.0, dedup=False)
    out, _, stats = _pieces(path, cfg)
    assert len(out) == 1
    assert out[0][1]["seq"] == (left.upper() + right)[:511]
    assert stats["genome/n_removed"] == 123
    assert stats["genome/tail_bp_dropped"] == 640 - 511


def test_iupac_piece_dropped_and_counted_duplicates_removed(tmp_path):
    unit = "ACGT" * 128  # 512 nt
    path = tmp_path / "dup.fa"
    # the same 511-nt piece twice in a row, then a piece containing R
    body = unit[:511] + unit[:511] + unit[:200] + "R" + unit[:310]
    path.write_text(">c\n" + body + "\n")
    cfg = GenomeConfig(max_start_offset=0, full_piece_prob=1.0, val_fraction=0.0)
    out, ledger, _ = _pieces(path, cfg)
    assert len(out) == 1
    assert dict(ledger.notes["genome"]) == {
        "duplicate_piece_dropped": 1,
        "piece_with_non_acgt_dropped": 1,
    }


def test_invalid_character_in_genome(tmp_path):
    path = tmp_path / "bad.fa"
    path.write_text(">c\n" + "ACGT" * 300 + "\nAC9T\n")
    with pytest.raises(InputError, match=r"bad.fa: record c: invalid_character \('9' at N-rem"
                                         r"oved position 1203\)"):  # fmt: skip
        _pieces(path)
    out, ledger, stats = _pieces(path, on_invalid="skip")
    assert dict(ledger.skipped["genome"]) == {"invalid_character": 1}
    # The chromosome is invalid from the bad letter on: the whole pieces before it are kept.
    assert out and max(r["offset"] + len(r["seq"]) for _s, r in out) <= 1202
    assert stats["genome/bp_read"] == 1202 and "genome/tail_bp_dropped" not in stats


def test_invalid_character_output_does_not_depend_on_chunk_size(tmp_path):
    rng = np.random.default_rng(5)
    seq = np.frombuffer(b"ACGT", dtype=np.uint8)[rng.integers(0, 4, 20_000)].tobytes().decode()
    seq = seq[:7000] + "N" * 900 + seq[7000:15000] + "?" + seq[15000:]
    path = tmp_path / "bad.fa"
    path.write_text(">c\n" + "\n".join(seq[i : i + 60] for i in range(0, len(seq), 60)) + "\n")
    whole = _pieces(path, on_invalid="skip")
    for chunk_bytes in (997, 4099):
        out, ledger, stats = _pieces(path, chunk_bytes=chunk_bytes, on_invalid="skip")
        assert out == whole[0] and stats == whole[2]
        assert ledger.as_dict() == whole[1].as_dict()


def test_synthetic_genome_streams_with_nuisances(tmp_path):
    path = write_synthetic_genome(tmp_path / "syn.fa.gz", 300_000, seed=1, num_chromosomes=2)
    out, ledger, stats = _pieces(path)
    assert stats["genome/chromosomes"] == 2
    assert stats["genome/bp_read"] == 300_000
    assert stats["genome/n_removed"] > 0
    assert all(set(row["seq"]) <= set("ACGT") for _s, row in out)
    assert Counter(row["chrom"] for _s, row in out).keys() == {"chr1", "chr2"}


def test_random_cds_translates_with_the_codon_table():
    from Bio.Seq import Seq

    from bsm_ray.ingest.samples import random_cds

    rng = np.random.default_rng(0)
    for table in (1, 11):
        dna, protein = random_cds(rng, 50, table=table)
        assert len(dna) == 3 * 52 and dna.startswith("ATG")
        assert protein == str(Seq(dna).translate(table=table, cds=True))
        assert len(protein) == 51 and "*" not in protein
