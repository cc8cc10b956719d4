"""Bad input: every malformed file gets a clear one-line error or a counted skip."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import pytest

from bsm_ray.errors import BsmRayError, InputError
from bsm_ray.ingest.builders import (
    BuildContext,
    RefSeqConfig,
    SingleInput,
    build_refseq_pairs,
    build_single,
)
from bsm_ray.ingest.prepare import PrepareConfig, input_rows, prepare_dataset
from bsm_ray.ingest.records import Ledger, iter_fasta, iter_genbank, read_fasta_records

ROOT = Path(__file__).resolve().parents[1]


def _genbank_files(genbank_dir: Path) -> list[Path]:
    return sorted(p for p in genbank_dir.iterdir() if p.is_file())


_NO_ORIGIN = "no_sequence (record has no ORIGIN data)"
_GENPEPT = "protein_record (a GenPept (protein) record: its CDS points into a nucleotide record"
_NO_CDS = "no_rows (1 record read, none gave a row: noted record_without_cds 1)"
_NOT_GENBANK = "malformed_genbank (no GenBank record found)"
_WARNED = "parser_warning (BiopythonParserWarning: "
_SKIPPED_RECORD = {"no_rows": 1}  # + the record's own reason: the file then gave nothing

# Every file of Biopython 1.88's Tests/GenBank and what preparing it alone gives:
#   error mode: the number of rows written, or how the one error line goes on after
#               "<path>: " (compared with startswith);
#   skip mode:  (rows written, skip counts by reason).
# A record Biopython repaired (any BiopythonParserWarning) is rejected with the warning's text;
# a file that gives no row is `no_rows`; a file that is not GenBank is `malformed_genbank`.
GENBANK_CORPUS = {
    "1MRR_A.gp": (f"record 1MRR_A: {_WARNED}Dropping bond qualifier in feature location; 19 "
                  "parser warnings in this record)", (0, {"parser_warning": 1, **_SKIPPED_RECORD})),
    "DS830848.gb": (f"record DS830848.1: {_NO_ORIGIN}", (0, {"no_sequence": 1, "no_rows": 1})),
    "EU851978.gbk": (1, (1, {})),
    "EU851978_output.gbk": (1, (1, {})),
    "EZ116220.gb": (_NO_CDS, (0, {"no_rows": 1})),
    "GU949562.1.gb": (_NO_CDS, (0, {"no_rows": 1})),
    "HM138502.gbk": (1, (1, {})),
    "HM138502_output.gbk": (1, (1, {})),
    "KF527485.gbk": (1, (1, {})),
    "KF527485_output.gbk": (1, (1, {})),
    "NC_000932.faa": (_NOT_GENBANK, (0, {"malformed_genbank": 1})),  # FASTA given as GenBank
    "NC_000932.gb": (85, (85, {})),
    "NC_000932.gb.bgz": (85, (85, {})),  # BGZF: multi-member gzip
    "NC_005816.faa": (_NOT_GENBANK, (0, {"malformed_genbank": 1})),
    "NC_005816.ffn": (_NOT_GENBANK, (0, {"malformed_genbank": 1})),
    "NC_005816.fna": (_NOT_GENBANK, (0, {"malformed_genbank": 1})),
    "NC_005816.gb": (10, (10, {})),
    "NC_005816.tsv": (_NOT_GENBANK, (0, {"malformed_genbank": 1})),
    "NP_416719.gbwithparts": (f"record NP_416719.1: {_GENPEPT}",
                              (0, {"protein_record": 1, **_SKIPPED_RECORD})),
    "NT_019265.gb": (f"record NT_019265.6: {_NO_ORIGIN}", (0, {"no_sequence": 1, "no_rows": 1})),
    # Addgene/SnapGene exports have ACCESSION '.': the record is named by its LOCUS name.
    "addgene-plasmid-11664-sequence-180430.gbk": (
        f"record Exported: {_WARNED}it appears that '8569..276' is a feature that spans the "
        "origin, but the sequence topology is undefined; setting feature location to None.)",
        (0, {"parser_warning": 1, **_SKIPPED_RECORD})),
    "addgene-plasmid-39296-sequence-49545.gbk": (
        f"record pFA6a-kanMX6: {_WARNED}Attempting to fix invalid location '3922..2' as it "
        "looks like incorrect origin wrapping.", (0, {"parser_warning": 1, **_SKIPPED_RECORD})),
    "arab1.gb": (18, (18, {})),
    "bad_loc_wrap.gb": (f"record AC007323_part: {_WARNED}Non-standard feature line wrapping "
                        "(didn't break on comma)?)", (0, {"parser_warning": 1, **_SKIPPED_RECORD})),
    "bad_origin_wrap.gb": (f"record XX_123456.1: {_WARNED}Attempting to fix invalid location "
                           "'6801..100' as it looks like incorrect origin wrapping.",
                           (0, {"parser_warning": 1, **_SKIPPED_RECORD})),
    "bad_origin_wrap_CDS.gb": (f"record Exported: {_WARNED}Attempting to fix invalid location "
                               "'238..50' as it looks like incorrect origin wrapping.",
                               (0, {"parser_warning": 1, **_SKIPPED_RECORD})),
    "bad_origin_wrap_fuzzy.gb": (f"record L09137.2: {_WARNED}Attempting to fix invalid location "
                                 "'<2644..159'", (0, {"parser_warning": 1, **_SKIPPED_RECORD})),
    "bad_origin_wrap_linear.gb": (f"record XX_123456.1: {_WARNED}it appears that '6801..100' is "
                                  "a feature that spans the origin, but the sequence topology is "
                                  "undefined", (0, {"parser_warning": 1, **_SKIPPED_RECORD})),
    "blank_seq.gb": (f"record NP_001832.1: {_GENPEPT}",
                     (0, {"protein_record": 1, **_SKIPPED_RECORD})),
    "cor6_6.gb": (6, (6, {})),
    "cor6_6.gb.bgz": (6, (6, {})),
    "dbsource_wrap.gb": (f"record P01485: {_GENPEPT}", (0, {"protein_record": 1, "no_rows": 1})),
    "empty_accession.gbk": (_NO_CDS, (0, {"no_rows": 1})),
    "empty_feature_qualifier.gb": (_NO_CDS, (0, {"no_rows": 1})),
    "empty_version.gbk": (_NO_CDS, (0, {"no_rows": 1})),
    "extra_keywords.gb": ("record AL138972.1 CDS CAB72295.1: bad_cds_location (Feature references "
                          "another sequence (AL121804.2), references mandatory)",
                          (11, {"bad_cds_location": 1})),
    "gbvrl1_start.seq": (3, (3, {})),
    "invalid_locus_line_spacing.gb": (f"record AB070938.1: {_WARNED}Attempting to parse malformed "
                                      "locus line: 'LOCUS AB070938 6497 bp DNA linear BCT",
                                      (0, {"parser_warning": 1, **_SKIPPED_RECORD})),
    "invalid_misc_feature.gb": (f"record AB070938.1: {_WARNED}line too short to contain a "
                                "feature: ' misc_feature')",
                                (0, {"parser_warning": 1, **_SKIPPED_RECORD})),
    "invalid_product.gb": ("record #1: malformed_genbank (Problem with 'CDS' feature: 1..42 "
                           '/note="Fake CDS" /product "invalid multiline',
                           (0, {"malformed_genbank": 1})),
    "invalid_structured_comment.gb": (f"record AYW00820.1: {_WARNED}Structured comment not parsed "
                                      "on malformed header line: Assembly method: IDBA-UD; 2 "
                                      "parser warnings in this record)",
                                      (0, {"parser_warning": 1, **_SKIPPED_RECORD})),
    "iro.gb": (_NO_CDS, (0, {"no_rows": 1})),
    "negative_location.gb": (f"record AB070938.1: {_WARNED}negative starting position in feature "
                             "location '-2..492'; setting feature location to None.)",
                             (0, {"parser_warning": 1, **_SKIPPED_RECORD})),
    "no_end_marker.gb": (f"record AB070938.1: {_WARNED}Premature end of file in sequence data)",
                         (0, {"parser_warning": 1, **_SKIPPED_RECORD})),
    "no_origin_no_end.gb": ("record #1: malformed_genbank (Premature end of line during features "
                            "table)", (0, {"malformed_genbank": 1})),
    "noref.gb": (1, (1, {})),
    "noref_date_warning.gb": (f"record NM_006141.1: {_WARNED}LOCUS line does not contain - at "
                              "position 65 in date:",
                              (0, {"parser_warning": 1, **_SKIPPED_RECORD})),
    # Two CDS of one_of.gb point into other records (join(U18267.1:...)): a clean reason each.
    "one_of.gb": ("record U18266.1 CDS AAB60434.1: bad_cds_location (Feature references another "
                  "sequence (U18267.1), references mandatory)",
                  (0, {"bad_cds_location": 2, "no_rows": 1})),
    "origin_line.gb": (_NO_CDS, (0, {"no_rows": 1})),
    "pBAD30.gb": ("record pBAD30 CDS cds1: untranslatable_cds (Final codon 'CTG' is not a stop "
                  "codon)", (1, {"untranslatable_cds": 1})),
    "pri1.gb": (_NO_CDS, (0, {"no_rows": 1})),
    "protein_refseq.gb": (f"record NP_034640.1: {_GENPEPT}",
                          (0, {"protein_record": 1, **_SKIPPED_RECORD})),
    "protein_refseq2.gb": (f"record NP_034640.1: {_GENPEPT}",
                           (0, {"protein_record": 1, **_SKIPPED_RECORD})),
    "qualifier_escaping_read.gb": (f"record NP_034640.1: {_WARNED}The NCBI states double-quote "
                                   'characters like " should be escaped as ""',
                                   (0, {"parser_warning": 1, **_SKIPPED_RECORD})),
    "qualifier_escaping_write.gb": (f"record NP_034640.1: {_GENPEPT}",
                                    (0, {"protein_record": 1, **_SKIPPED_RECORD})),
    "tls_KDHP01000000.gb": (f"record KBUV00000000.1: {_NO_ORIGIN}",
                            (0, {"no_sequence": 1, "no_rows": 1})),
    "tsa_acropora.gb": (f"record GHGH00000000.1: {_NO_ORIGIN}",
                        (0, {"no_sequence": 1, "no_rows": 1})),
    "wrong_sequence_indent.gb": (f"record AB070938.1: {_WARNED}Invalid indentation for sequence "
                                 "line; 109 parser warnings in this record)",
                                 (0, {"parser_warning": 1, **_SKIPPED_RECORD})),
}  # fmt: skip


def _prepare_one_genbank(path: Path, on_invalid: str) -> tuple[list, Ledger]:
    """One GenBank file through the builder and the per-input policy `prepare_dataset` applies."""
    ctx = BuildContext(Ledger(on_invalid=on_invalid), 0, 0.1)
    rows = list(
        input_rows(
            "refseq_pair", str(path), build_refseq_pairs(RefSeqConfig(), str(path), ctx), ctx
        )
    )
    return rows, ctx.ledger


def test_every_file_of_biopythons_genbank_corpus_has_its_expected_outcome(genbank_dir, recwarn):
    files = _genbank_files(genbank_dir)
    assert sorted(p.name for p in files) == sorted(GENBANK_CORPUS)  # 58 files, none unexpected
    for path in files:
        expected_error, (expected_rows, expected_skips) = GENBANK_CORPUS[path.name]
        if isinstance(expected_error, int):
            rows, _ = _prepare_one_genbank(path, "error")
            assert len(rows) == expected_error, path.name
        else:
            with pytest.raises(InputError) as info:
                _prepare_one_genbank(path, "error")
            message = str(info.value)
            assert "\n" not in message, path.name
            assert message.startswith(f"{path}: {expected_error}"), message
        rows, ledger = _prepare_one_genbank(path, "skip")
        assert (len(rows), dict(ledger.skipped.get("refseq_pair", {}))) == (
            expected_rows,
            expected_skips,
        ), path.name
    # Biopython's warnings became reasons above; none reached the warnings machinery.
    assert [str(w.message) for w in recwarn if "Bio" in w.category.__name__] == []


def test_repaired_record_is_rejected_and_the_good_ones_kept(tmp_path, genbank_dir):
    """A file with a good record and a repaired one (no `//` at the end of the file)."""
    path = tmp_path / "two.gb"
    path.write_bytes(
        (genbank_dir / "NC_005816.gb").read_bytes()
        + (genbank_dir / "no_end_marker.gb").read_bytes()
    )
    rows, ledger = _prepare_one_genbank(path, "skip")
    assert len(rows) == 10 and {r["source_record"].split()[0] for _s, r in rows} == {"NC_005816.1"}
    assert dict(ledger.skipped["refseq_pair"]) == {"parser_warning": 1}
    assert ledger.examples["refseq_pair/parser_warning"] == [
        f"{path}: record AB070938.1: parser_warning (BiopythonParserWarning: Premature end of file "
        "in sequence data)"
    ]
    # The strict reader (the Central Dogma task uses it) raises on the repaired record.
    with pytest.raises(InputError, match="record AB070938.1: parser_warning"):
        list(iter_genbank(path))


def test_job_prints_one_line_and_no_traceback(tmp_path, genbank_dir):
    for name in ("invalid_product.gb", "no_origin_no_end.gb", "negative_location.gb"):
        proc = subprocess.run(
            [sys.executable, str(ROOT / "jobs" / "prepare_data.py"),
             "--set", "sample=false", "--set", f"output_dir={tmp_path / 'out'}",
             "--set", f"refseq.genbank=[{genbank_dir / name}]", "--set", "progress=false"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and name in lines[0]
        assert not (tmp_path / "out").exists()


def test_skip_mode_counts_every_malformed_genbank_file(tmp_path, genbank_dir):
    bad = ["invalid_product.gb", "no_origin_no_end.gb", "negative_location.gb", "one_of.gb"]
    result = prepare_dataset(
        PrepareConfig(
            sample=False, output_dir=str(tmp_path / "ds"), on_invalid="skip", progress=False,
            refseq=RefSeqConfig(genbank=[str(genbank_dir / n) for n in ["NC_005816.gb", *bad]]),
        )
    )  # fmt: skip
    skipped = result.manifest["ledger"]["skipped"]["refseq_pair"]
    # one_of.gb: two CDS pointing into other records, then no row; negative_location.gb: a
    # location Biopython set to None (a parser warning), then no row; two unparseable files
    assert skipped == {"bad_cds_location": 2, "malformed_genbank": 2, "no_rows": 2,
                       "parser_warning": 1}  # fmt: skip
    assert (
        result.manifest["totals"]["refseq_pair"]["train"]["rows"]
        + result.manifest["totals"]["refseq_pair"].get("val", {"rows": 0})["rows"]
        == 10
    )
    assert "skipped" in result.summary() and "malformed_genbank" in result.summary()


def _fasta(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _single(path, modality="protein", on_invalid="error", max_doc_letters=1000, t_to_u=False):
    ledger = Ledger(on_invalid=on_invalid)
    spec = SingleInput(str(path), modality, t_to_u=t_to_u)
    rows = [r for _s, r in build_single(spec, BuildContext(ledger), max_doc_letters)]
    return rows, ledger


def test_invalid_character_error_names_file_record_position(tmp_path):
    path = _fasta(tmp_path, "p.faa", ">ok1 fine\nMKV\n>bad2 has J\nMKVL\nAAJA\n>ok3\nMA\n")
    with pytest.raises(InputError) as info:
        _single(path)
    assert str(info.value) == (
        f"{path}: record bad2: invalid_character ('J' at position 7 is not in the protein IUPAC "
        "alphabet)"
    )
    rows, ledger = _single(path, on_invalid="skip")
    assert [r["doc_id"] for r in rows] == ["ok1", "ok3"]
    assert dict(ledger.skipped["single_protein"]) == {"invalid_character": 1}


def test_empty_duplicate_and_headerless_records(tmp_path):
    path = _fasta(tmp_path, "d.fna", ">a\nACGT\n>empty\n\n>a\nACGA\n>b\nacgtn\n")
    rows, ledger = _single(path, modality="dna", on_invalid="skip")
    assert [(r["doc_id"], r["text"]) for r in rows] == [("a", "<dna>ACGT"), ("b", "<dna>ACGTN")]
    assert dict(ledger.skipped["single_dna"]) == {"empty_sequence": 1, "duplicate_id": 1}
    headerless = _fasta(tmp_path, "h.fna", "ACGT\n>a\nACGT\n")
    with pytest.raises(InputError, match="sequence data before the first '>' header"):
        _single(headerless, modality="dna")


def test_rna_alphabet_and_t_to_u(tmp_path):
    path = _fasta(tmp_path, "r.fa", ">r1\nACGU\n>r2\nACGT\n")
    rows, ledger = _single(path, modality="rna", on_invalid="skip")
    assert [r["doc_id"] for r in rows] == ["r1"]
    assert dict(ledger.skipped["single_rna"]) == {"invalid_character": 1}
    rows, _ = _single(_fasta(tmp_path, "c.fa", ">c1\nACGT\n"), modality="rna", t_to_u=True)
    assert rows[0]["text"] == "<rna>ACGU"


def test_long_record_splits_into_parts_and_invalid_tail_loses_whole_record(tmp_path):
    seq = "ACGT" * 600  # 2400 letters, max_doc_letters 1000 -> 3 parts
    path = _fasta(
        tmp_path,
        "long.fna",
        ">chr\n" + "\n".join(seq[i : i + 60] for i in range(0, 2400, 60)) + "\n",
    )
    rows, _ = _single(path, modality="dna")
    assert [r["doc_id"] for r in rows] == ["chr/part0", "chr/part1", "chr/part2"]
    assert "".join(r["text"].removeprefix("<dna>") for r in rows) == seq
    bad = _fasta(tmp_path, "bad.fna", ">chr\n" + seq + "\n" + "ACG1\n>next\nACGT\n")
    rows, ledger = _single(bad, modality="dna", on_invalid="skip")
    assert [r["doc_id"] for r in rows] == ["next"]  # no half record written
    assert dict(ledger.skipped["single_dna"]) == {"invalid_character": 1}


def test_fasta_reader_matches_biopython_on_its_corpus(bio_tests):
    from Bio import SeqIO

    checked = 0
    for path in sorted((bio_tests / "Fasta").iterdir()):
        if path.suffix not in (".nu", ".pro", ".fa", ".fasta", ".gz") and path.name not in (
            "f001",
            "f002",
            "fa01",
        ):
            continue
        handle = gzip.open(path, "rt") if path.suffix == ".gz" else open(path)
        with handle:
            try:
                theirs = [(r.id, str(r.seq)) for r in SeqIO.parse(handle, "fasta")]
            except ValueError:  # e.g. comment lines before the first record
                with pytest.raises(InputError, match="malformed_fasta"):
                    list(read_fasta_records(path))
                checked += 1
                continue
        ours = [(rid, seq) for rid, _d, _i, seq in read_fasta_records(path)]
        assert ours == theirs, path.name
        checked += 1
    assert checked >= 10


def test_fasta_chunks_are_bounded_and_gzip_is_transparent(tmp_path):
    seq = "ACGT" * 10_000
    text = ">big\n" + "\n".join(seq[i : i + 80] for i in range(0, len(seq), 80)) + "\n"
    plain = _fasta(tmp_path, "big.fa", text)
    gz = tmp_path / "big.fa.gz"
    gz.write_bytes(gzip.compress(text.encode()))
    chunks = list(iter_fasta(plain, chunk_bytes=4096))
    assert all(len(c.seq) < 4096 + 80 for c in chunks)
    assert chunks[0].first and chunks[-1].last and len(chunks) > 5
    assert b"".join(c.seq for c in chunks).decode() == seq
    assert [c.seq for c in iter_fasta(gz, chunk_bytes=4096)] == [c.seq for c in chunks]


def test_missing_input_file_is_a_clear_error(tmp_path):
    with pytest.raises(BsmRayError, match="nope.fa: file_not_found"):
        prepare_dataset(
            PrepareConfig(sample=False, output_dir=str(tmp_path / "x"), progress=False,
                          single=[SingleInput(str(tmp_path / "nope.fa"), "dna")])
        )  # fmt: skip
