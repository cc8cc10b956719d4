"""The GPU throughput benchmark runs its real training step end to end: on CPU with the tiny
presets here (what CI can run), on CUDA when a device is present (the `gpu` test).

Figures are printed, never asserted; what is asserted is that every requested variant trained
and was measured, that the ladder applies its settings cumulatively, and that a variant the
machine cannot run is reported as skipped with its reason."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path: Path, *args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_throughput.py"), *args,
                           "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=900, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "MFU" in proc.stdout and "tokens/s" in proc.stdout
    return json.loads((tmp_path / "gpu_throughput.json").read_text())


@pytest.mark.slow
def test_cpu_run_of_the_benchmark(tmp_path):
    report = _run(tmp_path, "--cpu", "--steps", "2", "--warmup", "1",
                  "--variants", "baseline,+flash_attention_2,+zero0")  # fmt: skip
    assert not report["cuda"] and report["matmul_flops"] > 0
    got = [(r["preset"], r["variant"]) for r in report["results"]]
    assert got == [(p, v) for p in ("bsm-tiny", "bert-tiny") for v in ("baseline", "+zero0")]
    for r in report["results"]:
        assert r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1 and math.isfinite(r["loss"])
        assert r["tokens_per_s"] == pytest.approx(r["rows"] * r["context"] / (r["step_ms"] / 1e3))
        assert len(r["step_ms_all"]) == 2
    by = {(r["preset"], r["variant"]): r for r in report["results"]}
    assert by[("bsm-tiny", "baseline")]["attention"] == "eager"
    # cumulative: +zero0 keeps the rows above it that ran here (SDPA, fused AdamW)
    assert by[("bert-tiny", "+zero0")]["settings"] == {
        "attention": "sdpa", "fused_adamw": True, "zero_stage": 0, "compile": False}
    assert by[("bert-tiny", "+zero0")]["context"] == 512
    assert {s["reason"] for s in report["skipped"]} == {"needs a CUDA device"}


@pytest.mark.gpu
def test_cuda_run_of_the_benchmark(tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    report = _run(tmp_path, "--presets", "bsm-tiny,bert-tiny", "--steps", "5", "--warmup", "3")
    assert report["cuda"]
    for r in report["results"]:
        assert r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1 and r["peak_mem_gib"] > 0
