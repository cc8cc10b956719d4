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


def test_the_latest_complete_checkpoint_and_its_world_size(tmp_path):
    import json

    from bsm_ray.train.checkpointing import latest_local_checkpoint, saved_world_size

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
    assert latest_local_checkpoint(tmp_path / "new") is None


def test_elastic_ranges_are_checked_against_the_batch_and_the_lanes():
    from dataclasses import replace

    from bsm_ray.train.config import DataConfig, TrainConfig
    from bsm_ray.train.elastic import round_down

    run = TrainConfig(seq_len=64, global_batch_tokens=16 * 64, micro_batch_rows=4,
                      num_workers=[1, 4])  # fmt: skip
    assert run.worker_range == (1, 4) and run.max_workers == 4
    # 16 rows: 1, 2 and 4 workers take 4-row micro-batches; 3 do not
    assert run.check_world_sizes() == [1, 2, 4]
    assert "16 rows per step do not split into 3 workers" in run.size_problem(3)
    assert [round_down(n, [1, 2, 4]) for n in range(6)] == [0, 1, 2, 2, 4, 4]
    with pytest.raises(ValueError, match="16 rows per step do not split into 3 workers"):
        replace(run, num_workers=3).check_world_sizes()  # a fixed size must fit
    with pytest.raises(ValueError, match=r"num_workers \[3, 3\]|can take none"):
        TrainConfig(seq_len=64, global_batch_tokens=16 * 64, micro_batch_rows=4,
                    num_workers=[5, 7]).check_world_sizes()  # fmt: skip
    streamed = TrainConfig(seq_len=64, global_batch_tokens=12 * 64, micro_batch_rows=2,
                           num_workers=[1, 3], data=DataConfig(streaming=True))  # fmt: skip
    assert streamed.lanes == 3
    # 2 workers would split the batch but not the 3 lanes
    assert "do not split into the 3 stream lanes" in streamed.size_problem(2)
    assert streamed.check_world_sizes() == [1, 3]
    assert TrainConfig(num_workers=[2, 2]).num_workers == 2  # a range of one size is an int
    for wrong in ([2, 1], [0, 2], [1, 2, 3]):
        with pytest.raises(ValueError, match="num_workers"):
            TrainConfig(num_workers=wrong)


def test_the_elastic_policy_picks_the_largest_size_the_run_takes():
    """Ray Train's elastic policy counts the workers the nodes hold; ours rounds that down to a
    size the run takes, and waits below the smallest."""
    from ray.train import ScalingConfig

    from bsm_ray.train.elastic import SizedElasticPolicy

    config = ScalingConfig(num_workers=(2, 8), resources_per_worker={"CPU": 1})
    policy = SizedElasticPolicy(config, [2, 4, 8])
    nodes = {"a": {"CPU": 3.0}, "b": {"CPU": 4.0}}  # room for 7 workers
    assert super(SizedElasticPolicy, policy)._count_possible_workers(nodes) == 7  # Ray's count
    assert policy._count_possible_workers(nodes) == 4
    assert policy._count_possible_workers({"a": {"CPU": 1.0}}) == 0  # below min: it waits
    assert policy._count_possible_workers({"a": {"CPU": 16.0}}) == 8


def test_each_run_converts_a_shared_checkpoint_in_a_folder_of_its_own(tmp_path):
    """Trials of a sweep start from one base checkpoint at once: each converts it in its own
    folder (a shared one had one trial delete what another loaded), and the workers of one
    run share theirs."""
    from bsm_ray.train.universal import universal_folder

    base = tmp_path / "base" / "checkpoint_000001"
    trials = str(tmp_path / "trials")
    a = universal_folder(base, 30, trials, "trial_a")
    assert a == universal_folder(base, 30, trials, "trial_a")  # every worker of the run
    assert a != universal_folder(base, 30, trials, "trial_b")
    assert a != universal_folder(base, 31, trials, "trial_a")
