#!/usr/bin/env python
"""MLM masking and k-mer counting throughput benchmark (prints figures; asserts nothing on timing).

    python bench/masking_throughput.py             # default sizes, 50 Mbp genome for counting
    python bench/masking_throughput.py --quick     # small smoke run, a few seconds

What it measures:

1. Masking throughput of the three strategies of `bsm_ray.data.masking` (DNABERT random spans,
   GeneMask, Global PMI masking), side by side: the library functions (a compiled numba row
   kernel; the first call, which compiles or loads it from the cache, is timed apart) against a
   straightforward per-position Python-loop implementation of the same rules, written here
   (`loop_dnabert`, `loop_genemask`, `loop_global`: plain loops over rows and positions). Both
   draw their random numbers from the library's `uniforms(...)` arrays, so they make identical
   decisions; the benchmark checks that the loop and the library produce identical
   masked positions (labels != -100), labels and masked input ids on the rows the loop measured
   (and that the library's rows do not depend on the batch they sit in), prints
   "identical: yes/no" per strategy and exits with status 1 if any is "no" (a correctness check,
   not a timing one). Input: rows of 506 random-DNA 6-mer tokens (511-nt pieces through
   `KmerTokenizer(6).encode_batch`, 512 positions); the library masks `--mask-batches`
   batches of `--batch` (1024) rows per timed run, the loop `--loop-rows` rows (it is slow).
   Tokens are the real k-mer tokens (506 per row). The rank table is the real NPMI table of the
   sample corpus (`sample_inputs()["pmi_fasta"]` counted with `count_fasta`,
   `npmi_from_counts(min_count=20)`, `rank_kmers`, `rank_table`). Goal figures (the issue):
   the library's GeneMask and Global each >= 50x the loop and >= 20M tokens/s on one core; whether
   each is met is printed, never enforced.
2. The masked fraction of each strategy over `--fraction-rows` (10,000) rows (expected about
   13.9% DNABERT, 15.3% GeneMask, 12.1% Global).
3. k-mer counting (k = 1..6) with `count_fasta` over a seeded synthetic genome FASTA (one record
   of `--genome-mbp`, default 50 Mbp; the file bench/ingest_throughput.py generates, reused from
   `--out` when size and seed match), in Mbp/s, and `build_pmi_table(PmiConfig(sample=False,
   fasta=[genome], parallel="local"))` end to end (counting, NPMI, ranks, Parquet).

Every stage runs in a fresh subprocess of this script (hidden `--stage`) started through a tiny
launcher (bench/_harness.py), pinned to one core: `OMP_NUM_THREADS`, `OPENBLAS_NUM_THREADS`,
`MKL_NUM_THREADS`, ... = 1 are in its environment before numpy is imported, and it calls
`os.sched_setaffinity(0, {cpu})` before importing anything else, so every figure is "on one
core". The figure of a timed stage is the median of `--repeats` runs after `--warmup` untimed
run(s); peak RSS is the stage's own ru_maxrss (against an imports-only baseline subprocess).

The tables go to stdout and, with all repeat timings, to `<out>/masking_throughput.json`
(written atomically).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/, for _harness
import _harness as harness  # noqa: E402

RESULT_NAME = "masking_throughput.json"
PIECE_NT = 511  # a full GeneMask piece: 506 6-mers, [CLS] + 506 + [SEP] = 512 positions
K = 6
MASK_SEED = 0
MASK_STEP = 1
MIN_COUNT = 20
STRATEGIES = ("dnabert", "genemask", "global")
EXPECTED_FRACTION = {"dnabert": 0.139, "genemask": 0.153, "global": 0.121}
GOAL_SPEEDUP = 50.0
GOAL_TOKENS_PER_S = 20e6
GOAL_STRATEGIES = ("genemask", "global")
QUICK = {
    "genome_mbp": 2.0,
    "mask_batches": 2,
    "loop_rows": 16,
    "fraction_rows": 2048,
}
DEFAULTS = {
    "genome_mbp": 50.0,
    "mask_batches": 8,
    "loop_rows": 256,
    "fraction_rows": 10_000,
}

# (stage name, what it is); run in this order. "generate" is handled apart (not measured).
STAGES: tuple[tuple[str, str], ...] = (
    ("baseline", "baseline: imports only"),
    ("masking", "masking: bsm_ray vs Python loop"),
    ("mask_fraction", "masked fraction"),
    ("count_kmers", "count_fasta k=1..6"),
    ("build_pmi", "build_pmi_table (end to end)"),
)
STAGE_NAMES = tuple(name for name, _ in STAGES)


# --- the Python-loop reference implementation ---------------------------------------------------
# Plain loops over rows and positions, written from the rules in bsm_ray/data/masking.py. Only the
# random numbers come from numpy: the library's `uniforms` arrays (same seed, sample ids, step and
# stream), so the loop and the library make the same draws:
# - Bernoulli(p) successes over a row's eligible positions (DNABERT and GeneMask centres, Global's
#   k) are the arrivals of a Bernoulli process (`bernoulli_arrivals`): draw i of the row's stream
#   gives the gap 1 + floor(ln(1 - u_i) / ln(1 - p)) to the next success, from first - 1;
# - the replacement of masked position j uses draw j of the replace / random-id streams.


def _loop_prepare(input_ids, attention_mask):
    """Rows as lists, the eligible flags of every row, and each row's first/last eligible."""
    from bsm_ray.tokenizers.kmer import CLS_ID, MASK_ID, PAD_ID, SEP_ID

    not_real = (PAD_ID, CLS_ID, SEP_ID, MASK_ID)
    rows = input_ids.tolist()
    att = attention_mask.tolist()
    eligible, bounds = [], []
    for row, arow in zip(rows, att, strict=True):
        flags = []
        first = last = -1
        for j in range(len(row)):
            ok = arow[j] != 0 and row[j] not in not_real
            flags.append(ok)
            if ok:
                if first < 0:
                    first = j
                last = j
        eligible.append(flags)
        bounds.append((first, last))
    return rows, eligible, bounds


def _loop_successes(draws, flags, bounds, p) -> list[int]:
    """The eligible positions where a Bernoulli(p) trial succeeds, in order (see above)."""
    first, last = bounds
    out: list[int] = []
    if first < 0 or p <= 0:
        return out
    log_q = math.log1p(-p)
    pos = first - 1
    for u in draws:
        pos += 1 + math.floor(math.log1p(-u) / log_q)
        if pos > last:
            break
        if flags[pos]:
            out.append(pos)
    return out


def _loop_span(masked, flags, bounds, lo, hi) -> None:
    """Mask positions lo..hi, clipped to the row's [first, last] eligible position."""
    first, last = bounds
    for j in range(max(lo, first), min(hi, last) + 1):
        if flags[j]:
            masked[j] = True


def _loop_replace(rows, masked_rows, seed, sample_ids, step, vocab_size):
    """80% [MASK], 10% random k-mer id, 10% unchanged; labels -100 where not masked."""
    import numpy as np

    from bsm_ray.data.masking import IGNORE_INDEX, STREAM_RANDOM_ID, STREAM_REPLACE, uniforms
    from bsm_ray.tokenizers.kmer import MASK_ID, NUM_SPECIAL

    length = len(rows[0]) if rows else 0
    u = uniforms(seed, sample_ids, step, STREAM_REPLACE, length).tolist()
    r = None
    out_ids, out_labels = [], []
    for b, row in enumerate(rows):
        ids = list(row)
        labels = [IGNORE_INDEX] * length
        masked = masked_rows[b]
        for j in range(length):
            if not masked[j]:
                continue
            labels[j] = row[j]
            x = u[b][j]
            if x < 0.8:
                ids[j] = MASK_ID
            elif x < 0.9:
                if r is None:
                    r = uniforms(seed, sample_ids, step, STREAM_RANDOM_ID, length).tolist()
                ids[j] = NUM_SPECIAL + int(r[b][j] * (vocab_size - NUM_SPECIAL))
        out_ids.append(ids)
        out_labels.append(labels)
    return np.array(out_ids, dtype=np.int64), np.array(out_labels, dtype=np.int64)


def loop_dnabert(input_ids, attention_mask, seed, sample_ids, step, p=None, vocab_size=4101):
    """DNABERT: centres ~ Bernoulli(p) over eligible positions, each masks c-2..c+3."""
    from bsm_ray.data.masking import DNABERT_P, STREAM_CENTRE, uniforms

    p = DNABERT_P if p is None else p
    rows, eligible, bounds = _loop_prepare(input_ids, attention_mask)
    length = input_ids.shape[1]
    u = uniforms(seed, sample_ids, step, STREAM_CENTRE, length).tolist()
    masked_rows = []
    for b in range(len(rows)):
        flags, masked = eligible[b], [False] * length
        for c in _loop_successes(u[b], flags, bounds[b], p):
            _loop_span(masked, flags, bounds[b], c - 2, c + 3)
        masked_rows.append(masked)
    return _loop_replace(rows, masked_rows, seed, sample_ids, step, vocab_size)


def loop_genemask(
    input_ids, attention_mask, rank_table, seed, sample_ids, step, p=None, vocab_size=4101
):
    """GeneMask: DNABERT centres (p=0.0176) with their 6-spans; the best-ranked k-mer in each
    centre's clipped 6-span (ties: lower position); the best half of the centres by that k-mer
    (ceil(n/2), all when n <= 8; ties: lower position) also mask its 11-span."""
    from bsm_ray.data.masking import GENEMASK_ALL_BELOW, GENEMASK_P, STREAM_CENTRE, uniforms

    p = GENEMASK_P if p is None else p
    rank_of = rank_table.tolist()
    rows, eligible, bounds = _loop_prepare(input_ids, attention_mask)
    length = input_ids.shape[1]
    u = uniforms(seed, sample_ids, step, STREAM_CENTRE, length).tolist()
    masked_rows = []
    for b, row in enumerate(rows):
        flags, masked = eligible[b], [False] * length
        first, last = bounds[b]
        best = []  # (rank, position) of each centre's best k-mer
        for c in _loop_successes(u[b], flags, bounds[b], p):
            _loop_span(masked, flags, bounds[b], c - 2, c + 3)
            best_pos = -1
            for j in range(max(c - 2, first), min(c + 3, last) + 1):
                # strict <: scanning upwards, ties keep the lower position
                if flags[j] and (best_pos < 0 or rank_of[row[j]] < rank_of[row[best_pos]]):
                    best_pos = j
            best.append((rank_of[row[best_pos]], best_pos))
        best.sort()
        n = len(best)
        keep = n if n <= GENEMASK_ALL_BELOW else (n + 1) // 2
        for _rank, j0 in best[:keep]:
            _loop_span(masked, flags, bounds[b], j0 - 5, j0 + 5)
        masked_rows.append(masked)
    return _loop_replace(rows, masked_rows, seed, sample_ids, step, vocab_size)


def loop_global(
    input_ids, attention_mask, rank_table, seed, sample_ids, step, p=None, vocab_size=4101
):
    """Global: k = Bernoulli(p) successes over the eligible positions; the 11-spans of the row's
    k best-ranked positions (ties: lower position)."""
    from bsm_ray.data.masking import GLOBAL_P, STREAM_GLOBAL_K, uniforms

    p = GLOBAL_P if p is None else p
    rank_of = rank_table.tolist()
    rows, eligible, bounds = _loop_prepare(input_ids, attention_mask)
    length = input_ids.shape[1]
    u = uniforms(seed, sample_ids, step, STREAM_GLOBAL_K, length).tolist()
    masked_rows = []
    for b, row in enumerate(rows):
        flags, masked = eligible[b], [False] * length
        k = len(_loop_successes(u[b], flags, bounds[b], p))
        if k:
            order = sorted((rank_of[row[j]], j) for j in range(length) if flags[j])
            for _rank, j0 in order[:k]:
                _loop_span(masked, flags, bounds[b], j0 - 5, j0 + 5)
        masked_rows.append(masked)
    return _loop_replace(rows, masked_rows, seed, sample_ids, step, vocab_size)


LOOP_FUNCTIONS = {"dnabert": loop_dnabert, "genemask": loop_genemask, "global": loop_global}


# --- measuring (used inside the stage subprocesses) --------------------------------------------


def _import_common() -> None:
    """The modules every stage imports first, so the baseline stage is comparable."""
    import numpy  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    import bsm_ray.data.masking  # noqa: F401
    import bsm_ray.data.pmi  # noqa: F401
    import bsm_ray.data.pmi_build  # noqa: F401
    import bsm_ray.ingest.records  # noqa: F401
    import bsm_ray.ingest.samples  # noqa: F401
    import bsm_ray.tokenizers.kmer  # noqa: F401


def _sample_rank_table():
    """The real NPMI rank table of the sample corpus (min_count 20); (table, details)."""
    from bsm_ray.data.pmi import KmerCounter, count_fasta, npmi_from_counts, rank_kmers, rank_table
    from bsm_ray.ingest.samples import sample_inputs

    t0 = time.perf_counter()
    paths = sample_inputs()["pmi_fasta"]
    counter = KmerCounter(K)
    for path in paths:
        counter.merge(count_fasta(path, max_k=K))
    ranks = rank_kmers(npmi_from_counts(counter.as_mapping(), k=K, min_count=MIN_COUNT))
    table = rank_table(ranks, k=K)
    return table, {
        "pmi_fasta": paths,
        "windows": counter.windows(K),
        "kmers_ranked": len(ranks),
        "min_count": MIN_COUNT,
        "seconds": time.perf_counter() - t0,
    }


def _random_rows(seed: int, rows: int):
    """`rows` random-DNA pieces of 511 nt through KmerTokenizer(6).encode_batch (512 positions)."""
    import numpy as np

    from bsm_ray.tokenizers.kmer import KmerTokenizer

    rng = np.random.default_rng(seed)
    letters = np.frombuffer(b"ACGT", dtype=np.uint8)
    codes = letters[rng.integers(0, 4, size=(rows, PIECE_NT))]
    enc = KmerTokenizer(K).encode_batch([bytes(r) for r in codes])
    return enc["input_ids"], enc["attention_mask"]


def _edge_rows(seed: int, rows: int):
    """Rows for the correctness check only: lengths 0..511 nt (so padding, and rows with no
    k-mer at all), N runs ([UNK] k-mers) and lowercase letters."""
    import numpy as np

    from bsm_ray.tokenizers.kmer import KmerTokenizer

    rng = np.random.default_rng(seed)
    letters = np.frombuffer(b"ACGTNacgt", dtype=np.uint8)
    lengths = rng.integers(0, PIECE_NT + 1, size=rows)
    lengths[: min(rows, 4)] = [0, K - 1, K, PIECE_NT][: min(rows, 4)]
    weights = np.array([0.24, 0.24, 0.24, 0.24, 0.01, 0.0075, 0.0075, 0.0075, 0.0075])
    seqs = [bytes(letters[rng.choice(len(letters), size=n, p=weights)]) for n in lengths]
    enc = KmerTokenizer(K).encode_batch(seqs)
    return enc["input_ids"], enc["attention_mask"]


def _library(strategy: str, rank_table):
    from bsm_ray.data.masking import dnabert_mask, genemask_mask, global_mask

    if strategy == "dnabert":
        return lambda ids, att, sid: dnabert_mask(ids, att, MASK_SEED, sid, MASK_STEP)
    fn = genemask_mask if strategy == "genemask" else global_mask
    return lambda ids, att, sid: fn(ids, att, rank_table, MASK_SEED, sid, MASK_STEP)


def _looped(strategy: str, rank_table):
    fn = LOOP_FUNCTIONS[strategy]
    if strategy == "dnabert":
        return lambda ids, att, sid: fn(ids, att, MASK_SEED, sid, MASK_STEP)
    return lambda ids, att, sid: fn(ids, att, rank_table, MASK_SEED, sid, MASK_STEP)


def stage_baseline(s: dict) -> dict:
    return {"amount": None, "unit": None, "times": [], "extra": harness.cpu_pinning()}


def stage_masking(s: dict) -> dict:
    import numpy as np

    from bsm_ray.data.masking import IGNORE_INDEX, eligible_positions

    rank_table, table_info = _sample_rank_table()
    batch, n_batches, loop_rows = s["batch"], s["mask_batches"], s["loop_rows"]
    batches = []
    for i in range(n_batches):
        ids, att = _random_rows(s["input_seed"] + i, batch)
        batches.append((ids, att, np.arange(i * batch, (i + 1) * batch, dtype=np.int64)))
    vec_tokens = sum(int(eligible_positions(ids, att).sum()) for ids, att, _ in batches)
    loop_ids, loop_att = batches[0][0][:loop_rows], batches[0][1][:loop_rows]
    loop_sid = batches[0][2][:loop_rows]
    loop_tokens = int(eligible_positions(loop_ids, loop_att).sum())
    edge_ids, edge_att = _edge_rows(s["input_seed"] + 7, loop_rows)
    edge_sid = np.arange(10**9, 10**9 + loop_rows, dtype=np.int64)
    setup_rss = harness.proc_status_mib("VmRSS")

    results = {}
    for strategy in STRATEGIES:
        vec = _library(strategy, rank_table)
        loop = _looped(strategy, rank_table)

        def run_vec(vec=vec):
            first = None
            for ids, att, sid in batches:
                out = vec(ids, att, sid)
                first = out if first is None else first
            return first  # the first batch's output, for the batch-independence check

        t0 = time.perf_counter()  # compiles the kernel, or loads it from numba's disk cache
        vec(loop_ids[:1], loop_att[:1], loop_sid[:1])
        first_call_s = time.perf_counter() - t0
        vec_times, big = harness.timed(run_vec, s["repeats"], s["warmup"])
        loop_times, (loop_ids_out, loop_labels) = harness.timed(
            lambda loop=loop: loop(loop_ids, loop_att, loop_sid), s["repeats"], s["warmup"]
        )
        # Correctness: the loop against the library on the same rows, and the library's rows
        # against the same rows masked inside the full batch (no dependence on batch make-up).
        small = vec(loop_ids, loop_att, loop_sid)
        same_positions = bool(np.array_equal(loop_labels != IGNORE_INDEX, small.masked))
        same_labels = bool(np.array_equal(loop_labels, small.labels))
        same_ids = bool(np.array_equal(loop_ids_out, small.input_ids))
        batch_free = bool(
            np.array_equal(big.labels[:loop_rows], small.labels)
            and np.array_equal(big.input_ids[:loop_rows], small.input_ids)
        )
        edge_vec = vec(edge_ids, edge_att, edge_sid)
        edge_loop_ids, edge_loop_labels = loop(edge_ids, edge_att, edge_sid)
        edge_same = bool(
            np.array_equal(edge_loop_labels, edge_vec.labels)
            and np.array_equal(edge_loop_ids, edge_vec.input_ids)
        )
        vec_s, loop_s = statistics.median(vec_times), statistics.median(loop_times)
        results[strategy] = {
            "library": {
                "rows": batch * n_batches,
                "batches": n_batches,
                "batch": batch,
                "tokens": vec_tokens,
                "times": vec_times,
                "seconds": vec_s,
                "tokens_per_s": vec_tokens / vec_s,
                "first_call_s": first_call_s,
            },
            "loop": {
                "rows": loop_rows,
                "tokens": loop_tokens,
                "times": loop_times,
                "seconds": loop_s,
                "tokens_per_s": loop_tokens / loop_s,
            },
            "speedup": (vec_tokens / vec_s) / (loop_tokens / loop_s),
            "checked_rows": loop_rows,
            "same_masked_positions": same_positions,
            "same_labels": same_labels,
            "same_input_ids": same_ids,
            "library_independent_of_batch": batch_free,
            "edge_rows_same": edge_same,
            "identical": same_positions and same_labels and same_ids and batch_free and edge_same,
            "masked_in_checked_rows": int(small.masked.sum()),
            "masked_in_edge_rows": int(edge_vec.masked.sum()),
        }
    return {
        "amount": None,
        "unit": "tokens",
        "times": [],
        "strategies": results,
        "extra": {
            "rank_table": table_info,
            "rss_after_setup_mib": setup_rss,
            "tokens_per_row": PIECE_NT - K + 1,
            **harness.cpu_pinning(),
        },
    }


def stage_mask_fraction(s: dict) -> dict:
    import numpy as np

    from bsm_ray.data.masking import eligible_positions

    rank_table, table_info = _sample_rank_table()
    total, batch = s["fraction_rows"], s["batch"]
    counts = {st: 0 for st in STRATEGIES}
    eligible = 0
    for start in range(0, total, batch):
        n = min(batch, total - start)
        ids, att = _random_rows(s["input_seed"] + 1_000_000 + start, n)
        sid = np.arange(start, start + n, dtype=np.int64)
        eligible += int(eligible_positions(ids, att).sum())
        for st in STRATEGIES:
            counts[st] += int(_library(st, rank_table)(ids, att, sid).masked.sum())
    return {
        "amount": None,
        "unit": None,
        "times": [],
        "fractions": {
            st: {
                "rows": total,
                "eligible_tokens": eligible,
                "masked_tokens": counts[st],
                "fraction": counts[st] / eligible,
                "expected": EXPECTED_FRACTION[st],
            }
            for st in STRATEGIES
        },
        "extra": {"rank_table": table_info, **harness.cpu_pinning()},
    }


def stage_count_kmers(s: dict) -> dict:
    from bsm_ray.data.pmi import count_fasta

    path = s["genome_path"]
    times, counter = harness.timed(lambda: count_fasta(path, max_k=K), s["repeats"], s["warmup"])
    windows = {k: counter.windows(k) for k in range(1, K + 1)}
    return {
        "amount": s["genome_bp"],
        "unit": "bp",
        "times": times,
        "notes": f"k=1..{K}; {windows[K] / 1e6:,.1f} M {K}-mer windows counted",
        "extra": {"windows": windows, **harness.cpu_pinning()},
    }


def stage_build_pmi(s: dict) -> dict:
    from bsm_ray.data.pmi_build import PmiConfig, build_pmi_table

    output = Path(s["work_dir"]) / "npmi_bench.parquet"

    def run():
        return build_pmi_table(
            PmiConfig(
                output=str(output),
                sample=False,
                fasta=[s["genome_path"]],
                parallel="local",
                progress=False,
            )
        )

    try:
        times, result = harness.timed(run, s["repeats"], s["warmup"])
        table_bytes = output.stat().st_size
    finally:
        output.unlink(missing_ok=True)
    return {
        "amount": s["genome_bp"],
        "unit": "bp",
        "times": times,
        "notes": f"{result.num_kmers_scored:,d} {K}-mers scored, local counting",
        "extra": {
            "kmers_scored": result.num_kmers_scored,
            "windows": result.windows,
            "used_ray": result.parallel,
            "table_bytes": table_bytes,
            "top": result.top,
            **harness.cpu_pinning(),
        },
    }


STAGE_FUNCTIONS = {
    "generate": harness.stage_generate,
    "baseline": stage_baseline,
    "masking": stage_masking,
    "mask_fraction": stage_mask_fraction,
    "count_kmers": stage_count_kmers,
    "build_pmi": stage_build_pmi,
}


# --- the driver (standard library only) ---------------------------------------------------------


def _rate(tokens_per_s: float) -> str:
    return f"{tokens_per_s / 1e6:,.2f} M tok/s"


def format_masking(strategies: dict) -> str:
    header = ("strategy", "implementation", "rows", "tokens", "seconds", "tokens/s", "speed-up")
    lines = []
    for st in STRATEGIES:
        r = strategies[st]
        for impl, label in (("library", "bsm_ray (compiled)"), ("loop", "Python loop")):
            m = r[impl]
            rows = (
                f"{m['batches']} x {m['batch']:,d}" if impl == "library" else f"{m['rows']:,d}"
            )
            lines.append(
                [
                    st if impl == "library" else "",
                    label,
                    rows,
                    f"{m['tokens']:,d}",
                    f"{m['seconds']:.4f}",
                    _rate(m["tokens_per_s"]),
                    f"{r['speedup']:,.0f}x" if impl == "library" else "",
                ]
            )
    first = ", ".join(
        f"{st} {strategies[st]['library']['first_call_s']:.2f} s" for st in STRATEGIES
    )
    table = harness.format_columns(header, lines, right={2, 3, 4, 5, 6})
    return f"{table}\nfirst call of each kernel (compile, or load from numba's cache): {first}"


def format_fractions(fractions: dict) -> str:
    header = ("strategy", "rows", "tokens", "masked", "masked fraction", "expected")
    lines = [
        [
            st,
            f"{f['rows']:,d}",
            f"{f['eligible_tokens']:,d}",
            f"{f['masked_tokens']:,d}",
            f"{100 * f['fraction']:.2f}%",
            f"~{100 * f['expected']:.1f}%",
        ]
        for st, f in ((st, fractions[st]) for st in STRATEGIES)
    ]
    return harness.format_columns(header, lines, right={1, 2, 3, 4, 5})


def _goals(strategies: dict) -> dict:
    goals = {}
    for st in GOAL_STRATEGIES:
        r = strategies[st]
        fast = r["library"]["tokens_per_s"] >= GOAL_TOKENS_PER_S
        ahead = r["speedup"] >= GOAL_SPEEDUP
        goals[st] = {"speedup_met": ahead, "tokens_per_s_met": fast, "met": ahead and fast}
    return goals


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="MLM masking (bsm_ray vs Python loop) and k-mer counting throughput."
    )
    p.add_argument(
        "--genome-mbp",
        type=float,
        default=None,
        help=f"genome size in Mbp for the counting rows; default {DEFAULTS['genome_mbp']:g} "
        f"({QUICK['genome_mbp']:g} with --quick)",
    )
    harness.add_out_arg(
        p, "folder for the genome (shared with ingest_throughput.py) and the JSON result"
    )
    p.add_argument("--seed", type=int, default=0, help="genome seed (and random-row seed)")
    p.add_argument("--batch", type=int, default=1024, help="rows per library masking batch")
    p.add_argument(
        "--mask-batches",
        type=int,
        default=None,
        help=f"batches per timed library run (default {DEFAULTS['mask_batches']}, "
        f"{QUICK['mask_batches']} quick)",
    )
    p.add_argument(
        "--loop-rows",
        type=int,
        default=None,
        help=f"rows the Python loop masks per timed run, and the rows compared "
        f"(default {DEFAULTS['loop_rows']}, {QUICK['loop_rows']} quick)",
    )
    p.add_argument(
        "--fraction-rows",
        type=int,
        default=None,
        help=f"rows for the masked fraction (default {DEFAULTS['fraction_rows']:,d}, "
        f"{QUICK['fraction_rows']:,d} quick)",
    )
    p.add_argument(
        "--cpu",
        type=int,
        default=None,
        help="core every stage is pinned to (default: the lowest this process may use)",
    )
    harness.add_stage_run_args(
        p,
        STAGE_NAMES,
        repeats_help="timed runs per measurement (median)",
        quick_help="small smoke run (a few seconds)",
    )
    harness.add_hidden_stage_args(p, STAGE_FUNCTIONS)
    args = p.parse_args(argv)
    harness.fill_defaults(args, QUICK, DEFAULTS)
    if args.genome_mbp <= 0:
        p.error("--genome-mbp must be positive")
    if min(args.batch, args.mask_batches, args.loop_rows, args.fraction_rows) < 1:
        p.error("--batch, --mask-batches, --loop-rows and --fraction-rows must be >= 1")
    if args.loop_rows > args.batch:
        p.error("--loop-rows must be <= --batch (the loop's rows are the first batch's first)")
    if args.repeats < 1 or args.warmup < 0:
        p.error("--repeats >= 1 and --warmup >= 0 are required")
    harness.check_stages(p, args.stages, STAGE_NAMES)
    if args.cpu is None:
        args.cpu = harness.default_cpu()
    return args


def print_masking(strategies: dict, goals: dict, identical: dict, rank_table: dict) -> None:
    """The masking table, the loop-vs-library check per strategy and the goals."""
    print()
    print(
        f"masking throughput on one core: rows of {PIECE_NT - K + 1} random-DNA {K}-mer "
        f"tokens ({PIECE_NT} nt, {PIECE_NT + 1} positions); tokens/s = real k-mer tokens; "
        f"rank table: sample corpus NPMI, {rank_table['kmers_ranked']:,d} {K}-mers ranked "
        f"(min_count {rank_table['min_count']})"
    )
    print(format_masking(strategies))
    for st in STRATEGIES:
        s = strategies[st]
        detail = ", ".join(
            f"{what} {'same' if s[key] else 'DIFFERENT'}"
            for what, key in (
                ("masked positions", "same_masked_positions"),
                ("labels", "same_labels"),
                ("input ids", "same_input_ids"),
                ("vs. full batch", "library_independent_of_batch"),
                (f"{s['checked_rows']} varied-length rows", "edge_rows_same"),
            )
        )
        print(
            f"{st:<8}  identical: {identical[st]}  (loop vs bsm_ray on the "
            f"{s['checked_rows']} measured rows, {s['masked_in_checked_rows']:,d} masked: "
            f"{detail})"
        )
    for st in GOAL_STRATEGIES:
        s, g = strategies[st], goals[st]
        print(
            f"goal {st:<8}  >= {GOAL_SPEEDUP:g}x loop: {'yes' if g['speedup_met'] else 'no'} "
            f"({s['speedup']:,.0f}x); >= {GOAL_TOKENS_PER_S / 1e6:g}M tokens/s on one core: "
            f"{'yes' if g['tokens_per_s_met'] else 'no'} "
            f"({s['library']['tokens_per_s'] / 1e6:,.1f}M) -> "
            f"{'met' if g['met'] else 'NOT met'}"
        )


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if harness.run_stage_from_args(args, STAGE_FUNCTIONS, _import_common, pin_cpu=True):
        return {}

    out, work_dir = harness.make_out_dirs(args.out, ".stages-masking")
    genome_bp = int(round(args.genome_mbp * 1e6))
    path = harness.genome_path(out, genome_bp, args.seed, 1, False)
    settings = {
        "genome_path": str(path),
        "genome_bp": genome_bp,
        "seed": args.seed,
        "num_chromosomes": 1,
        "input_seed": args.seed,
        "batch": args.batch,
        "mask_batches": args.mask_batches,
        "loop_rows": args.loop_rows,
        "fraction_rows": args.fraction_rows,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "cpu": args.cpu,
        "work_dir": str(work_dir),
    }
    started = time.time()
    wanted = harness.wanted_stages(args.stages, STAGE_NAMES)
    genome = None
    if {"count_kmers", "build_pmi"} & set(wanted):
        genome = harness.ensure_genome(
            __file__, settings, work_dir, gzip=False, regenerate=args.regenerate
        )
    # Every stage on one core (`--cpu`) with one thread per pool.
    results = harness.run_stages(__file__, wanted, settings, work_dir, env=harness.thread_env(1))
    baseline = results["baseline"]["peak_rss_mib"]
    pinned = results["baseline"]["extra"].get("cpu_affinity")
    core_note = (
        f"pinned to one core (CPU {args.cpu}; sched_setaffinity {pinned}), "
        f"{', '.join(harness.THREAD_VARS[:3])}... = 1"
        if pinned == [args.cpu]
        else f"NOT pinned (affinity {pinned}); threads env = 1"
    )

    report: dict = {
        "benchmark": "masking_throughput",
        "created_unix": started,
        "settings": {**settings, "genome_mbp": args.genome_mbp, "quick": bool(args.quick)},
        "one_core": core_note,
        "stages": {},
    }
    print(
        f"every stage in its own subprocess, {core_note}; median of {args.repeats} after "
        f"{args.warmup} warm-up"
    )
    # The correctness check: "yes" per strategy where the loop and the library agree.
    identical: dict[str, str] = {}
    if "masking" in results:
        r = results["masking"]
        strategies = r["strategies"]
        goals = _goals(strategies)
        identical = {st: "yes" if strategies[st]["identical"] else "no" for st in STRATEGIES}
        print_masking(strategies, goals, identical, r["extra"]["rank_table"])
        report["masking"] = {"strategies": strategies, "goals": goals}
    if "mask_fraction" in results:
        fractions = results["mask_fraction"]["fractions"]
        print()
        print("masked fraction (bsm_ray, masked / real k-mer tokens) on one core:")
        print(format_fractions(fractions))
        report["mask_fraction"] = fractions
    report["identical"] = identical

    notes = {
        "masking": "rank table, inputs, 3 strategies x 2 implementations",
        "mask_fraction": f"{args.fraction_rows:,d} rows x 3 strategies",
    }
    labels = dict(STAGES)
    rows = [
        harness.stage_row(name, labels[name], r, baseline, notes.get(name))
        for name, r in results.items()
    ]
    report["stages"] = {row["stage"]: row for row in rows}
    if genome is not None:
        report["genome"] = {"path": str(path), **genome}
    report["machine"] = harness.machine_info(("numpy", "pyarrow"))
    report["baseline_rss_mib"] = baseline
    report["driver_peak_rss_mib"] = harness.peak_rss_mib()
    report["wall_seconds"] = time.time() - started
    result_path = out / RESULT_NAME
    harness.atomic_write_json(result_path, report)

    print()
    if genome is not None:
        print(
            f"k-mer counting on one core: genome {path} ({genome_bp / 1e6:g} Mbp, one record, "
            f"seed {args.seed}{', reused' if genome['reused'] else ''}); "
            "peak RSS = ru_maxrss of each stage's own subprocess"
        )
    print(harness.format_table(rows))
    print(harness.baseline_summary(baseline, result_path))
    harness.remove_if_empty(work_dir)
    different = [st for st, same in identical.items() if same != "yes"]
    if different:
        print(
            f"ERROR: the Python loop and the library's masking differ for {', '.join(different)}",
            file=sys.stderr,
        )
        raise SystemExit(1)
    return report


if __name__ == "__main__":
    main()
