"""Ray Data streaming of genome pieces through masking actors (real Ray instance)."""

from __future__ import annotations

import numpy as np
import pytest

from bsm_ray.ingest.prepare import PrepareConfig, prepare_dataset


@pytest.fixture(scope="module")
def genome_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipe") / "ds"
    prepare_dataset(PrepareConfig(output_dir=str(out), progress=False, rows_per_shard=150,
                                  sample_synthetic_genome_bp=100_000))  # fmt: skip
    return out


def test_streams_follow_the_spec_and_mask_like_the_pure_function(genome_dataset, ray_instance,
                                                                  tmp_path):  # fmt: skip
    """Two workers' genome streams over several shards: each gets its own parts in spec order
    (no row twice within an epoch, all rows once per epoch over both), masked in actors exactly
    as `apply_mask` masks (row id, step of consumption); a restart at a saved position goes on
    with the same rows and masks."""
    from bsm_ray.data.masking import apply_mask
    from bsm_ray.data.pipeline import StreamReader, StreamSpec
    from bsm_ray.data.pmi_build import PmiConfig, build_pmi_table, load_rank_table
    from bsm_ray.data.stream_plan import (
        expected_row_ids,
        list_units,
        part_rows,
        worker_parts,
    )
    from bsm_ray.data.windows import mlm_windows

    table = tmp_path / "npmi.parquet"
    build_pmi_table(PmiConfig(output=str(table), progress=False, parallel="local"))
    units = list_units(genome_dataset, "genome", "train", 512)
    assert len(units) > 2  # several shards: parts are whole units (one lane each)
    total = sum(u.num_rows for u in units)
    windows = mlm_windows(genome_dataset, "train")
    ranks = load_rank_table(table)
    spec = StreamSpec(str(genome_dataset), "genome", strategy="cm_step", pmi_table=str(table),
                      seed=3, rows_per_step=8, max_steps=40, cpus=0.5, mask_actors=2)  # fmt: skip
    first_epoch = []
    for rank in (0, 1):
        reader = StreamReader(spec, rank, 2, base_step=5)
        got = reader.take(100)
        saved = reader.position
        more = reader.take(60)
        resumed = StreamReader(spec, rank, 2, start=saved, base_step=5 + 100 // 8).take(60)
        # a restart mid-step (100 = 12 steps + 4 rows) must use the saved position's step
        assert saved.ordinal == 100
        rows = np.concatenate([got["row_id"], more["row_id"]]).tolist()
        assert rows == expected_row_ids(units, "genome", 3, rank, 2, 160)
        assert resumed["row_id"].tolist() == more["row_id"].tolist()
        for batch in (got, more):
            steps = 5 + batch["ordinal"] // 8
            assert batch["step"].tolist() == steps.tolist()
            for i in range(0, len(steps), 7):
                r, step = int(batch["row_id"][i]), int(steps[i])
                ref = apply_mask(str(batch["strategy"][i]), windows.input_ids[r : r + 1],
                                 windows.attention_mask[r : r + 1], 3, np.array([r]), step,
                                 ranks)  # fmt: skip
                assert np.array_equal(ref.labels[0], batch["labels"][i])
                assert np.array_equal(ref.input_ids[0], batch["input_ids"][i])
        assert {str(x) for x in got["source"]} == {"genome"}
        first_epoch += [units[p.unit].first_row + int(r)
                        for p in worker_parts(units, "genome", 0, rank, 2, 3)
                        for r in part_rows(units[p.unit], p, 3, "genome")]  # fmt: skip
    assert sorted(first_epoch) == list(range(total))  # epoch 0: every row once, over both
    masked = (got["labels"] != -100).sum() / got["attention_mask"].sum()
    assert 0.1 < masked < 0.2


def test_pipeline_benchmark_quick(tmp_path):
    """The pipeline benchmark runs end to end (figures printed, not asserted)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, str(root / "bench" / "pipeline_throughput.py"),
                           "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "pipeline_throughput.json").read_text())
    assert result["rows"] > 1000 and result["masked_tokens"] > 0
    assert result["pipeline_tokens_per_s"] > 0 and result["pure_masking_tokens_per_s"] > 0
    assert "tokens/s" in proc.stdout
