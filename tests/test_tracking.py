"""MLflow tracking against a real `mlflow server` process: buffered rank-0 logging, an outage
of the server (training goes on, metrics kept, the gap recorded), strict mode, lineage tags."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from bsm_ray.errors import TrackingError
from bsm_ray.tracking.config import TrackingConfig
from bsm_ray.tracking.runs import RunLogger, client, create_run

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`mlflow server` with a SQLite store on 127.0.0.1, stoppable and restartable."""

    def __init__(self, root: Path) -> None:
        self.root, self.port, self.proc = root, _free_port(), None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--backend-store-uri",
             f"sqlite:///{self.root / 'mlflow.db'}", "--artifacts-destination",
             str(self.root / "artifacts"), "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=1)
                return
            except OSError:
                assert self.proc.poll() is None, "mlflow server exited"
                time.sleep(0.5)
        raise AssertionError("mlflow server did not come up in 60 s")

    def stop(self) -> None:
        import os
        import signal

        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("mlflow-server"))
    srv.start()
    yield srv
    srv.stop()


def test_outage_keeps_metrics_and_records_the_gap(server, tmp_path, capsys):
    tracking = TrackingConfig(enabled=True, uri=server.uri, experiment="outage",
                              flush_every_s=0.0)  # fmt: skip
    run_id = create_run(tracking, "outage", params={"a": {"b": 1}}, tags={"t": "x"})
    logger = RunLogger(tracking, run_id, fallback_dir=tmp_path)
    for step in range(1, 6):
        logger.log({"train/loss": 1.0 / step, "step": step}, step)
    server.stop()
    t0 = time.perf_counter()
    for step in range(6, 11):  # the server is gone: no exception, no long wait
        logger.log({"train/loss": 1.0 / step}, step)
    assert time.perf_counter() - t0 < 20
    assert "unreachable" in capsys.readouterr().out
    server.start()
    assert logger.flush(force=True)
    assert "reachable again" in capsys.readouterr().out
    c = client(server.uri)
    history = c.get_metric_history(run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(1, 11))
    run = c.get_run(run_id)
    assert run.data.params["a.b"] == "1" and run.data.tags["t"] == "x"
    assert "failed_attempts" in run.data.tags["bsm_ray.logging_gaps"]
    assert not (tmp_path / "mlflow_unsent.jsonl").exists()


def test_unsent_metrics_go_to_a_file_and_strict_raises(tmp_path):
    dead = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    tracking = TrackingConfig(enabled=True, uri=dead, flush_every_s=0.0)
    logger = RunLogger(tracking, "0" * 32, fallback_dir=tmp_path)
    logger.log({"train/loss": 2.5}, 3)
    logger.close(retries=0)
    lines = (tmp_path / "mlflow_unsent.jsonl").read_text().splitlines()
    assert len(lines) == 1 and '"value": 2.5' in lines[0] and '"step": 3' in lines[0]
    strict = RunLogger(TrackingConfig(enabled=True, uri=dead, strict=True), "0" * 32)
    with pytest.raises(TrackingError, match="unreachable"):
        strict.log({"train/loss": 1.0}, 1, flush=True)
