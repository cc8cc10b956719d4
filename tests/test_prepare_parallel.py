"""The preparation as units of work: the same dataset locally and on Ray, the global rules of
one sequential read, and resumption after a crash."""

from __future__ import annotations

import json
import os
import random
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import UNIT_SAMPLE

from bsm_ray.errors import InputError
from bsm_ray.ingest.builders import (
    BuildContext,
    GenomeConfig,
    RefSeqConfig,
    SingleInput,
    WebConfig,
    build_genome_pieces,
    build_refseq_pairs,
    build_single,
    build_web,
)
from bsm_ray.ingest.prepare import PrepareConfig, input_rows, prepare_dataset
from bsm_ray.ingest.records import Ledger
from bsm_ray.ingest.units import FAULT_ENV, UNITS_DIR, plan_input

SAMPLE = UNIT_SAMPLE


@pytest.fixture
def local_sample(local_unit_sample):
    return local_unit_sample


def _rows(root: Path, manifest: dict) -> dict[tuple[str, str], list[dict]]:
    rows = {}
    for kind, splits in manifest["shards"].items():
        for split, infos in splits.items():
            tables = [pq.read_table(root / i["path"]) for i in infos]
            rows[(kind, split)] = [r for t in tables for r in t.to_pylist()]
    return rows


@pytest.mark.parametrize("num_workers", [1, 2])
def test_ray_gives_the_local_dataset(local_sample, ray_instance, tmp_path, num_workers):
    assert local_sample.num_units > 20  # the sample's larger files are cut into several units
    out = tmp_path / "ray"
    ray_ds = prepare_dataset(PrepareConfig(output_dir=str(out), parallel="ray",
                                           num_workers=num_workers, **SAMPLE))  # fmt: skip
    assert ray_ds.manifest["dataset_sha256"] == local_sample.manifest["dataset_sha256"]
    assert ray_ds.manifest["ledger"] == local_sample.manifest["ledger"]
    assert ray_ds.manifest["stats"] == local_sample.manifest["stats"]
    assert ray_ds.manifest["totals"] == local_sample.manifest["totals"]
    assert not (out / UNITS_DIR).exists()


def test_units_cut_at_record_boundaries(tmp_path):
    path = tmp_path / "a.fa"
    records = [f">r{i} desc\n" + "ACGT" * 30 + "\n" for i in range(50)]
    path.write_text("".join(records))
    plan = plan_input(str(path), "fasta", 500)
    parts = plan["parts"]
    assert len(parts) > 5 and parts[0]["start"] == 0 and parts[-1]["stop"] == path.stat().st_size
    data = path.read_bytes()
    for prev, part in zip(parts, parts[1:], strict=False):
        assert prev["stop"] == part["start"] and data[part["start"] : part["start"] + 1] == b">"
        assert part["first_line"] == data[: part["start"]].count(b"\n") + 1
        assert part["first_record"] == data[: part["start"]].count(b">")
    assert plan_input(str(path), "fasta", 1 << 20)["parts"] is None  # small: one unit


# --- the global rules of one sequential read ----------------------------------------------------


def _write_inputs(root: Path, genbank_dir: Path) -> PrepareConfig:
    rnd = random.Random(7)

    def dna(n: int) -> str:
        return "".join(rnd.choice("ACGT") for _ in range(n))

    a = [f">r{i}\n{dna(200)}\n" for i in range(30)]
    a[8] = f">r5\n{dna(200)}\n"  # a duplicate id, several units after the first r5
    a[12] = ">r12\nACGT!ACGT\n"  # an invalid letter
    (root / "a.fa").write_text("".join(a))
    (root / "b.fa").write_text(f">r3\n{dna(50)}\n>r40\n{dna(80)}\n")  # r3: a duplicate across files
    lines = []
    for i in range(40):
        seqs = " and ".join(dna(30) for _ in range(3))
        doc = {"id": f"d{i}", "text": f"Some prose about genes. {seqs}. The end."}
        if i == 35:
            doc["id"] = "d7"  # a duplicate document id in a later unit
        if i == 20:
            del doc["id"]  # an id from the file name and line number
        lines.append(json.dumps(doc))
    lines.insert(10, "{not json")
    (root / "docs.jsonl").write_text("\n".join(lines) + "\n")
    def wrap(seq: str) -> str:  # 60 letters a line: genome units are cut inside chromosomes
        return "\n".join(seq[i : i + 60] for i in range(0, len(seq), 60))

    repeat = "A" * 3200  # exact-duplicate pieces within and across files
    gapped = dna(1500) + "N" * 700 + dna(1500)  # N-removed positions differ from byte offsets
    bad = dna(1400) + "R" + dna(1300) + "9" + dna(2000)  # IUPAC R: a piece dropped; then invalid
    (root / "g1.fa").write_text(f">c1\n{wrap(repeat)}\n>c2\n{wrap(gapped)}\n"
                                f">c1\n{wrap(dna(2500))}\n>c3\n{wrap(bad)}\n")  # fmt: skip
    (root / "g2.fa").write_text(f">x1\n{wrap(repeat)}\n>x2\n{wrap(dna(2000))}\n")
    twice = (genbank_dir / "cor6_6.gb").read_text() * 2  # every record id again, later units
    (root / "twice.gb").write_text(twice)
    return PrepareConfig(
        output_dir=str(root / "out"), sample=False, progress=False, on_invalid="skip",
        single=[SingleInput(str(root / "a.fa"), "dna"), SingleInput(str(root / "b.fa"), "dna")],
        refseq=RefSeqConfig(genbank=[str(root / "twice.gb")]),
        web=WebConfig(documents=[str(root / "docs.jsonl")]),
        genome=GenomeConfig(fasta=[str(root / "g1.fa"), str(root / "g2.fa")], max_start_offset=3),
        unit_bytes=600,
    )  # fmt: skip


def _sequential(config: PrepareConfig) -> tuple[dict, Ledger]:
    """The reference: every builder in input order over whole files with one shared context,
    as `prepare_dataset` ran before units (one process, one `seen` set per rule)."""
    ctx = BuildContext(Ledger(on_invalid=config.on_invalid), config.seed, config.val_fraction)
    tasks = (
        [(f"single_{s.modality}", s.path, build_single(s, ctx, config.max_doc_letters))
         for s in config.single]
        + [("refseq_pair", p, build_refseq_pairs(config.refseq, p, ctx))
           for p in config.refseq.genbank]
        + [("web", p, build_web(config.web, p, ctx)) for p in config.web.documents]
        + [("genome", p, build_genome_pieces(config.genome, p, ctx)) for p in config.genome.fasta]
    )  # fmt: skip
    rows = defaultdict(list)
    for kind, path, gen in tasks:
        for split, row in input_rows(kind, path, gen, ctx):
            rows[(kind, split)].append(row)
    return dict(rows), ctx.ledger


def test_units_follow_the_rules_of_one_sequential_read(tmp_path, genbank_dir, ray_instance):
    config = _write_inputs(tmp_path, genbank_dir)
    expected_rows, expected_ledger = _sequential(config)
    # The inputs exercise every global rule across units and files.
    skipped = expected_ledger.skipped
    assert skipped["single_dna"] == {"duplicate_id": 2, "invalid_character": 1}
    assert skipped["web"] == {"duplicate_id": 1, "malformed_json": 1}
    assert skipped["refseq_pair"]["duplicate_id"] == 6
    assert skipped["genome"] == {"duplicate_id": 1, "invalid_character": 1}
    assert expected_ledger.notes["genome"]["duplicate_piece_dropped"] > 5
    assert expected_ledger.notes["genome"]["piece_with_non_acgt_dropped"] == 1
    local = prepare_dataset(config)
    assert local.num_units > 12
    assert _rows(local.output_dir, local.manifest) == expected_rows
    ledger = local.manifest["ledger"]
    assert ledger == expected_ledger.as_dict()
    whole = {**config.__dict__, "unit_bytes": 1 << 30, "output_dir": str(tmp_path / "1")}
    one_unit_each = prepare_dataset(PrepareConfig(**whole))
    assert _rows(one_unit_each.output_dir, one_unit_each.manifest) == expected_rows
    # Genome units start inside chromosomes; every letter is accounted for as in one read.
    assert sum(p["mid_record"] for p in plan_input(config.genome.fasta[0], "genome",
                                                    config.unit_bytes)["parts"]) > 10  # fmt: skip
    assert local.manifest["stats"] == one_unit_each.manifest["stats"]
    ray_ds = prepare_dataset(
        PrepareConfig(**{**config.__dict__, "parallel": "ray", "num_workers": 2,
                         "output_dir": str(tmp_path / "ray")})  # fmt: skip
    )
    assert ray_ds.manifest["dataset_sha256"] == local.manifest["dataset_sha256"]
    assert ray_ds.manifest["ledger"] == ledger


def test_first_error_in_input_order_whatever_the_units(tmp_path, genbank_dir):
    config = _write_inputs(tmp_path, genbank_dir)
    config.on_invalid = "error"
    with pytest.raises(InputError) as reference:
        _sequential(config)
    assert "record r5: duplicate_id" in str(reference.value)  # found by the unit rerun
    with pytest.raises(InputError) as units:
        prepare_dataset(config)
    assert str(units.value) == str(reference.value)
    assert not Path(config.output_dir).exists()
    assert not list(tmp_path.glob(".out.staging*"))  # bad input: nothing kept to resume


# --- resumption ----------------------------------------------------------------------------------


def test_a_crashed_ray_preparation_resumes_without_redoing_units(
    local_sample, ray_instance, tmp_path, monkeypatch
):
    out = tmp_path / "resumed"
    config = PrepareConfig(output_dir=str(out), parallel="ray", num_workers=2, **SAMPLE)
    failing = local_sample.num_units // 2
    monkeypatch.setenv(FAULT_ENV, str(failing))
    with pytest.raises(Exception, match="injected failure"):
        prepare_dataset(config)
    monkeypatch.delenv(FAULT_ENV)
    staging = tmp_path / ".resumed.staging"
    recorded = {int(p.name[1:6]) for p in (staging / UNITS_DIR).glob("u*.p1.json")}
    assert recorded and failing not in recorded and len(recorded) < local_sample.num_units
    tokens = {json.loads(p.read_text())["run_token"]
              for p in (staging / UNITS_DIR).glob("u*.p1.json")}  # fmt: skip
    assert len(tokens) == 1
    assert not out.exists()  # nothing published by the crashed run
    resumed = prepare_dataset(config)
    assert set(resumed.units_resumed) == recorded
    assert set(resumed.units_run).isdisjoint(recorded)
    assert len(resumed.units_resumed) + len(resumed.units_run) == local_sample.num_units
    assert resumed.manifest["dataset_sha256"] == local_sample.manifest["dataset_sha256"]
    assert not staging.exists()


def test_a_changed_input_starts_over(tmp_path, monkeypatch):
    fa = tmp_path / "a.fa"
    fa.write_text("".join(f">r{i}\n{'ACGT' * 40}\n" for i in range(20)))
    config = PrepareConfig(output_dir=str(tmp_path / "ds"), sample=False, progress=False,
                           parallel="local", unit_bytes=500,
                           single=[SingleInput(str(fa), "dna")])  # fmt: skip
    monkeypatch.setenv(FAULT_ENV, "3")
    with pytest.raises(RuntimeError, match="injected failure"):
        prepare_dataset(config)
    monkeypatch.delenv(FAULT_ENV)
    fa.write_text(fa.read_text() + ">r99\nACGTACGT\n")  # the recorded units no longer apply
    result = prepare_dataset(config)
    assert result.units_resumed == [] and result.manifest["totals"]["single_dna"]
    rows = sum(t["rows"] for t in result.manifest["totals"]["single_dna"].values())
    assert rows == 21 and os.path.isdir(tmp_path / "ds")


def test_two_preparations_of_one_dataset_do_not_share_its_staging(tmp_path):
    import fcntl

    from bsm_ray.errors import BsmRayError

    fa = tmp_path / "a.fa"
    fa.write_text(">r1\nACGT\n")
    config = PrepareConfig(output_dir=str(tmp_path / "ds"), sample=False, progress=False,
                           parallel="local", single=[SingleInput(str(fa), "dna")])  # fmt: skip
    with open(tmp_path / ".ds.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(BsmRayError, match="another preparation is writing it"):
            prepare_dataset(config)
    prepare_dataset(config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.fa", "ds"]
