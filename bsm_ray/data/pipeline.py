"""Ray Data streams of training rows: Parquet row groups -> tokenize and pack (tasks) -> mask
(an actor pool, MLM) -> a training worker.

    reader = StreamReader(StreamSpec("data/sample", "web", seq_len=256), rank=0, world=2)
    batch = reader.take(16)            # 16 rows of this worker's stream, in spec order
    reader.position                    # the next unconsumed row: save it with the checkpoint

What each worker streams, in which order, is `bsm_ray.data.stream_plan` (a pure spec the tests
compare against). This module carries it out:

- A dataset is built from part descriptors (`ray.data.from_items`, one block each), so parts are
  read, tokenized and packed by parallel tasks, with `preserve_order` keeping stream order.
- `read_part` reads one row group's columns with pyarrow: causal sources are tokenized with the
  BSM character tokenizer and packed into windows with `<eos>` after every document (the last
  window padded, no token lost); genome pieces become `[CLS] 6-mers [SEP]` rows (only the part's
  own rows are tokenized). A unit whose packing disagrees with its shard's `num_tokens` is an
  error naming the file and row group.
- MLM rows are masked by `StreamMasker` actors, each loading the NPMI rank table once. A row's
  mask is `apply_mask(strategy, row, seed, row id, step)` with the step at which the worker will
  consume it (fixed by its ordinal: a worker takes `rows_per_step` rows per step), so a streamed
  mask equals the in-memory trainer's mask for the same row and step. CM-Step picks the strategy
  per step inside the actor; CM-GEMS restarts the stream in the new phase at the switch
  (`StreamReader.restart`).
- Every row carries its source, row id, epoch, part, offset and ordinal; MLM rows also their
  strategy and step.

This module is the only Ray Data code (ARCHITECTURE.md); it imports ray at module level and is
imported only by callers that stream.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pyarrow.parquet as pq
import ray.data

from bsm_ray.data.stream_plan import (
    Part,
    StreamPosition,
    Unit,
    list_units,
    part_rows,
    walk_parts,
)
from bsm_ray.ingest.shards import GENOME_KIND

MLM_ROW_LEN = 512


@dataclass(frozen=True)
class StreamSpec:
    """One source's stream: where it is, how rows are made, how MLM rows are masked."""

    dataset: str
    source: str
    split: str = "train"
    seq_len: int = 256
    """Causal window length (the genome kind always makes 512-position k-mer rows)."""
    seed: int = 0
    strategy: str | None = None
    """MLM masking: dnabert, genemask, global or cm_step; None leaves rows unmasked."""
    pmi_table: str | None = None
    rows_per_step: int = 1
    """Rows of this source the worker takes per optimizer step (fixes each MLM row's step)."""
    max_steps: int = 0
    """CM-Step's max_steps."""
    mask_actors: int = 1
    cpus: float = 1.0
    """CPUs of each read task and masking actor."""
    rows_per_dataset: int = 2048
    """A dataset runs to the end of an epoch, and on through further epochs until it holds at
    least this many rows (small sources would otherwise start a dataset every few steps). Ray
    Data executes a dataset ahead of the consumer, so this also bounds the work done ahead."""

    @property
    def is_genome(self) -> bool:
        return self.source == GENOME_KIND


def read_part(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One part descriptor -> its rows (a map_batches task with batch_size=1)."""
    from bsm_ray.data.windows import pack_documents
    from bsm_ray.errors import BsmRayError
    from bsm_ray.tokenizers.char import BsmCharTokenizer
    from bsm_ray.tokenizers.kmer import KmerTokenizer

    d = {k: v[0] for k, v in batch.items()}
    source, seed, skip = str(d["source"]), int(d["seed"]), int(d["skip"])
    unit = Unit(str(d["path"]), int(d["row_group"]), int(d["first_row"]), int(d["num_rows"]))
    part = Part(int(d["unit"]), int(d["lane"]), int(d["lanes"]), int(d["epoch"]), int(d["part"]))
    rows = part_rows(unit, part, seed, source)[skip:]
    group = pq.ParquetFile(unit.path).read_row_group(
        unit.row_group, columns=["seq" if source == GENOME_KIND else "text"])  # fmt: skip
    if source == GENOME_KIND:
        seqs = group["seq"].to_pylist()
        enc = KmerTokenizer(6, max_len=MLM_ROW_LEN).encode_batch([seqs[r] for r in rows])
        ids, mask, packed = enc["input_ids"], enc["attention_mask"], len(seqs)
    else:
        tok_ids, offsets = BsmCharTokenizer().encode_batch(group["text"].to_pylist())
        docs = [tok_ids[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]
        all_ids, all_mask = pack_documents(docs, int(d["seq_len"]))
        ids, mask, packed = all_ids[rows], all_mask[rows], len(all_ids)
    if packed != unit.num_rows:
        raise BsmRayError(
            f"{unit.path}: row group {unit.row_group} gives {packed} rows, but its num_tokens "
            f"column says {unit.num_rows}; the shard does not match its manifest (re-prepare it)"
        )
    n = len(rows)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "row_id": unit.first_row + rows.astype(np.int64),
        "source": np.full(n, source),
        "epoch": np.full(n, part.epoch, np.int64),
        "part": np.full(n, part.index, np.int64),
        "offset": skip + np.arange(n, dtype=np.int64),
        "ordinal": int(d["first_ordinal"]) + np.arange(n, dtype=np.int64),
    }


class StreamMasker:
    """Masks streamed k-mer rows (an actor: the NPMI rank table is loaded once)."""

    def __init__(self, strategy: str, pmi_table: str | None, seed: int, base_step: int,
                 base_ordinal: int, rows_per_step: int, max_steps: int) -> None:  # fmt: skip
        from bsm_ray.data.curriculum import CmStepSchedule
        from bsm_ray.data.masking import STRATEGIES

        if strategy not in (*STRATEGIES, "cm_step"):
            raise ValueError(f"unknown masking strategy {strategy!r}; choose from "
                             f"{(*STRATEGIES, 'cm_step')}")  # fmt: skip
        self.rank_table = None
        if strategy != "dnabert":
            from bsm_ray.data.pmi_build import load_rank_table

            if pmi_table is None:
                raise ValueError(f"{strategy} masking needs an NPMI table (pmi_table)")
            self.rank_table = load_rank_table(pmi_table)
        self.schedule = CmStepSchedule(max_steps, seed) if strategy == "cm_step" else None
        self.strategy, self.seed = strategy, seed
        self.base_step, self.base_ordinal = base_step, base_ordinal
        self.rows_per_step = rows_per_step

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from bsm_ray.data.masking import apply_mask

        ids, mask = np.array(batch["input_ids"]), np.array(batch["attention_mask"])
        steps = self.base_step + (batch["ordinal"] - self.base_ordinal) // self.rows_per_step
        out_ids, labels = np.empty_like(ids), np.empty_like(ids)
        strategies = np.empty(len(ids), dtype=object)
        for step in np.unique(steps):
            sel = steps == step
            strategy = self.schedule.strategy(int(step)) if self.schedule else self.strategy
            m = apply_mask(strategy, ids[sel], mask[sel], self.seed, batch["row_id"][sel],
                           int(step), self.rank_table)  # fmt: skip
            out_ids[sel], labels[sel], strategies[sel] = m.input_ids, m.labels, strategy
        return {**batch, "input_ids": out_ids, "labels": labels,
                "strategy": strategies.astype(str), "step": steps}  # fmt: skip


class StreamReader:
    """One worker's stream of one source: rows in spec order from a position, taken in counts.

    `position` is the next unconsumed row; `restart()` drops what was read ahead and streams
    again from there (a new masking phase, or a resume)."""

    def __init__(self, spec: StreamSpec, rank: int = 0, world: int = 1,
                 start: StreamPosition | None = None, base_step: int = 0,
                 units: list[Unit] | None = None) -> None:  # fmt: skip
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # the stream order is the spec
        ctx.enable_progress_bars = False  # one stream per source and worker: bars are noise
        self.spec, self.rank, self.world = spec, rank, world
        self.units = units if units is not None else list_units(
            spec.dataset, spec.source, spec.split, spec.seq_len)  # fmt: skip
        if not self.units:
            raise ValueError(f"{spec.dataset}: source {spec.source!r} has no {spec.split} rows")
        self.position = start or StreamPosition()
        self.restart(base_step=base_step)

    def restart(self, strategy: str | None = None, base_step: int | None = None) -> None:
        """Stream again from `position` (optionally in a new masking strategy, with the row at
        `position` consumed at `base_step`)."""
        if strategy is not None:
            self.spec = replace(self.spec, strategy=strategy)
        if base_step is not None:
            self.base_step = base_step
        self._buffer: list[dict[str, np.ndarray]] = []
        self._buffered = self._cursor = 0
        self._base_ordinal = self.position.ordinal
        self._next_epoch = self.position.epoch
        self._iter = self._open(self.position)

    def _descriptors(self, start: StreamPosition) -> tuple[list[dict], int]:
        """Part descriptors from `start` through whole epochs, until `rows_per_dataset` rows;
        returns them and the next epoch."""
        spec, out, rows = self.spec, [], 0
        for epoch in walk_parts(self.units, spec.source, spec.seed, self.rank, self.world, start):
            for p in epoch:
                unit = self.units[p.part.unit]
                out.append({
                    "path": unit.path, "row_group": unit.row_group, "first_row": unit.first_row,
                    "num_rows": unit.num_rows, "unit": p.part.unit, "lane": p.part.lane,
                    "lanes": p.part.lanes, "epoch": p.part.epoch, "part": p.part.index,
                    "skip": p.skip, "first_ordinal": p.first_ordinal, "source": spec.source,
                    "seed": spec.seed, "seq_len": spec.seq_len, "size": p.size,
                })  # fmt: skip
                rows += p.size
            if rows >= spec.rows_per_dataset:
                return out, out[-1]["epoch"] + 1

    def _open(self, start: StreamPosition):
        descriptors, self._next_epoch = self._descriptors(start)
        self._ordinal_end = descriptors[-1]["first_ordinal"] + descriptors[-1]["size"]
        descriptors = [d for d in descriptors if d["size"]]
        spec = self.spec
        ds = ray.data.from_items(descriptors, override_num_blocks=len(descriptors))
        ds = ds.map_batches(read_part, batch_size=1, batch_format="numpy", num_cpus=spec.cpus)
        if spec.strategy is not None:
            ds = ds.map_batches(
                StreamMasker,
                fn_constructor_kwargs={
                    "strategy": spec.strategy, "pmi_table": spec.pmi_table, "seed": spec.seed,
                    "base_step": self.base_step, "base_ordinal": self._base_ordinal,
                    "rows_per_step": spec.rows_per_step, "max_steps": spec.max_steps,
                },
                compute=ray.data.ActorPoolStrategy(size=spec.mask_actors),
                num_cpus=spec.cpus, batch_size=256, batch_format="numpy",
            )  # fmt: skip
        return iter(ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2))

    def _fill(self, count: int) -> None:
        while self._buffered < count:
            try:
                batch = next(self._iter)
            except StopIteration:
                self._iter = self._open(StreamPosition(self._next_epoch, 0, 0, self._ordinal_end))
                continue
            if len(batch["row_id"]):
                self._buffer.append(batch)
                self._buffered += len(batch["row_id"])

    def take(self, count: int) -> dict[str, np.ndarray]:
        """The next `count` (> 0) rows, columns as numpy arrays; advances `position`."""
        if count <= 0:
            raise ValueError(f"take needs a positive count, got {count}")
        self._fill(count)
        pieces, need = [], count
        while need:
            head = self._buffer[0]
            n = len(head["row_id"]) - self._cursor
            k = min(n, need)
            pieces.append({c: v[self._cursor : self._cursor + k] for c, v in head.items()})
            need -= k
            self._cursor += k
            if self._cursor == len(head["row_id"]):
                self._buffer.pop(0)
                self._cursor = 0
        self._buffered -= count
        out = pieces[0] if len(pieces) == 1 else {
            c: np.concatenate([p[c] for p in pieces]) for c in pieces[0]}  # fmt: skip
        last = {k: int(out[k][-1]) for k in ("epoch", "part", "offset", "ordinal")}
        self.position = StreamPosition(last["epoch"], last["part"], last["offset"] + 1,
                                       last["ordinal"] + 1)  # fmt: skip
        return out

    @property
    def repeats(self) -> int:
        """Epochs this worker has finished on this source."""
        return self.position.epoch
