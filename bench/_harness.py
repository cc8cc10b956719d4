"""Shared plumbing of the benchmarks in bench/ (standard library only at import time).

- measuring inside a stage subprocess: peak RSS (`getrusage` ru_maxrss, /proc/self/status
  fields) and `timed` (warm-up runs, then timed repeats);
- the driver side: `spawn_stage` runs one stage of a benchmark script in a fresh interpreter
  started through a tiny launcher (so the ru_maxrss it inherits at exec is the launcher's, not
  the caller's; see bench/ingest_throughput.py), `run_stage` is the body of such a subprocess;
- the seeded synthetic genome FASTA shared by the benchmarks (`genome_path`, `ensure_genome`,
  `stage_generate`): generated once under the output folder, with a JSON sidecar, and reused by
  every benchmark while size, seed, record count and compression match;
- JSON written atomically, and the plain-text tables.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
GENERATOR = "bsm_ray.data.samples.write_synthetic_genome"


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


def run_stage(
    stage_functions: dict[str, Callable[[dict], dict]],
    import_common: Callable[[], None],
    name: str,
    settings: dict,
    result_path: str,
) -> None:
    """Body of a stage subprocess: import, measure, write the result JSON (atomically)."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    t0 = time.perf_counter()
    import_common()
    import_seconds = time.perf_counter() - t0
    rss_after_import = proc_status_mib("VmRSS")
    result = stage_functions[name](settings)
    result.update(
        stage=name,
        peak_rss_mib=peak_rss_mib(),
        vm_hwm_mib=proc_status_mib("VmHWM"),
        rss_after_import_mib=rss_after_import,
        import_seconds=import_seconds,
    )
    atomic_write_json(Path(result_path), result)


# --- the driver ---------------------------------------------------------------------------------


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


# --- the synthetic genome ------------------------------------------------------------------------


def genome_path(out: Path, genome_bp: int, seed: int, num_chromosomes: int, gz: bool) -> Path:
    size = f"{genome_bp / 1e6:g}Mbp"
    suffix = ".fa.gz" if gz else ".fa"
    return out / f"synthetic_genome_{size}_seed{seed}_chr{num_chromosomes}{suffix}"


def stage_generate(s: dict) -> dict:
    """Stage body: write the genome (settings: genome_path, genome_bp, seed, num_chromosomes)."""
    from bsm_ray.data.samples import write_synthetic_genome

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


# --- tables --------------------------------------------------------------------------------------


def fmt_amount(amount, unit) -> str:
    if amount is None:
        return "-"
    if unit == "bp":
        return f"{amount / 1e6:,.2f} Mbp"
    return f"{amount / 1e6:,.2f} M tok"


def fmt_rate(amount, unit, seconds) -> str:
    if amount is None or not seconds:
        return "-"
    rate = amount / seconds / 1e6
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
            "-" if r["seconds"] is None else f"{r['seconds']:.3f}",
            fmt_rate(r["amount"], r["unit"], r["seconds"]),
            f"{r['peak_rss_mib']:,.1f}",
            "-" if r["over_baseline_mib"] is None else f"{r['over_baseline_mib']:+,.1f}",
            r.get("notes", ""),
        ]
        for r in rows
    ]
    return format_columns(header, lines, right={1, 2, 3, 4, 5})
