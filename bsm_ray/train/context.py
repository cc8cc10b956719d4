"""The small interface the training loop is written against, and its two implementations.

`TrainContext` gives the loop its rank and world size, its device, the token windows of each
source and split, the latest checkpoint to resume from, and a way to report metrics with a
checkpoint. `LocalContext` runs the loop in this process (world size 1, tests and laptops, no
Ray); `RayTrainContext` runs it inside a Ray Train worker.

Imports torch lazily; ray only in `RayTrainContext`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bsm_ray.data.windows import TokenWindows, causal_windows, mlm_windows
from bsm_ray.train.config import TrainConfig


def source_names(config: TrainConfig) -> list[str]:
    return ["genome"] if config.objective == "mlm" else sorted(config.data.mix)


def build_windows(config: TrainConfig, split: str) -> dict[str, TokenWindows]:
    """Token windows of every source of the run, from the prepared dataset."""
    from bsm_ray.errors import BsmRayError

    out = {}
    for source in source_names(config):
        if config.objective == "mlm":
            out[source] = mlm_windows(config.data.dataset, split)
        else:
            out[source] = causal_windows(config.data.dataset, source, split, config.seq_len)
        if split == "train" and len(out[source]) == 0:  # an empty val source is skipped
            raise BsmRayError(
                f"{config.data.dataset}: source {source!r} has no train rows; every source "
                f"of the mix needs some (the dataset's manifest lists what each holds)"
            )
    return out


def append_metrics(run_dir: Path, metrics: dict[str, Any]) -> None:
    """One JSON line per report in <run>/metrics.jsonl (every attempt appends)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps(metrics) + "\n")


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def dataset_name(split: str, source: str) -> str:
    """Name of a Ray Dataset handed to the trainer (no '/': Ray Data uses it in log paths)."""
    return f"{split}-{source}"


def is_local_path(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


class TrainContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_rank0(self) -> bool:
        return self.rank == 0

    def device(self):
        import torch

        return torch.device("cpu")

    def windows(self, split: str) -> dict[str, TokenWindows]:
        raise NotImplementedError

    def latest_checkpoint(self) -> contextlib.AbstractContextManager[Path | None]:
        raise NotImplementedError

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None = None) -> None:
        """Hand metrics (and a checkpoint) to the trainer; every rank calls it at the same step."""
        raise NotImplementedError

    def log(self, metrics: dict[str, Any]) -> None:
        """Record a step's metrics without a trainer round trip (rank 0 writes metrics.jsonl)."""
        if self.rank == 0 and self.run_dir is not None:
            append_metrics(self.run_dir, metrics)

    @property
    def run_dir(self) -> Path | None:
        """A local directory shared by the workers of this run (traces), if storage is local."""
        return None


class LocalContext(TrainContext):
    """Run the loop in this process: world size 1, checkpoints under <storage>/<name>/."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self._run_dir = Path(config.storage_path).resolve() / config.name
        self._ckpt_root = self._run_dir / "checkpoints"
        self.reports: list[dict[str, Any]] = []
        self._init_process_group()

    @staticmethod
    def _init_process_group() -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            return
        with socket.socket() as s:  # a free port for the single-process gloo group
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0",
                          WORLD_SIZE="1", LOCAL_RANK="0")  # fmt: skip
        dist.init_process_group("gloo", rank=0, world_size=1)

    def windows(self, split: str) -> dict[str, TokenWindows]:
        return build_windows(self.config, split)

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        """The run's newest complete checkpoint, its own or one Ray Train wrote (a run that
        moves between Ray workers and this process continues either way)."""
        from bsm_ray.train.checkpointing import latest_local_checkpoint

        yield latest_local_checkpoint(self._run_dir)

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None = None) -> None:
        record = dict(metrics)
        if checkpoint_dir is not None:
            final = self._ckpt_root / f"checkpoint_{int(metrics['step']):08d}"
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():
                shutil.rmtree(final)
            os.replace(checkpoint_dir, final)  # a checkpoint appears whole or not at all
            record["checkpoint"] = str(final)
            for old in sorted(self._ckpt_root.glob("checkpoint_*"))[
                : -self.config.keep_checkpoints
            ]:
                shutil.rmtree(old, ignore_errors=True)
        self.reports.append(record)
        append_metrics(self._run_dir, record)

    def new_checkpoint_dir(self) -> Path:
        self._run_dir.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".ckpt-", dir=self._run_dir))

    @property
    def run_dir(self) -> Path | None:
        return self._run_dir


class RayTrainContext(TrainContext):
    """Inside a Ray Train worker: ranks from Ray, datasets from `get_dataset_shard`."""

    def __init__(self, config: TrainConfig) -> None:
        import ray.train

        self.config = config
        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        self.local_rank = ctx.get_local_rank()
        self._ray_train = ray.train

    def device(self):
        import ray.train.torch

        return ray.train.torch.get_device()

    def windows(self, split: str) -> dict[str, TokenWindows]:
        import ray.data

        # The windows are read once at start-up; per-dataset progress bars would only be noise.
        ray.data.DataContext.get_current().enable_progress_bars = False
        out = {}
        for source in source_names(self.config):
            shard = self._ray_train.get_dataset_shard(dataset_name(split, source))
            parts = list(shard.iter_batches(batch_size=4096, batch_format="numpy"))
            if not parts:  # a source without rows in this split (validation is optional)
                width = 512 if self.config.objective == "mlm" else self.config.seq_len
                empty = np.zeros((0, width), np.int32)
                out[source] = TokenWindows(source, empty, empty.astype(np.int8),
                                           np.zeros(0, np.int64))  # fmt: skip
                continue
            ids = np.concatenate([p["input_ids"] for p in parts])
            mask = np.concatenate([p["attention_mask"] for p in parts])
            rows = np.concatenate([p["row_id"] for p in parts])
            order = np.argsort(rows, kind="stable")  # block order is not guaranteed
            out[source] = TokenWindows(source, ids[order].astype(np.int32),
                                       mask[order].astype(np.int8), rows[order])  # fmt: skip
        return out

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        """Ray Train's latest checkpoint of the run, or a newer one a launch in this process
        wrote into the same (local) run folder."""
        from bsm_ray.train.checkpointing import latest_local_checkpoint, read_trainer_state

        checkpoint = self._ray_train.get_checkpoint()
        local = latest_local_checkpoint(self.run_dir) if self.run_dir is not None else None
        if checkpoint is None:
            yield local
            return
        with checkpoint.as_directory() as directory:
            if local is not None and (int(read_trainer_state(local)["step"])
                                      > int(read_trainer_state(Path(directory))["step"])):
                yield local
            else:
                yield Path(directory)

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None = None) -> None:
        from ray.train import Checkpoint

        self.log(metrics)
        if checkpoint_dir is None:
            self._ray_train.report(metrics)
        else:
            self._ray_train.report(metrics, checkpoint=Checkpoint.from_directory(checkpoint_dir))
            # Ray copied it to the run's storage; the local copy would pile up in /tmp.
            shutil.rmtree(checkpoint_dir, ignore_errors=True)

    def new_checkpoint_dir(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="bsm-ckpt-"))

    @property
    def run_dir(self) -> Path | None:
        if not is_local_path(self.config.storage_path):
            return None
        return Path(self.config.storage_path.removeprefix("file://")).resolve() / self.config.name
