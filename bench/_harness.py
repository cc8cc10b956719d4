"""Shared plumbing of the benchmarks in bench/ (standard library only at import time).

A benchmark script is a driver and its stages: the driver parses its flags, runs every stage
as `script --stage NAME` in a fresh subprocess, and prints and writes the report; the stage
subprocess measures one thing and writes its result JSON. This module holds what they share:

- measuring inside a stage subprocess: peak RSS (`getrusage` ru_maxrss, /proc/self/status
  fields) and `timed` (warm-up runs, then timed repeats); `run_stage_from_args` is the body of
  such a subprocess (optionally pinned to one core first: `pin_to_one_core`);
- the driver side: the common flags (`add_out_arg`, `add_stage_run_args` for
  --repeats/--warmup/--stages/--quick/--regenerate, `add_hidden_stage_args`, `fill_defaults`,
  `check_stages`); `run_stages`/`spawn_stage` run stages in fresh interpreters started through a
  tiny launcher (so the ru_maxrss they inherit at exec is the launcher's, not the caller's; see
  bench/ingest_throughput.py); `thread_env` pins their thread pools;
- the seeded synthetic genome FASTA shared by the benchmarks (`genome_path`, `ensure_genome`,
  `stage_generate`): generated once under the output folder, with a JSON sidecar, and reused by
  every benchmark while size, seed, record count and compression match;
- the report: a row per stage with its median and throughput (`stage_row`), the machine
  (`machine_info`), JSON written atomically, and the plain-text tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "bench" / "out"
GENERATOR = "bsm_ray.ingest.samples.write_synthetic_genome"
# The thread-pool sizes of OpenMP, the BLAS libraries and numexpr; a stage that must run on a
# given number of threads has all of them set before numpy (or torch) is imported.
THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "BLIS_NUM_THREADS",
)


# --- measuring (used inside the stage subprocesses) --------------------------------------------


def mib_from_maxrss(value: int) -> float:
    # Linux reports KiB, macOS bytes.
    return value / (1 << 20) if sys.platform == "darwin" else value / 1024


def peak_rss_mib() -> float:
    import resource

    return mib_from_maxrss(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def proc_status_mib(field: str) -> float | None:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MiB; None where there is none."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def timed(fn, repeats: int, warmup: int) -> tuple[list[float], object]:
    """Run `fn` `warmup` times untimed, then `repeats` times timed; (timings, last result)."""
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return times, result


def cpu_pinning() -> dict:
    """This process's CPU affinity and thread variables (what a pinned stage reports)."""
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"cpu_affinity": affinity, **{v: os.environ.get(v) for v in THREAD_VARS}}


def pin_to_one_core(cpu: int | None) -> None:
    """Run this process on core `cpu` with one thread per pool; before numpy is imported."""
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
    for var in THREAD_VARS:  # already set by the driver (`thread_env`); for a stage run by hand
        os.environ.setdefault(var, "1")


def run_stage_from_args(
    args: argparse.Namespace,
    stage_functions: dict[str, Callable[[dict], dict]],
    import_common: Callable[[], None] | None = None,
    pin_cpu: bool = False,
) -> bool:
    """In a stage subprocess (the hidden `--stage` flags given): run that stage and return True.

    The body of the subprocess: pin to core `settings["cpu"]` first when `pin_cpu`, import the
    modules every stage imports (`import_common`, timed; None where the stages time their own
    imports), run the stage, and write its result JSON (atomically) with its peak RSS.
    """
    if not args.stage:
        return False
    settings = json.loads(args.stage_settings)
    if pin_cpu:
        pin_to_one_core(settings.get("cpu"))
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    t0 = time.perf_counter()
    if import_common is not None:
        import_common()
    import_seconds = time.perf_counter() - t0
    rss_after_import = proc_status_mib("VmRSS")
    result = stage_functions[args.stage](settings)
    result.update(
        stage=args.stage,
        peak_rss_mib=peak_rss_mib(),
        vm_hwm_mib=proc_status_mib("VmHWM"),
        rss_after_import_mib=rss_after_import,
        import_seconds=import_seconds,
    )
    atomic_write_json(Path(args.stage_result), result)
    return True


# --- the driver: flags ---------------------------------------------------------------------------


def add_out_arg(p: argparse.ArgumentParser, help: str | None = None) -> None:
    p.add_argument("--out", default=str(DEFAULT_OUT), help=help)


def add_stage_run_args(
    p: argparse.ArgumentParser, stage_names: Sequence[str], repeats_help: str, quick_help: str
) -> None:
    """--repeats, --warmup (the median of the timed runs after the untimed ones), --stages (a
    subset, checked by `check_stages`), --quick and --regenerate (the genome)."""
    p.add_argument("--repeats", type=int, default=3, help=repeats_help)
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before them")
    p.add_argument(
        "--stages",
        default=",".join(stage_names),
        help=f"comma-separated subset of: {', '.join(stage_names)}",
    )
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument("--regenerate", action="store_true", help="rewrite the genome even if present")


def add_hidden_stage_args(p: argparse.ArgumentParser, stage_functions: dict) -> None:
    """The flags a stage subprocess is started with (`spawn_stage`); hidden from --help."""
    p.add_argument("--stage", choices=sorted(stage_functions), help=argparse.SUPPRESS)
    p.add_argument("--stage-settings", help=argparse.SUPPRESS)
    p.add_argument("--stage-result", help=argparse.SUPPRESS)


def fill_defaults(args: argparse.Namespace, quick: dict, defaults: dict) -> None:
    """Set every flag of `defaults` not given on the command line: from `quick` with --quick."""
    for key, value in (quick if args.quick else defaults).items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def check_stages(p: argparse.ArgumentParser, stages: str, stage_names: Sequence[str]) -> None:
    unknown = set(stages.split(",")) - set(stage_names)
    if unknown:
        p.error(f"unknown stage(s) {', '.join(sorted(unknown))}; known: {', '.join(stage_names)}")


def wanted_stages(stages: str, stage_names: Sequence[str]) -> list[str]:
    """The stages of --stages in the script's order, "baseline" first: every row is shown
    against it."""
    wanted = [name for name in stage_names if name in stages.split(",")]
    if "baseline" not in wanted:
        wanted.insert(0, "baseline")
    return wanted


def default_cpu() -> int | None:
    """The lowest core this process may run on (None where affinity is not available)."""
    return min(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None


# --- the driver: running the stages --------------------------------------------------------------


def make_out_dirs(out: str | Path, work_name: str) -> tuple[Path, Path]:
    """The output folder and its scratch folder for the stages' result files, both created."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work_dir = out / work_name
    work_dir.mkdir(exist_ok=True)
    return out, work_dir


def remove_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def thread_env(num_threads: int) -> dict[str, str]:
    """Environment variables that size every thread pool of a stage to `num_threads`."""
    return {var: str(num_threads) for var in THREAD_VARS}


def atomic_write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# Runs its arguments as a command. Stages start through it so that the ru_maxrss they inherit at
# exec is this small interpreter's, not the caller's (see bench/ingest_throughput.py).
LAUNCHER = "import subprocess, sys; sys.exit(subprocess.run(sys.argv[1:]).returncode)"


def spawn_stage(
    script: str | Path,
    name: str,
    settings: dict,
    work_dir: Path,
    env: dict[str, str] | None = None,
) -> dict:
    """Run stage `name` of benchmark `script` (`script --stage NAME ...`) in a fresh interpreter
    started through `LAUNCHER`; return its result dict. `env`: extra environment variables."""
    result_path = work_dir / f"{name}.json"
    if result_path.exists():
        result_path.unlink()
    cmd = [
        sys.executable,
        "-c",
        LAUNCHER,
        sys.executable,
        str(Path(script).resolve()),
        "--stage",
        name,
        "--stage-settings",
        json.dumps(settings),
        "--stage-result",
        str(result_path),
    ]
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), full_env.get("PYTHONPATH")) if p
    )
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=full_env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not result_path.is_file():
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"stage {name!r} failed (exit status {proc.returncode})")
    result = json.loads(result_path.read_text())
    result_path.unlink()
    result["subprocess_wall_seconds"] = wall
    return result


def run_stages(
    script: str | Path,
    names: Sequence[str],
    settings: dict,
    work_dir: Path,
    env: dict[str, str] | None = None,
) -> dict[str, dict]:
    """Run the stages `names` of `script` one after the other (`spawn_stage`); name -> result."""
    results = {}
    for name in names:
        print(f"... {name}", file=sys.stderr, flush=True)
        results[name] = spawn_stage(script, name, settings, work_dir, env=env)
    return results


# --- the synthetic genome ------------------------------------------------------------------------


def genome_path(out: Path, genome_bp: int, seed: int, num_chromosomes: int, gz: bool) -> Path:
    size = f"{genome_bp / 1e6:g}Mbp"
    suffix = ".fa.gz" if gz else ".fa"
    return out / f"synthetic_genome_{size}_seed{seed}_chr{num_chromosomes}{suffix}"


def stage_generate(s: dict) -> dict:
    """Stage body: write the genome (settings: genome_path, genome_bp, seed, num_chromosomes)."""
    from bsm_ray.ingest.samples import write_synthetic_genome

    t0 = time.perf_counter()
    write_synthetic_genome(
        s["genome_path"], s["genome_bp"], seed=s["seed"], num_chromosomes=s["num_chromosomes"]
    )
    seconds = time.perf_counter() - t0
    return {
        "amount": s["genome_bp"],
        "unit": "bp",
        "times": [seconds],
        "notes": f"{Path(s['genome_path']).stat().st_size / 2**20:,.0f} MiB file",
    }


def ensure_genome(
    script: str | Path, settings: dict, work_dir: Path, gzip: bool, regenerate: bool
) -> dict:
    """Generate the genome FASTA unless an identical one is already there; its metadata.

    Generation runs as the "generate" stage of `script` (whose stage is `stage_generate`), in a
    subprocess. A JSON sidecar next to the FASTA records what it is; the file is reused when the
    sidecar matches (size, seed, record count, compression, generator and byte size).
    """
    path = Path(settings["genome_path"])
    sidecar = path.with_name(path.name + ".json")
    wanted = {
        "genome_bp": settings["genome_bp"],
        "seed": settings["seed"],
        "num_chromosomes": settings["num_chromosomes"],
        "gzip": bool(gzip),
        "generator": GENERATOR,
    }
    if not regenerate and path.is_file() and sidecar.is_file():
        try:
            meta = json.loads(sidecar.read_text())
        except ValueError:
            meta = {}
        if (
            all(meta.get(k) == v for k, v in wanted.items())
            and meta.get("bytes") == path.stat().st_size
        ):
            return {**meta, "reused": True}
    result = spawn_stage(script, "generate", settings, work_dir)
    meta = {
        **wanted,
        "bytes": path.stat().st_size,
        "seconds": result["times"][0],
        "peak_rss_mib": result["peak_rss_mib"],
        "vm_hwm_mib": result["vm_hwm_mib"],
    }
    atomic_write_json(sidecar, meta)
    return {**meta, "reused": False}


# --- the report ----------------------------------------------------------------------------------


def median_or_none(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def add_throughput(row: dict) -> dict:
    """Add amount / median seconds to a stage row that has both (bp/s or tokens/s)."""
    if row["seconds"] and row["amount"] is not None:
        row["throughput_per_s"] = row["amount"] / row["seconds"]
        row["throughput_unit"] = {"bp": "bp/s", "bytes": "B/s"}.get(row["unit"], "tokens/s")
    return row


def stage_row(
    name: str, label: str, result: dict, baseline_mib: float, notes: str | None = None
) -> dict:
    """The row of stage `name` (table and JSON) from its subprocess's result: the median of its
    timed repeats, its peak RSS and that over the imports-only baseline, and its throughput.
    `notes`: the table's notes column (default: the stage's own)."""
    times = result.get("times") or []
    if name == "baseline":
        notes = "fresh interpreter + imports"
    return add_throughput(
        {
            "stage": name,
            "label": label,
            "amount": result.get("amount"),
            "unit": result.get("unit"),
            "seconds": median_or_none(times),
            "times": times,
            "peak_rss_mib": result["peak_rss_mib"],
            "vm_hwm_mib": result.get("vm_hwm_mib"),
            "over_baseline_mib": (
                None if name == "baseline" else result["peak_rss_mib"] - baseline_mib
            ),
            "rss_after_import_mib": result.get("rss_after_import_mib"),
            "import_seconds": result.get("import_seconds"),
            "subprocess_wall_seconds": result.get("subprocess_wall_seconds"),
            "notes": result.get("notes", "") if notes is None else notes,
            "extra": result.get("extra", {}),
        }
    )


def machine_info(dists: Sequence[str]) -> dict:
    """Python, platform, CPU count and the versions of `dists` (None where not installed)."""
    import importlib.metadata as md

    versions = {}
    for dist in dists:
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        **versions,
    }


def baseline_summary(baseline_mib: float, result_path: Path) -> str:
    """The line under a stage table: the imports-only baseline, the machine, the JSON's path."""
    return (
        f"baseline (imports only) {baseline_mib:,.1f} MiB; python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs; -> {result_path}"
    )


# --- tables --------------------------------------------------------------------------------------


def fmt_or_dash(value, spec: str, unit: str = "") -> str:
    """`value` formatted with `spec` and followed by `unit`; "-" for None."""
    return "-" if value is None else f"{value:{spec}}{unit}"


def fmt_amount(amount, unit) -> str:
    if amount is None:
        return "-"
    if unit == "bp":
        return f"{amount / 1e6:,.2f} Mbp"
    if unit == "bytes":
        return f"{amount / 1e6:,.2f} MB"
    return f"{amount / 1e6:,.2f} M tok"


def fmt_rate(amount, unit, seconds) -> str:
    if amount is None or not seconds:
        return "-"
    rate = amount / seconds / 1e6
    if unit == "bytes":
        return f"{rate:,.1f} MB/s"
    return f"{rate:,.1f} Mbp/s" if unit == "bp" else f"{rate:,.1f} M tok/s"


def format_columns(header: Sequence[str], lines: Sequence[Sequence], right: set[int]) -> str:
    """A plain-text table: columns separated by two spaces, those in `right` right-aligned."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines, strict=True)]

    def fmt(cells) -> str:
        return "  ".join(
            (str(c).rjust(w) if i in right else str(c).ljust(w))
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), rule, *(fmt(cells) for cells in lines)])


def format_table(rows: list[dict]) -> str:
    """The stage table: rows with label, amount, unit, seconds, peak_rss_mib, over_baseline_mib
    and optional notes."""
    header = ("stage", "amount", "seconds", "throughput", "peak RSS MiB", "+base MiB", "notes")
    lines = [
        [
            r["label"],
            fmt_amount(r["amount"], r["unit"]),
            fmt_or_dash(r["seconds"], ".3f"),
            fmt_rate(r["amount"], r["unit"], r["seconds"]),
            f"{r['peak_rss_mib']:,.1f}",
            fmt_or_dash(r["over_baseline_mib"], "+,.1f"),
            r.get("notes", ""),
        ]
        for r in rows
    ]
    return format_columns(header, lines, right={1, 2, 3, 4, 5})
