"""A training worker's Ray Data streams (`data.streaming: true`): one `StreamReader` per source,
rows handed out in the mixture plan's order, positions saved with every checkpoint.

Each step every rank computes the same global plan (`MixturePlan.take_sources`), keeps its
slice, and takes from each of its own source streams as many rows as the slice names; the
realized token ratios are therefore those of the plan over all workers. The streams are the
run's `lanes` (fixed for the run, whatever its world size; `WorkerStreams`), and each lane's
positions (the next unconsumed row of each source) go into `streams_lane<v>.json` in each
checkpoint, so a resumed group of any size that divides the lanes streams on from there, reading
nothing consumed before, and every global step takes the rows it would have taken uninterrupted.

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


LanePositions = dict[int, dict[str, StreamPosition]]
"""lane -> source -> the lane's next unconsumed row of that source."""


def my_lanes(lanes: int, rank: int, world: int) -> range:
    """The lanes worker `rank` of `world` streams: a contiguous block of lanes / world."""
    if lanes % world:
        raise BsmRayError(f"{world} workers do not divide the run's {lanes} stream lanes "
                          f"(data.stream_lanes)")  # fmt: skip
    per = lanes // world
    return range(rank * per, (rank + 1) * per)


class WorkerStreams:
    """This worker's streams: one `StreamReader` per (lane, source) of its lanes.

    A run has `lanes` streams per source, fixed for the whole run (`config.lanes`): lane v reads
    the parts `stream_plan.worker_parts(..., rank=v, world=lanes)` deals it. Every step's slice
    of the global plan is cut into `lanes` equal blocks, block v taken from lane v, and worker
    `rank` of `world` holds the lanes `my_lanes(lanes, rank, world)`, whose blocks are exactly
    its slice. So the rows of every global step are the same at any world size that divides
    `lanes`, and a checkpoint (one position per lane and source) resumes at any of them; with
    world == lanes (the default for a fixed-size run) each worker streams one lane."""

    def __init__(self, config: TrainConfig, units: dict[str, list[Unit]], rank: int, world: int,
                 rows_per_step: int, step: int, phase: str | None,
                 positions: LanePositions | None = None,
                 lanes: int | None = None) -> None:  # fmt: skip
        from bsm_ray.data.pipeline import StreamReader, StreamSpec

        self.rank, self.world, self.lanes = rank, world, lanes or config.lanes
        self.mine = my_lanes(self.lanes, rank, world)
        if rows_per_step % len(self.mine):
            raise BsmRayError(f"{rows_per_step} rows per worker and step do not split into "
                              f"{len(self.mine)} lanes")  # fmt: skip
        self.lane_rows = rows_per_step // len(self.mine)
        mlm = config.objective == "mlm"
        pmi_table = None
        if mlm and config.masking.strategy != "dnabert":
            from bsm_ray.train.batches import resolve_pmi_table

            pmi_table = resolve_pmi_table(config.masking.pmi_table)
        self.readers: dict[int, dict] = {}
        for lane in self.mine:
            self.readers[lane] = {}
            for source, source_units in units.items():
                spec = StreamSpec(
                    config.data.dataset, source, "train", seq_len=config.seq_len,
                    seed=config.seed, strategy=phase if mlm else None, pmi_table=pmi_table,
                    rows_per_step=self.lane_rows, max_steps=config.max_steps,
                    mask_actors=config.data.mask_actors, cpus=config.data.stream_cpus,
                )  # fmt: skip
                start = (positions or {}).get(lane, {}).get(source)
                self.readers[lane][source] = StreamReader(spec, lane, self.lanes, start=start,
                                                          base_step=step,
                                                          units=source_units)  # fmt: skip

    def rows(self, sources: list[str]) -> dict[str, np.ndarray]:
        """This worker's rows for `sources` (its slice of the step's plan), in that order: block
        i of `lane_rows` from the i-th of its lanes."""
        blocks = [self._lane_rows(lane, list(sources[i * self.lane_rows:
                                                     (i + 1) * self.lane_rows]))
                  for i, lane in enumerate(self.mine)]  # fmt: skip
        if len(blocks) == 1:
            return blocks[0]
        return {c: np.concatenate([b[c] for b in blocks]) for c in blocks[0]}

    def _lane_rows(self, lane: int, sources: list[str]) -> dict[str, np.ndarray]:
        readers = self.readers[lane]
        taken = {s: readers[s].take(n) for s, n in Counter(sources).items()}
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
        for readers in self.readers.values():
            for reader in readers.values():
                reader.restart(strategy=strategy, base_step=step)

    def repeats(self) -> dict[str, int]:
        """Epochs finished per source (the most of this worker's lanes)."""
        sources = next(iter(self.readers.values()))
        return {s: max(self.readers[lane][s].repeats for lane in self.mine) for s in sources}

    def save(self, directory: Path) -> None:
        """One `streams_lane<v>.json` per lane of this worker: the next unconsumed row of each
        source in that lane."""
        for lane in self.mine:
            state = {"lanes": self.lanes, "positions": {
                s: r.position.as_dict() for s, r in self.readers[lane].items()}}  # fmt: skip
            atomic_write_text(directory / f"streams_lane{lane}.json", json.dumps(state))


def load_positions(directory: Path, lanes: int, rank: int,
                   world: int) -> LanePositions:  # fmt: skip
    """The stream positions of worker `rank`'s lanes from a checkpoint (written by any world
    size: a checkpoint holds every lane). Checkpoints from before lanes (`streams_rank<r>.json`,
    one stream per worker) read as lanes = their world size."""
    out = {}
    for lane in my_lanes(lanes, rank, world):
        path = directory / f"streams_lane{lane}.json"
        legacy = directory / f"streams_rank{lane}.json"
        if not path.is_file() and legacy.is_file():
            path = legacy
        if not path.is_file():
            raise BsmRayError(f"{directory}: no stream positions for lane {lane} (the checkpoint "
                              f"was written without data.streaming)")  # fmt: skip
        state = json.loads(path.read_text())
        saved = int(state.get("lanes", state.get("world_size", 0)))
        if saved != lanes:
            raise BsmRayError(f"{path}: the run streamed {saved} lanes and this launch has "
                              f"{lanes}; the lanes are fixed for a run (data.stream_lanes: "
                              f"{saved})")  # fmt: skip
        out[lane] = {s: StreamPosition.from_dict(p) for s, p in state["positions"].items()}
    return out
