"""Decontamination removes planted evaluation sequences from real shards and reports them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bsm_ray.errors import InputError
from bsm_ray.ingest.decontaminate import DecontaminateConfig, decontaminate, kmer_hashes
from bsm_ray.ingest.shards import read_manifest, shard_paths, verify_dataset

ROOT = Path(__file__).resolve().parents[1]


def _rows(root, kind, split="train"):
    return [r for p in shard_paths(root, kind, split) for r in pq.read_table(p).to_pylist()]


def _segment(row, modality):
    i = row["modalities"].index(modality)
    part = row["text"].split("<sep>")[i]
    return part[part.index(">") + 1 :]


def test_kmer_hashes_are_rolling_and_content_addressed():
    h = kmer_hashes("ACGTACGTAC", 4)
    assert h.size == 7 and h[0] == h[4] and h[1] == h[5]  # ACGT at 0 and 4, CGTA at 1 and 5
    assert len(set(h.tolist())) == 4
    assert kmer_hashes("ACG", 4).size == 0


def test_planted_sequences_are_removed_and_reported(dataset, tmp_path):
    pairs = _rows(dataset, "refseq_pair")
    protein_row = next(r for r in pairs if "protein" in r["modalities"])
    dna_row = [r for r in pairs if "dna" in r["modalities"]][-1]
    # plant: one protein exactly (FASTA) and one gene DNA with 3 substitutions (CSV), lowercase
    protein = _segment(protein_row, "protein")
    dna = list(_segment(dna_row, "dna"))
    for i in (len(dna) // 4, len(dna) // 2, 3 * len(dna) // 4):
        dna[i] = "A" if dna[i] != "A" else "C"
    (tmp_path / "proteins.faa").write_text(f">planted\n{protein}\n")
    (tmp_path / "variants.csv").write_text(f"name,sequence\nplanted,{''.join(dna).lower()}\n")
    out = tmp_path / "clean"
    report = decontaminate(DecontaminateConfig(
        dataset=dataset, output_dir=str(out),
        eval_sets={"proteins": [str(tmp_path / "proteins.faa")],
                   "variants": [str(tmp_path / "variants.csv")]},
    ))  # fmt: skip
    kept_ids = {r["doc_id"] for r in _rows(out, "refseq_pair")}
    assert protein_row["doc_id"] not in kept_ids and dna_row["doc_id"] not in kept_ids
    sets = report["eval_sets"]
    assert sets["proteins"]["removed_by_kind_split_rule"].get("refseq_pair/train/exact", 0) >= 1
    assert sets["variants"]["removed_by_kind_split_rule"].get("refseq_pair/train/overlap", 0) >= 1
    assert any(protein_row["doc_id"] in e for e in sets["proteins"]["examples"])
    # nothing lost: every kind and split keeps exactly what was scanned minus what was removed
    before, after = read_manifest(dataset)["totals"], read_manifest(out)["totals"]
    removed = sum(s["rows_removed"] for s in sets.values())
    assert removed >= 2
    assert sum(t["rows"] for k in before.values() for t in k.values()) == removed + sum(
        t["rows"] for k in after.values() for t in k.values()
    )
    assert verify_dataset(out) == []
    assert read_manifest(out)["ledger"]["decontamination"] == report
    assert json.loads((out / "decontamination.json").read_text()) == report
    assert read_manifest(dataset)["totals"] == before  # the input is untouched


def test_bad_eval_files_are_clear_errors(dataset, tmp_path):
    (tmp_path / "labels.csv").write_text("name,label\na,1\n")
    with pytest.raises(InputError, match="labels.csv: no_sequence_column"):
        decontaminate(DecontaminateConfig(dataset=dataset, output_dir=str(tmp_path / "o"),
                                          eval_sets={"x": [str(tmp_path / "labels.csv")]}))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "decontaminate.py"), "--set", f"dataset={dataset}",
         "--set", f"output_dir={tmp_path / 'o'}",
         "--set", f"eval_sets={{x: [{tmp_path / 'missing.fa'}]}}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "missing.fa: missing_file" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_a_mix_source_without_train_rows_is_a_clear_error(tmp_path):
    """A source emptied (here: never prepared) fails before any worker starts; an empty
    validation split is allowed (that source is simply not evaluated)."""
    from bsm_ray.errors import BsmRayError
    from bsm_ray.ingest.builders import SingleInput
    from bsm_ray.ingest.prepare import PrepareConfig, prepare_dataset
    from bsm_ray.train.config import DataConfig, TrainConfig
    from bsm_ray.train.context import build_windows

    fasta = tmp_path / "dna.fa"
    fasta.write_text("".join(f">r{i}\n{'ACGT' * 40}\n" for i in range(4)))
    out = tmp_path / "ds"
    prepare_dataset(PrepareConfig(sample=False, output_dir=str(out), progress=False,
                                  val_fraction=0.0,
                                  single=[SingleInput(str(fasta), "dna")]))  # fmt: skip
    config = TrainConfig(data=DataConfig(dataset=str(out), mix={"single_dna": 1.0}), seq_len=64)
    assert len(build_windows(config, "train")["single_dna"]) > 0
    assert len(build_windows(config, "val")["single_dna"]) == 0
    config.data.mix = {"single_dna": 1.0, "refseq_pair": 1.0}
    with pytest.raises(BsmRayError, match="source 'refseq_pair' has no train rows"):
        build_windows(config, "train")


def test_ray_gives_the_local_decontaminated_dataset(dataset, tmp_path, ray_instance):
    protein_row = next(r for r in _rows(dataset, "refseq_pair") if "protein" in r["modalities"])
    (tmp_path / "planted.faa").write_text(f">p\n{_segment(protein_row, 'protein')}\n")
    outs = {}
    for parallel in ("local", "ray"):
        outs[parallel] = decontaminate(DecontaminateConfig(
            dataset=dataset, output_dir=str(tmp_path / parallel), parallel=parallel,
            num_workers=2, progress=False, eval_sets={"planted": [str(tmp_path / "planted.faa")]},
        ))  # fmt: skip
    assert outs["local"]["eval_sets"]["planted"]["rows_removed"] >= 1
    assert {k: v for k, v in outs["local"].items() if k != "seconds"} == {
        k: v for k, v in outs["ray"].items() if k != "seconds"}  # fmt: skip
    shas = {p: read_manifest(tmp_path / p)["dataset_sha256"] for p in outs}
    assert shas["local"] == shas["ray"]
    assert verify_dataset(tmp_path / "ray") == []
