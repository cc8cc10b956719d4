"""Durable results: relative storage paths under $BSM_RAY_STORAGE_ROOT, and jobs that refuse to
start inside a Ray job's temporary working directory (bsm_ray.storage).

The job tests run the real entry points in a copy of the checkout laid out as Ray lays out a
submitted job's working_dir (<temp>/session_*/runtime_resources/working_dir_files/<package>/),
so the package, the default `runs` and the embedded MLflow store all resolve inside it, as
under `ray job submit --working-dir .`. tests/test_anneal_cluster.py submits to a real cluster.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bsm_ray.errors import ConfigError
from bsm_ray.storage import (
    STORAGE_ROOT_ENV,
    ray_job_working_dir,
    require_durable,
    under_storage_root,
)

ROOT = Path(__file__).resolve().parents[1]


def test_relative_storage_paths_go_under_the_root(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv(STORAGE_ROOT_ENV, raising=False)
    assert under_storage_root("runs") == "runs"
    monkeypatch.setenv(STORAGE_ROOT_ENV, str(tmp_path))
    assert under_storage_root("runs") == str(tmp_path / "runs")
    assert under_storage_root(under_storage_root("runs")) == str(tmp_path / "runs")
    assert under_storage_root("/abs/runs") == "/abs/runs"
    assert under_storage_root("s3://bucket/runs") == "s3://bucket/runs"
    monkeypatch.setenv(STORAGE_ROOT_ENV, "s3://bucket/")
    assert under_storage_root("runs/eval") == "s3://bucket/runs/eval"
    monkeypatch.setenv(STORAGE_ROOT_ENV, "")  # set but empty: no root
    assert under_storage_root("runs") == "runs"


def test_ray_job_working_dir_is_recognised(tmp_path, monkeypatch) -> None:
    pkg = tmp_path / "session_1" / "runtime_resources" / "working_dir_files" / "_ray_pkg_ab"
    (pkg / "jobs").mkdir(parents=True)
    assert ray_job_working_dir(pkg / "jobs") == pkg
    assert ray_job_working_dir(tmp_path) is None
    monkeypatch.chdir(pkg)
    with pytest.raises(ConfigError, match="storage_path") as err:
        require_durable({"storage_path": str(pkg / "runs")}, f"sqlite:///{tmp_path / 'db'}")
    assert "MLflow" not in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="the MLflow store sqlite:///runs.db"):
        require_durable({"storage_path": str(tmp_path / "runs")}, "sqlite:///runs.db")
    # Outside it, on a server, on a cloud store: nothing to refuse.
    require_durable({"storage_path": str(tmp_path / "runs"), "output_dir": "s3://b/x"},
                    "http://127.0.0.1:5000")  # fmt: skip
    monkeypatch.chdir(tmp_path)
    require_durable({"storage_path": str(pkg / "runs")}, "sqlite:///runs.db")


@pytest.fixture
def ray_working_dir(tmp_path) -> Path:
    """A copy of the package and jobs where Ray unpacks a submitted job's working_dir."""
    pkg = tmp_path / "session_1" / "runtime_resources" / "working_dir_files" / "_ray_pkg_ab"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "bsm_ray", pkg / "bsm_ray", ignore=ignore)
    shutil.copytree(ROOT / "jobs", pkg / "jobs", ignore=ignore)
    return pkg


def _job(pkg: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items()
            if k not in ("MLFLOW_TRACKING_URI", STORAGE_ROOT_ENV, "PYTHONPATH")}  # fmt: skip
    return subprocess.run([sys.executable, *args], cwd=pkg, env={**base, **env},
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def test_jobs_refuse_a_ray_jobs_temporary_working_dir(ray_working_dir) -> None:
    pkg = ray_working_dir
    # The main job as `ray job submit --working-dir . -- python jobs/anneal_mix.py` runs it:
    # its runs and the embedded MLflow store (mlflow/store/ of this copy) would both vanish.
    p = _job(pkg, "jobs/anneal_mix.py")
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith(f"error: this Ray job runs in a temporary working directory "
                               f"({pkg})")  # fmt: skip
    assert f"storage_path {pkg / 'runs'}" in lines[0]
    assert f"the MLflow store sqlite:///{pkg / 'mlflow' / 'store' / 'mlflow.db'}" in lines[0]
    assert STORAGE_ROOT_ENV in lines[0] and "MLFLOW_TRACKING_URI" in lines[0]
    assert not (pkg / "runs").exists() and not (pkg / "mlflow").exists()
    # A tracking store outside it is enough for MLflow; the runs still have nowhere to go.
    db = pkg.parents[3] / "mlflow.db"
    p = _job(pkg, "jobs/pretrain.py", "--round", "1", "--config", "jobs/configs/bsm_smoke.yaml",
             MLFLOW_TRACKING_URI=f"sqlite:///{db}")  # fmt: skip
    assert p.returncode == 2 and "storage_path" in p.stderr and "MLflow" not in p.stderr
    p = _job(pkg, "jobs/prepare_data.py")
    assert p.returncode == 2 and f"output_dir {pkg / 'data' / 'sample'}" in p.stderr


def test_jobs_write_under_the_storage_root(ray_working_dir, tmp_path) -> None:
    pkg, durable = ray_working_dir, tmp_path / "durable"
    p = _job(pkg, "jobs/prepare_data.py", **{STORAGE_ROOT_ENV: str(durable)})
    assert p.returncode == 0, p.stderr
    assert (durable / "data" / "sample" / "manifest.json").is_file()
    assert f"manifest: {durable / 'data' / 'sample' / 'manifest.json'}" in p.stdout
    assert not (pkg / "data").exists()
