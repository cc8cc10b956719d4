"""The training benchmark runs end to end (--quick): Ray Train + DeepSpeed against a plain loop.

Timing figures are printed, never asserted. What is asserted: both paths trained on the same
rows step by step and were measured (tokens/s, time to the first step), the ratio is theirs,
and the Ray instance the benchmark started was its own and is gone.

The benchmark starts its own local Ray instance (`address="local"`, private temporary
directory) in a subprocess, so it does not join the session's instance (the `ray_instance`
fixture) even when one is running. About a minute on 2 cores when DeepSpeed's op is cached
(~/.cache/torch_extensions); the first DeepSpeed start on a machine compiles it (~90 s more).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_train_benchmark_quick(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # never join a cluster
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "train_throughput.py"), "--quick",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "train_throughput.json").read_text())
    settings = report["settings"]
    assert settings["quick"] and settings["threads"] == 1
    plain, ray = report["plain"], report["ray"]
    for path in (plain, ray):
        assert path["tokens_per_s"]["median"] > 0
        assert path["tokens_per_s"]["n"] == settings["steps"]
        assert path["time_to_first_step_s"] > 0
        assert path["num_parameters"] == plain["num_parameters"] > 0
    assert report["ratio"] == pytest.approx(
        ray["tokens_per_s"]["median"] / plain["tokens_per_s"]["median"]
    )
    assert isinstance(report["goal_met"], bool)
    # the Ray path really ran every step through Ray Train (metrics.jsonl, worker process)
    assert [p["step"] for p in ray["per_step"]] == list(range(1, settings["max_steps"] + 1))
    assert ray["worker_pid"] and ray["worker_pid"] != os.getpid()
    assert ray["ray_init_s"] > 0 and ray["launch_to_step0_s"] <= ray["time_to_first_step_s"]
    assert ray["final_val_loss"] < ray["initial_val_loss"]
    assert isinstance(ray["deepspeed_warm"], bool)
    # both paths saw the same rows: at every step the same (source, row id) pairs in the same
    # order (the plain loop's plan against the Ray worker's trace), so the same token counts
    steps = list(range(1, settings["max_steps"] + 1))
    assert [p["step"] for p in plain["per_step"]] == steps
    for p, q in zip(plain["per_step"], ray["per_step"], strict=True):
        assert p["rows"] and q["rows"] == p["rows"], p["step"]
        assert q["tokens"] == p["tokens"] > 0, p["step"]
    assert plain["threads"] == 1
    assert not (tmp_path / ".train_runs").exists()  # scratch run removed
    out = proc.stdout
    assert "tokens/s" in out and "goal >= 0.9" in out
    assert "time to the first optimizer step" in out and "DeepSpeed ops:" in out
