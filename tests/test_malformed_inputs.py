"""Bad input: every malformed file gets a clear one-line error or a counted skip."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import pytest

from bsm_ray.data.builders import (
    BuildContext,
    RefSeqConfig,
    SingleInput,
    build_refseq_pairs,
    build_single,
)
from bsm_ray.data.prepare import PrepareConfig, prepare_dataset
from bsm_ray.data.records import Ledger, iter_fasta, read_fasta_records
from bsm_ray.errors import BsmRayError, InputError

ROOT = Path(__file__).resolve().parents[1]


def _genbank_files(genbank_dir: Path) -> list[Path]:
    return sorted(p for p in genbank_dir.iterdir() if p.is_file())


def test_every_file_of_biopythons_genbank_corpus_is_handled(genbank_dir):
    """Error mode: documents or an InputError, never another exception; skip mode: counted."""
    outcomes = {}
    for path in _genbank_files(genbank_dir):
        ledger = Ledger(on_invalid="error")
        try:
            rows = list(build_refseq_pairs(RefSeqConfig(), str(path), BuildContext(ledger, 0, 0.1)))
            outcomes[path.name] = ("ok", len(rows))
        except InputError as exc:
            msg = str(exc)
            assert msg.startswith(str(path)) and "\n" not in msg
            outcomes[path.name] = ("error", exc.reason)
            skip = Ledger(on_invalid="skip")
            try:
                list(build_refseq_pairs(RefSeqConfig(), str(path), BuildContext(skip, 0, 0.1)))
            except InputError as whole_file:  # unparseable file: the caller counts it
                skip.invalid("refseq_pair", whole_file)
            assert skip.num_skipped() >= 1
    errors = {name: o[1] for name, o in outcomes.items() if o[0] == "error"}
    # The deliberately broken files are among the rejected ones, each with its reason.
    assert errors["invalid_product.gb"] == "malformed_genbank"
    assert errors["no_origin_no_end.gb"] == "malformed_genbank"
    assert errors["negative_location.gb"] == "bad_cds_location"
    assert errors["bad_origin_wrap.gb"] == "no_sequence"
    assert errors["protein_refseq.gb"] == "protein_record"
    assert errors["NC_005816.faa"] == "malformed_genbank"  # FASTA given as GenBank
    assert outcomes["NC_000932.gb"] == ("ok", 85)


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
    # one_of.gb has two CDS pointing into other records, negative_location.gb one
    assert skipped == {"bad_cds_location": 3, "malformed_genbank": 2}
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
