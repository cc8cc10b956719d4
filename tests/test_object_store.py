"""The preparation writing straight to an object store through pyarrow.fs: an S3 server (moto's,
on a local port), pyarrow's own S3 client in the driver and in the Ray tasks.

The dataset there is the local one (the same dataset_sha256 and rows), is published by its
manifest alone, resumes after a crash, and an overwrite that crashes leaves the old dataset
whole."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
from conftest import UNIT_SAMPLE

from bsm_ray.ingest.prepare import PrepareConfig, prepare_dataset
from bsm_ray.ingest.shards import read_manifest, shards_root, verify_dataset
from bsm_ray.ingest.units import FAULT_ENV
from bsm_ray.outputs import UPLOAD_SUFFIX, OutputDir

SAMPLE = UNIT_SAMPLE


@pytest.fixture(scope="module")
def s3_bucket():
    """An S3 endpoint on a free local port and a bucket in it; yields the URI query that
    points pyarrow at it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            assert time.time() < deadline, "the S3 server did not start"
            time.sleep(0.2)
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "AWS_DEFAULT_REGION")}  # fmt: skip
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1")  # fmt: skip
    from pyarrow import fs

    fs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http",
                    allow_bucket_creation=True).create_dir("bsm")  # fmt: skip
    yield f"?endpoint_override=127.0.0.1:{port}&scheme=http"
    server.terminate()
    server.wait(10)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def local_sample(local_unit_sample):
    return local_unit_sample


def _all_rows(root: str, manifest: dict) -> dict:
    base = shards_root(root, manifest)
    out = {}
    for kind, splits in manifest["shards"].items():
        for split, infos in splits.items():
            tables = [pq.read_table(OutputDir(base).uri(i["path"])) for i in infos]
            out[(kind, split)] = [r for t in tables for r in t.to_pylist()]
    return out


@pytest.fixture(scope="module")
def s3_sample(s3_bucket, ray_instance):
    """The sample prepared by 2 Ray workers straight into the bucket."""
    uri = "s3://bsm/sample" + s3_bucket
    return uri, prepare_dataset(PrepareConfig(output_dir=uri, parallel="ray", num_workers=2,
                                              **SAMPLE))  # fmt: skip


def test_ray_workers_write_the_local_dataset_to_s3(s3_sample, local_sample):
    uri, result = s3_sample
    manifest = read_manifest(uri)
    assert manifest["dataset_sha256"] == local_sample.manifest["dataset_sha256"]
    assert result.manifest["dataset_sha256"] == manifest["dataset_sha256"]
    assert manifest["ledger"] == local_sample.manifest["ledger"]
    assert _all_rows(uri, manifest) == _all_rows(str(local_sample.output_dir),
                                                 local_sample.manifest)  # fmt: skip
    assert verify_dataset(uri) == []
    # Published by the manifest: the shards in one version prefix, nothing else left behind.
    files = OutputDir(uri).files()
    version = manifest["version"]
    assert "manifest.json" in files and version.startswith("v-")
    assert all(f == "manifest.json" or f.startswith(version + "/") for f in files)
    assert not any("/_units/" in f for f in files)
    shards = sum(len(i) for s in manifest["shards"].values() for i in s.values())
    assert len(files) == shards + 1


def test_a_crashed_overwrite_keeps_the_old_dataset_and_resumes(s3_sample, monkeypatch):
    uri, first = s3_sample
    old_version = read_manifest(uri)["version"]
    config = PrepareConfig(output_dir=uri, parallel="ray", num_workers=2, overwrite=True,
                           seed=1, **SAMPLE)  # fmt: skip
    failing = first.num_units // 2
    monkeypatch.setenv(FAULT_ENV, str(failing))
    with pytest.raises(Exception, match="injected failure"):
        prepare_dataset(config)
    monkeypatch.delenv(FAULT_ENV)
    # The old dataset is whole: same manifest, every shard there and matching.
    assert read_manifest(uri)["dataset_sha256"] == first.manifest["dataset_sha256"]
    assert verify_dataset(uri) == []
    staged = [v for v in OutputDir(uri).subdirs() if v != old_version]
    assert len(staged) == 1
    recorded = {int(f.rsplit("/", 1)[-1][1:6])
                for f in OutputDir(uri).child(staged[0]).files("_units")
                if f.endswith(".p1.json")}  # fmt: skip
    assert recorded and failing not in recorded
    # An upload a killed worker left behind (its process gone before it could delete it).
    leftover = f"{staged[0]}/web/train/.part-u00003-00000.parquet.0123456789ab{UPLOAD_SUFFIX}"
    OutputDir(uri).write_text(leftover, "partial")
    resumed = prepare_dataset(config)
    assert set(resumed.units_resumed) == recorded
    assert set(resumed.units_run).isdisjoint(recorded)
    manifest = read_manifest(uri)
    assert manifest["version"] == staged[0] != old_version
    assert manifest["dataset_sha256"] != first.manifest["dataset_sha256"]  # seed 1: new pieces
    assert verify_dataset(uri) == []
    assert OutputDir(uri).subdirs() == [staged[0]]  # the old version is removed once replaced
    assert not OutputDir(uri).child(staged[0]).files("_units")
    assert leftover not in OutputDir(uri).files()  # deleted when the dataset was assembled


def test_a_bad_object_store_uri_is_one_line_naming_it(tmp_path):
    from bsm_ray.errors import BsmRayError

    uri = "s3://bsm/sample?no_such_option=1"
    with pytest.raises(BsmRayError, match=r"output_dir s3://bsm/sample\?no_such_option=1: .*"
                                          r"no_such_option"):  # fmt: skip
        prepare_dataset(PrepareConfig(output_dir=uri, parallel="local", **SAMPLE))


def test_an_upload_interrupted_midway_leaves_the_old_object_and_no_partial_one(s3_bucket,
                                                                             monkeypatch):
    """pyarrow completes an S3 upload when its stream closes, also on an exception (a Ray
    task's cancellation arrives as KeyboardInterrupt): the write must not publish what it had
    sent so far."""
    from bsm_ray import outputs

    out = OutputDir("s3://bsm/interrupted" + s3_bucket)
    out.write_text("_units/u00001.p1.json", '{"old": true}')

    class Cancelled(BaseException):  # what a cancelled task meets: not an Exception
        pass

    def cut_off(src, dst, length=0):
        dst.write(src.read(3))
        raise Cancelled

    monkeypatch.setattr(outputs.shutil, "copyfileobj", cut_off)
    with pytest.raises(Cancelled):
        out.write_text("_units/u00001.p1.json", '{"new": true}')
    with pytest.raises(Cancelled):
        out.write_text("_units/u00002.p1.json", '{"new": true}')
    monkeypatch.undo()
    assert out.read_text("_units/u00001.p1.json") == '{"old": true}'
    assert out.files() == ["_units/u00001.p1.json"]  # no partial object, no upload left over
    out.write_text("_units/u00002.p1.json", '{"new": true}')
    assert out.read_text("_units/u00002.p1.json") == '{"new": true}'
    assert out.files() == ["_units/u00001.p1.json", "_units/u00002.p1.json"]
