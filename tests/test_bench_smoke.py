"""The ingestion benchmark runs end to end (--quick) and reports every stage.

Figures are printed, never asserted: this only keeps the benchmark from rotting.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ingest_benchmark_quick(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "ingest_throughput.py"), "--quick",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "ingest_throughput.json").read_text())
    text = json.dumps(report)
    for stage in ("iter_fasta", "prepare_dataset", "kmer_ids", "encode_batch", "SeqIO"):
        assert stage in text, stage
    assert "Mbp/s" in proc.stdout and "M tok/s" in proc.stdout
