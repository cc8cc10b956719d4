"""Distributed training for real: Ray Train + DeepSpeed ZeRO on CPU (gloo), 2 workers.

These start real TorchTrainer runs (~20-40 s each on 2 cores), so there are few of them.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from bsm_ray.tracking.config import TrackingConfig
from bsm_ray.train.config import DataConfig, MaskingConfig, TrainConfig
from bsm_ray.train.context import build_windows, read_metrics
from bsm_ray.train.launcher import launch
from bsm_ray.train.schedules import ScheduleConfig

# MLflow tracking (on by default) has its own tests against a real server (test_registry.py);
# these runs test training, so they leave the tracking store alone.
NO_TRACKING = TrackingConfig(enabled=False)


def _causal(dataset: str, storage: Path, **kw) -> TrainConfig:
    base = dict(
        name="bsm", model="bsm-tiny", objective="causal", seq_len=128,
        global_batch_tokens=4096, micro_batch_rows=4, max_steps=12,
        schedule=ScheduleConfig(kind="warmup_linear", start_lr=3e-3, end_lr=3e-4, warmup_steps=2),
        data=DataConfig(dataset=dataset, mix={"single_protein": 1, "refseq_pair": 1, "web": 1},
                        val_rows_per_source=24),
        num_workers=2, eval_every=6, checkpoint_every=6, storage_path=str(storage),
        tracking=NO_TRACKING,
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def _mlm(dataset: str, storage: Path, **kw) -> TrainConfig:
    base = dict(
        name="enc", model="bert-tiny", objective="mlm", global_batch_tokens=16 * 512,
        micro_batch_rows=4, max_steps=16,
        schedule=ScheduleConfig(kind="warmup_linear", start_lr=1e-2, end_lr=1e-3, warmup_steps=2),
        data=DataConfig(dataset=dataset, val_rows_per_source=24),
        masking=MaskingConfig(strategy="dnabert"),
        num_workers=2, eval_every=8, checkpoint_every=8, storage_path=str(storage),
        tracking=NO_TRACKING,
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def _reload_val_loss(config: TrainConfig, final_model: str) -> float:
    """Validation loss of the exported Hugging Face model, computed the trainer's way."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    from bsm_ray.train.batches import Masker, batch_tensors, num_targets

    cls = AutoModelForCausalLM if config.objective == "causal" else AutoModelForMaskedLM
    model = cls.from_pretrained(final_model).eval()
    windows = build_windows(config, "val")
    masker = Masker(config) if config.objective == "mlm" else None
    total, count = 0.0, 0
    with torch.no_grad():
        for source in sorted(windows):
            n = min(len(windows[source]), config.data.val_rows_per_source)
            for rank in range(config.num_workers):  # the same micro-batches the workers used
                mine = list(range(rank, n, config.num_workers))
                for i in range(0, len(mine), config.micro_batch_rows):
                    rows = [(source, r) for r in mine[i : i + config.micro_batch_rows]]
                    batch = batch_tensors(config, windows, rows, masker, 0, torch.device("cpu"))
                    targets = num_targets(batch, config.objective)
                    total += float(model(**batch).loss) * targets
                    count += targets
    return total / count


# Causal ZeRO-2 is the streamed 3-source run of tests/test_streaming.py (conftest's
# `streamed_causal_run`, shared); causal ZeRO-3 checkpoints and resumes in
# test_local_process_resume_zero3; MLM ZeRO-2 runs tracked in tests/test_registry.py; a killed
# and resumed worker group is tested on the streamed CM-GEMS run (tests/test_streaming.py).
@pytest.mark.parametrize(("kind", "zero_stage"), [("causal", 2), ("mlm", 3)])
def test_two_workers_train_checkpoint_and_export(kind, zero_stage, dataset, tmp_path,
                                                 ray_instance, request):  # fmt: skip
    if kind == "causal":
        config, result = request.getfixturevalue("streamed_causal_run")
    else:
        config = _mlm(dataset, tmp_path, zero_stage=zero_stage, name=f"{kind}-z{zero_stage}")
        result = launch(config)
    history = read_metrics(result.run_dir)
    initial = next(m for m in history if m["step"] == 0)["val/loss"]
    final = result.metrics["val/loss"]
    # loss falls on the sample corpus
    margin = 0.5 if kind == "causal" else 0.02
    assert final < initial - margin, (initial, final)
    assert result.metrics["step"] == config.max_steps
    assert result.metrics["train/tokens_per_s"] > 0 and 0 < result.metrics["train/mfu"] < 1
    # the checkpoint holds both ranks' ZeRO partitions, JSON trainer state, and the HF model
    ckpt = Path(result.checkpoint)
    names = {p.name for p in (ckpt / "state").iterdir()}
    assert {f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)} <= names
    assert json.loads((ckpt / "trainer_state.json").read_text())["step"] == config.max_steps
    assert (ckpt / "final_model" / "model.safetensors").is_file()
    # the exported model loads without our code and gives the reported validation loss
    assert _reload_val_loss(config, result.final_model) == pytest.approx(final, abs=1e-4)


def _last_per_step(path: Path) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        out[rec["step"]] = rec  # later attempts overwrite earlier ones
    return out


def test_local_process_resume_zero3(dataset, tmp_path, monkeypatch):
    """Without Ray (num_workers 0): a crash after the step-4 checkpoint, then a relaunch with the
    same name, reproduces the uninterrupted run's losses exactly (ZeRO-3 state, RNG, data)."""
    from bsm_ray.train import context

    config = _causal(dataset, tmp_path, num_workers=0, zero_stage=3, max_steps=8,
                     checkpoint_every=4, eval_every=100, trace=True)  # fmt: skip
    launch(replace(config, name="straight"))

    original = context.LocalContext.log

    def crash_at_step_6(self, metrics):
        original(self, metrics)
        if metrics.get("step") == 6:
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(context.LocalContext, "log", crash_at_step_6)
    with pytest.raises(RuntimeError, match="simulated crash"):
        launch(replace(config, name="crashed"))
    monkeypatch.setattr(context.LocalContext, "log", original)
    launch(replace(config, name="crashed"))
    ref = _last_per_step(tmp_path / "straight" / "trace" / "rank0.jsonl")
    got = _last_per_step(tmp_path / "crashed" / "trace" / "rank0.jsonl")
    assert sorted(got) == list(range(1, 9))
    for step in ref:
        assert got[step]["rows"] == ref[step]["rows"]
        assert got[step]["loss"] == pytest.approx(ref[step]["loss"], abs=1e-6)
