"""MLflow tracking against a real `mlflow server` process: buffered rank-0 logging, an outage
of the server (training goes on, metrics kept, the gap recorded), strict mode, lineage tags."""

from __future__ import annotations

import json
import os
import time

import pytest
from conftest import free_port

from bsm_ray.errors import TrackingError
from bsm_ray.tracking.config import TrackingConfig
from bsm_ray.tracking.runs import UNSENT_FILE, RunLogger, client, create_run, replay_unsent

pytestmark = pytest.mark.slow


class FakeClock:
    """Stands in for the `time` module inside bsm_ray.tracking.runs: `monotonic` (the backoff
    and retry deadlines) moves only when `sleep` is called, so the tests check the retry
    schedule itself, never how long anything took. `time` (timestamps) is the real one."""

    def __init__(self) -> None:
        self.now = time.monotonic()  # from the real clock on, so earlier readings stay behind
        self.slept: list[float] = []
        self.time = time.time

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def _count_sends(logger: RunLogger) -> list[int]:
    """Wrap the logger's client so every metric batch it tries to send is counted."""
    sends = [0]
    log_batch = logger._client.log_batch

    def counted(*args, **kwargs):
        sends[0] += 1
        return log_batch(*args, **kwargs)

    logger._client.log_batch = counted
    return sends


def test_outage_keeps_metrics_and_records_the_gap(server, tmp_path, capsys, monkeypatch):
    tracking = TrackingConfig(enabled=True, uri=server.uri, experiment="outage",
                              flush_every_s=0.0)  # fmt: skip
    run_id = create_run(tracking, "outage", params={"a": {"b": 1}}, tags={"t": "x"})
    logger = RunLogger(tracking, run_id, fallback_dir=tmp_path)
    for step in range(1, 6):
        logger.log({"train/loss": 1.0 / step, "step": step}, step)
    server.stop()
    clock = FakeClock()
    monkeypatch.setattr("bsm_ray.tracking.runs.time", clock)
    sends = _count_sends(logger)
    # The server is gone: no exception, and a step never waits on it: one failed send, then
    # the metrics are only buffered until the backoff (2 s, then 4 s) has passed.
    for step in range(6, 11):
        logger.log({"train/loss": 1.0 / step}, step)
    assert sends[0] == 1 and len(logger._buffer) == 5
    clock.now += 1.9
    logger.log({"train/loss": 1.0 / 11}, 11)
    assert sends[0] == 1
    clock.now += 0.2  # 2.1 s after the failure: the next log tries again, and fails again
    logger.log({"train/loss": 1.0 / 12}, 12)
    assert sends[0] == 2 and logger._next_try == pytest.approx(clock.now + 4.0)
    # MLflow's own HTTP retries (minutes inside one call) are off in this process.
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"
    assert "unreachable" in capsys.readouterr().out
    server.start()
    assert logger.flush(force=True)
    assert "reachable again" in capsys.readouterr().out
    c = client(server.uri)
    history = c.get_metric_history(run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(1, 13))
    run = c.get_run(run_id)
    assert run.data.params["a.b"] == "1" and run.data.tags["t"] == "x"
    assert "failed_attempts" in run.data.tags["bsm_ray.logging_gaps"]
    assert not (tmp_path / "mlflow_unsent.jsonl").exists()


def test_unsent_metrics_go_to_a_file_replayed_later_and_strict_raises(server, tmp_path,
                                                                       monkeypatch):
    live = TrackingConfig(enabled=True, uri=server.uri, experiment="unsent")
    run_id = create_run(live, "unsent")
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    tracking = TrackingConfig(enabled=True, uri=dead, flush_every_s=0.0)
    logger = RunLogger(tracking, run_id, fallback_dir=tmp_path)
    logger.log({"train/loss": 2.5}, 3)
    logger.set_tags({"bsm_ray.switch_step": 8})
    clock = FakeClock()
    monkeypatch.setattr("bsm_ray.tracking.runs.time", clock)
    sends = _count_sends(logger)
    # The final flush keeps trying for timeout_s (sleeping 1 s, then what is left), then
    # writes what it could not send to the file.
    logger.close(timeout_s=2.0)
    assert clock.slept == [1.0, 1.0] and sends[0] == 3
    lines = [json.loads(x) for x in (tmp_path / UNSENT_FILE).read_text().splitlines()]
    assert [sorted(x) for x in lines] == [
        ["key", "run_id", "step", "timestamp", "value"], ["run_id", "tag", "value"],
        ["gap", "run_id"]]  # fmt: skip
    assert lines[0]["value"] == 2.5 and lines[0]["step"] == 3
    assert lines[2]["gap"]["failed_attempts"] >= 1
    # the driver sends the file once the server answers; the gap is recorded on the run
    sent = replay_unsent(live, tmp_path / UNSENT_FILE)
    assert sent["metrics"] == 1 and not (tmp_path / UNSENT_FILE).exists()
    c = client(server.uri)
    assert [(m.step, m.value) for m in c.get_metric_history(run_id, "train/loss")] == [(3, 2.5)]
    run = c.get_run(run_id)
    assert run.data.tags["bsm_ray.switch_step"] == "8"
    gap = json.loads(run.data.tags["bsm_ray.logging_gaps"])[0]
    assert gap["replayed_from"] == str(tmp_path / UNSENT_FILE)
    assert gap["failed_attempts"] == 4  # the send at log(), then the three of close()
    assert gap["end"] >= gap["start"]
    strict = RunLogger(TrackingConfig(enabled=True, uri=dead, strict=True), "0" * 32)
    with pytest.raises(TrackingError, match="unreachable"):
        strict.log({"train/loss": 1.0}, 1, flush=True)


def test_describe_run_links_the_runs_view_of_its_experiment(server):
    """MLflow 3 opens an experiment in its GenAI view ("No data" for training runs): the
    printed link goes to the experiment's runs view, for a server and for the embedded store
    that `bash mlflow/server.sh` serves."""
    from bsm_ray.tracking.config import embedded_store
    from bsm_ray.tracking.runs import describe_run, runs_view_url

    tracking = TrackingConfig(enabled=True, uri=server.uri, experiment="links")
    run_id = create_run(tracking, "linked")
    experiment = client(server.uri).get_run(run_id).info.experiment_id
    assert client(server.uri).get_experiment(experiment).name == "links"
    line = describe_run(tracking, run_id)
    assert line.startswith(f"MLflow run {run_id} at {server.uri} (experiment links")
    assert line.endswith(f"runs: {server.uri}/#/experiments/{experiment}/runs")
    assert runs_view_url(embedded_store()[0], "7") == "http://127.0.0.1:5000/#/experiments/7/runs"
    assert runs_view_url("sqlite:////elsewhere/mlflow.db", "7") is None
