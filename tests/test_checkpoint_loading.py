"""DeepSpeed's checkpoint files load with torch.load(weights_only=True) and our allowlist.

Debian's Python 3.11.2 pickles an enum member as getattr(EnumClass, name) (3.11.7 does not),
so ZeRO optimizer files written there hold getattr(ZeroStageEnum, ...): a resume on such a
machine failed with "Unsupported global: GLOBAL getattr". The pickles here are written that
way whatever Python runs the test.
"""

from __future__ import annotations

import os
import pickle

import pytest


class _ByGetattr:
    """Pickles as getattr(cls, name), as those Python versions pickle an enum member."""

    def __init__(self, cls, name: str) -> None:
        self.cls, self.name = cls, name

    def __reduce__(self):
        return (getattr, (self.cls, self.name))


def _load(path):
    import torch

    from bsm_ray.train.checkpointing import safe_globals

    with torch.serialization.safe_globals(safe_globals()):
        return torch.load(path, weights_only=True)


def test_an_enum_member_pickled_through_getattr_loads(tmp_path):
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import torch
    from deepspeed.runtime.zero.config import ZeroStageEnum

    path = tmp_path / "optim_states.pt"
    torch.save({"zero_stage": _ByGetattr(ZeroStageEnum, "gradients"), "w": torch.ones(3)}, path)
    state = _load(path)
    assert state["zero_stage"] is ZeroStageEnum.gradients
    assert torch.equal(state["w"], torch.ones(3))


@pytest.mark.parametrize("target", ["method", "not_a_member", "other_enum"])
def test_any_other_getattr_in_a_checkpoint_is_refused(tmp_path, target):
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import enum

    import torch
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    cls, name = {"method": (LossScaler, "__init__"), "not_a_member": (ZeroStageEnum, "mro"),
                 "other_enum": (enum.Enum, "_missing_")}[target]  # fmt: skip
    path = tmp_path / "bad.pt"
    torch.save({"x": _ByGetattr(cls, name)}, path)
    with pytest.raises(pickle.UnpicklingError):
        _load(path)


def test_a_relaunch_with_another_worker_count_is_refused_before_it_starts(tmp_path):
    import json

    from bsm_ray.errors import ConfigError
    from bsm_ray.train.checkpointing import latest_local_checkpoint, saved_world_size
    from bsm_ray.train.config import TrainConfig
    from bsm_ray.train.launcher import check_resume_world_size

    run = tmp_path / "bsm"
    for step, ranks in ((4, 2), (8, 2)):  # the local context's layout
        d = run / "checkpoints" / f"checkpoint_{step:08d}"
        d.mkdir(parents=True)
        (d / "trainer_state.json").write_text(json.dumps({"step": step}))
        for r in range(ranks):
            (d / f"rng_rank{r}.json").write_text("[]")
    (run / "checkpoints" / "checkpoint_00000012").mkdir()  # incomplete: no trainer state
    latest = latest_local_checkpoint(run)
    assert latest.name == "checkpoint_00000008" and saved_world_size(latest) == 2
    check_resume_world_size(TrainConfig(name="bsm", num_workers=2), str(run))  # same: fine
    with pytest.raises(ConfigError, match=r"checkpointed by 2 worker\(s\) and this launch has 1"):
        check_resume_world_size(TrainConfig(name="bsm", num_workers=0), str(run))
    check_resume_world_size(TrainConfig(name="new", num_workers=1), str(tmp_path / "new"))
