"""MLflow tracking against a real `mlflow server` process: buffered rank-0 logging, an outage
of the server (training goes on, metrics kept, the gap recorded), strict mode, lineage tags."""

from __future__ import annotations

import json
import time

import pytest
from conftest import free_port

from bsm_ray.errors import TrackingError
from bsm_ray.tracking.config import TrackingConfig
from bsm_ray.tracking.runs import UNSENT_FILE, RunLogger, client, create_run, replay_unsent

pytestmark = pytest.mark.slow


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


def test_unsent_metrics_go_to_a_file_replayed_later_and_strict_raises(server, tmp_path):
    live = TrackingConfig(enabled=True, uri=server.uri, experiment="unsent")
    run_id = create_run(live, "unsent")
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    tracking = TrackingConfig(enabled=True, uri=dead, flush_every_s=0.0)
    logger = RunLogger(tracking, run_id, fallback_dir=tmp_path)
    logger.log({"train/loss": 2.5}, 3)
    logger.set_tags({"bsm_ray.switch_step": 8})
    t0 = time.perf_counter()
    logger.close(timeout_s=2.0)
    assert 2.0 <= time.perf_counter() - t0 < 15
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
    assert json.loads(run.data.tags["bsm_ray.logging_gaps"])[0]["seconds"] >= 2.0
    strict = RunLogger(TrackingConfig(enabled=True, uri=dead, strict=True), "0" * 32)
    with pytest.raises(TrackingError, match="unreachable"):
        strict.log({"train/loss": 1.0}, 1, flush=True)
