"""Register a model (an export, a checkpoint or a run's newest checkpoint) in the MLflow registry.

    python jobs/register_model.py --set path=runs/bsm-round1                 # newest checkpoint
    python jobs/register_model.py --set path=runs/bsm-round1/checkpoint_X --set round=1
    python jobs/register_model.py --set path=/models/my_export --set name=bsm-causal

A checkpoint without a Hugging Face export is exported first (DeepSpeed ZeRO state -> fp32 ->
safetensors, in <checkpoint>/export). Training runs register their final model themselves;
this is for on-demand exports and for registering later what an unreachable server missed.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from bsm_ray.cli import run_job  # noqa: E402
from bsm_ray.tracking.config import TrackingConfig  # noqa: E402


@dataclass
class RegisterConfig:
    """What to register, under which name, with which lineage."""

    path: str = ""
    """A HF model folder, a training checkpoint, or a run folder (its newest checkpoint)."""
    name: str | None = None
    """Registered model; None: by the checkpoint's model preset (bsm-causal, dnabert, logo)."""
    run_id: str | None = None
    """Attach to this training run (its `model/` artifact); None: a `register` run is made."""
    round: int | None = None
    init_from: str | None = None
    """The weights training started from (finds the parent version by content)."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


def main(config: RegisterConfig) -> None:
    import json

    from bsm_ray.errors import ConfigError
    from bsm_ray.tracking.registry import register_model, registered_name
    from bsm_ray.train.export import find_model_dir

    if not config.path:
        raise ConfigError("set path=<model folder, checkpoint or run folder>")
    model_dir = find_model_dir(config.path)
    name = config.name
    tags = {"bsm_ray.round": str(config.round) if config.round else "none"}
    for info in (model_dir / "bsm_ray_export.json", model_dir.parent / "trainer_state.json"):
        if info.is_file():  # an on-demand export, or a run's final_model/ in its checkpoint
            data = json.loads(info.read_text())
            tags.update({"bsm_ray.checkpoint": data.get("checkpoint", str(model_dir.parent)),
                         "bsm_ray.step": data["step"]})
            name = name or registered_name(data["model"])
            break
    if name is None:
        raise ConfigError(f"{model_dir}: set name=<registered model> (the folder does not say "
                          f"which preset it is)")  # fmt: skip
    version = register_model(config.tracking, model_dir, name=name, run_id=config.run_id,
                             tags=tags, init_from=config.init_from,
                             description=f"registered from {model_dir}")  # fmt: skip
    print(f"registered {version.uri} from {model_dir} (parent {version.parent or 'none'})")


if __name__ == "__main__":
    sys.exit(run_job(main, RegisterConfig, __doc__.splitlines()[0]))
