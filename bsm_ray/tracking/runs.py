"""MLflow runs: experiments with a known artifact root, parent/child runs, buffered logging.

Only this module imports mlflow. Metrics are sent with `MlflowClient.log_batch` (one request per
flush), so a training step never waits on the tracking store.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from bsm_ray.config import flatten
from bsm_ray.tracking.config import TrackingConfig, embedded_store, resolve_tracking_uri

MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value


def client(uri: str | None = None):
    from mlflow.tracking import MlflowClient

    uri = resolve_tracking_uri(uri)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri)


def experiment_id(mlflow_client, name: str) -> str:
    """The experiment's id, created on first use (embedded store: artifacts under mlflow/)."""
    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    uri = mlflow_client.tracking_uri
    if uri.startswith("sqlite:///"):
        # A database without a server: artifacts beside it, not in ./mlruns of whatever the
        # current directory is (a Ray job's working directory is a temporary copy).
        root = embedded_store()[1] if uri == embedded_store()[0] else (
            Path(uri.removeprefix("sqlite:///")).parent / "artifacts")
        root.mkdir(parents=True, exist_ok=True)
        location = (root / name).as_uri()
    try:
        return mlflow_client.create_experiment(name, artifact_location=location)
    except Exception:  # created concurrently by another process
        found = mlflow_client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def params_of(config: dict[str, Any]) -> dict[str, str]:
    """Flattened config as MLflow params (dotted keys, values as strings within MLflow limits)."""
    return {k: str(v)[:MAX_PARAM_CHARS] for k, v in flatten(config).items()}


def create_run(tracking: TrackingConfig, run_name: str, *, parent_run_id: str | None = None,
               params: dict[str, Any] | None = None, tags: dict[str, str] | None = None) -> str:
    """Create a run (a child of `parent_run_id` if given); return its id."""
    from mlflow.entities import Param

    c = client(tracking.uri)
    all_tags = dict(tags or {})
    all_tags["mlflow.runName"] = run_name
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = c.create_run(experiment_id(c, tracking.experiment), run_name=run_name,
                       tags=all_tags)  # fmt: skip
    if params:
        items = [Param(k, v) for k, v in params_of(params).items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            c.log_batch(run.info.run_id, params=items[i : i + 100])
    return run.info.run_id


def end_run(tracking: TrackingConfig, run_id: str, status: str = "FINISHED") -> None:
    client(tracking.uri).set_terminated(run_id, status=status)


class RunLogger:
    """Buffered metric logging into one run (used by rank 0 of a training run)."""

    def __init__(self, tracking: TrackingConfig, run_id: str) -> None:
        self.tracking = tracking
        self.run_id = run_id
        self._client = client(tracking.uri)
        self._buffer: list = []
        self._last_flush = time.monotonic()

    def log(self, metrics: dict[str, Any], step: int, *, flush: bool = False) -> None:
        from mlflow.entities import Metric

        now_ms = int(time.time() * 1000)
        for key, value in metrics.items():
            if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                self._buffer.append(Metric(key, float(value), now_ms, step))
        if flush or time.monotonic() - self._last_flush >= self.tracking.flush_every_s:
            self.flush()

    def flush(self) -> None:
        while self._buffer:
            batch, self._buffer = self._buffer[:1000], self._buffer[1000:]
            self._client.log_batch(self.run_id, metrics=batch)
        self._last_flush = time.monotonic()

    def set_tags(self, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self._client.set_tag(self.run_id, key, str(value))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._client.log_artifact(self.run_id, str(path), artifact_path)


def set_run_tags(tracking: TrackingConfig, run_id: str, tags: dict[str, str]) -> None:
    c = client(tracking.uri)
    for key, value in tags.items():
        c.set_tag(run_id, key, str(value))


def finish_parent(tracking: TrackingConfig, run_id: str, record: dict[str, Any],
                  artifacts: list[Path]) -> None:
    """Sweep results on the parent run: summary metrics, winner tags, files; then end it."""
    from mlflow.entities import Metric

    c = client(tracking.uri)
    now = int(time.time() * 1000)
    metrics = {"sweep/best_objective": record["winner"]["objective_asha"],
               "sweep/asha_steps": record["asha_steps"], "sweep/grid_steps": record["grid_steps"],
               "sweep/elapsed_s": record["elapsed_s"], "sweep/errors": len(record["errors"])}
    if record["same_winner"] is not None:
        metrics["sweep/same_winner_as_grid"] = float(record["same_winner"])
    c.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
    c.set_tag(run_id, "bsm_ray.winner_trial", record["winner"]["trial_id"])
    c.set_tag(run_id, "bsm_ray.winner_mix", str(record["winner"]["mix"]))
    for path in artifacts:
        c.log_artifact(run_id, str(path))
    c.set_terminated(run_id, status="FINISHED")


def download_model(tracking: TrackingConfig, uri: str, dst: Path) -> Path:
    """Fetch a registered model version (models:/name/version or models:/name@alias)."""
    import mlflow
    from bsm_ray.errors import ConfigError

    mlflow.set_tracking_uri(resolve_tracking_uri(tracking.uri))
    dst.mkdir(parents=True, exist_ok=True)
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
    except Exception as exc:
        raise ConfigError(f"{uri}: cannot fetch it from the registry at "
                          f"{resolve_tracking_uri(tracking.uri)}: {exc}") from exc
