"""The masking benchmark runs end to end (--quick) and its correctness check passes.

Timing figures are printed, never asserted. What is asserted: every stage ran, and for each
masking strategy the per-position Python loop and the library (compiled kernel) masked exactly
the same positions ("identical: yes"; the benchmark exits non-zero otherwise).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = ("dnabert", "genemask", "global")


def test_masking_benchmark_quick(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "masking_throughput.py"), "--quick",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((tmp_path / "masking_throughput.json").read_text())
    assert set(report["stages"]) == {
        "baseline", "masking", "mask_fraction", "count_kmers", "build_pmi",
    }  # fmt: skip
    assert report["identical"] == {st: "yes" for st in STRATEGIES}
    strategies = report["masking"]["strategies"]
    for st in STRATEGIES:
        assert strategies[st]["same_masked_positions"], st
        assert strategies[st]["library"]["tokens_per_s"] > 0
        assert strategies[st]["loop"]["tokens_per_s"] > 0
        assert 0 < report["mask_fraction"][st]["fraction"] < 1
        assert f"{st:<8}  identical: yes" in proc.stdout
    for stage in ("count_kmers", "build_pmi"):
        assert report["stages"][stage]["throughput_per_s"] > 0, stage
    assert "tokens/s" in proc.stdout and "Mbp/s" in proc.stdout
    assert "one core" in proc.stdout
