"""RefSeq pair documents from real GenBank records (Biopython's test corpus)."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest
from Bio import SeqIO

from bsm_ray.errors import InputError
from bsm_ray.ingest.builders import (
    BuildContext,
    RefSeqConfig,
    build_refseq_pairs,
    shuffled_combination,
)
from bsm_ray.ingest.records import Ledger
from bsm_ray.tokenizers import BsmCharTokenizer


def _segments(text: str) -> list[tuple[str, str]]:
    return [
        (m.group(1), m.group(2))
        for m in (
            re.fullmatch(r"<(dna|rna|protein)>([A-Z*]+)", part) for part in text.split("<sep>")
        )
    ]


def _run(path, flank_bp=0, on_invalid="error", seed=0):
    ledger = Ledger(on_invalid=on_invalid)
    rows = [
        row
        for _split, row in build_refseq_pairs(
            RefSeqConfig(flank_bp=flank_bp), str(path), BuildContext(ledger, seed, 0.1)
        )
    ]
    return rows, ledger


def test_chloroplast_one_pair_per_cds_with_documented_exceptions(genbank_dir):
    path = genbank_dir / "NC_000932.gb"
    record = SeqIO.read(path, "genbank")
    cds = [f for f in record.features if f.type == "CDS"]
    assert len(cds) == 85
    rows, ledger = _run(path, flank_bp=50)
    assert len(rows) == 85  # one pair record per CDS
    # The documented exceptions, reported by reason: ndhD's ACG start is RNA-edited to AUG, and
    # the two trans-spliced rps12 CDS have no contiguous gene locus (so no gene DNA member).
    assert dict(ledger.notes["refseq_pair"]) == {
        "kept_rna_edited_start": 1,
        "trans_spliced_no_gene_dna": 2,
    }
    assert ledger.num_skipped() == 0
    edited = ledger.examples["refseq_pair/kept_rna_edited_start"]
    assert edited == ["NC_000932.1 CDS NP_051109.2"]  # ndhD
    by_label = {row["doc_id"].split("|")[1]: row for row in rows}
    for feature in cds:
        label = feature.qualifiers["protein_id"][0]
        segments = dict(_segments(by_label[label]["text"]))
        assert 2 <= len(segments) <= 3
        if "protein" in segments:  # proteins equal the annotated translations
            assert segments["protein"] == feature.qualifiers["translation"][0]
        spliced = str(feature.extract(record.seq)).upper()
        if "rna" in segments:
            assert segments["rna"] == spliced.replace("T", "U")
        if "dna" in segments:  # the CDS span with introns, plus 50 bp flanks, CDS orientation
            loc = feature.location
            span = record.seq[max(0, loc.start - 50) : loc.end + 50]
            if loc.strand == -1:
                span = span.reverse_complement()
            assert segments["dna"] == str(span).upper()
            assert len(segments["dna"]) >= len(spliced)
    rps12 = [row for row in rows if "NP_05103" in row["doc_id"] and "rps12" in row["source_record"]]
    for row in rows:
        if row["doc_id"].split("|")[1] in ("NP_051037.1", "NP_051038.1"):  # trans-spliced rps12
            assert "dna" not in row["modalities"]
    assert rps12 == []  # source_record names the CDS by protein id, not gene


def test_plasmid_translations_match_table_11(genbank_dir):
    rows, ledger = _run(genbank_dir / "NC_005816.gb")
    assert len(rows) == 10
    assert ledger.num_skipped() == 0 and not ledger.notes
    tok = BsmCharTokenizer()
    for row in rows:
        assert row["num_tokens"] == len(tok.encode(row["text"]))
        assert row["modalities"] == [m for m, _ in _segments(row["text"])]


def test_gzipped_genbank_gives_same_documents(genbank_dir):
    plain, _ = _run(genbank_dir / "NC_000932.gb")
    bgz, _ = _run(genbank_dir / "NC_000932.gb.bgz")
    assert [r["text"] for r in plain] == [r["text"] for r in bgz]


def test_pair_composition_is_deterministic_per_seed(genbank_dir):
    a, _ = _run(genbank_dir / "NC_005816.gb", seed=1)
    b, _ = _run(genbank_dir / "NC_005816.gb", seed=1)
    c, _ = _run(genbank_dir / "NC_005816.gb", seed=2)
    assert [r["text"] for r in a] == [r["text"] for r in b]
    assert [r["modalities"] for r in a] != [r["modalities"] for r in c]


def test_shuffled_combinations_cover_every_arrangement_equally():
    members = [("dna", "D"), ("rna", "R"), ("protein", "P")]
    rng = np.random.default_rng(0)
    n = 24_000
    counts = Counter(tuple(m for m, _ in shuffled_combination(rng, members)) for _ in range(n))
    # 6 ordered pairs + 6 orders of the triple, each with probability 1/12.
    assert len(counts) == 12
    assert set(counts) == {
        ("dna", "rna"), ("rna", "dna"), ("dna", "protein"), ("protein", "dna"),
        ("rna", "protein"), ("protein", "rna"),
        ("dna", "rna", "protein"), ("dna", "protein", "rna"), ("rna", "dna", "protein"),
        ("rna", "protein", "dna"), ("protein", "dna", "rna"), ("protein", "rna", "dna"),
    }  # fmt: skip
    expected = n / 12
    sigma = (n * (1 / 12) * (11 / 12)) ** 0.5
    for arrangement, count in counts.items():
        assert abs(count - expected) < 4.5 * sigma, (arrangement, count)
    two = Counter(tuple(m for m, _ in shuffled_combination(rng, members[1:])) for _ in range(2000))
    assert set(two) == {("rna", "protein"), ("protein", "rna")}
    assert abs(two[("rna", "protein")] - 1000) < 150


def test_translation_mismatch_is_an_error_naming_file_record_and_reason(tmp_path, genbank_dir):
    text = (genbank_dir / "NC_005816.gb").read_text()
    # Corrupt the first annotated translation (MVTFETV... -> MVTFETW...).
    bad = text.replace('/translation="MVTFETVMEI', '/translation="MVTFETWMEI', 1)
    assert bad != text
    path = tmp_path / "corrupt.gb"
    path.write_text(bad)
    with pytest.raises(InputError) as info:
        _run(path)
    msg = str(info.value)
    assert str(path) in msg and "NC_005816.1 CDS NP_995567.1" in msg
    assert "translation_mismatch" in msg and "\n" not in msg
    rows, ledger = _run(path, on_invalid="skip")
    assert len(rows) == 9
    assert dict(ledger.skipped["refseq_pair"]) == {"translation_mismatch": 1}
