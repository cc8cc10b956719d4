"""Where runs are tracked. Pure module (no mlflow import), so configs can name it.

The store is `tracking.uri`, else `$MLFLOW_TRACKING_URI`, else the embedded default: a SQLite
database and artifact folder under `mlflow/store/` and `mlflow/artifacts/` of the checkout,
the same store `bash mlflow/server.sh` serves, so the MLflow UI shows runs made without a server.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class TrackingConfig:
    """MLflow logging of a run (rank 0 only)."""

    enabled: bool = True
    """Log params, metrics and tags to MLflow."""
    uri: str | None = None
    """Tracking URI; None: $MLFLOW_TRACKING_URI, else the embedded SQLite store under mlflow/."""
    experiment: str = "bsm_ray"
    run_id: str | None = None
    """Log into this existing run (set by sweeps, which create one child run per trial)."""
    flush_every_s: float = 5.0
    """Step metrics are buffered and sent in batches at most this often (and at reports)."""
    strict: bool = False
    """An unreachable tracking server stops the run (otherwise training goes on, metrics are
    kept and retried with backoff, and the run records the gap)."""
    final_flush_s: float = 30.0
    """At the end of training, keep retrying an unreachable server this long before writing the
    unsent metrics to <run>/mlflow_unsent.jsonl (the driver sends that file when it can)."""
    register: bool = True
    """At the end of a training run, register its Hugging Face export as a new model version
    (sweep trials never register)."""
    model_name: str | None = None
    """Registered model name; None: by family (bsm-causal, dnabert, logo; tiny presets under
    their own names)."""


def embedded_store() -> tuple[str, Path]:
    """(tracking URI, artifact root) of the embedded store under <checkout>/mlflow/."""
    store = PROJECT_ROOT / "mlflow" / "store"
    return f"sqlite:///{store / 'mlflow.db'}", PROJECT_ROOT / "mlflow" / "artifacts"


def resolve_tracking_uri(uri: str | None = None) -> str:
    if uri:
        return uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return embedded_store()[0]
