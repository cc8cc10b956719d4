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
from bsm_ray.log import get_logger
from bsm_ray.tracking.config import TrackingConfig, embedded_store, resolve_tracking_uri

logger = get_logger(__name__)

MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
UNSENT_FILE = "mlflow_unsent.jsonl"


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


def runs_view_url(uri: str, experiment: str) -> str | None:
    """The MLflow UI's runs view of an experiment (`<server>/#/experiments/<id>/runs`) when
    `uri` is a tracking server; for the embedded store, the view `bash mlflow/server.sh`
    serves. MLflow 3 opens an experiment in its GenAI view, where training runs and sweeps show
    "No data", so links go straight to the runs. None for any other store."""
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/#/experiments/{experiment}/runs"
    if uri == embedded_store()[0]:
        return f"http://127.0.0.1:5000/#/experiments/{experiment}/runs"
    return None


def describe_run(tracking: TrackingConfig, run_id: str) -> str:
    """One line naming a run, its store and experiment, and the UI link to its runs view."""
    uri = resolve_tracking_uri(tracking.uri)
    try:
        experiment = client(uri).get_run(run_id).info.experiment_id
    except Exception:  # the store is unreachable now: name the run without a link
        return f"MLflow run {run_id} at {uri} (experiment {tracking.experiment})"
    line = f"MLflow run {run_id} at {uri} (experiment {tracking.experiment}, id {experiment})"
    url = runs_view_url(uri, experiment)
    if url is None:
        return line
    if uri.startswith(("http://", "https://")):
        return f"{line}; runs: {url}"
    return f"{line}; runs: {url} after `bash mlflow/server.sh`"


def log_finished_run(tracking: TrackingConfig, run_name: str, *, params: dict[str, Any],
                     tags: dict[str, str], metrics: dict[str, float],
                     files: list[Path]) -> str:  # fmt: skip
    """A complete run in one go (an evaluation): params, tags, finite metrics at step 0, files
    as artifacts, FINISHED. Returns its id."""
    from mlflow.entities import Metric

    run_id = create_run(tracking, run_name, params=params, tags=tags)
    c = client(tracking.uri)
    c.log_batch(run_id, metrics=[Metric(k, float(v), 0, 0) for k, v in metrics.items()
                                 if math.isfinite(v)])  # fmt: skip
    for path in files:
        c.log_artifact(run_id, str(path))
    c.set_terminated(run_id, "FINISHED")
    return run_id


def end_run(tracking: TrackingConfig, run_id: str, status: str = "FINISHED") -> None:
    client(tracking.uri).set_terminated(run_id, status=status)


class RunLogger:
    """Buffered metric logging into one run (rank 0 of a training run).

    A failed send keeps the metrics and retries after an exponential backoff (2, 4, ... 60 s)
    without ever blocking a step; when the server answers again the buffered metrics go out and
    the gap is recorded on the run (tag `bsm_ray.logging_gaps`) and printed. With
    `tracking.strict` the first failure raises `TrackingError`. At `close()` whatever cannot be
    sent is written to `<fallback_dir>/mlflow_unsent.jsonl`, never dropped silently.
    """

    MAX_BUFFER = 200_000

    def __init__(self, tracking: TrackingConfig, run_id: str,
                 fallback_dir: Path | None = None) -> None:
        import os

        # MLflow's own HTTP retries back off for minutes inside one call; retry here instead.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
        self.tracking = tracking
        self.run_id = run_id
        self.fallback_dir = fallback_dir
        self._client = client(tracking.uri)
        self._buffer: list = []
        self._last_flush = time.monotonic()
        self._gap_start: float | None = None
        self._failures = 0
        self._next_try = 0.0
        self.dropped = 0
        self.gaps: list[dict[str, Any]] = []
        self._pending_tags: dict[str, str] = {}

    def log(self, metrics: dict[str, Any], step: int, *, flush: bool = False) -> None:
        from mlflow.entities import Metric

        now_ms = int(time.time() * 1000)
        for key, value in metrics.items():
            if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                self._buffer.append(Metric(key, float(value), now_ms, step))
        if len(self._buffer) > self.MAX_BUFFER:
            over = len(self._buffer) - self.MAX_BUFFER
            self._buffer = self._buffer[over:]
            self.dropped += over
        if flush or time.monotonic() - self._last_flush >= self.tracking.flush_every_s:
            self.flush()

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._pending_tags.update({k: str(v) for k, v in tags.items()})
        self.flush()

    def flush(self, *, force: bool = False) -> bool:
        """Send what is buffered; False if the server did not take it (kept for later)."""
        self._last_flush = time.monotonic()
        if self._gap_start is not None and not force and time.monotonic() < self._next_try:
            return False
        try:
            while self._buffer:
                batch = self._buffer[:1000]
                self._client.log_batch(self.run_id, metrics=batch)
                del self._buffer[: len(batch)]
            for key in list(self._pending_tags):
                self._client.set_tag(self.run_id, key, self._pending_tags.pop(key))
        except Exception as exc:
            self._failed(exc)
            return False
        if self._gap_start is not None:
            self._recovered()
        return True

    def _failed(self, exc: Exception) -> None:
        from bsm_ray.errors import TrackingError

        uri = resolve_tracking_uri(self.tracking.uri)
        if self.tracking.strict:
            raise TrackingError(f"MLflow at {uri} is unreachable (tracking.strict is set): "
                                f"{type(exc).__name__}: {str(exc)[:200]}") from exc  # fmt: skip
        self._failures += 1
        if self._gap_start is None:
            self._gap_start = time.time()
            logger.info(f"MLflow at {uri} is unreachable ({type(exc).__name__}); training "
                  f"goes on, metrics are kept and retried with backoff")  # fmt: skip
        self._next_try = time.monotonic() + min(60.0, 2.0 ** min(self._failures, 6))

    def _recovered(self) -> None:
        gap = {"start": self._gap_start, "end": time.time(), "failed_attempts": self._failures,
               "dropped_metrics": self.dropped}  # fmt: skip
        gap["seconds"] = round(gap["end"] - gap["start"], 1)
        self.gaps.append(gap)
        self._gap_start, self._failures = None, 0
        logger.info(f"MLflow reachable again after {gap['seconds']} s; buffered metrics "
              f"sent")  # fmt: skip
        import json

        try:
            self._client.set_tag(self.run_id, "bsm_ray.logging_gaps", json.dumps(self.gaps))
        except Exception as exc:  # went away again at once
            self._failed(exc)

    def close(self, timeout_s: float | None = None) -> None:
        """Final flush, retried for up to `timeout_s` (tracking.final_flush_s); what still
        cannot be sent goes to the fallback file, with the gap, for `replay_unsent`."""
        timeout_s = self.tracking.final_flush_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        wait = 1.0
        while True:
            if self.flush(force=True):
                return
            left = deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(wait, left))
            wait = min(wait * 2, 8.0)
        self._write_unsent()

    def _write_unsent(self) -> None:
        import json

        if self.fallback_dir is None:
            logger.info(f"MLflow unreachable at the end: {len(self._buffer)} metric values "
                  f"not logged (no local run folder to keep them)")  # fmt: skip
            return
        path = Path(self.fallback_dir) / UNSENT_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        gap = {"start": self._gap_start, "end": None, "failed_attempts": self._failures,
               "dropped_metrics": self.dropped}  # fmt: skip
        with open(path, "a") as fh:
            for m in self._buffer:
                fh.write(json.dumps({"run_id": self.run_id, "key": m.key, "value": m.value,
                                     "timestamp": m.timestamp, "step": m.step}) + "\n")
            for k, v in self._pending_tags.items():
                fh.write(json.dumps({"run_id": self.run_id, "tag": k, "value": v}) + "\n")
            for g in [*self.gaps, gap]:
                fh.write(json.dumps({"run_id": self.run_id, "gap": g}) + "\n")
        logger.info(f"MLflow unreachable at the end: {len(self._buffer)} metric values kept "
              f"in {path}")  # fmt: skip

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._client.log_artifact(self.run_id, str(path), artifact_path)


def replay_unsent(tracking: TrackingConfig, path: Path) -> dict[str, Any] | None:
    """Send what a RunLogger left in `path` (metrics, tags) and record its gaps on the run
    (tag bsm_ray.logging_gaps, the gap ending now); the file is renamed `*.sent`. Returns
    {"metrics": n, "gaps": [...]}, or None if the server still does not take it."""
    import json

    from mlflow.entities import Metric

    records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if not records:
        return None
    c = client(tracking.uri)
    run_id = records[0]["run_id"]
    metrics = [Metric(r["key"], r["value"], r["timestamp"], r["step"]) for r in records
               if "key" in r]  # fmt: skip
    now = time.time()
    gaps = []
    for r in records:
        if "gap" in r:
            g = dict(r["gap"])
            if g.get("end") is None:
                g["end"] = now
                g["seconds"] = round(now - (g.get("start") or now), 1)
                g["replayed_from"] = str(path)
            gaps.append(g)
    try:
        for i in range(0, len(metrics), 1000):
            c.log_batch(run_id, metrics=metrics[i : i + 1000])
        for r in records:
            if "tag" in r:
                c.set_tag(run_id, r["tag"], r["value"])
        if gaps:
            known = c.get_run(run_id).data.tags.get("bsm_ray.logging_gaps")
            merged = json.loads(known) if known else []
            merged += [g for g in gaps if g not in merged]
            c.set_tag(run_id, "bsm_ray.logging_gaps", json.dumps(merged))
    except Exception:
        return None
    Path(path).replace(Path(path).with_suffix(".jsonl.sent"))
    return {"metrics": len(metrics), "gaps": gaps}


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
    law = record.get("law") or {}
    for key, name in (("predicted", "law_predicted"), ("measured", "law_measured"),
                      ("beats_sampled", "law_beats_sampled"), ("loo_rmse", "law_loo_rmse")):
        if law.get(key) is not None:
            metrics[f"sweep/{name}"] = float(law[key])
    c.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
    c.set_tag(run_id, "bsm_ray.winner_trial", record["winner"]["trial_id"])
    c.set_tag(run_id, "bsm_ray.winner_mix", str(record["winner"]["mix"]))
    best = record.get("best") or record["winner"]
    c.set_tag(run_id, "bsm_ray.best_trial", best["trial_id"])
    c.set_tag(run_id, "bsm_ray.best_mix", str(best["mix"]))
    if law.get("proposal"):
        c.set_tag(run_id, "bsm_ray.law_mix", str(law["proposal"]["mix"]))
    elif law.get("skipped"):
        c.set_tag(run_id, "bsm_ray.law", law["skipped"][:5000])
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
