"""A training worker's Ray Data streams (`data.streaming: true`): one `StreamReader` per source,
rows handed out in the mixture plan's order, positions saved with every checkpoint.

Each step every rank computes the same global plan (`MixturePlan.take_sources`), keeps its
slice, and takes from each of its own source streams as many rows as the slice names; the
realized token ratios are therefore those of the plan over all workers. A worker's positions (the
next unconsumed row of each source) go into `streams_rank<r>.json` in each checkpoint, so a
resumed worker streams on from there, reading nothing it consumed before. The positions are per
rank; a resume with another number of workers is refused.

Imports ray (through `bsm_ray.data.pipeline`) when built.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from bsm_ray.data.stream_plan import StreamPosition, Unit, list_units
from bsm_ray.errors import BsmRayError
from bsm_ray.fileio import atomic_write_text
from bsm_ray.train.config import TrainConfig


def stream_units(config: TrainConfig, sources: list[str]) -> dict[str, list[Unit]]:
    """Every source's train units; a source without rows is an error before anything starts."""
    units = {}
    for source in sources:
        units[source] = list_units(config.data.dataset, source, "train", config.seq_len)
        if not units[source]:
            raise BsmRayError(f"{config.data.dataset}: source {source!r} has no train rows to "
                              f"stream; every source of the mix needs some")  # fmt: skip
    return units


class WorkerStreams:
    """This worker's streams of every source of the run."""

    def __init__(self, config: TrainConfig, units: dict[str, list[Unit]], rank: int, world: int,
                 rows_per_step: int, step: int, phase: str | None,
                 positions: dict[str, StreamPosition] | None = None) -> None:  # fmt: skip
        from bsm_ray.data.pipeline import StreamReader, StreamSpec

        self.rank, self.world = rank, world
        mlm = config.objective == "mlm"
        pmi_table = None
        if mlm and config.masking.strategy != "dnabert":
            from bsm_ray.train.batches import resolve_pmi_table

            pmi_table = resolve_pmi_table(config.masking.pmi_table)
        self.readers = {}
        for source, source_units in units.items():
            spec = StreamSpec(
                config.data.dataset, source, "train", seq_len=config.seq_len, seed=config.seed,
                strategy=phase if mlm else None, pmi_table=pmi_table,
                rows_per_step=rows_per_step, max_steps=config.max_steps,
                mask_actors=config.data.mask_actors, cpus=config.data.stream_cpus,
            )  # fmt: skip
            start = (positions or {}).get(source)
            self.readers[source] = StreamReader(spec, rank, world, start=start, base_step=step,
                                                units=source_units)  # fmt: skip

    def rows(self, sources: list[str]) -> dict[str, np.ndarray]:
        """This worker's rows for `sources` (its slice of the step's plan), in that order."""
        taken = {s: self.readers[s].take(n) for s, n in Counter(sources).items()}
        where = {s: [i for i, x in enumerate(sources) if x == s] for s in taken}
        first = next(iter(taken.values()))
        out = {}
        for column in set(first) - {"source"}:
            values = first[column]
            out[column] = np.empty((len(sources), *values.shape[1:]), dtype=values.dtype)
            for s, rows in taken.items():
                out[column][where[s]] = rows[column]
        out["source"] = np.array(sources)
        return out

    def switch(self, strategy: str, step: int) -> None:
        """Mask the rows consumed from `step` on with `strategy` (CM-GEMS phase change)."""
        for reader in self.readers.values():
            reader.restart(strategy=strategy, base_step=step)

    def repeats(self) -> dict[str, int]:
        return {s: r.repeats for s, r in self.readers.items()}

    def save(self, directory: Path) -> None:
        state = {"world_size": self.world,
                 "positions": {s: r.position.as_dict() for s, r in self.readers.items()}}
        atomic_write_text(directory / f"streams_rank{self.rank}.json", json.dumps(state))


def load_positions(directory: Path, rank: int, world: int) -> dict[str, StreamPosition]:
    """This rank's stream positions from a checkpoint."""
    path = directory / f"streams_rank{rank}.json"
    if not path.is_file():
        raise BsmRayError(f"{directory}: no stream positions for rank {rank} (the checkpoint was "
                          f"written without data.streaming, or by fewer workers)")  # fmt: skip
    state = json.loads(path.read_text())
    if int(state["world_size"]) != world:
        raise BsmRayError(f"{directory}: the streams were checkpointed by {state['world_size']} "
                          f"workers; resume with num_workers {state['world_size']}, not {world}")
    return {s: StreamPosition.from_dict(p) for s, p in state["positions"].items()}
