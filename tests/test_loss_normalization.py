"""A step's loss is the sum of per-token losses over the global batch divided by its number of
targets, so the same global batch gives the same loss and gradient on any number of workers
with any micro-batch size (real Ray Train + DeepSpeed ZeRO-2 runs on CPU, fp32).

1 worker x micro-batch 8 and 2 workers x micro-batch 2 (x 2 accumulation) see the same 8 rows a
step (the global plan) with the same masks (a function of row and step). A mean of per-micro-
batch means would weight the rows of a micro-batch with few targets more: the test checks that
the batches it uses do have unequal target counts across workers, so it binds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bsm_ray.tracking.config import TrackingConfig
from bsm_ray.train.config import DataConfig, MaskingConfig, TrainConfig
from bsm_ray.train.context import read_metrics
from bsm_ray.train.schedules import ScheduleConfig

STEPS = {"causal": 5, "mlm": 3}


def _config(kind: str, dataset: str, storage: Path, workers: int, micro: int) -> TrainConfig:
    common = dict(
        name=f"{kind}-w{workers}-mb{micro}", max_steps=STEPS[kind], num_workers=workers,
        micro_batch_rows=micro, zero_stage=2, eval_every=STEPS[kind],
        checkpoint_every=STEPS[kind],
        storage_path=str(storage), tracking=TrackingConfig(enabled=False), trace=True,
        schedule=ScheduleConfig(kind="warmup_linear", start_lr=3e-3, end_lr=3e-4, warmup_steps=1),
    )  # fmt: skip
    if kind == "causal":
        # single_rna packs into 23 windows of 256 tokens, the last one padded; at 3:1 (by
        # tokens) with single_dna (which has the validation rows) 5 steps of 8 rows go through
        # all of single_rna, so some step has a micro-batch with fewer targets.
        return TrainConfig(model="bsm-tiny", objective="causal", seq_len=256,
                           global_batch_tokens=8 * 256,
                           data=DataConfig(dataset=dataset,
                                           mix={"single_rna": 3.0, "single_dna": 1.0},
                                           val_rows_per_source=8), **common)  # fmt: skip
    # genome pieces of 6 to 511 nt: masked targets per row vary widely
    return TrainConfig(model="bert-tiny", objective="mlm", global_batch_tokens=8 * 512,
                       data=DataConfig(dataset=dataset, val_rows_per_source=8),
                       masking=MaskingConfig(strategy="dnabert"), **common)  # fmt: skip


def _trace(run_dir: Path, rank: int) -> dict[int, dict]:
    lines = [json.loads(x) for x in (Path(run_dir) / "trace" / f"rank{rank}.jsonl").read_text()
             .splitlines()]  # fmt: skip
    return {x["step"]: x for x in lines}


@pytest.mark.parametrize("kind", ["causal", "mlm"])
def test_same_global_batch_same_loss_and_gradient_on_1_and_2_workers(kind, dataset, tmp_path,
                                                                     ray_instance):  # fmt: skip
    from bsm_ray.train.launcher import launch

    runs = {}
    for workers, micro in ((1, 8), (2, 2)):
        result = launch(_config(kind, dataset, tmp_path, workers, micro))
        runs[workers] = {m["step"]: m for m in read_metrics(result.run_dir)}, result.run_dir
    one, two = runs[1][0], runs[2][0]
    steps = STEPS[kind]
    for step in range(1, steps + 1):
        assert two[step]["train/loss"] == pytest.approx(one[step]["train/loss"], rel=1e-5)
        assert two[step]["train/grad_norm"] == pytest.approx(one[step]["train/grad_norm"],
                                                             rel=1e-5)  # fmt: skip
    # after the same updates the models are the same: equal validation loss at the end
    assert two[steps]["val/loss"] == pytest.approx(one[steps]["val/loss"], rel=1e-5)

    # The same rows each step, split differently ...
    single = _trace(runs[1][1], 0)
    split = {r: _trace(runs[2][1], r) for r in (0, 1)}
    for step in range(1, steps + 1):
        assert single[step]["rows"] == split[0][step]["rows"] + split[1][step]["rows"]
    # ... and unequal real tokens between the workers in some step, where a mean of the
    # workers' means would differ from the mean over the global batch's targets.
    tokens = [[sum(split[r][step]["tokens"].values()) for r in (0, 1)]
              for step in range(1, steps + 1)]  # fmt: skip
    assert any(a != b for a, b in tokens), tokens



def test_deepspeed_pass_through_is_merged_last_and_checked():
    import os

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.runtime.config import DeepSpeedConfig

    from bsm_ray.train.loop import deepspeed_config

    config = TrainConfig(global_batch_tokens=8 * 256, seq_len=256, micro_batch_rows=2,
                         deepspeed={"zero_optimization": {"overlap_comm": True,
                                                          "reduce_bucket_size": 5e7}})  # fmt: skip
    ds = deepspeed_config(config, world_size=2, use_bf16=False)
    # derived keys stay, nested user keys merge into them
    assert ds["zero_optimization"] == {"stage": 2, "overlap_comm": True, "reduce_bucket_size": 5e7}
    assert ds["gradient_accumulation_steps"] == 2 and ds["train_micro_batch_size_per_gpu"] == 2
    DeepSpeedConfig(ds)  # DeepSpeed accepts it
    for bad in ({"train_micro_batch_size_per_gpu": 4}, {"zero_optimisation": {"stage": 3}}):
        with pytest.raises(ValueError, match="unknown or derived top-level key"):
            deepspeed_config(TrainConfig(deepspeed=bad), 1, False)
    typo = deepspeed_config(TrainConfig(deepspeed={"zero_optimization": {"overlap_com": 1}}), 1,
                            False)  # fmt: skip
    with pytest.raises(Exception, match="overlap_com"):  # DeepSpeed's own validation, inside
        DeepSpeedConfig(typo)
