"""Ray Data streaming into Ray Train workers (`data.streaming: true`), 2 workers, real Ray,
DeepSpeed and Parquet shards: exact token ratios, the CM-GEMS switch on both workers, and a
killed-and-resumed run that consumes exactly what the stream specification says.

The 3-source run is conftest's `streamed_causal_run` (shared with the export test); the CM-GEMS
run is one TorchTrainer run with a restart (~60 s on 2 cores)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from bsm_ray.data.stream_plan import expected_row_ids, list_units
from bsm_ray.tracking.config import TrackingConfig
from bsm_ray.train.config import DataConfig, MaskingConfig, TrainConfig
from bsm_ray.train.context import read_metrics
from bsm_ray.train.launcher import launch
from bsm_ray.train.schedules import ScheduleConfig


def _last_per_step(path: Path) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        out[rec["step"]] = rec  # a later attempt overwrites an earlier one
    return out


def _consumed(trace: dict[int, dict], steps: int) -> dict[str, list[int]]:
    """Row ids per source in consumption order."""
    out: dict[str, list[int]] = {}
    for step in range(1, steps + 1):
        for source, row in trace[step]["rows"]:
            out.setdefault(source, []).append(row)
    return out


def test_streamed_mix_realizes_token_ratios_in_every_100_step_window(streamed_causal_run):
    config, result = streamed_causal_run
    steps, dataset, mix = config.max_steps, config.data.dataset, config.data.mix
    assert result.metrics["step"] == steps
    run = Path(result.run_dir)
    traces = {r: _last_per_step(run / "trace" / f"rank{r}.jsonl") for r in (0, 1)}
    assert all(sorted(t) == list(range(1, steps + 1)) for t in traces.values())

    # realized token ratios over every window of 100 consecutive steps, both workers together
    tokens = np.array([[sum(traces[r][s]["tokens"][src] for r in (0, 1)) for src in mix]
                       for s in range(1, steps + 1)], dtype=float)  # fmt: skip
    target = np.array(list(mix.values())) / sum(mix.values())
    worst = 0.0
    for start in range(steps - 100 + 1):
        window = tokens[start : start + 100].sum(axis=0)
        worst = max(worst, float(np.max(np.abs(window / window.sum() - target) / target)))
    assert worst < 0.01, f"worst relative deviation from the target ratio: {worst:.4f}"

    # each worker consumed exactly the rows the stream specification names, in order
    for rank in (0, 1):
        for source, rows in _consumed(traces[rank], steps).items():
            units = list_units(dataset, source, "train", 64)
            assert rows == expected_row_ids(units, source, 0, rank, 2, len(rows)), (rank, source)
    # the two workers' rows are disjoint (lanes of one unit, no row streamed twice per epoch)
    for source in mix:
        a = set(_consumed(traces[0], steps)[source])
        b = set(_consumed(traces[1], steps)[source])
        assert not a & b, source

    # the realized ratio is a logged metric
    final = read_metrics(result.run_dir)[-1]
    total = tokens.sum(axis=0)
    for i, source in enumerate(mix):
        assert final[f"data/mix/{source}"] == pytest.approx(total[i] / total.sum(), rel=1e-9)
        assert final[f"data/repeats/{source}"] == 0


def test_cm_gems_switches_on_both_workers_and_a_killed_run_resumes_the_stream(
        dataset, tmp_path, ray_instance):  # fmt: skip
    """CM-GEMS over streamed, actor-masked genome rows: both workers switch to Global at the
    same step; rank 1 is SIGKILLed after the switch; Ray Train restarts the group from the last
    checkpoint, the resumed workers stay in Global and stream on from their saved positions, so
    the rows consumed step by step equal the specification's uninterrupted sequence."""
    steps, per_rank = 16, 8
    config = TrainConfig(
        name="gems", model="bert-tiny", objective="mlm", global_batch_tokens=16 * 512,
        micro_batch_rows=4, max_steps=steps,
        schedule=ScheduleConfig(kind="warmup_linear", start_lr=1e-2, end_lr=1e-3, warmup_steps=2),
        data=DataConfig(dataset=dataset, val_rows_per_source=16, streaming=True,
                        stream_cpus=0.5),
        # an unreachable drop: the second evaluation (step 8) switches
        masking=MaskingConfig(strategy="cm_gems", switch_threshold=1e9),
        num_workers=2, eval_every=4, checkpoint_every=4, storage_path=str(tmp_path),
        tracking=TrackingConfig(enabled=False), trace=True, max_failures=1,
    )  # fmt: skip
    trace_file = tmp_path / "gems" / "trace" / "rank1.jsonl"
    victims: list[int] = []

    def checkpointed_after_switch() -> bool:
        states = (tmp_path / "gems").glob("checkpoint_*/trainer_state.json")
        return any(json.loads(p.read_text())["step"] >= 8 for p in states)

    def kill_rank1_after_step_10() -> None:
        deadline = time.time() + 300
        while time.time() < deadline and not victims:
            if trace_file.is_file() and checkpointed_after_switch():
                for line in trace_file.read_text().splitlines():
                    rec = json.loads(line)
                    if rec["step"] >= 10:
                        os.kill(rec["pid"], signal.SIGKILL)
                        victims.append(rec["pid"])
                        return
            time.sleep(0.05)

    watcher = threading.Thread(target=kill_rank1_after_step_10, daemon=True)
    watcher.start()
    result = launch(config)
    watcher.join(timeout=5)
    assert victims, "the worker was never killed"
    assert result.metrics["step"] == steps

    units = list_units(dataset, "genome", "train", 512)
    for rank in (0, 1):
        path = tmp_path / "gems" / "trace" / f"rank{rank}.jsonl"
        lines = [json.loads(x) for x in path.read_text().splitlines()]
        pids = [x["pid"] for x in lines]
        assert len(set(pids)) == 2  # a second attempt ran
        second = [x for x in lines if x["pid"] == pids[-1]]
        # the second attempt resumed after the switch (checkpoint 8 or 12) and stayed in Global
        assert second[0]["step"] in (9, 13), second[0]["step"]
        assert all(x["strategies"] == ["global"] for x in second)
        final = _last_per_step(path)
        assert sorted(final) == list(range(1, steps + 1))
        # one switch, at step 8, on both workers: GeneMask through step 8, Global after it
        assert [final[s]["strategies"] for s in range(1, steps + 1)] == (
            [["genemask"]] * 8 + [["global"]] * 8)  # fmt: skip
        # the stream resumed at the next unconsumed row: the uninterrupted sequence
        rows = _consumed(final, steps)["genome"]
        assert len(rows) == steps * per_rank
        assert rows == expected_row_ids(units, "genome", 0, rank, 2, len(rows))
    history = read_metrics(result.run_dir)
    assert {m["mask/switch_step"] for m in history if "mask/switch_step" in m} == {8}
    assert [m["mask/strategy_global"] for m in _by_step(history)] == [0.0] * 8 + [1.0] * 8
    assert np.isfinite(result.metrics["val/loss"])


def _by_step(history: list[dict]) -> list[dict]:
    last: dict[int, dict] = {}
    for m in history:
        if m["step"] >= 1:
            last[m["step"]] = m
    return [last[s] for s in sorted(last)]
