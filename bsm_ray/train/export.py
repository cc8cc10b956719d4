"""Hugging Face exports of trained models: at the end of a run, and on demand from any checkpoint.

An export is a folder `AutoModelForCausalLM` / `AutoModelForMaskedLM` and `AutoTokenizer` load
without our code: `config.json`, `model.safetensors`, the tokenizer files. It is written to a
temporary folder beside the target and renamed into place, so a crash never leaves half an
export where a good one was.

On demand (`export_checkpoint`): the fp32 weights are rebuilt from a DeepSpeed checkpoint's
ZeRO partitions (any stage) with DeepSpeed's own `zero_to_fp32`, its `torch.load` calls made
safe (`weights_only=True`, only DeepSpeed's three plain data types allowed).

Imports torch, transformers and deepspeed lazily.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bsm_ray.errors import BsmRayError
from bsm_ray.models import get_preset


def save_hf(model, model_preset: str, directory: Path) -> Path:
    """Write `model` and its tokenizer to `directory` atomically (safetensors)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if get_preset(model_preset).family == "bsm":
            from bsm_ray.tokenizers import BsmCharTokenizer

            BsmCharTokenizer().save_pretrained(tmp)
        else:
            from bsm_ray.tokenizers import KmerTokenizer

            KmerTokenizer(6).save_pretrained(tmp)
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def load_hf(directory: str | Path, **kwargs):
    """The exported model (causal or masked LM, by its config), in eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

    config = AutoConfig.from_pretrained(directory)
    cls = AutoModelForMaskedLM if config.model_type == "bert" else AutoModelForCausalLM
    return cls.from_pretrained(directory, **kwargs).eval()


def probe_logits(model, input_ids, attention_mask):
    """Logits of `model` on one batch, without dropout or gradients (float32 for comparison)."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(input_ids=input_ids, attention_mask=attention_mask).logits
    finally:
        model.train(was_training)
    return out.float()


def max_logit_diff(reference, directory: Path, input_ids, attention_mask, dtype) -> float:
    """Largest |logit| difference between `reference` logits and the export in `directory`,
    loaded in `dtype` on the probe's device."""
    model = load_hf(directory, dtype=dtype).to(input_ids.device)
    got = probe_logits(model, input_ids, attention_mask)
    return float((got - reference).abs().max())


@contextlib.contextmanager
def _safe_torch_load() -> Iterator[None]:
    """Make DeepSpeed's `zero_to_fp32` read its files with `torch.load(weights_only=True)`."""
    import torch
    from deepspeed.utils import zero_to_fp32

    from bsm_ray.train.checkpointing import safe_globals

    real_load = torch.load
    allowed = safe_globals()

    def safe_load(f, *args, **kwargs):
        kwargs["weights_only"] = True
        with torch.serialization.safe_globals(allowed):
            return real_load(f, *args, **kwargs)

    zero_to_fp32.torch.load = safe_load
    try:
        yield
    finally:
        zero_to_fp32.torch.load = real_load


def export_checkpoint(checkpoint: str | Path, out: str | Path | None = None) -> Path:
    """Export a training checkpoint (DeepSpeed state + trainer_state.json) to a HF folder.

    `out` defaults to `<checkpoint>/export`. Returns the folder."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from bsm_ray.models import build_model
    from bsm_ray.train.checkpointing import STATE_TAG, TRAINER_STATE, read_trainer_state

    checkpoint = Path(checkpoint)
    if not (checkpoint / TRAINER_STATE).is_file() or not (checkpoint / STATE_TAG).is_dir():
        raise BsmRayError(f"{checkpoint}: not a training checkpoint (expected {TRAINER_STATE} "
                          f"and {STATE_TAG}/)")  # fmt: skip
    state = read_trainer_state(checkpoint)
    preset = get_preset(state["model"])
    with _safe_torch_load(), open(os.devnull, "w") as devnull, \
            contextlib.redirect_stdout(devnull):  # zero_to_fp32 prints every tensor
        weights = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint), tag=STATE_TAG)
    model = build_model(preset)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = {"lm_head.weight", "cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}
    if unexpected or set(missing) - tied:
        raise BsmRayError(f"{checkpoint}: weights do not fit preset {preset.name} "
                          f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    directory = Path(out) if out is not None else checkpoint / "export"
    save_hf(model, preset.name, directory)
    (directory / "bsm_ray_export.json").write_text(json.dumps(
        {"checkpoint": str(checkpoint), "step": state.get("step"), "name": state.get("name"),
         "model": preset.name}, indent=2))  # fmt: skip
    return directory


def find_model_dir(path: str | Path) -> Path:
    """A HF model folder from a model folder, a checkpoint (its final_model/ or an on-demand
    export of it), or a run folder (its newest checkpoint)."""
    p = Path(path).expanduser().resolve()
    if (p / "config.json").is_file():
        return p
    if (p / "final_model" / "config.json").is_file():
        return p / "final_model"
    from bsm_ray.train.checkpointing import TRAINER_STATE

    if (p / TRAINER_STATE).is_file():
        return export_checkpoint(p)
    checkpoints = sorted(p.glob("checkpoint*")) + sorted(p.glob("checkpoints/checkpoint_*"))
    checkpoints = [c for c in checkpoints if (c / "final_model" / "config.json").is_file()
                   or (c / TRAINER_STATE).is_file()]  # fmt: skip
    if checkpoints:  # the newest (Ray Train names them by time, the local loop by step)
        return find_model_dir(checkpoints[-1])
    raise BsmRayError(f"{path}: no model there (expected a Hugging Face model folder, a "
                      f"checkpoint, or a run folder with checkpoints)")  # fmt: skip
