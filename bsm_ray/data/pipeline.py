"""Ray Data streaming of MLM genome pieces: Parquet -> k-mer tokens (tasks) -> masking (actors).

    ds = masked_genome_dataset("data/sample", "train", strategy="genemask", pmi_table=...)
    for batch in ds.iter_batches(batch_size=256, batch_format="numpy"): ...

- Shards are read lazily with `ray.data.read_parquet` (only the `piece_id` and `seq` columns).
- Tokenization is a stateless `map_batches` task: `[CLS] 6-mers [SEP] [PAD]...` rows of 512, plus
  a stable 64-bit sample id per piece (a hash of its `piece_id`), so masks do not depend on
  which block or worker a row lands in.
- Masking runs in an actor pool: `MaskingActor` loads the NPMI rank table once per actor and
  masks each batch with `bsm_ray.data.masking` (copying the read-only input arrays first).
  Masks are a pure function of (seed, sample id, epoch) — the epoch plays the role of the
  step, so a re-read of the same epoch reproduces the same masks.
- Every output batch carries its source name and the strategy that masked it.

This module is the only Ray Data code (ARCHITECTURE.md); it imports ray at module level and is
imported only by callers that stream.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import ray.data

from bsm_ray.data.builders import stable_hash
from bsm_ray.data.shards import GENOME_KIND, shard_paths
from bsm_ray.tokenizers.kmer import KmerTokenizer


def tokenize_pieces(batch: dict[str, np.ndarray], max_len: int = 512) -> dict[str, np.ndarray]:
    """Genome pieces -> k-mer rows and stable sample ids (a stateless map_batches task)."""
    seqs = [str(s) for s in batch["seq"]]
    enc = KmerTokenizer(6, max_len=max_len).encode_batch(seqs)
    sample_ids = np.fromiter((stable_hash("piece", p) for p in batch["piece_id"]),
                             dtype=np.uint64, count=len(seqs))  # fmt: skip
    return {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "sample_id": sample_ids,
    }


class MaskingActor:
    """Masks batches of k-mer rows; the rank table is loaded once per actor."""

    def __init__(self, strategy: str, pmi_table: str | None, seed: int, epoch: int,
                 source: str = GENOME_KIND) -> None:  # fmt: skip
        from bsm_ray.data.masking import STRATEGIES

        if strategy not in STRATEGIES:
            raise ValueError(f"unknown masking strategy {strategy!r}; choose from {STRATEGIES}")
        self.rank_table = None
        if strategy != "dnabert":
            from bsm_ray.data.pmi_build import load_rank_table

            if pmi_table is None:
                raise ValueError(f"{strategy} masking needs an NPMI table (pmi_table)")
            self.rank_table = load_rank_table(pmi_table)
        self.strategy, self.seed, self.epoch, self.source = strategy, seed, epoch, source

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from bsm_ray.data.masking import apply_mask

        masked = apply_mask(
            self.strategy, np.array(batch["input_ids"]), np.array(batch["attention_mask"]),
            self.seed, np.array(batch["sample_id"]), self.epoch, self.rank_table,
        )  # fmt: skip
        n = len(masked.input_ids)
        return {
            "input_ids": masked.input_ids,
            "labels": masked.labels,
            "attention_mask": np.array(batch["attention_mask"]),
            "sample_id": np.array(batch["sample_id"]),
            "source": np.full(n, self.source),
            "strategy": np.full(n, masked.strategy),
        }


def genome_piece_dataset(dataset: str | Path, split: str) -> ray.data.Dataset:
    """Tokenized (unmasked) k-mer rows of a prepared dataset's genome shards, read lazily."""
    paths = [str(p) for p in shard_paths(dataset, GENOME_KIND, split)]
    if not paths:
        raise ValueError(f"{dataset}: no genome shards in split {split!r}")
    ds = ray.data.read_parquet(paths, columns=["piece_id", "seq"])
    return ds.map_batches(tokenize_pieces, batch_format="numpy", batch_size=1024)


def masked_genome_dataset(
    dataset: str | Path,
    split: str,
    strategy: str = "dnabert",
    pmi_table: str | None = None,
    seed: int = 0,
    epoch: int = 0,
    num_actors: int = 1,
    batch_size: int = 1024,
) -> ray.data.Dataset:
    """The genome pieces tokenized by tasks and masked by a pool of `num_actors` actors."""
    return genome_piece_dataset(dataset, split).map_batches(
        MaskingActor,
        fn_constructor_kwargs={
            "strategy": strategy,
            "pmi_table": pmi_table,
            "seed": seed,
            "epoch": epoch,
        },  # fmt: skip
        compute=ray.data.ActorPoolStrategy(size=num_actors),
        batch_format="numpy",
        batch_size=batch_size,
    )
