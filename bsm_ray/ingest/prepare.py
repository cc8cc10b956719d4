"""`prepare_dataset`: run every builder over the configured inputs and publish a dataset.

The work is cut into units fixed by the input (ingest/units.py) that run in this process or as
Ray tasks (`parallel`); workers write their shards into a staging directory beside
`output_dir`, the driver plans, finds duplicates across units and assembles the manifest, and
the staging directory is renamed into place only when every shard and the manifest are
written: a crash or an `--on-invalid error` stop leaves the previous dataset (if any)
untouched and no half-built one under the final name. After a crash (not after bad input) the
staging directory keeps the finished units, and the same command resumes from them.

Nothing vanishes: an input path that is missing, a directory or unreadable stops the run before
anything is read (in both `on_invalid` modes: it is a config mistake, not bad data); an input
file that gives no row at all (empty, a header only, every record rejected or filtered) is an
invalid input, `no_rows`, raised or counted like a bad record; and a preparation that gives no
row from any input fails instead of publishing an empty dataset.

Imports Biopython, numpy, pyarrow, tqdm; ray only with `parallel: ray` (lazily: the one place
ingestion runs on Ray); no torch or mlflow.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tqdm import tqdm

from bsm_ray.config import to_dict
from bsm_ray.errors import BsmRayError, InputError
from bsm_ray.ingest.builders import (
    BuildContext,
    GenePairsConfig,
    GenomeConfig,
    RefSeqConfig,
    SingleInput,
    WebConfig,
)
from bsm_ray.ingest.records import Ledger
from bsm_ray.ingest.shards import (
    DOC_KINDS,
    GENOME_KIND,
    MANIFEST_NAME,
    SPLITS,
    Manifest,
    ShardList,
    build_manifest,
    read_manifest,
    write_manifest,
)
from bsm_ray.ingest.units import (
    FAULT_ENV,
    KEY_BUCKETS,
    UNITS_DIR,
    Source,
    Unit,
    earlier_keys_in_buckets,
    merge_earlier_keys,
    part_from_dict,
    plan_input,
    preseen_digest,
    resolve_genome_parts,
    result_error,
    result_shards,
    run_unit,
    scan_genome_part,
    unit_keys_path,
    unit_result_rel,
)
from bsm_ray.log import get_logger
from bsm_ray.outputs import UPLOAD_SUFFIX, OutputDir, is_uri, storage_env
from bsm_ray.tokenizers import BsmCharTokenizer, KmerTokenizer

logger = get_logger(__name__)


@dataclass
class PrepareConfig:
    """Config of `jobs/prepare_data.py` (YAML + `--set`)."""

    output_dir: str = "data/sample"
    """Where the dataset (shards + manifest.json) is published."""
    sample: bool = True
    """Use the embedded sample corpus as input (built on first use; see ingest/samples.py).
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
    parallel: Literal["auto", "ray", "local"] = "auto"
    """Run the units of work in this process (local), as Ray tasks (ray), or as Ray tasks when
    RAY_ADDRESS names a cluster to join (auto). The dataset is the same either way."""
    num_workers: int | None = None
    """With Ray: the most units running at once (None: as many as the cluster has CPUs)."""
    unit_bytes: int = 64 << 20
    """Inputs larger than this are cut into units of about this size, at record boundaries
    (see ingest/units.py). Part of what the dataset is: shards are written per unit."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.unit_bytes < 1:
            raise ValueError(f"unit_bytes must be positive, got {self.unit_bytes}")


@dataclass
class PrepareResult:
    output_dir: Path | str  # a str: an object-store URI
    manifest: dict
    seconds: float
    num_units: int = 0
    units_resumed: list[int] = field(default_factory=list)
    """Units whose recorded result a crashed run had left (not run again)."""
    units_run: list[int] = field(default_factory=list)
    """Units run by this call (phase 1)."""
    engine: str = "local"
    """Where the units ran: "local" (this process) or "ray" (Ray tasks)."""

    def summary(self) -> str:
        m = self.manifest
        where = "as Ray tasks" if self.engine == "ray" else "in this process"
        resumed = f", {len(self.units_resumed)} resumed from a stopped run" \
            if self.units_resumed else ""  # fmt: skip
        lines = [
            f"dataset {self.output_dir}  sha256 {m['dataset_sha256'][:16]}  ({self.seconds:.1f} s)",
            f"  {self.num_units} units of work {where}{resumed}",
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


def _sources(config: PrepareConfig) -> list[Source]:
    """Every input of the run, in input order (the order of the sequential semantics)."""
    g = config.gene_pairs
    return (
        [Source(f"single_{s.modality}", "single", i, (s.path,), "fasta")
         for i, s in enumerate(config.single)]
        + [Source("refseq_pair", "refseq", i, (p,), "genbank")
           for i, p in enumerate(config.refseq.genbank)]
        + ([Source("gene_pair", "gene_pairs", 0, (g.tsv, *g.fasta), None)] if g.tsv else [])
        + [Source("web", "web", i, (p,), "web") for i, p in enumerate(config.web.documents)]
        + [Source(GENOME_KIND, "genome", i, (p,), "genome")
           for i, p in enumerate(config.genome.fasta)]
    )  # fmt: skip


def use_ray(parallel: str) -> bool:
    """ray: always; local: never; auto: when RAY_ADDRESS names a cluster to join."""
    if parallel == "auto":
        return os.environ.get("RAY_ADDRESS", "") not in ("", "local")
    return parallel == "ray"


def _fingerprint(config: PrepareConfig, inputs: list[dict]) -> str:
    """What the recorded units depend on: the config (less how it runs) and the inputs."""
    cfg = {k: v for k, v in to_dict(config).items() if k not in _RUN_ONLY}
    text = json.dumps({"config": cfg, "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


_RUN_ONLY = ("parallel", "num_workers", "progress", "overwrite", "output_dir")


class TaskRunner:
    """Runs a function over argument tuples in this process or as Ray tasks (one CPU each, at
    most `num_workers` in flight); results come back in argument order."""

    def __init__(self, config) -> None:  # any config with parallel, num_workers, progress
        self.ray = use_ray(config.parallel)
        self.num_workers = config.num_workers
        self.progress = config.progress
        if self.ray:
            import ray

            if not ray.is_initialized():
                ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=False)

    def parallelism(self) -> int:
        """Tasks in flight at once: `num_workers`, else the cluster's CPUs (1 locally)."""
        if not self.ray:
            return 1
        import ray

        return self.num_workers or max(1, int(ray.cluster_resources().get("CPU", 1)))

    def map(self, fn, calls: list[tuple], desc: str, stop=None) -> list:
        """`[fn(*args) for args in calls]`; locally, `stop(result)` true ends the map early
        (the rest stay None): in error mode the first error in order is all that counts."""
        results: list = [None] * len(calls)
        bar = tqdm(total=len(calls), desc=desc, unit="unit", disable=not self.progress,
                   file=sys.stderr, dynamic_ncols=True)  # fmt: skip
        try:
            if not self.ray:
                for i, args in enumerate(calls):
                    results[i] = fn(*args)
                    bar.update()
                    if stop is not None and stop(results[i]):
                        break
                return results
            import ray

            limit = self.parallelism()
            # Spread over the nodes: the default packs tasks on the driver's node while it has
            # room, and short units there left a second node idle.
            options: dict = {"num_cpus": 1, "scheduling_strategy": "SPREAD"}
            env = storage_env()  # the object store as the driver sees it (bsm_ray.outputs)
            if FAULT_ENV in os.environ:  # tests: the injected failure reaches the workers
                env[FAULT_ENV] = os.environ[FAULT_ENV]
            if env:
                options["runtime_env"] = {"env_vars": env}
            remote = ray.remote(**options)(fn)
            pending: dict = {}
            submitted = 0
            try:
                while submitted < len(calls) or pending:
                    while submitted < len(calls) and len(pending) < limit:
                        pending[remote.remote(*calls[submitted])] = submitted
                        submitted += 1
                    done, _ = ray.wait(list(pending), num_returns=1)
                    for ref in done:
                        results[pending.pop(ref)] = ray.get(ref)
                        bar.update()
            except BaseException:
                for ref in pending:
                    ray.cancel(ref)
                # Let cancelled and in-flight tasks settle, so the finished units on record are
                # final when the failure reaches the caller (a rerun resumes exactly those).
                try:
                    ray.wait(list(pending), num_returns=len(pending), timeout=120)
                except Exception:  # noqa: BLE001 - the original failure is what is raised
                    pass
                raise
            return results
        finally:
            bar.close()


def prepare_dataset(config: PrepareConfig) -> PrepareResult:
    """Build and publish the dataset described by `config`; return its manifest.

    The same units run locally or as Ray tasks (`parallel`), so the dataset, and its
    `dataset_sha256`, is the same either way (see ingest/units.py). A run that crashed resumes
    from its staging directory: units recorded there are not run again.
    """
    t0 = time.time()
    synthetic_paths: set[str] = set()
    if config.sample:
        from bsm_ray.ingest.samples import sample_prepare_inputs

        config, synthetic_paths = sample_prepare_inputs(config)
    remote = is_uri(config.output_dir)
    final: Path | str = config.output_dir if remote else Path(config.output_dir)
    try:  # an object store: the URI, its options and the store are checked before any work
        out = OutputDir(final)
        exists = out.exists(MANIFEST_NAME if remote else "")
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise BsmRayError(f"output_dir {final}: {str(exc).splitlines()[0]}") from None
    if exists and not config.overwrite:
        raise BsmRayError(f"{final}: exists (set overwrite: true to replace it)")
    sources = _sources(config)
    runner = TaskRunner(config)
    # Plan: every input checked, hashed and cut into units (one read per file) before any
    # record is read; the first unreadable input (in input order) stops the run.
    files = [(si, path, src.layout if path == src.paths[0] else None)
             for si, src in enumerate(sources) for path in src.paths]  # fmt: skip
    plans = runner.map(_plan_file, [(p, layout, config.unit_bytes) for _s, p, layout in files],
                       "plan", stop=lambda r: isinstance(r, InputError))  # fmt: skip
    for plan in plans:
        if isinstance(plan, InputError):
            raise plan
    inputs = [{"path": str(Path(path)), "kind": sources[si].kind, "bytes": plan["bytes"],
               "sha256": plan["sha256"], "synthetic": path in synthetic_paths}
              for (si, path, _l), plan in zip(files, plans, strict=True)]  # fmt: skip
    units: list[Unit] = []
    for (si, path, _layout), plan in zip(files, plans, strict=True):
        if path != sources[si].paths[0]:
            continue
        for part in plan["parts"] or [None]:
            units.append(Unit(len(units), si, part_from_dict(part)))
    units = _resolve_genome_units(units, sources, runner)

    fingerprint = _fingerprint(config, inputs)
    with contextlib.nullcontext() if remote else _exclusive(final):
        if remote:  # a version prefix beside the live one (see ingest/shards.py)
            live = read_manifest(final).get("version") if out.exists(MANIFEST_NAME) else None
            version = f"v-{fingerprint[:16]}"
            version += "-r" if live == version else ""
            staging = out.uri(version)
        else:
            version, staging = None, str(final.with_name(f".{final.name}.staging"))
        stage = OutputDir(staging)
        plan_rel = f"{UNITS_DIR}/plan.json"
        recorded = json.loads(stage.read_text(plan_rel))["fingerprint"] \
            if stage.exists(plan_rel) else None  # fmt: skip
        if recorded != fingerprint:
            stage.remove_tree()
            stage.makedirs(UNITS_DIR)
            stage.write_text(plan_rel, json.dumps({"fingerprint": fingerprint,
                                                   "units": len(units)}))  # fmt: skip
        else:
            logger.info(f"resuming the preparation recorded in {staging}")
        token = uuid.uuid4().hex
        try:
            manifest, ran = _prepare_units(config, sources, units, inputs, staging, runner, token)
            if remote:
                manifest.version = version
                write_manifest(out, manifest)  # the commit: one object
                stage.remove_tree(UNITS_DIR)
                for old in out.subdirs():  # earlier versions, no longer in the manifest
                    if old.startswith("v-") and old != version:
                        out.remove_tree(old)
            else:
                stage.remove_tree(UNITS_DIR)
                write_manifest(stage, manifest)
                publish_dataset(Path(staging), final)
        except BsmRayError:
            stage.remove_tree()  # bad input or config: a rerun fails again
            raise
        except BaseException:
            logger.info(f"preparation stopped; finished units are kept in {staging}: the same "
                        "command resumes from them")  # fmt: skip
            raise
    resumed = sorted(set(range(len(units))) - set(ran))
    return PrepareResult(final, manifest.__dict__, time.time() - t0, len(units), resumed, ran,
                         "ray" if runner.ray else "local")  # fmt: skip


def _resolve_genome_units(units: list[Unit], sources: list[Source], runner) -> list[Unit]:
    """Genome files cut inside chromosomes: scan their parts (as Ray tasks on a cluster) and
    give each part that starts inside a chromosome what it needs from the parts before it."""
    by_source: dict[int, list[Unit]] = {}
    for u in units:
        if sources[u.source].builder == "genome" and u.part is not None:
            by_source.setdefault(u.source, []).append(u)
    todo = [us for us in by_source.values() if any(u.part.mid_record for u in us)]
    if not todo:
        return units
    calls = [(sources[us[0].source].paths[0], u.part) for us in todo for u in us]
    scans = iter(runner.map(scan_genome_part, calls, "scan genome"))
    resolved = {}
    for us in todo:
        parts = resolve_genome_parts([u.part for u in us], [next(scans) for _ in us])
        resolved.update({u.index: p for u, p in zip(us, parts, strict=True)})
    return [Unit(u.index, u.source, resolved[u.index]) if u.index in resolved else u
            for u in units]  # fmt: skip


@contextlib.contextmanager
def _exclusive(final: Path):
    """Hold `.<name>.lock` beside `final` while preparing it: two runs writing one dataset would
    share its staging directory (the lock is advisory, for this machine's processes)."""
    import fcntl

    final.parent.mkdir(parents=True, exist_ok=True)
    lock_path = final.with_name(f".{final.name}.lock")
    with open(lock_path, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            msg = f"{final}: another preparation is writing it (lock {lock_path})"
            raise BsmRayError(msg) from None
        try:
            yield
        finally:
            lock_path.unlink(missing_ok=True)


def _plan_file(path: str, layout: str | None, unit_bytes: int):
    """`plan_input`, with an `InputError` returned (the driver raises the first in order)."""
    try:
        return plan_input(path, layout, unit_bytes)
    except InputError as exc:
        return exc


def _recorded(staging: str, index: int, phase: int, preseen: str | None = None) -> dict | None:
    stage = OutputDir(staging)
    rel = unit_result_rel(index, phase)
    if not stage.exists(rel):
        return None
    result = json.loads(stage.read_text(rel))
    return result if result["preseen"] == preseen else None


def _prepare_units(config, sources, units, inputs, staging, runner, token):
    """(manifest, the units phase 1 ran in this call)."""
    error_mode = config.on_invalid == "error"
    # Phase 1: every unit on its own (recorded ones are not run again).
    results = [_recorded(staging, u.index, 1) for u in units]
    todo_first = [u for u, r in zip(units, results, strict=True) if r is None]
    calls = [(config, sources[u.source], u, str(staging), token) for u in todo_first]
    done = runner.map(run_unit, calls, "prepare", stop=(lambda r: r["error"] is not None)
                      if error_mode else None)  # fmt: skip
    for u, r in zip(todo_first, done, strict=True):
        results[u.index] = r
    # Units read after their file broke off (skip mode) do not exist in a sequential read;
    # in error mode nothing after the first error counts.
    live: list[Unit] = []
    broken: set[int] = set()
    for u, r in zip(units, results, strict=True):
        if r is None or u.source in broken:
            continue
        live.append(u)
        if r["aborted"]:
            broken.add(u.source)
        if error_mode and r["error"]:
            break
    # Duplicates across units, by hash partition of the keys; a unit holding keys an earlier
    # unit had runs again with them marked seen (phase 2).
    keys_files = [(u.index, unit_keys_path(staging, u.index)) for u in live]
    # The partitions are fixed (KEY_BUCKETS); they are dealt to as many tasks as run at once.
    tasks = min(KEY_BUCKETS, runner.parallelism())
    groups = [list(range(KEY_BUCKETS))[g::tasks] for g in range(tasks)]
    earlier = merge_earlier_keys(
        runner.map(earlier_keys_in_buckets, [(keys_files, g) for g in groups], "duplicates")
    )
    rerun = [u for u in live if u.index in earlier]
    final_results = {u.index: results[u.index] for u in live}
    todo = []
    for u in rerun:
        recorded = _recorded(staging, u.index, 2, preseen_digest(earlier[u.index]))
        if recorded is None:
            todo.append(u)
        else:
            final_results[u.index] = recorded
    calls = [(config, sources[u.source], u, str(staging), token, earlier[u.index]) for u in todo]
    for u, r in zip(todo, runner.map(run_unit, calls, "duplicates again"), strict=True):
        final_results[u.index] = r
    ran = [u.index for u, r in zip(todo_first, done, strict=True) if r is not None]
    return _assemble(config, sources, live, final_results, inputs, staging), ran


def _assemble(config, sources, live, results, inputs, staging) -> Manifest:
    """Walk the units in input order as one sequential run would: raise the first error (error
    mode), count inputs that gave no row, add up ledgers and statistics, list the shards."""
    ledger = Ledger(on_invalid=config.on_invalid)
    stats: Counter = Counter()
    shard_lists: dict[tuple[str, str], list] = {}
    num_rows = 0
    by_source: dict[int, list] = {}
    for u in live:
        by_source.setdefault(u.source, []).append(results[u.index])
    for si, source in enumerate(sources):
        source_rows, broke_off = 0, False
        source_ledger = Ledger(on_invalid="skip")
        records_read: Counter = Counter()
        for r in by_source.get(si, []):
            error = result_error(r)
            if error is not None:
                raise error
            ledger.merge(r["ledger"])
            source_ledger.merge(r["ledger"])
            stats.update(r["stats"])
            records_read.update(r["records_read"])
            for kind, split, infos in result_shards(r):
                shard_lists.setdefault((kind, split), []).extend(infos)
            source_rows += r["num_rows"]
            broke_off = broke_off or r["aborted"]
        if source_rows == 0 and not broke_off:  # a file that broke off is counted as that
            path = source.paths[0]
            ledger.invalid(source.kind, _no_rows_error(path, source.kind, records_read[path],
                                                       source_ledger))  # fmt: skip
        num_rows += source_rows
    if num_rows == 0:
        raise BsmRayError(_nothing_prepared(config, len(inputs), ledger))
    listed = {info.path for infos in shard_lists.values() for info in infos}
    stage = OutputDir(staging)
    for rel in stage.files():  # shards of units a sequential run never read, and uploads
        # a killed worker left unfinished
        if rel.startswith(UNITS_DIR) or rel in listed:
            continue
        if rel.endswith((".parquet", UPLOAD_SUFFIX)):
            stage.remove(rel)
    manifest = build_manifest(
        config=to_dict(config),
        tokenizers={
            "bsm-char": BsmCharTokenizer().fingerprint(),
            "kmer-6": KmerTokenizer(6).fingerprint(),
        },
        inputs=inputs,
        writers=[ShardList(kind, split, shard_lists[(kind, split)])
                 for kind in (*DOC_KINDS, GENOME_KIND) for split in SPLITS
                 if shard_lists.get((kind, split))],  # fmt: skip
        ledger=ledger.as_dict(),
        stats=dict(stats),
    )
    return manifest


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
        after = _ledger_counts(ctx.ledger, kind)
        own = Ledger(on_invalid="skip")
        for key, n in after.items():
            table, reason = key.split(" ", 1)
            counts = own.skipped if table == "skipped" else own.notes
            counts[kind][reason] += n - before.get(key, 0)
        error = _no_rows_error(path, kind, ctx.records_read[path], own)
        ctx.ledger.invalid(kind, error)


def _ledger_counts(ledger: Ledger, kind: str) -> dict[str, int]:
    """Skip and note counts of `kind` by reason (a snapshot, to diff over one input)."""
    counts = {f"skipped {r}": n for r, n in ledger.skipped.get(kind, {}).items()}
    counts.update({f"noted {r}": n for r, n in ledger.notes.get(kind, {}).items()})
    return counts


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _no_rows_error(path: str, kind: str, num_records: int, ledger: Ledger) -> InputError:
    """`no_rows` for an input that gave nothing, saying what became of its records (`ledger`
    holds that input's counts only)."""
    if num_records == 0:
        return InputError(path, None, "no_rows", "no records in the file")
    after = _ledger_counts(ledger, kind)
    changes = [f"{key} {n}" for key, n in sorted(after.items()) if n]
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
