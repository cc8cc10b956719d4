"""Launch a training run: in this process (`num_workers: 0`) or as a Ray Train `TorchTrainer`.

With Ray: one Ray Dataset of token windows per source and split is handed to the trainer (each
worker reads all rows and takes its slice of the global plan, so `datasets_to_split=[]`); with
`data.streaming` only the validation windows are, and each worker streams its own train rows
(bsm_ray.train.streaming);
`ScalingConfig` from the config (`num_workers: [min, max]` selects Ray Train's elastic
policy); `RunConfig(name, storage_path)` with `FailureConfig` and `CheckpointConfig`. A fresh
launch with the same name and storage resumes from the latest checkpoint (Ray Train V2), at any
worker count (`bsm_ray.train.universal`), and a failed worker group restarts from it, up to
`max_failures`, with as many workers as the cluster has then when the run is elastic.

Imports ray only when launching with workers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bsm_ray.config import from_dict, to_dict
from bsm_ray.log import get_logger
from bsm_ray.storage import require_durable
from bsm_ray.tracking.config import resolve_tracking_uri
from bsm_ray.train.config import TrainConfig
from bsm_ray.train.context import (
    LocalContext,
    RayTrainContext,
    build_windows,
    dataset_name,
    is_local_path,
)
from bsm_ray.train.loop import train_loop

logger = get_logger(__name__)


@dataclass
class TrainResult:
    metrics: dict[str, Any]
    checkpoint: str | None  # directory (local) or URI of the final checkpoint
    run_dir: str
    tracking: dict[str, Any] = field(default_factory=dict)  # run id, registered version, gaps

    @property
    def final_model(self) -> str | None:
        return None if self.checkpoint is None else f"{self.checkpoint}/final_model"


def ensure_dataset(config: TrainConfig) -> None:
    """Prepare the sample dataset when the run points at the default path and it is missing."""
    from bsm_ray.errors import BsmRayError
    from bsm_ray.ingest.prepare import PrepareConfig, prepare_dataset

    if (Path(config.data.dataset) / "manifest.json").is_file():
        return
    if config.data.dataset != "data/sample":
        raise BsmRayError(f"{config.data.dataset}: no prepared dataset (run jobs/prepare_data.py)")
    prepare_dataset(PrepareConfig(output_dir=config.data.dataset, progress=False))


def connect_ray(log_to_driver: bool = True) -> None:
    """Join the cluster under `ray job submit` (RAY_ADDRESS), else start a local instance with
    more logical CPUs than cores so Ray Data never starves behind the train workers."""
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    # RAY_ADDRESS=local starts a new local instance too (never joins one found on the machine)
    local = not address or address == "local"
    kwargs = {"num_cpus": max(4, (os.cpu_count() or 2) * 2)} if local else {}
    ray.init(address=address, log_to_driver=log_to_driver, **kwargs)


def _worker_entry(config_dict: dict) -> None:
    config = from_dict(TrainConfig, config_dict)
    train_loop(config, RayTrainContext(config))


def _ray_datasets(config: TrainConfig) -> dict[str, Any]:
    import ray.data
    from ray.data.extensions import ArrowTensorArray

    # The windows are small, in-memory datasets read once per worker: no progress bars.
    ray.data.DataContext.get_current().enable_progress_bars = False
    datasets = {}
    # Streaming runs read the train split in each worker (bsm_ray.train.streaming); the small
    # validation windows still travel as in-memory datasets.
    for split in ("val",) if config.data.streaming else ("train", "val"):
        for source, win in build_windows(config, split).items():
            import pyarrow as pa

            table = pa.table({
                "input_ids": ArrowTensorArray.from_numpy(win.input_ids),
                "attention_mask": ArrowTensorArray.from_numpy(win.attention_mask),
                "row_id": pa.array(win.row_ids),
            })  # fmt: skip
            datasets[dataset_name(split, source)] = ray.data.from_arrow(table)
    return datasets


def launch(config: TrainConfig, callbacks: list | None = None) -> TrainResult:
    """Run the training described by `config`; return its final metrics and checkpoint.

    `callbacks` are Ray Train callbacks (e.g. Tune's `TuneReportCallback` in a sweep trial).
    With tracking on and no `tracking.run_id`, the MLflow run is created here (or continued,
    for a relaunch of the same run), and at the end its files are attached and its final model
    registered (bsm_ray.train.tracked)."""
    ensure_dataset(config)
    storage = config.storage_path
    if is_local_path(storage):
        storage = str(Path(storage.removeprefix("file://")).resolve())
        config = from_dict(TrainConfig, {**to_dict(config), "storage_path": storage})
    # Results go where they outlive a Ray job's temporary working dir (bsm_ray.storage).
    require_durable({"storage_path": storage}, resolve_tracking_uri(config.tracking.uri)
                    if config.tracking.enabled else None)  # fmt: skip
    if config.data.streaming:  # workers read the shards themselves, from their own directory
        data = {**to_dict(config.data), "dataset": str(Path(config.data.dataset).resolve())}
        config = from_dict(TrainConfig, {**to_dict(config), "data": data})
    run_dir = f"{storage}/{config.name}"
    owns_run = config.tracking.enabled and not config.tracking.run_id
    if owns_run:
        from bsm_ray.train.tracked import start_run

        config = start_run(config, run_dir)
        owns_run = config.tracking.enabled
    try:
        result = _train(config, run_dir, callbacks)
    except BaseException:
        if owns_run:
            from bsm_ray.train.tracked import fail_run

            fail_run(config)
        raise
    if owns_run:
        from bsm_ray.train.tracked import finish_run

        result.tracking = finish_run(config, result)
    return result


def _run_lanes(config: TrainConfig, run_dir: str) -> TrainConfig:
    """A streaming run's lanes are fixed at its start: a relaunch without `data.stream_lanes`
    takes them from its latest checkpoint (the workers do the same where storage is remote)."""
    if not config.data.streaming or config.data.stream_lanes or not is_local_path(run_dir):
        return config
    from bsm_ray.train.checkpointing import latest_local_checkpoint, read_trainer_state

    latest = latest_local_checkpoint(Path(run_dir.removeprefix("file://")))
    lanes = read_trainer_state(latest).get("lanes") if latest is not None else None
    if not lanes:
        return config
    data = {**to_dict(config.data), "stream_lanes": int(lanes)}
    return from_dict(TrainConfig, {**to_dict(config), "data": data})


def _train(config: TrainConfig, run_dir: str, callbacks: list | None) -> TrainResult:
    config = _run_lanes(config, run_dir)
    try:  # a size the batch cannot take fails here, not in every worker
        sizes = config.check_world_sizes()
    except ValueError as exc:
        from bsm_ray.errors import ConfigError

        raise ConfigError(str(exc)) from None
    low, high = config.worker_range
    if low != high:
        skipped = sorted(set(range(low, high + 1)) - set(sizes))
        logger.info(f"elastic run: {low} to {high} workers, at the sizes the global batch takes "
                    f"({', '.join(map(str, sizes))})"
                    + (f"; a cluster with room for {skipped} runs the next size down"
                       if skipped else ""))  # fmt: skip
    if config.num_workers == 0:
        if config.data.streaming:
            connect_ray()
        ctx = LocalContext(config)
        metrics = train_loop(config, ctx)
        checkpoint = next((r["checkpoint"] for r in reversed(ctx.reports) if "checkpoint" in r),
                          None)  # fmt: skip
        return TrainResult(metrics, checkpoint, run_dir)

    # The Train controller polls workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by
    # default) and a worker's report waits for that poll; poll faster unless set by the user.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig

    from bsm_ray.train.elastic import ElasticTorchTrainer

    connect_ray()
    if config.data.streaming:  # a source without rows fails here, not in every worker
        from bsm_ray.train.context import source_names
        from bsm_ray.train.streaming import stream_units

        stream_units(config, source_names(config))
    trainer = ElasticTorchTrainer(
        _worker_entry, sizes=sizes,
        train_loop_config=to_dict(config),
        scaling_config=ScalingConfig(
            num_workers=(config.num_workers if isinstance(config.num_workers, int)
                         else tuple(config.worker_range)),
            use_gpu=config.use_gpu,
            resources_per_worker={"CPU": config.cpus_per_worker, **config.worker_resources},
            elastic_resize_monitor_interval_s=config.elastic_resize_interval_s,
        ),
        run_config=RunConfig(
            name=config.name, storage_path=config.storage_path,
            failure_config=FailureConfig(max_failures=config.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=config.keep_checkpoints),
            callbacks=callbacks,
        ),
        datasets=_ray_datasets(config),
        dataset_config=DataConfig(datasets_to_split=[]),
    )  # fmt: skip
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    checkpoint = result.checkpoint.path if result.checkpoint is not None else None
    return TrainResult(dict(result.metrics or {}), checkpoint, run_dir)
