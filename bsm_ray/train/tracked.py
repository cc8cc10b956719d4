"""The driver's side of a tracked training run: create it, attach files, register the result.

    config = start_run(config)            # run with params, lineage tags, config.yaml, NPMI table
    result = <train>                      # rank 0 logs metrics into it (RunLogger)
    finish_run(config, result)            # plots, metrics.jsonl, export check, registry, status

Only runs this process created are finished here; a sweep trial's run belongs to the sweep.
Without `tracking.strict`, an unreachable server never stops training: a run that cannot be
created is trained untracked (said loudly), and a failed upload or registration at the end
prints what to run later (`jobs/register_model.py`) instead of failing a finished run.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from bsm_ray.config import dump_yaml, from_dict, to_dict
from bsm_ray.errors import TrackingError
from bsm_ray.fileio import atomic_write_text
from bsm_ray.log import get_logger
from bsm_ray.tracking.config import resolve_tracking_uri

logger = get_logger(__name__)

T = TypeVar("T")


def _quiet_http() -> None:
    # MLflow's own HTTP retries back off for minutes inside one call; we retry here instead.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def _retry(fn: Callable[[], T], what: str, tracking, attempts: int = 5) -> T | None:
    """fn() with 2, 4, 8 ... s backoff; None (after printing why) when it keeps failing and the
    run is not strict."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:
            if tracking.strict:
                raise TrackingError(f"MLflow at {resolve_tracking_uri(tracking.uri)}: {what} "
                                    f"failed (tracking.strict is set): {exc}") from exc
            if attempt == attempts - 1:
                logger.info(f"MLflow at {resolve_tracking_uri(tracking.uri)}: {what} failed "
                      f"after {attempts} attempts ({type(exc).__name__}: {str(exc)[:200]})")
                return None
            time.sleep(2.0 ** (attempt + 1))
    return None


def _raise(path: Path):
    raise TrackingError(f"the server did not take {path}")


def pmi_table_of(config) -> str | None:
    """The NPMI table an MLM run masks with (built for the sample when it is the default)."""
    if config.objective != "mlm" or config.masking.strategy == "dnabert":
        return None
    from bsm_ray.train.batches import resolve_pmi_table

    return resolve_pmi_table(config.masking.pmi_table)


def _continued_run(tracking, marker: Path) -> str | None:
    """The MLflow run of an earlier launch of this run (a relaunch resumes its checkpoint, so
    its metrics continue the same run), if it is in the same store."""
    from bsm_ray.tracking.runs import client

    if not marker.is_file():
        return None
    data = json.loads(marker.read_text())
    if data.get("uri") != tracking.uri:
        return None
    try:
        c = client(tracking.uri)
        c.get_run(data["run_id"])
        c.update_run(data["run_id"], status="RUNNING")
    except Exception:
        return None
    logger.info(f"continuing MLflow run {data['run_id']} of an earlier launch")
    return data["run_id"]


def start_run(config, run_dir: str):
    """Create the run (params = flattened config, lineage tags) and attach the config YAML and
    the NPMI table; return the config with `tracking.run_id` set (or tracking off if the server
    cannot be reached and the run is not strict)."""
    from bsm_ray.tracking.runs import client, create_run, describe_run
    from bsm_ray.tracking.tags import run_tags

    _quiet_http()
    cls = type(config)
    tracking = {**to_dict(config.tracking), "uri": resolve_tracking_uri(config.tracking.uri)}
    config = from_dict(cls, {**to_dict(config), "tracking": tracking})
    tags = {**run_tags(config), "bsm_ray.run_dir": run_dir}
    if config.round:
        tags["bsm_ray.round"] = str(config.round)
    marker = Path(run_dir) / "mlflow_run.json"
    run_id = _continued_run(config.tracking, marker) if "://" not in run_dir else None
    if run_id is None:
        run_id = _retry(lambda: create_run(config.tracking, config.name, params=to_dict(config),
                                           tags=tags), "creating the run", config.tracking)
        if run_id is not None and "://" not in run_dir:
            marker.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(marker, json.dumps({"run_id": run_id,
                                                  "uri": config.tracking.uri}))
    if run_id is None:
        logger.info("this run is NOT tracked in MLflow (its metrics are still in "
              f"{run_dir}/metrics.jsonl)")  # fmt: skip
        return from_dict(cls, {**to_dict(config), "tracking": {**tracking, "enabled": False}})
    logger.info(f"{describe_run(config.tracking, run_id)}")
    c = client(config.tracking.uri)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(dump_yaml(config))
        _retry(lambda: c.log_artifact(run_id, str(path)), "logging config.yaml", config.tracking)
    table = pmi_table_of(config)
    if table is not None:
        _retry(lambda: c.log_artifact(run_id, table, "npmi"), "logging the NPMI table",
               config.tracking)  # fmt: skip
    return from_dict(cls, {**to_dict(config), "tracking": {**tracking, "run_id": run_id}})


def plot_history(history: list[dict[str, Any]], path: Path, title: str) -> Path | None:
    """Training and validation loss against step (PNG); None without any loss values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    last: dict[int, dict[str, Any]] = {}
    for m in history:  # a resumed run reports some steps twice: keep the last
        last[int(m.get("step", 0))] = m
    steps = sorted(last)
    train = [(s, last[s]["train/loss"]) for s in steps if "train/loss" in last[s]]
    val = [(s, last[s]["val/loss"]) for s in steps if "val/loss" in last[s]]
    if not train and not val:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.6))
    if train:
        ax.plot(*zip(*train, strict=True), label="train/loss", color="tab:blue", lw=1)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="val/loss", color="tab:red")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def finish_run(config, result) -> dict[str, Any]:
    """Attach the loss plot and metrics.jsonl, log the export check, register the final model,
    report logging gaps, and end the run. Returns what happened (printed too)."""
    from mlflow.entities import Metric

    from bsm_ray.tracking.runs import UNSENT_FILE, client, replay_unsent
    from bsm_ray.train.checkpointing import read_trainer_state
    from bsm_ray.train.context import read_metrics

    tracking, run_id = config.tracking, config.tracking.run_id
    c = client(tracking.uri)
    out: dict[str, Any] = {"run_id": run_id}
    run_dir = Path(result.run_dir)
    history = read_metrics(run_dir)
    with tempfile.TemporaryDirectory() as tmp:
        plot = plot_history(history, Path(tmp) / "loss.png", f"{config.name} ({config.model})")
        if plot is not None:
            _retry(lambda: c.log_artifact(run_id, str(plot), "plots"), "logging the loss plot",
                   tracking)  # fmt: skip
    if (run_dir / "metrics.jsonl").is_file():
        _retry(lambda: c.log_artifact(run_id, str(run_dir / "metrics.jsonl")),
               "logging metrics.jsonl", tracking)  # fmt: skip
    final = result.final_model
    if result.checkpoint and Path(result.checkpoint).is_dir():
        state = read_trainer_state(Path(result.checkpoint))
        diff = state.get("export_max_abs_logit_diff")
        if diff is not None:
            out["export_max_abs_logit_diff"] = diff
            metric = Metric("export/max_abs_logit_diff", float(diff), int(time.time() * 1000),
                            int(state["step"]))  # fmt: skip
            _retry(lambda: c.log_batch(run_id, metrics=[metric]), "logging the export check",
                   tracking)  # fmt: skip
    if tracking.register and final is not None and Path(final).is_dir():
        from bsm_ray.tracking.registry import lineage_tags, register_model, registered_name

        name = registered_name(config.model, tracking.model_name)
        version = _retry(lambda: register_model(
            tracking, final, name=name, run_id=run_id, tags=lineage_tags(config, config.round),
            init_from=config.init_from, description=f"run {config.name} ({run_id})"),
            f"registering {final} as {name}", tracking)  # fmt: skip
        if version is None:
            logger.info(f"to register it later: python jobs/register_model.py --path {final} "
                  f"--name {name} --run-id {run_id}")  # fmt: skip
        else:
            out["registered"] = version.uri
            logger.info(f"registered {version.uri} (parent {version.parent or 'none'})")
    unsent = run_dir / UNSENT_FILE
    if unsent.is_file():  # rank 0 gave up before the server came back: send it now
        sent = _retry(lambda: replay_unsent(tracking, unsent) or _raise(unsent),
                      f"sending {unsent}", tracking)  # fmt: skip
        if sent is None:
            out["unsent_file"] = str(unsent)
            logger.info(f"metrics MLflow never received are in {unsent}")
        else:
            logger.info(f"sent {sent['metrics']} metric values rank 0 had kept in {unsent}")
    run = _retry(lambda: c.get_run(run_id), "reading the run back", tracking)
    if run is not None:
        gaps = run.data.tags.get("bsm_ray.logging_gaps")
        if gaps:
            spans = json.loads(gaps)
            out["logging_gaps"] = spans
            logger.info("MLflow logging gaps during this run: "
                  + ", ".join(f"{g['seconds']} s" for g in spans)
                  + " (metrics were kept and sent when the server came back)")
    _retry(lambda: c.set_terminated(run_id, "FINISHED"), "ending the run", tracking)
    return out


def fail_run(config) -> None:
    """Mark the run FAILED after an exception (best effort: the exception is what matters)."""
    from bsm_ray.tracking.runs import client

    try:
        client(config.tracking.uri).set_terminated(config.tracking.run_id, "FAILED")
    except Exception as exc:  # the original error is re-raised by the caller
        logger.info(f"could not mark MLflow run {config.tracking.run_id} FAILED: {exc}")
