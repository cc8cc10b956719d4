"""Which rows a training worker streams from a source, in which order, and where it resumes:
the pure specification that the Ray Data streams (`bsm_ray.data.pipeline`) carry out.

A source's *canonical rows* are its shards' row groups ("units") in manifest order, each unit's
documents packed into `seq_len` windows with `<eos>` after every document and the last window
padded (causal LM), or one `[CLS] 6-mers [SEP]` row per genome piece (MLM). A row's id is its
index in that order, so a genome row id here equals the row id of the in-memory windows
(`bsm_ray.data.windows`). Unit sizes come from Parquet metadata and the `num_tokens` column:
nothing is tokenized to plan.

Epoch e of a source, for worker `rank` of `world`:
  - the units in a seeded permutation of (seed, source, e);
  - each unit cut into L = ceil(unit rows / (rows / world)) lanes: its rows in a seeded
    permutation of (seed, source, e, unit), lane l taking every L-th from l. A source with a
    single shard still gives every worker its own rows (each lane reads the unit; only lanes
    > 1 duplicate reads);
  - the (unit, lane) parts dealt for even row counts (`deal_parts`), each worker streaming its
    parts in the epoch's unit order.
When a worker's parts run out it starts the next epoch (upsampling, as in BSM round 3); the epoch
number is the source's repeat count on that worker.

A `StreamPosition` (epoch, part, offset, ordinal) names the worker's next unconsumed row. A
stream started there reads only that part and what follows; the part's consumed prefix is
tokenized and dropped, nothing before it is read again. `ordinal` counts the rows this worker
has taken from the source, which fixes the optimizer step of every MLM row (masks depend on it).

Pure module: numpy and pyarrow.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from bsm_ray.ingest.builders import stable_hash
from bsm_ray.ingest.shards import GENOME_KIND, shard_paths


@dataclass(frozen=True)
class Unit:
    """One row group of one shard: `num_rows` canonical rows from row id `first_row`."""

    path: str
    row_group: int
    first_row: int
    num_rows: int


@dataclass(frozen=True)
class Part:
    """The rows of `unit` (an index into the unit list) in lane `lane` of `lanes`, in epoch
    `epoch`; `index` is its place in the worker's parts of that epoch."""

    unit: int
    lane: int
    lanes: int
    epoch: int
    index: int


@dataclass
class StreamPosition:
    """The next unconsumed row of one worker's stream of one source."""

    epoch: int = 0
    part: int = 0
    offset: int = 0
    ordinal: int = 0

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> StreamPosition:
        return cls(**{k: int(data[k]) for k in ("epoch", "part", "offset", "ordinal")})


def windows_for_tokens(num_tokens: np.ndarray, seq_len: int) -> int:
    """Packed windows of documents with these token counts (one `<eos>` after each)."""
    return -(-int((np.asarray(num_tokens, dtype=np.int64) + 1).sum()) // seq_len)


def list_units(dataset: str | Path, kind: str, split: str, seq_len: int) -> list[Unit]:
    """The units of one source and split, in canonical order (`seq_len` is ignored for the
    genome kind: one row per piece)."""
    units: list[Unit] = []
    first = 0
    for path in shard_paths(dataset, kind, split):
        pf = pq.ParquetFile(path)
        for rg in range(pf.metadata.num_row_groups):
            if kind == GENOME_KIND:
                n = pf.metadata.row_group(rg).num_rows
            else:
                tokens = pf.read_row_group(rg, columns=["num_tokens"])["num_tokens"].to_numpy()
                n = windows_for_tokens(tokens, seq_len) if len(tokens) else 0
            if n:
                units.append(Unit(str(path), rg, first, n))
                first += n
    return units


def _rng(seed: int, source: str, *key: int) -> np.random.Generator:
    return np.random.default_rng([seed, stable_hash(source), *key])


def worker_parts(units: list[Unit], source: str, epoch: int, rank: int, world: int,
                 seed: int) -> list[Part]:  # fmt: skip
    """The parts worker `rank` streams in `epoch`, in order."""
    return deal_parts(units, source, epoch, world, seed)[rank]


def deal_parts(units: list[Unit], source: str, epoch: int, world: int,
               seed: int) -> list[list[Part]]:  # fmt: skip
    """Every worker's parts of `epoch`: units cut into lanes of at most a worker's share of the
    rows, dealt so that the workers' row counts are as even as the parts allow (largest part
    first to the worker with the fewest rows, ties to the lower rank: the greedy LPT rule, at
    most a third above the best split), each worker's parts streamed in the epoch's seeded
    unit order. Row groups of very different sizes (one per input file) would otherwise leave
    one worker repeating its rows while another still has unseen ones."""
    if not units:
        raise ValueError(f"source {source!r} has no rows to stream")
    order = _rng(seed, source, epoch).permutation(len(units))
    share = max(1, -(-sum(u.num_rows for u in units) // world))
    cut = []  # (position in the epoch's order, unit, lane, lanes, rows)
    for u in order:
        lanes = max(1, -(-units[int(u)].num_rows // share))
        for lane in range(lanes):
            size = part_size(units[int(u)], Part(int(u), lane, lanes, epoch, 0))
            cut.append((len(cut), int(u), lane, lanes, size))
    load, dealt = [0] * world, [[] for _ in range(world)]
    for position, u, lane, lanes, size in sorted(cut, key=lambda c: (-c[4], c[0])):
        worker = min(range(world), key=lambda w: (load[w], w))
        load[worker] += size
        dealt[worker].append((position, u, lane, lanes))
    return [[Part(u, lane, lanes, epoch, k) for k, (_, u, lane, lanes) in enumerate(sorted(mine))]
            for mine in dealt]  # fmt: skip


def part_rows(unit: Unit, part: Part, seed: int, source: str) -> np.ndarray:
    """Within-unit row indices of `part`, in stream order."""
    perm = _rng(seed, source, part.epoch, part.unit).permutation(unit.num_rows)
    return perm[part.lane :: part.lanes]


def part_size(unit: Unit, part: Part) -> int:
    """Rows in `part` (the length of `part_rows`, without the permutation)."""
    return max(0, -(-(unit.num_rows - part.lane) // part.lanes))


@dataclass(frozen=True)
class PlannedPart:
    """A part as a stream from some position reads it: `skip` consumed rows dropped, `size`
    rows left, the first of them the worker's `first_ordinal`-th row of the source."""

    part: Part
    skip: int
    size: int
    first_ordinal: int


def walk_parts(units: list[Unit], source: str, seed: int, rank: int, world: int,
               start: StreamPosition) -> Iterator[list[PlannedPart]]:  # fmt: skip
    """Worker `rank`'s parts from `start` on, one list per epoch, without end; an epoch that
    gives the worker no rows at all is an error."""
    epoch, ordinal = start.epoch, start.ordinal
    while True:
        parts = worker_parts(units, source, epoch, rank, world, seed)
        first = start.part if epoch == start.epoch else 0
        planned, epoch_start = [], ordinal
        for part in parts[first:]:
            skip = start.offset if (epoch == start.epoch and part.index == start.part) else 0
            size = max(0, part_size(units[part.unit], part) - skip)
            planned.append(PlannedPart(part, skip, size, ordinal))
            ordinal += size
        if epoch > start.epoch and ordinal == epoch_start:
            raise ValueError(f"source {source!r} gives worker {rank} of {world} no rows")
        yield planned
        epoch += 1


def expected_row_ids(units: list[Unit], source: str, seed: int, rank: int, world: int,
                     count: int, start: StreamPosition | None = None) -> list[int]:  # fmt: skip
    """The canonical ids of the next `count` rows worker `rank` streams from `start`: what the
    Ray Data stream must deliver (tests compare the two)."""
    out: list[int] = []
    for epoch in walk_parts(units, source, seed, rank, world, start or StreamPosition()):
        for p in epoch:
            unit = units[p.part.unit]
            rows = part_rows(unit, p.part, seed, source)[p.skip :]
            out.extend(int(unit.first_row + r) for r in rows[: count - len(out)])
            if len(out) >= count:
                return out
