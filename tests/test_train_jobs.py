"""The training jobs' command lines: config resolution and clear errors (no training here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)  # fmt: skip


def test_round_selects_config_and_name(tmp_path):
    proc = _run("jobs/pretrain.py", "--round", "1", "--print-config")
    assert proc.returncode == 0, proc.stderr
    config = yaml.safe_load(proc.stdout)
    assert config["name"] == "bsm-round1" and config["model"] == "bsm-110m"
    assert config["schedule"] == {"kind": "round", "start_lr": 2e-5, "end_lr": 1e-5,
                                  "warmup_steps": 2000}  # fmt: skip


def test_round_2_needs_round_1(tmp_path):
    proc = _run("jobs/pretrain.py", "--round", "2", "--config", "jobs/configs/bsm_smoke.yaml",
                "--set", f"storage_path={tmp_path}")  # fmt: skip
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and "bsm-smoke-round1" in proc.stderr
    assert "run the previous round first" in proc.stderr


def test_round_2_starts_from_round_1_final_model(tmp_path):
    final = tmp_path / "bsm-smoke-round1" / "checkpoint_2026-01-01_00-00-00.000000" / "final_model"
    final.mkdir(parents=True)
    proc = _run("jobs/pretrain.py", "--round", "2", "--config", "jobs/configs/bsm_smoke.yaml",
                "--set", f"storage_path={tmp_path}", "--print-config")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    config = yaml.safe_load(proc.stdout)
    assert config["name"] == "bsm-smoke-round2" and config["init_from"] == str(final)


def test_mlm_job_rejects_causal_and_unknown_keys():
    proc = _run("jobs/pretrain_mlm.py", "--config", "jobs/configs/bsm_smoke.yaml")
    assert proc.returncode == 2 and "needs objective: mlm" in proc.stderr
    proc = _run("jobs/pretrain_mlm.py", "--config", "jobs/configs/mlm_smoke.yaml",
                "--set", "optim.momentum=0.9")  # fmt: skip
    assert proc.returncode == 2
    assert "optim: unknown key(s) ['momentum']; valid keys are" in proc.stderr
