"""Runs that change size: a run stopped on 2 workers continues on 1 (DeepSpeed's universal
checkpoint for ZeRO-2 and ZeRO-3, the AdamW moments and the step carried over), with the same
global batches (which rows, per step) as the uninterrupted run (causal: at world size 1, in
this process; the streamed MLM: on 2 workers) and its train/loss within 1e-3 relative (fp32 on
CPU, where only the reduction order differs; the tiny presets have no dropout); an annealing
trial started from a round checkpoint gets the round's optimizer state. The elastic run that
loses a worker node and grows back is in test_elastic_cluster.py.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from bsm_ray.tracking.config import TrackingConfig
from bsm_ray.train.checkpointing import latest_local_checkpoint, read_trainer_state
from bsm_ray.train.config import DataConfig, TrainConfig
from bsm_ray.train.context import read_metrics
from bsm_ray.train.launcher import launch
from bsm_ray.train.schedules import ScheduleConfig

pytestmark = pytest.mark.slow

STEPS, STOP = 8, 4


def _config(kind: str, zero_stage: int, dataset: str, storage: Path) -> TrainConfig:
    common = dict(
        max_steps=STEPS, num_workers=2, zero_stage=zero_stage, eval_every=4, checkpoint_every=4,
        schedule=ScheduleConfig(kind="warmup_linear", start_lr=3e-3, end_lr=3e-4, warmup_steps=2),
        storage_path=str(storage), tracking=TrackingConfig(enabled=False), trace=True,
    )  # fmt: skip
    if kind == "causal":
        return TrainConfig(name="full", model="bsm-tiny", seq_len=64,
                           global_batch_tokens=16 * 64, micro_batch_rows=4,
                           data=DataConfig(dataset=dataset, val_rows_per_source=16,
                                           mix={"single_dna": 1.0, "web": 1.0}),
                           **common)  # fmt: skip
    return TrainConfig(name="full", model="bert-tiny", objective="mlm",
                       global_batch_tokens=8 * 512, micro_batch_rows=2,
                       data=DataConfig(dataset=dataset, val_rows_per_source=16, streaming=True,
                                       stream_cpus=0.5),
                       **common)  # fmt: skip


def _per_step(run_dir: Path) -> dict[int, dict]:
    """step -> the global batch's (source, row) pairs in rank order and rank 0's loss, from the
    trace lines of the last attempt that ran each step."""
    out: dict[int, dict] = {}
    for rank in (0, 1):
        path = run_dir / "trace" / f"rank{rank}.jsonl"
        if not path.is_file():
            continue
        last: dict[int, dict] = {}
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            last[rec["step"]] = rec
        for step, rec in last.items():
            entry = out.setdefault(step, {"rows": [], "loss": rec["loss"]})
            entry["rows"] += [tuple(r) for r in rec["rows"]]
    return out


@pytest.mark.parametrize(("kind", "zero_stage", "resume_workers"), [
    ("causal", 2, 0), ("causal", 3, 1), ("mlm_streamed", 2, 1), ("mlm_streamed", 3, 0)])
def test_a_run_stopped_on_two_workers_continues_on_one(
        kind, zero_stage, resume_workers, dataset, tmp_path, ray_instance):  # fmt: skip
    config = _config(kind, zero_stage, dataset, tmp_path)
    # The uninterrupted run. Causal: in this process (world size 1), since its global batches
    # do not depend on the world size, which saves a worker group's start. The streamed MLM
    # splits the stream between the workers, so its reference runs on 2 workers.
    launch(replace(config, num_workers=0) if kind == "causal" else config)
    launch(replace(config, name="cut", stop_at_step=STOP))
    checkpoint = latest_local_checkpoint(tmp_path / "cut")
    assert read_trainer_state(checkpoint)["step"] == STOP
    assert read_trainer_state(checkpoint)["world_size"] == 2
    assert not (checkpoint / "final_model").exists()  # a stop, not the end of the run
    track = resume_workers == 0  # one case also checks the MLflow run's resize tag
    resumed = launch(replace(config, name="cut", num_workers=resume_workers,
                             tracking=TrackingConfig(enabled=track, register=False)))
    if track:
        from mlflow.tracking import MlflowClient

        tags = MlflowClient().get_run(resumed.tracking["run_id"]).data.tags
        assert tags[f"bsm_ray.resize.step_{STOP}"].startswith("2 -> 1 workers, conversion ")

    full, cut = _per_step(tmp_path / "full"), _per_step(tmp_path / "cut")
    assert sorted(full) == sorted(cut) == list(range(1, STEPS + 1))
    rows_per_step = 16 if kind == "causal" else 8
    for step in range(1, STEPS + 1):
        # the same global batch, row for row, whichever workers took it
        assert len(cut[step]["rows"]) == rows_per_step
        assert cut[step]["rows"] == full[step]["rows"], step
    metrics = {m["step"]: m for m in read_metrics(tmp_path / "cut") if "train/loss" in m}
    reference = {m["step"]: m for m in read_metrics(tmp_path / "full") if "train/loss" in m}
    assert [metrics[s]["train/world_size"] for s in range(1, STEPS + 1)] == (
        [2] * STOP + [1] * (STEPS - STOP))  # fmt: skip
    for step in range(1, STEPS + 1):
        got, want = metrics[step]["train/loss"], reference[step]["train/loss"]
        assert abs(got - want) <= 1e-3 * abs(want), (step, got, want)
    # the moments carried over: after the resize, the optimizer's own step count goes on
    # from the checkpoint's (a fresh AdamW would count from 0)
    assert metrics[STEPS]["val/loss"] == pytest.approx(reference[STEPS]["val/loss"], rel=1e-3)


def test_an_annealing_trial_from_a_round_checkpoint_gets_its_optimizer_state(
        dataset, tmp_path, ray_instance):  # fmt: skip
    """A round run trains 4 steps on 2 workers (ZeRO-2). A trial whose `init_from` is that
    checkpoint anneals on its own mix, in this process (world size 1, so the state goes through
    the universal conversion). Its steps equal those of the reference: the round's checkpoint
    continued as a run of the trial's config from step 0 (the resume path, which carries the
    AdamW moments), and differ from a trial started from the exported weights alone."""
    import shutil

    round_run = replace(_config("causal", 2, dataset, tmp_path), name="round", max_steps=4,
                        data=DataConfig(dataset=dataset, val_rows_per_source=16,
                                        mix={"single_dna": 1.0}))  # fmt: skip
    launch(round_run)
    checkpoint = latest_local_checkpoint(tmp_path / "round")
    assert (checkpoint / "state").is_dir() and (checkpoint / "final_model").is_dir()
    trial = replace(round_run, name="trial", init_from=str(checkpoint), max_steps=3,
                    num_workers=0, eval_every=1, checkpoint_every=3, trace=False,
                    schedule=ScheduleConfig(kind="anneal", start_lr=2e-3, end_lr=0.0,
                                            warmup_steps=0),
                    data=DataConfig(dataset=dataset, val_rows_per_source=16,
                                    mix={"single_dna": 1.0, "web": 1.0}))  # fmt: skip
    launch(trial)
    launch(replace(trial, name="weights_only", init_from=str(checkpoint / "final_model")))
    # the reference: the round's checkpoint as step 0 of a run with the trial's config
    ref = tmp_path / "ref" / "checkpoints" / "checkpoint_00000000"
    shutil.copytree(checkpoint, ref, ignore=shutil.ignore_patterns("final_model"))
    state = read_trainer_state(ref)
    state.update(step=0, mix={"rows_drawn": 0, "per_source": {"single_dna": 0, "web": 0},
                              "credit": {"single_dna": 0.0, "web": 0.0}})  # fmt: skip
    (ref / "trainer_state.json").write_text(json.dumps(state))
    launch(replace(trial, name="ref", init_from=None))

    def steps(name: str) -> dict[int, dict]:
        return {m["step"]: m for m in read_metrics(tmp_path / name) if "train/loss" in m}

    got, want, fresh = steps("trial"), steps("ref"), steps("weights_only")
    assert sorted(got) == sorted(want) == [1, 2, 3]
    for step in (1, 2, 3):
        for key in ("train/loss", "val/loss", "train/grad_norm"):
            assert got[step][key] == pytest.approx(want[step][key], rel=1e-6), (step, key)
    # the same weights give the same first loss; fresh moments give another first update
    assert fresh[1]["train/loss"] == pytest.approx(want[1]["train/loss"], rel=1e-6)
    assert abs(fresh[1]["val/loss"] - want[1]["val/loss"]) > 1e-4 * want[1]["val/loss"]
    assert abs(fresh[2]["train/loss"] - want[2]["train/loss"]) > 1e-4 * want[2]["train/loss"]
