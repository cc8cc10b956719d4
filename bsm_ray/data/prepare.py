"""`prepare_dataset`: run every builder over the configured inputs and publish a dataset.

The dataset is built in a staging directory beside `output_dir` and renamed into place only
when every shard and the manifest are written: a crash or an `--on-invalid error` stop leaves
the previous dataset (if any) untouched and no half-built one under the final name.

Nothing vanishes: an input path that is missing, a directory or unreadable stops the run before
anything is read (in both `on_invalid` modes: it is a config mistake, not bad data); an input
file that gives no row at all (empty, a header only, every record rejected or filtered) is an
invalid input, `no_rows`, raised or counted like a bad record; and a preparation that gives no
row from any input fails instead of publishing an empty dataset.

Imports Biopython, numpy, pyarrow, tqdm; no ray, torch or mlflow.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tqdm import tqdm

from bsm_ray.config import to_dict
from bsm_ray.data.builders import (
    BuildContext,
    GenePairsConfig,
    GenomeConfig,
    RefSeqConfig,
    SingleInput,
    WebConfig,
    build_gene_pairs,
    build_genome_pieces,
    build_refseq_pairs,
    build_single,
    build_web,
)
from bsm_ray.data.records import Ledger
from bsm_ray.data.shards import (
    DOC_KINDS,
    GENOME_KIND,
    SPLITS,
    ShardWriter,
    build_manifest,
    write_manifest,
)
from bsm_ray.errors import BsmRayError, InputError
from bsm_ray.fileio import check_readable_file, sha256_file
from bsm_ray.tokenizers import BsmCharTokenizer, KmerTokenizer


@dataclass
class PrepareConfig:
    """Config of `jobs/prepare_data.py` (YAML + `--set`)."""

    output_dir: str = "data/sample"
    """Where the dataset (shards + manifest.json) is published."""
    sample: bool = True
    """Use the embedded sample corpus as input (built on first use; see data/samples.py).
    Inputs listed below are added to it. Set false to ingest only your own files."""
    sample_synthetic_genome_bp: int = 200_000
    """Size of the seeded synthetic genome added to the sample corpus."""
    seed: int = 0
    """Seed of every random choice (pair composition and order, splits, genome pieces)."""
    on_invalid: Literal["error", "skip"] = "error"
    """error: stop at the first invalid record; skip: count it per reason and go on."""
    overwrite: bool = True
    """Replace an existing dataset at output_dir (atomically) instead of refusing."""
    val_fraction: float = 0.02
    """Fraction of documents (by group: record, gene, document) in the val split."""
    max_doc_letters: int = 1_000_000
    """Single-modal records longer than this become several documents."""
    rows_per_shard: int = 50_000
    """Rows per Parquet shard (shards also close at 256 MiB of text)."""
    single: list[SingleInput] = field(default_factory=list)
    """Single-modal FASTA inputs."""
    refseq: RefSeqConfig = field(default_factory=RefSeqConfig)
    gene_pairs: GenePairsConfig = field(default_factory=GenePairsConfig)
    web: WebConfig = field(default_factory=WebConfig)
    genome: GenomeConfig = field(default_factory=GenomeConfig)
    progress: bool = True
    """Show progress bars (stderr)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")


@dataclass
class PrepareResult:
    output_dir: Path
    manifest: dict
    seconds: float

    def summary(self) -> str:
        m = self.manifest
        lines = [
            f"dataset {self.output_dir}  sha256 {m['dataset_sha256'][:16]}  ({self.seconds:.1f} s)"
        ]
        lines.append(f"  {'kind':16s} {'split':5s} {'rows':>10s} {'tokens':>14s}")
        for kind, splits in m["totals"].items():
            for split, t in splits.items():
                lines.append(f"  {kind:16s} {split:5s} {t['rows']:>10,d} {t['tokens']:>14,d}")
        ledger = Ledger()
        for table_name in ("skipped", "notes"):
            for kind, counts in m["ledger"][table_name].items():
                getattr(ledger, table_name)[kind].update(counts)
        extra = ledger.summary_lines()
        if extra:
            lines.append("  accounted for, not written as rows:")
            lines.extend(extra)
        return "\n".join(lines)


def _input_entry(path: str, kind: str, synthetic: bool = False) -> dict:
    check_readable_file(path)
    p = Path(path)
    return {
        "path": str(p),
        "kind": kind,
        "bytes": p.stat().st_size,
        "sha256": sha256_file(p),
        "synthetic": synthetic,
    }


def prepare_dataset(config: PrepareConfig) -> PrepareResult:
    """Build and publish the dataset described by `config`; return its manifest."""
    t0 = time.time()
    synthetic_paths: set[str] = set()
    if config.sample:
        from bsm_ray.data.samples import sample_prepare_inputs

        config, synthetic_paths = sample_prepare_inputs(config)

    ctx = BuildContext(
        ledger=Ledger(on_invalid=config.on_invalid),
        seed=config.seed,
        val_fraction=config.val_fraction,
        progress=config.progress,
    )
    # (kind, input files, rows generator) in input order; generators are lazy, so nothing is
    # read before every input has been checked and hashed below.
    tasks = (
        [(f"single_{s.modality}", [s.path], build_single(s, ctx, config.max_doc_letters))
         for s in config.single]
        + [("refseq_pair", [p], build_refseq_pairs(config.refseq, p, ctx))
           for p in config.refseq.genbank]
        + ([("gene_pair", [config.gene_pairs.tsv, *config.gene_pairs.fasta],
             build_gene_pairs(config.gene_pairs, ctx))] if config.gene_pairs.tsv else [])
        + [("web", [p], build_web(config.web, p, ctx)) for p in config.web.documents]
        + [(GENOME_KIND, [p], build_genome_pieces(config.genome, p, ctx))
           for p in config.genome.fasta]
    )  # fmt: skip
    inputs = [_input_entry(path, kind, path in synthetic_paths)
              for kind, paths, _rows in tasks for path in paths]  # fmt: skip

    final = Path(config.output_dir)
    if final.exists() and not config.overwrite:
        raise BsmRayError(f"{final}: exists (set overwrite: true to replace it)")
    staging = final.with_name(f".{final.name}.staging-{os.getpid()}")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)

    writers = {
        (kind, split): ShardWriter(staging, kind, split, rows_per_shard=config.rows_per_shard)
        for kind in (*DOC_KINDS, GENOME_KIND)
        for split in SPLITS
    }
    bar = tqdm(
        total=len(inputs), desc="prepare", unit="file", disable=not config.progress,
        file=sys.stderr, dynamic_ncols=True,
    )  # fmt: skip
    try:
        num_rows = 0
        for kind, paths, rows in tasks:
            bar.set_postfix_str(Path(paths[0]).name)
            for split, row in input_rows(kind, paths[0], rows, ctx):
                writers[(kind, split)].add(row)
                num_rows += 1
            bar.update(len(paths))
        if num_rows == 0:
            raise BsmRayError(_nothing_prepared(config, len(inputs), ctx.ledger))
        for w in writers.values():
            w.close()
        bar.close()
        ledger_dict = ctx.ledger.as_dict()
        manifest = build_manifest(
            config=to_dict(config),
            tokenizers={
                "bsm-char": BsmCharTokenizer().fingerprint(),
                "kmer-6": KmerTokenizer(6).fingerprint(),
            },
            inputs=inputs,
            writers=[w for w in writers.values() if w.shards],
            ledger=ledger_dict,
            stats=dict(ctx.stats),
        )
        write_manifest(staging, manifest)
        publish_dataset(staging, final)
    except BaseException:
        bar.close()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return PrepareResult(final, manifest.__dict__, time.time() - t0)


def input_rows(kind: str, path: str, rows: Iterator, ctx: BuildContext) -> Iterator:
    """One input's rows (a builder's `(split, row)` pairs), under the policy every input gets.

    A whole-file failure (a malformed or truncated file) is raised in `error` mode and counted
    in `skip` mode; rows produced before it are kept (they were valid). An input that ends
    normally with no row at all is `no_rows`, raised or counted the same way. `path` names the
    input (for gene pairs: the gene map, the FASTA files are checked by the builder).
    """
    before = _ledger_counts(ctx.ledger, kind)
    num_rows = 0
    try:
        for item in rows:
            num_rows += 1
            yield item
    except InputError as exc:
        ctx.ledger.invalid(kind, exc)
        return
    if num_rows == 0:
        ctx.ledger.invalid(kind, _no_rows_error(path, kind, ctx, before))


def _ledger_counts(ledger: Ledger, kind: str) -> dict[str, int]:
    """Skip and note counts of `kind` by reason (a snapshot, to diff over one input)."""
    counts = {f"skipped {r}": n for r, n in ledger.skipped.get(kind, {}).items()}
    counts.update({f"noted {r}": n for r, n in ledger.notes.get(kind, {}).items()})
    return counts


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _no_rows_error(path: str, kind: str, ctx: BuildContext, before: dict[str, int]) -> InputError:
    """`no_rows` for an input that gave nothing, saying what became of its records."""
    num_records = ctx.records_read[path]
    if num_records == 0:
        return InputError(path, None, "no_rows", "no records in the file")
    after = _ledger_counts(ctx.ledger, kind)
    changes = [f"{key} {after[key] - before.get(key, 0)}" for key in sorted(after)
               if after[key] != before.get(key, 0)]  # fmt: skip
    detail = f"{_plural(num_records, 'record')} read, none gave a row"
    return InputError(
        path, None, "no_rows", detail + (f": {', '.join(changes)}" if changes else "")
    )


def _nothing_prepared(config: PrepareConfig, num_inputs: int, ledger: Ledger) -> str:
    if num_inputs == 0:
        return "no input files: set sample: true or list inputs (single, refseq.genbank, ...)"
    skipped = [f"{kind}/{reason} {n}" for kind, counts in sorted(ledger.skipped.items())
               for reason, n in sorted(counts.items())]  # fmt: skip
    return (
        f"no rows from any of the {_plural(num_inputs, 'input file')}; nothing published to "
        f"{config.output_dir}" + (f" (skipped: {', '.join(skipped)})" if skipped else "")
    )


def publish_dataset(staging: Path, final: Path) -> None:
    """Swap the staging directory into place; the old dataset is removed only afterwards."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(staging, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
