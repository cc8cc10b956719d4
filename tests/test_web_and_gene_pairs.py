"""Web-interleaved documents (sequence detector) and gene-related pairs."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq

from bsm_ray.ingest.builders import (
    BuildContext,
    GenePairsConfig,
    WebConfig,
    build_gene_pairs,
    build_web,
    partition_2_or_3,
)
from bsm_ray.ingest.detect import DetectorConfig, detect_sequences
from bsm_ray.ingest.records import Ledger

DNA60 = "ATGGCTAGCTAGGATCCGATTACAGGCATGCATTGACCGTAGCTAGCTAGGCTAACGTTA"
PROT = "MKVLAAGIVGLLLAQSTHAEEKPWYDRCNFGHIKLM"


def test_detector_layouts():
    text = (
        "Here is the coding sequence of our gene:\n"
        f">seq1 a gene\n{DNA60}\n{DNA60[:25]}\n\n"
        "In GenBank's ORIGIN layout it reads\n"
        "        1 atggctagct aggatccgat tacaggcatg\n"
        "       31 cattgaccgt agctagct\n"
        f"and the protein is {PROT}. The mRNA begins AUGGCUAGCUAGGAUCCGAUUACAGG, then more.\n"
    )
    found = detect_sequences(text)
    assert [(s.modality, s.seq) for s in found] == [
        ("dna", DNA60 + DNA60[:25]),
        ("dna", "ATGGCTAGCTAGGATCCGATTACAGGCATGCATTGACCGTAGCTAGCT"),
        ("protein", PROT),
        ("rna", "AUGGCUAGCUAGGAUCCGAUUACAGG"),
    ]
    assert [s.line for s in found] == [3, 7, 9, 9]


def test_detector_rejects_prose_acronyms_and_short_runs():
    text = (
        "THE QUICK BROWN FOX. MISSISSIPPI RIVER DELTA. PCR and DNA and RNA-seq.\n"
        "A CAT AT TAG GATTACA is a film. The primer ATGCGTACGTTAGC is short.\n"
        "MMMMMMMMMMMMMMMMMMMMMMMMM is not diverse; ACACACACACACACACACACACAC has two bases.\n"
        "Mixed TTTTTUUUUUACGTACGTACGTAC is neither DNA nor RNA.\n"
    )
    assert detect_sequences(text) == []
    assert len(detect_sequences("primer ATGCGTACGTTAGC ok", DetectorConfig(min_len=10))) == 1


def _jsonl(tmp_path, docs):
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps(d) if isinstance(d, dict) else d for d in docs) + "\n")
    return path


def test_web_keeps_documents_with_three_or_more_sequences(tmp_path):
    three = f"a {DNA60}. b {PROT}. c {DNA60[::-1]}."
    two = f"a {DNA60}. b {PROT}."
    path = _jsonl(tmp_path, [
        {"id": "d1", "text": three}, {"id": "d2", "text": two}, "{not json",
        {"id": "d3"}, {"id": "d1", "text": three},
    ])  # fmt: skip
    ledger = Ledger(on_invalid="skip")
    rows = [r for _s, r in build_web(WebConfig(), str(path), BuildContext(ledger))]
    assert [r["doc_id"] for r in rows] == ["d1"]
    assert rows[0]["text"] == f"<dna>{DNA60}<sep><protein>{PROT}<sep><dna>{DNA60[::-1]}"
    assert rows[0]["modalities"] == ["dna", "protein", "dna"]
    assert dict(ledger.skipped["web"]) == {
        "malformed_json": 1,
        "missing_text": 1,
        "duplicate_id": 1,
    }
    assert dict(ledger.notes["web"]) == {"fewer_than_3_sequences": 1}
    assert any(
        f"{path}: record line 3: malformed_json" in e for e in ledger.examples["web/malformed_json"]
    )


def test_web_reads_parquet_text_column(tmp_path):
    three = f"x {DNA60}. y {PROT}. z {DNA60[::-1]}."
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"content": [three, "no sequences here"]}), path)
    ledger = Ledger()
    cfg = WebConfig(text_field="content")
    rows = [r for _s, r in build_web(cfg, str(path), BuildContext(ledger))]
    assert len(rows) == 1 and rows[0]["doc_id"] == f"{path}:1"


def test_partition_never_leaves_a_singleton():
    import numpy as np

    rng = np.random.default_rng(0)
    for n in range(2, 40):
        for _ in range(20):
            sizes = partition_2_or_3(rng, n)
            assert sum(sizes) == n and set(sizes) <= {2, 3}


def test_gene_pairs_group_pair_and_account_for_everything(tmp_path):
    fasta = tmp_path / "seqs.fa"
    fasta.write_text(
        ">NM_000001.2 mrna\nATGAAACCC\n>NP_000001.1 protein\nMKP\n"
        ">NC_000001.11 dna\nGGATGAAACCCTT\n"
        ">NP_000002.1\nMAAA\n>NM_000003.1\nATGJ\n>NP_000003.1\nMA\n"
    )
    tsv = tmp_path / "map.tsv"
    tsv.write_text(
        "gene_id\taccession\n"
        "G1\tNM_000001\nG1\tNP_000001.1\nG1\tNC_000001.11\n"  # versionless match for NM_000001
        "G2\tNP_000002.1\tprotein\nG2\tXM_999999.1\n"  # one accession missing -> G2 has 1
        "G3\tNM_000003.1\nG3\tNP_000003.1\n"  # NM_000003 invalid (J) -> G3 has 1
        "bad line without tab\n"
    )
    ledger = Ledger(on_invalid="skip")
    cfg = GenePairsConfig(tsv=str(tsv), fasta=[str(fasta)])
    rows = [r for _s, r in build_gene_pairs(cfg, BuildContext(ledger))]
    assert len(rows) == 1  # G1: 3 sequences -> one group of 3 (or 2+... never a singleton)
    row = rows[0]
    assert sorted(row["modalities"]) == ["dna", "protein", "rna"]
    segments = dict(part[1:].split(">", 1) for part in row["text"].split("<sep>"))
    assert segments == {"rna": "AUGAAACCC", "protein": "MKP", "dna": "GGATGAAACCCTT"}
    assert dict(ledger.skipped["gene_pair"]) == {
        "accession_not_found": 1, "invalid_character": 1, "malformed_tsv_line": 1,
    }  # fmt: skip
    assert dict(ledger.notes["gene_pair"]) == {"gene_fewer_than_2_sequences": 2}


def test_gene_pair_orders_vary_and_are_seeded(tmp_path):
    fasta = tmp_path / "s.fa"
    tsv = tmp_path / "m.tsv"
    lines, recs = [], []
    for g in range(200):
        recs += [f">NM_{g}.1\nATGAAA", f">NP_{g}.1\nMKVW"]
        lines += [f"G{g}\tNM_{g}.1", f"G{g}\tNP_{g}.1"]
    fasta.write_text("\n".join(recs) + "\n")
    tsv.write_text("\n".join(lines) + "\n")
    cfg = GenePairsConfig(tsv=str(tsv), fasta=[str(fasta)])
    a = [tuple(r["modalities"]) for _s, r in build_gene_pairs(cfg, BuildContext())]
    b = [tuple(r["modalities"]) for _s, r in build_gene_pairs(cfg, BuildContext())]
    assert a == b
    counts = Counter(a)
    assert set(counts) == {("rna", "protein"), ("protein", "rna")}
    assert 70 < counts[("rna", "protein")] < 130
