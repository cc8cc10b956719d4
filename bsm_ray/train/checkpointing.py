"""Checkpoint files: DeepSpeed engine state loaded with safe loaders, trainer state as JSON.

A checkpoint directory holds:
- `state/`: DeepSpeed's own files (model and ZeRO optimizer partitions of every rank), written by
  `engine.save_checkpoint`. They are torch zip files; we load them with
  `torch.load(weights_only=True)`, never full unpickling: `SafeCheckpointEngine` replaces
  DeepSpeed's loader, allowing only the three plain DeepSpeed data types its files contain
  (and getattr only for the members of its ZeRO stage enum, see `enum_member`).
- `trainer_state.json` (rank 0): the step, the data position (mixture plan state), the masking
  schedule state, the config name, the world size that wrote it.
- `rng_rank<r>.json` (every rank): that rank's torch RNG state (dropout), as a list of bytes.
- `final_model/` (end of run, rank 0): the model in Hugging Face format (safetensors) and its
  tokenizer, loadable with `from_pretrained` without our code.

Imports torch and deepspeed lazily (only the training engine uses them).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from bsm_ray.fileio import atomic_write_text

STATE_TAG = "state"
TRAINER_STATE = "trainer_state.json"


def enum_member(cls, name: str):
    """Stands in for `builtins.getattr` when a checkpoint is unpickled: some Python versions
    (Debian's 3.11.2, not 3.11.7) pickle an enum member as getattr(EnumClass, name), so
    DeepSpeed's ZeRO files then hold `getattr(ZeroStageEnum, ...)`. Only a member of an
    allowed enum is returned; any other getattr in a file is refused."""
    import pickle
    from enum import Enum

    from deepspeed.runtime.zero.config import ZeroStageEnum

    allowed = (ZeroStageEnum,)
    if (isinstance(cls, type) and issubclass(cls, Enum) and cls in allowed
            and isinstance(name, str) and name in cls.__members__):  # fmt: skip
        return cls[name]
    raise pickle.UnpicklingError(f"checkpoint asks for getattr({cls!r}, {name!r}): only members "
                                 f"of {[c.__name__ for c in allowed]} are allowed")  # fmt: skip


def safe_globals() -> list:
    """What `torch.load(weights_only=True)` may build from DeepSpeed's files besides tensors:
    three plain DeepSpeed types, and getattr restricted to their enum's members."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, LossScaler, fragment_address, (enum_member, "builtins.getattr")]


def install_safe_loader(engine) -> None:
    """Make `engine.load_checkpoint` read its files with torch.load(weights_only=True)."""
    import torch
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    allowed = safe_globals()

    class SafeCheckpointEngine(TorchCheckpointEngine):
        def load(self, path: str, map_location=None):
            with torch.serialization.safe_globals(allowed):
                return torch.load(path, map_location=map_location, weights_only=True)

    safe = SafeCheckpointEngine(None)
    safe.zipfile_serialization = getattr(engine.checkpoint_engine, "zipfile_serialization", True)
    engine.checkpoint_engine = safe


def save_rng(directory: Path, rank: int) -> None:
    import torch

    state = {"torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state().tolist()
    atomic_write_text(directory / f"rng_rank{rank}.json", json.dumps(state))


def seed_rng(seed: int, step: int, rank: int) -> None:
    """Per-rank RNG (dropout) as a function of (seed, step, rank): what a rank without its own
    saved state (a resume at another world size) starts from."""
    import torch

    torch.manual_seed(int.from_bytes(
        hashlib.sha256(f"{seed}:{step}:{rank}".encode()).digest()[:8], "little"))  # fmt: skip


def saved_world_size(directory: Path) -> int:
    """How many workers wrote the checkpoint in `directory` (one RNG file per rank)."""
    return len(list(Path(directory).glob("rng_rank*.json")))


def is_training_checkpoint(path: str | Path) -> bool:
    """A checkpoint folder of a training run (DeepSpeed state with the optimizer, and the
    trainer state), as opposed to an exported model folder."""
    path = Path(str(path).removeprefix("file://"))
    return (path / TRAINER_STATE).is_file() and (path / STATE_TAG).is_dir()


def latest_local_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run folder (Ray Train's `checkpoint_<time>/` or the
    local context's `checkpoints/checkpoint_<step>/`), or None."""
    found = [d for pattern in ("checkpoint_*", "checkpoints/checkpoint_*")
             for d in Path(run_dir).glob(pattern) if (d / TRAINER_STATE).is_file()]  # fmt: skip
    return max(found, key=lambda d: (int(read_trainer_state(d)["step"]), d.name), default=None)


def load_rng(directory: Path, rank: int) -> bool:
    import torch

    path = directory / f"rng_rank{rank}.json"
    if not path.is_file():
        return False
    state = json.loads(path.read_text())
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8))
    return True


def write_trainer_state(directory: Path, state: dict) -> None:
    atomic_write_text(directory / TRAINER_STATE, json.dumps(state, indent=2))


def read_trainer_state(directory: Path) -> dict:
    return json.loads((directory / TRAINER_STATE).read_text())
