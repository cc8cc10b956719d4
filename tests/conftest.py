"""Shared fixtures.

`bio_tests` is the Tests/ folder of Biopython's source distribution (real NCBI records and
deliberately malformed files), fetched once through the package registry and cached.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

# Training runs track to MLflow by default: the suite's runs go to a store of its own, never to
# the checkout's mlflow/ folder. Set before any test imports mlflow or starts Ray workers.
_STORE = Path(tempfile.mkdtemp(prefix="bsm-ray-test-mlflow-"))
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_STORE / 'mlflow.db'}"


@pytest.fixture(scope="session")
def bio_tests() -> Path:
    from bsm_ray.ingest.samples import biopython_tests_dir

    return biopython_tests_dir()


@pytest.fixture(scope="session")
def genbank_dir(bio_tests: Path) -> Path:
    return bio_tests / "GenBank"


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> str:
    """A prepared sample dataset with a small synthetic genome, shared by the training tests
    (read only)."""
    from bsm_ray.ingest.prepare import PrepareConfig, prepare_dataset

    out = tmp_path_factory.mktemp("train-data") / "sample"
    prepare_dataset(PrepareConfig(output_dir=str(out), progress=False,
                                  sample_synthetic_genome_bp=150_000))  # fmt: skip
    return str(out)


STREAMED_MIX = {"web": 10.0, "refseq_pair": 2.0, "gene_pair": 1.0}


@pytest.fixture(scope="session")
def streamed_causal_run(dataset, tmp_path_factory, ray_instance):
    """One 150-step BSM run on 2 workers streaming a 10:2:1 mix through Ray Data, ZeRO-2, with
    per-step traces: shared by the token-ratio test (test_streaming.py) and the export test
    (test_training.py), one TorchTrainer run fewer in the suite. Returns (config, result)."""
    from bsm_ray.tracking.config import TrackingConfig
    from bsm_ray.train.config import DataConfig, TrainConfig
    from bsm_ray.train.launcher import launch
    from bsm_ray.train.schedules import ScheduleConfig

    config = TrainConfig(
        name="mix", model="bsm-tiny", objective="causal", seq_len=64,
        global_batch_tokens=32 * 64, micro_batch_rows=8, max_steps=150,
        schedule=ScheduleConfig(kind="warmup_linear", start_lr=3e-3, end_lr=3e-4, warmup_steps=2),
        data=DataConfig(dataset=dataset, mix=STREAMED_MIX, val_rows_per_source=24,
                        streaming=True, stream_cpus=0.5),
        num_workers=2, zero_stage=2, eval_every=75, checkpoint_every=75,
        storage_path=str(tmp_path_factory.mktemp("streamed")),
        tracking=TrackingConfig(enabled=False), trace=True,
    )  # fmt: skip
    return config, launch(config)


UNIT_SAMPLE = dict(progress=False, sample_synthetic_genome_bp=60_000, unit_bytes=32 << 10)
"""The sample corpus cut into units of 32 KiB (many units), as the preparation tests run it."""


@pytest.fixture(scope="session")
def local_unit_sample(tmp_path_factory):
    """The sample prepared in this process in units of 32 KiB (read only; shared by the local vs
    Ray and the object-store tests)."""
    from bsm_ray.ingest.prepare import PrepareConfig, prepare_dataset

    out = tmp_path_factory.mktemp("units") / "local"
    return prepare_dataset(PrepareConfig(output_dir=str(out), parallel="local", **UNIT_SAMPLE))


@pytest.fixture(scope="session")
def ray_instance():
    """One local Ray instance for the whole session (starting one costs ~15 s here).

    More logical CPUs than cores, as Ray's own tests do, so tasks never starve each other.
    """
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_node(temp_dir: str) -> int:
    """SIGKILL every process of the node started with `temp_dir` (raylet, its agents, its
    workers): the node is lost as a spot reclaim would lose it. Returns how many died."""
    import psutil

    victims = {p for p in psutil.process_iter(["cmdline"])
               if any(temp_dir in c for c in (p.info["cmdline"] or []))}  # fmt: skip
    for p in list(victims):
        try:
            victims |= set(p.children(recursive=True))
        except psutil.Error:
            pass
    for p in victims:
        try:
            p.kill()
        except psutil.Error:
            pass
    return len(victims)


class MlflowServer:
    """`mlflow server` with a SQLite store on 127.0.0.1, stoppable and restartable on the same
    port (tests stop it to make outages)."""

    def __init__(self, root: Path) -> None:
        self.root, self.port, self.proc = root, free_port(), None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
             f"sqlite:///{self.root / 'mlflow.db'}", "--artifacts-destination",
             str(self.root / "artifacts"), "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=1)
                return
            except OSError:
                assert self.proc.poll() is None, "mlflow server exited"
                time.sleep(0.3)
        raise AssertionError("mlflow server did not come up in 90 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)

    def ensure_running(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.start()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """One real `mlflow server` for the session (tests that stop it start it again)."""
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def server(mlflow_server):
    mlflow_server.ensure_running()
    yield mlflow_server
    mlflow_server.ensure_running()


def pytest_collection_modifyitems(config, items):
    """Tests that start their own Ray cluster run last (they stop the in-process instance)."""
    items.sort(key=lambda item: item.get_closest_marker("cluster") is not None)
