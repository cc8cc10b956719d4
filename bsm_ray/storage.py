"""Where a job's results go, and the refusal to write them where they would vanish.

`ray job submit --working-dir .` runs a job in a temporary copy of the checkout under
`<ray temp>/session_*/runtime_resources/working_dir_files/`. Ray deletes that folder with the
session, so results written there by relative paths (`storage_path: runs`, the embedded MLflow
store under `mlflow/store/`) are lost. Two rules keep them:

- `$BSM_RAY_STORAGE_ROOT` (a directory or a URI such as s3://bucket): a relative
  `storage_path` is taken under it instead of under the current directory.
  `cluster/local_cluster.sh up` sets it to the checkout for every job of its cluster, so jobs
  write to the checkout's `runs/`.
- inside such a temporary working directory, a job whose results or MLflow store would land in
  it refuses to start (`require_durable`), with one line saying what to set.

Pure module: standard library only.
"""

from __future__ import annotations

import os
from pathlib import Path

from bsm_ray.errors import ConfigError

STORAGE_ROOT_ENV = "BSM_RAY_STORAGE_ROOT"
# Ray's working_dir plugin (ray/_private/runtime_env/working_dir.py) unpacks each job's package
# under <session dir>/runtime_resources/working_dir_files/<package>.
_RAY_WORKING_DIR_PARTS = ("runtime_resources", "working_dir_files")


def under_storage_root(path: str) -> str:
    """`path` with `~` expanded and, when relative and $BSM_RAY_STORAGE_ROOT is set, taken
    under that root. Absolute paths and URIs are returned unchanged (so this is idempotent)."""
    path = os.path.expanduser(path)
    root = os.environ.get(STORAGE_ROOT_ENV, "").strip()
    if not root or "://" in path or os.path.isabs(path):
        return path
    if "://" in root:
        return f"{root.rstrip('/')}/{path}"
    return str(Path(os.path.expanduser(root)).resolve() / path)


def ray_job_working_dir(cwd: str | os.PathLike | None = None) -> Path | None:
    """The temporary working directory of a Ray job (runtime_env working_dir) that `cwd`
    (default: the current directory) lies in, or None."""
    parts = Path(cwd if cwd is not None else os.getcwd()).resolve().parts
    for i in range(len(parts) - 2):
        if parts[i : i + 2] == _RAY_WORKING_DIR_PARTS:
            return Path(*parts[: i + 3])  # .../working_dir_files/<package>
    return None


def _local_target(location: str) -> Path | None:
    """The local path a storage path or tracking URI writes to (None: a server or a cloud
    store, which outlives the job)."""
    if location.startswith("sqlite:///"):
        return Path(location.removeprefix("sqlite:///")).expanduser().resolve()
    if location.startswith("file://"):
        return Path(location.removeprefix("file://")).expanduser().resolve()
    if "://" in location or location.startswith("databricks"):
        return None
    return Path(location).expanduser().resolve()


def require_durable(outputs: dict[str, str], tracking_uri: str | None = None) -> None:
    """Refuse to start (ConfigError, one line) when this process runs in a Ray job's temporary
    working directory and any of `outputs` (setting name -> path or URI) or the MLflow
    `tracking_uri` (None: tracking off) would be written inside it."""
    tmp = ray_job_working_dir()
    if tmp is None:
        return

    def inside(location: str) -> bool:
        target = _local_target(location)
        return target is not None and target.is_relative_to(tmp)

    lost, fixes = [], []
    names = [name for name, path in outputs.items() if inside(path)]
    if names:
        lost += [f"{name} {_local_target(outputs[name])}" for name in names]
        fixes.append(f"env {STORAGE_ROOT_ENV}=<durable dir or URI> (a relative storage path "
                     f"goes under it) or --set {names[0]}=<durable path or URI>")  # fmt: skip
    if tracking_uri is not None and inside(tracking_uri):
        lost.append(f"the MLflow store {tracking_uri}")
        fixes.append("env MLFLOW_TRACKING_URI=<tracking server, e.g. http://<head>:5000, or a "
                     "store outside it> or --set tracking.enabled=false")  # fmt: skip
    if lost:
        raise ConfigError(
            f"this Ray job runs in a temporary working directory ({tmp}) that Ray deletes with "
            f"its session, and {' and '.join(lost)} would be written there: set "
            f"{'; and '.join(fixes)} (env vars in the job's runtime_env, or on `ray start`; "
            f"cluster/local_cluster.sh up sets both)"
        )
