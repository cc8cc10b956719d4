"""The MLflow model registry: exports registered as model versions with lineage, and aliases.

One registered model per family: `bsm-causal` (BSM-110M/270M), `dnabert` (DNABERT-6), `logo`
(LOGO); the tiny test presets register under their own names (`bsm-tiny`, `bert-tiny`) so smoke
runs never become versions of a real family. `tracking.model_name` overrides.

A version's files are the Hugging Face export (logged as the `model/` artifact of its training
run, or of a `register` run for exports made elsewhere); `models:/<name>/<version>` and
`models:/<name>@champion` download it. Lineage tags on every version:

    bsm_ray.run_id           the training run
    bsm_ray.round            BSM round (1..3) when known
    bsm_ray.mix              data mix (JSON)
    bsm_ray.weights_sha256   sha256 of model.safetensors (content address of the weights)
    bsm_ray.parent_version   <name>/<version> whose weights the run started from, or "none"
    bsm_ray.init_from        the path it started from
    bsm_ray.git_commit, bsm_ray.data_manifest_sha256, ...  (the run's lineage tags)

The parent is found by content: the registry version whose `bsm_ray.weights_sha256` equals the
sha256 of the starting weights, so lineage holds however those weights were fetched.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bsm_ray.errors import TrackingError
from bsm_ray.fileio import sha256_file
from bsm_ray.tracking.config import TrackingConfig, resolve_tracking_uri
from bsm_ray.tracking.runs import client, create_run

FAMILY_MODEL_NAMES = {"bsm-110m": "bsm-causal", "bsm-270m": "bsm-causal", "dnabert-6": "dnabert",
                      "logo": "logo"}  # fmt: skip
SHA_TAG = "bsm_ray.weights_sha256"


@dataclass
class RegisteredVersion:
    name: str
    version: str
    source: str
    run_id: str | None
    parent: str | None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def registered_name(model_preset: str, override: str | None = None) -> str:
    return override or FAMILY_MODEL_NAMES.get(model_preset, model_preset)


def weights_sha256(model_dir: str | Path) -> str | None:
    """Of a model folder's weights, or of a training checkpoint's exported final_model/."""
    for path in (Path(model_dir) / "model.safetensors",
                 Path(model_dir) / "final_model" / "model.safetensors"):  # fmt: skip
        if path.is_file():
            return sha256_file(path)
    return None


def find_by_weights(mlflow_client, sha: str | None) -> str | None:
    """`name/version` of a registered version with exactly these weights, else None."""
    if not sha:
        return None
    found = mlflow_client.search_model_versions(f"tags.`{SHA_TAG}` = '{sha}'")
    if not found:
        return None
    first = min(found, key=lambda v: (v.name, int(v.version)))
    return f"{first.name}/{first.version}"


def _ensure_registered_model(mlflow_client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        mlflow_client.get_registered_model(name)
    except MlflowException:
        try:
            mlflow_client.create_registered_model(
                name, description=f"bsm_ray {name}: Hugging Face exports of training runs")
        except MlflowException:  # created concurrently
            mlflow_client.get_registered_model(name)


def register_model(tracking: TrackingConfig, model_dir: str | Path, *, name: str,
                   run_id: str | None = None, tags: dict[str, Any] | None = None,
                   init_from: str | None = None,
                   description: str | None = None) -> RegisteredVersion:
    """Log `model_dir` (a HF export) as the run's `model/` artifact and register it as a new
    version of `name` with lineage tags. Without `run_id` a `register` run is created for it."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise TrackingError(f"{model_dir}: not a Hugging Face model folder (no config.json)")
    c = client(tracking.uri)
    own_run = run_id is None
    if own_run:
        run_id = create_run(tracking, f"register-{name}",
                            tags={"bsm_ray.registered_from": str(model_dir)})  # fmt: skip
    c.log_artifacts(run_id, str(model_dir), "model")
    source = f"{c.get_run(run_id).info.artifact_uri}/model"
    sha = weights_sha256(model_dir)
    parent = None
    if init_from:
        parent = find_by_weights(c, weights_sha256(init_from))
    all_tags = {str(k): str(v) for k, v in (tags or {}).items()}
    all_tags.update({"bsm_ray.run_id": run_id, SHA_TAG: sha or "",
                     "bsm_ray.parent_version": parent or "none",
                     "bsm_ray.init_from": init_from or "none"})  # fmt: skip
    _ensure_registered_model(c, name)
    mv = c.create_model_version(name, source=source, run_id=run_id, tags=all_tags,
                                description=description)  # fmt: skip
    _wait_ready(c, name, mv.version)
    if own_run:
        c.set_terminated(run_id, "FINISHED")
    return RegisteredVersion(name, str(mv.version), source, run_id, parent)


def _wait_ready(mlflow_client, name: str, version: str, timeout_s: float = 120) -> None:
    deadline = time.time() + timeout_s
    while True:
        mv = mlflow_client.get_model_version(name, version)
        if mv.status == "READY":
            return
        if mv.status == "FAILED_REGISTRATION" or time.time() > deadline:
            raise TrackingError(f"model version {name}/{version}: registration {mv.status} "
                                f"({mv.status_message})")  # fmt: skip
        time.sleep(0.5)


def resolve_version(tracking: TrackingConfig, name: str, ref: str) -> str | None:
    """A version number from "latest", an alias ("@champion" or "champion") or a number;
    None when an alias is not set."""
    from mlflow.exceptions import MlflowException

    c = client(tracking.uri)
    try:
        c.get_registered_model(name)
    except MlflowException as exc:
        raise TrackingError(f"no registered model {name!r} at "
                            f"{resolve_tracking_uri(tracking.uri)}") from exc  # fmt: skip
    if ref.isdigit():
        c.get_model_version(name, ref)  # raises if missing
        return ref
    if ref == "latest":
        versions = c.search_model_versions(f"name = '{name}'")
        if not versions:
            raise TrackingError(f"registered model {name!r} has no versions")
        return str(max(int(v.version) for v in versions))
    alias = ref.removeprefix("@")
    try:
        return str(c.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def version_tags(tracking: TrackingConfig, name: str, version: str) -> dict[str, str]:
    return dict(client(tracking.uri).get_model_version(name, version).tags)


def set_version_tags(tracking: TrackingConfig, name: str, version: str,
                     tags: dict[str, Any]) -> None:
    c = client(tracking.uri)
    for key, value in tags.items():
        c.set_model_version_tag(name, version, key, str(value))


def set_alias(tracking: TrackingConfig, name: str, alias: str, version: str) -> None:
    client(tracking.uri).set_registered_model_alias(name, alias, version)


def lineage_tags(config: Any, round_number: int | None) -> dict[str, str]:
    """Version tags from a TrainConfig: the run's lineage tags (mix included) and the round."""
    from bsm_ray.tracking.tags import run_tags

    return {**run_tags(config), "bsm_ray.round": str(round_number) if round_number else "none"}
