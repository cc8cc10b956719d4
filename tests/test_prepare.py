"""End to end: the prepare job on the embedded sample corpus, manifest, atomic publication."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bsm_ray.errors import InputError
from bsm_ray.ingest import shards as shards_mod
from bsm_ray.ingest.builders import SingleInput
from bsm_ray.ingest.prepare import PrepareConfig, prepare_dataset
from bsm_ray.ingest.shards import (
    DOC_SCHEMA,
    GENOME_SCHEMA,
    ShardWriter,
    read_manifest,
    verify_dataset,
)
from bsm_ray.tokenizers import BsmCharTokenizer, KmerTokenizer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sample_ds(tmp_path_factory):
    out = tmp_path_factory.mktemp("prep") / "sample"
    return prepare_dataset(
        PrepareConfig(output_dir=str(out), progress=False, sample_synthetic_genome_bp=60_000)
    )


def test_sample_has_every_shard_kind(sample_ds):
    totals = sample_ds.manifest["totals"]
    for kind in ("single_dna", "single_rna", "single_protein", "refseq_pair", "gene_pair", "web",
                 "genome"):  # fmt: skip
        assert totals[kind]["train"]["rows"] > 0, kind
    # the chloroplast record: 85 CDS; the whole sample's notes name the documented exceptions
    notes = sample_ds.manifest["ledger"]["notes"]["refseq_pair"]
    assert notes["kept_rna_edited_start"] == 1 and notes["trans_spliced_no_gene_dna"] == 2
    synthetic = {Path(i["path"]).name for i in sample_ds.manifest["inputs"] if i["synthetic"]}
    assert synthetic == {"documents.jsonl", "synthetic_genome.fna"}
    real = [i for i in sample_ds.manifest["inputs"] if i["path"].endswith("NC_000932.gb")]
    assert len(real) == 1 and len(real[0]["sha256"]) == 64
    assert sample_ds.manifest["tokenizers"] == {
        "bsm-char": BsmCharTokenizer().fingerprint(),
        "kmer-6": KmerTokenizer(6).fingerprint(),
    }


def test_manifest_matches_shards(sample_ds):
    root = sample_ds.output_dir
    assert verify_dataset(root) == []
    manifest = read_manifest(root)
    tok = BsmCharTokenizer()
    for kind, splits in manifest["shards"].items():
        for split, infos in splits.items():
            rows = tokens = 0
            for info in infos:
                table = pq.read_table(root / info["path"])
                expected = GENOME_SCHEMA if kind == "genome" else DOC_SCHEMA
                assert table.schema.equals(expected), info["path"]
                rows += table.num_rows
                if kind == "genome":
                    tokens += sum(len(s) - 5 for s in table["seq"].to_pylist())
                else:
                    texts = table["text"].to_pylist()
                    counted = sum(len(tok.encode(t)) for t in texts)
                    assert counted == sum(table["num_tokens"].to_pylist())
                    tokens += counted
            assert manifest["totals"][kind][split] == {"rows": rows, "tokens": tokens}
    doc_ids = pq.read_table(root / manifest["shards"]["refseq_pair"]["train"][0]["path"])["doc_id"]
    assert len(set(doc_ids.to_pylist())) == len(doc_ids)


def test_corrupted_shard_is_detected(sample_ds, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(sample_ds.output_dir, copy)
    shard = copy / read_manifest(copy)["shards"]["web"]["train"][0]["path"]
    shard.write_bytes(shard.read_bytes()[:-10] + b"0123456789")
    problems = verify_dataset(copy)
    assert len(problems) == 1 and "sha256 differs" in problems[0]


def test_failed_run_leaves_previous_dataset_untouched(sample_ds, tmp_path):
    out = tmp_path / "ds"
    good = tmp_path / "good.fa"
    good.write_text(">a\nACGT\n")
    cfg = PrepareConfig(sample=False, output_dir=str(out), progress=False,
                        single=[SingleInput(str(good), "dna")])  # fmt: skip
    first = prepare_dataset(cfg)
    before = (out / "manifest.json").read_text()
    bad = tmp_path / "bad.fa"
    bad.write_text(">a\nACGT\n>b\nAC!T\n")
    with pytest.raises(InputError, match="bad.fa: record b: invalid_character"):
        prepare_dataset(PrepareConfig(sample=False, output_dir=str(out), progress=False,
                                      single=[SingleInput(str(bad), "dna")]))  # fmt: skip
    assert (out / "manifest.json").read_text() == before
    assert verify_dataset(out) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.fa", "ds", "good.fa"]  # no staging
    assert first.manifest["totals"]["single_dna"]["train"]["rows"] == 1


def test_shard_write_is_atomic(tmp_path, monkeypatch):
    writer = ShardWriter(tmp_path, "web", "train", rows_per_shard=10)

    original = shards_mod.pq.ParquetWriter.write_table

    def crash(self, table, *args, **kwargs):  # one row group reaches the file, then it fails
        original(self, table, *args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(shards_mod.pq.ParquetWriter, "write_table", crash)
    row = {"doc_id": "d", "kind": "web", "modalities": ["dna"], "text": "<dna>A", "num_tokens": 2,
           "source_file": "f", "source_record": "r"}  # fmt: skip
    writer.add(row)
    with pytest.raises(OSError, match="disk full"):
        writer.flush()
    assert list((tmp_path / "web" / "train").iterdir()) == []


def test_prepare_job_default_command(tmp_path):
    """The README quick-start command (here with a temporary output directory)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "prepare_data.py"),
         "--set", f"output_dir={tmp_path / 'd'}", "--set", "progress=false",
         "--set", "sample_synthetic_genome_bp=60000"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "refseq_pair" in proc.stdout and "manifest:" in proc.stdout
    assert verify_dataset(tmp_path / "d") == []


def test_unknown_config_key_is_a_one_line_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "prepare_data.py"), "--set", "genome.bogus=1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: genome: unknown key(s) ['bogus']; valid keys are")
    assert "Traceback" not in proc.stderr


def test_sample_corpus_without_registry_is_a_clear_error(tmp_path, monkeypatch):
    """With the package registry unreachable, building the sample corpus says so in one line."""
    from bsm_ray.errors import SampleDataUnavailable
    from bsm_ray.ingest.samples import biopython_tests_dir

    monkeypatch.setenv("BSM_RAY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # no index at all, and no local wheels/sdists
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    monkeypatch.delenv("BSM_RAY_BIOPYTHON_SDIST", raising=False)
    with pytest.raises(SampleDataUnavailable) as info:
        biopython_tests_dir()
    msg = str(info.value)
    assert "could not fetch Biopython" in msg and "BSM_RAY_BIOPYTHON_SDIST" in msg
    assert "\n" not in msg
    assert list((tmp_path / "cache").iterdir()) == []  # nothing half-fetched left behind
