#!/usr/bin/env python
"""Ingestion and tokenizer throughput benchmark (prints figures; asserts nothing on timing).

    python bench/ingest_throughput.py                 # 50 Mbp genome as ONE record (default)
    python bench/ingest_throughput.py --quick         # 2 Mbp smoke run, a few seconds
    python bench/ingest_throughput.py --genome-mbp 200 --gzip --chunk-mb 8

What it measures, on one seeded synthetic genome FASTA (`write_synthetic_genome`; generated
once under `--out` and reused while size, seed, record count and compression match):

- ingestion end to end through the real job code: `prepare_dataset(PrepareConfig(sample=False,
  genome=GenomeConfig(fasta=[path]), on_invalid="skip", progress=False))`, i.e. input hashing,
  FASTA streaming, GeneMask piece cutting, dedup, Parquet shards and the manifest. Mbp/s is
  genome bp read (`genome/bp_read`) / seconds; pieces written are the genome rows of the manifest;
- its parts in isolation: the FASTA reader `iter_fasta` alone, and `build_genome_pieces` alone
  (pieces cut and counted, nothing written), both with `--chunk-mb` chunks (prepare_dataset
  uses the library default of 4 MiB);
- as a baseline, Biopython's `SeqIO.parse(path, "fasta")` reading the same file;
- text inputs (generated once under `--out`): seeded JSONL web documents of plain prose and
  with sequences in several layouts, through `prepare_dataset` and next to `json.loads` of the
  same lines alone; the web detector's decision alone on the prose texts; a GenBank file of real
  records (NC_000932, arab1, NC_005816 repeated with their own VERSION) through
  `prepare_dataset` next to `Bio.SeqIO.parse(path, "genbank")` alone; and the three files and
  the genome (one chromosome, cut inside it) in one preparation cut into `--mixed-unit-mb`
  units, parallel=local vs Ray with 1 and 2 workers (a Ray of the stage's own; speed-up =
  local seconds / Ray seconds) and vs the same local preparation with every phase's calls
  handed to 2 plain forked processes (`mixed_processes_2`: the machine's own ceiling for this
  work, without Ray; its peak RSS is the parent's alone); all must give one dataset_sha256,
  printed. Ratios are printed under the table (and in the JSON);
- tokenizers on the same genome (uppercased): k-mer `kmer_ids` over the whole sequence,
  k-mer `encode_batch` over 511-nt pieces in batches of 1024, and the BSM character tokenizer's
  `encode` / `encode_batch` over the first `--char-mbp` Mbp cut into 1024-letter `<dna>`
  documents (`encode_batch` in batches of 1024 documents).

Every measured stage runs `--warmup` un-timed run(s) and then `--repeats` timed runs; the figure
is the median. Each stage runs in a fresh subprocess of this script (hidden `--stage`), which at
the end reads its own peak resident set size, `getrusage(RUSAGE_SELF).ru_maxrss` (KiB on
Linux), reported in MiB. A "baseline" subprocess that only imports the same modules shows the
fixed cost, so the increment of every stage is visible (column "+base"). On Linux a child's
ru_maxrss starts from the high-water mark of the process image it was exec'ed from (its parent's,
with fork or vfork), so a big caller (say, pytest calling `main()`) would inflate every figure:
each stage is therefore started through a tiny launcher interpreter, whose own small image is
what the stage inherits. `VmHWM` from /proc/self/status (the stage's own image only) is recorded
next to ru_maxrss in the JSON as a cross-check.

The table goes to stdout and, with more detail (all repeat timings, RSS after input set-up,
ingestion statistics), to `<out>/ingest_throughput.json` (written atomically).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/, for _harness
import _harness as harness  # noqa: E402

RESULT_NAME = "ingest_throughput.json"
KMER_PIECE_NT = 511  # a full GeneMask piece: 506 6-mers
KMER_BATCH = 1024
CHAR_DOC_LETTERS = 1024
CHAR_BATCH = 1024
QUICK_GENOME_MBP = 2.0
QUICK_CHAR_MBP = 1.0

# (stage name, what it is); run in this order. "generate" is handled apart (not measured).
STAGES: tuple[tuple[str, str], ...] = (
    ("baseline", "baseline: imports only"),
    ("read_iter_fasta", "iter_fasta (bsm_ray reader)"),
    ("read_biopython", "Bio.SeqIO.parse fasta"),
    ("genome_pieces", "build_genome_pieces (no write)"),
    ("prepare", "prepare_dataset (end to end)"),
    ("kmer_ids", "kmer-6 kmer_ids (whole seq)"),
    ("kmer_encode_batch", "kmer-6 encode_batch"),
    ("char_encode", "bsm-char encode"),
    ("char_encode_batch", "bsm-char encode_batch"),
    ("web_json_loads", "json.loads alone (web prose)"),
    ("web_detector", "web detector alone (prose)"),
    ("web_prose", "prepare_dataset web prose"),
    ("web_seq_json_loads", "json.loads alone (web w/ seqs)"),
    ("web_sequences", "prepare_dataset web w/ seqs"),
    ("genbank_seqio", "Bio.SeqIO.parse genbank"),
    ("genbank_prepare", "prepare_dataset GenBank"),
    ("mixed_local", "prepare mixed, parallel=local"),
    ("mixed_ray_1", "prepare mixed, ray 1 worker"),
    ("mixed_ray_2", "prepare mixed, ray 2 workers"),
    ("mixed_processes_2", "prepare mixed, 2 plain processes"),
)
STAGE_NAMES = tuple(name for name, _ in STAGES)


# --- measuring (used inside the stage subprocesses) --------------------------------------------


def _import_common() -> None:
    """The modules every stage imports first, so the baseline stage is comparable."""
    import numpy  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    from Bio import SeqIO  # noqa: F401

    import bsm_ray.ingest.builders  # noqa: F401
    import bsm_ray.ingest.prepare  # noqa: F401
    import bsm_ray.ingest.records  # noqa: F401
    import bsm_ray.ingest.samples  # noqa: F401
    import bsm_ray.tokenizers.char  # noqa: F401
    import bsm_ray.tokenizers.kmer  # noqa: F401


def _load_sequence(path: str, limit_bp: int | None = None) -> bytes:
    """The genome's records concatenated and uppercased (soft-masking dropped), N kept.

    Read with `iter_fasta` and stopped after `limit_bp` letters when given.
    """
    from bsm_ray.ingest.records import iter_fasta

    parts: list[bytes] = []
    size = 0
    for chunk in iter_fasta(path):
        seq = chunk.seq.upper()
        if limit_bp is not None and size + len(seq) > limit_bp:
            seq = seq[: limit_bp - size]
        parts.append(seq)
        size += len(seq)
        if limit_bp is not None and size >= limit_bp:
            break
    seq = b"".join(parts)
    del parts
    return seq


# --- the stages ---------------------------------------------------------------------------------
# Each returns a dict with "amount" (bp or tokens), "unit" ("bp" or "tokens"), "times" (seconds of
# each timed repeat), optionally "notes" (a short string for the table) and "extra" (for the JSON).


def stage_baseline(s: dict) -> dict:
    return {"amount": None, "unit": None, "times": []}


def stage_read_iter_fasta(s: dict) -> dict:
    from bsm_ray.ingest.records import iter_fasta

    def run():
        bp = records = 0
        for chunk in iter_fasta(s["genome_path"], chunk_bytes=s["chunk_bytes"]):
            bp += len(chunk.seq)
            records += chunk.first
        return bp, records

    times, (bp, records) = harness.timed(run, s["repeats"], s["warmup"])
    return {
        "amount": bp,
        "unit": "bp",
        "times": times,
        "notes": f"{records} record(s), chunk {s['chunk_bytes'] / 2**20:g} MiB",
        "extra": {"records": records, "chunk_bytes": s["chunk_bytes"]},
    }


def stage_read_biopython(s: dict) -> dict:
    import gzip

    from Bio import SeqIO

    path = s["genome_path"]

    def run():
        bp = records = 0
        handle = gzip.open(path, "rt") if path.endswith(".gz") else path
        try:
            for record in SeqIO.parse(handle, "fasta"):
                bp += len(record.seq)
                records += 1
        finally:
            if not isinstance(handle, str):
                handle.close()
        return bp, records

    times, (bp, records) = harness.timed(run, s["repeats"], s["warmup"])
    return {
        "amount": bp,
        "unit": "bp",
        "times": times,
        "notes": f"{records} record(s)",
        "extra": {"records": records},
    }


def stage_genome_pieces(s: dict) -> dict:
    from bsm_ray.ingest.builders import BuildContext, GenomeConfig, build_genome_pieces
    from bsm_ray.ingest.records import Ledger

    path = s["genome_path"]

    def run():
        ctx = BuildContext(Ledger(on_invalid="skip"), seed=s["seed"])
        rows = 0
        for _split, _row in build_genome_pieces(
            GenomeConfig(fasta=[path]), path, ctx, chunk_bytes=s["chunk_bytes"]
        ):
            rows += 1
        return rows, ctx.stats

    times, (rows, stats) = harness.timed(run, s["repeats"], s["warmup"])
    return {
        "amount": stats.get("genome/bp_read", 0),
        "unit": "bp",
        "times": times,
        "notes": f"{rows:,d} pieces cut, chunk {s['chunk_bytes'] / 2**20:g} MiB",
        "extra": {"pieces": rows, "stats": stats, "chunk_bytes": s["chunk_bytes"]},
    }


def stage_prepare(s: dict) -> dict:
    import shutil

    from bsm_ray.ingest.builders import GenomeConfig
    from bsm_ray.ingest.prepare import PrepareConfig, prepare_dataset

    path = s["genome_path"]
    output_dir = s["dataset_dir"]

    def run():
        return prepare_dataset(
            PrepareConfig(
                sample=False,
                output_dir=output_dir,
                seed=s["seed"],
                genome=GenomeConfig(fasta=[path]),
                progress=False,
                on_invalid="skip",
            )
        )

    try:
        times, result = harness.timed(run, s["repeats"], s["warmup"])
        manifest = result.manifest
        genome_totals = manifest["totals"].get("genome", {})
        pieces = sum(t["rows"] for t in genome_totals.values())
        kmers = sum(t["tokens"] for t in genome_totals.values())
        shard_bytes = sum(
            info["num_bytes"]
            for split in manifest["shards"].get("genome", {}).values()
            for info in split
        )
    finally:
        if not s["keep_dataset"]:
            shutil.rmtree(output_dir, ignore_errors=True)
    stats = manifest["stats"]
    return {
        "amount": stats.get("genome/bp_read", 0),
        "unit": "bp",
        "times": times,
        "notes": f"{pieces:,d} pieces written",
        "extra": {
            "pieces_written": pieces,
            "kmers_written": kmers,
            "shard_bytes": shard_bytes,
            "stats": stats,
            "ledger": manifest["ledger"],
            "dataset_sha256": manifest["dataset_sha256"],
            "dataset_dir": output_dir if s["keep_dataset"] else None,
        },
    }


def stage_kmer_ids(s: dict) -> dict:
    from bsm_ray.tokenizers.kmer import KmerTokenizer

    tok = KmerTokenizer(6)
    seq = _load_sequence(s["genome_path"])
    setup_rss = harness.proc_status_mib("VmRSS")
    times, ids = harness.timed(lambda: tok.kmer_ids(seq), s["repeats"], s["warmup"])
    n = int(ids.size)
    return {
        "amount": n,
        "unit": "tokens",
        "times": times,
        "notes": f"one {len(seq) / 1e6:.1f} Mbp sequence, held: {len(seq) / 2**20:.0f} MiB",
        "extra": {"sequence_bp": len(seq), "rss_after_setup_mib": setup_rss},
    }


def stage_kmer_encode_batch(s: dict) -> dict:
    from bsm_ray.tokenizers.kmer import KmerTokenizer

    tok = KmerTokenizer(6)
    seq = _load_sequence(s["genome_path"])
    pieces = [
        seq[i : i + KMER_PIECE_NT].decode("ascii")
        for i in range(0, len(seq) - KMER_PIECE_NT + 1, KMER_PIECE_NT)
    ]
    del seq
    batches = [pieces[i : i + KMER_BATCH] for i in range(0, len(pieces), KMER_BATCH)]
    setup_rss = harness.proc_status_mib("VmRSS")

    def run():
        kept = 0
        for batch in batches:
            out = tok.encode_batch(batch)
            kept += out["input_ids"].shape[0]
        return kept

    times, rows = harness.timed(run, s["repeats"], s["warmup"])
    kmers = rows * (KMER_PIECE_NT - tok.k + 1)
    return {
        "amount": kmers,
        "unit": "tokens",
        "times": times,
        "notes": f"{len(pieces):,d} x {KMER_PIECE_NT} nt, {KMER_BATCH}/batch",
        "extra": {
            "pieces": len(pieces),
            "batch": KMER_BATCH,
            "tokens_counted": "k-mers (506 per piece; [CLS]/[SEP]/[PAD] excluded)",
            "rss_after_setup_mib": setup_rss,
        },
    }


def _char_documents(s: dict) -> list[str]:
    from bsm_ray.tokenizers.char import format_document

    seq = _load_sequence(s["genome_path"], limit_bp=s["char_bp"]).decode("ascii")
    return [
        format_document([("dna", seq[i : i + CHAR_DOC_LETTERS])])
        for i in range(0, len(seq), CHAR_DOC_LETTERS)
    ]


def stage_char_encode(s: dict) -> dict:
    from bsm_ray.tokenizers.char import BsmCharTokenizer

    tok = BsmCharTokenizer()
    docs = _char_documents(s)
    tokens = sum(tok.count_tokens(d) for d in docs)
    setup_rss = harness.proc_status_mib("VmRSS")

    def run():
        n = 0
        for d in docs:
            n += tok.encode(d).size
        return n

    times, n = harness.timed(run, s["repeats"], s["warmup"])
    assert n == tokens, (n, tokens)  # correctness of the count, not timing
    letters = sum(len(d) for d in docs) - len(docs) * len("<dna>")
    return {
        "amount": tokens,
        "unit": "tokens",
        "times": times,
        "notes": f"{len(docs):,d} docs of {CHAR_DOC_LETTERS} letters ({letters / 1e6:g} Mbp)",
        "extra": {"documents": len(docs), "letters": letters, "rss_after_setup_mib": setup_rss},
    }


def stage_char_encode_batch(s: dict) -> dict:
    from bsm_ray.tokenizers.char import BsmCharTokenizer

    tok = BsmCharTokenizer()
    docs = _char_documents(s)
    tokens = sum(tok.count_tokens(d) for d in docs)
    batches = [docs[i : i + CHAR_BATCH] for i in range(0, len(docs), CHAR_BATCH)]
    setup_rss = harness.proc_status_mib("VmRSS")

    def run():
        n = 0
        for batch in batches:
            ids, _offsets = tok.encode_batch(batch)
            n += ids.size
        return n

    times, n = harness.timed(run, s["repeats"], s["warmup"])
    assert n == tokens, (n, tokens)
    return {
        "amount": tokens,
        "unit": "tokens",
        "times": times,
        "notes": f"{len(docs):,d} docs, {CHAR_BATCH}/batch",
        "extra": {"documents": len(docs), "batch": CHAR_BATCH, "rss_after_setup_mib": setup_rss},
    }


# --- text inputs: web documents and GenBank (bytes in, MB/s) ------------------------------------

_WORDS = (
    "the of and to in is that for it as with was on be by this are from at or an which have not "
    "but had they his were her all one their there been has more can if will would who when what "
    "so out up about into than them only other time new some could these two may first then do "
    "any like my now over such our man me even most made after also did many before must through "
    "years where much your way well down should because each just those people how too little "
    "state good very make world still own see men work long get here between both life being "
    "under never day same another know while last might great old year off come since against "
    "go came right used take three genes cells proteins evolution species organisms molecular "
    "biology chromosome inheritance transcription students learning education teachers science"
).split()


def write_web_documents(path: Path, num_bytes: int, seed: int, with_sequences: bool) -> None:
    """Seeded JSONL documents of prose (about 4 KB each); with sequences, every other document
    holds three to five DNA or protein sequences (inline, wrapped FASTA, groups of 10); of
    prose, only the first (so that the preparation has a row to publish)."""
    import json
    import random

    rnd = random.Random(seed)
    tmp = path.with_name(path.name + ".tmp")
    written = 0
    with open(tmp, "w", encoding="utf-8") as fh:
        i = 0
        while written < num_bytes:
            words = [rnd.choice(_WORDS) for _ in range(rnd.randint(500, 900))]
            for j in range(12, len(words), rnd.randint(12, 20)):
                words[j] = words[j].capitalize()
                words[j - 1] += "."
            text = " ".join(words)
            if (with_sequences and i % 2 == 0) or i == 0:  # prose: one document gives a row
                parts = [text[: len(text) // 2]]
                for k in range(rnd.randint(3, 5)):
                    alphabet = "ACGT" if k % 2 == 0 else "ACDEFGHIKLMNPQRSTVWY"
                    seq = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(60, 400)))
                    if k % 3 == 1:
                        seq = ">seq\n" + "\n".join(seq[x : x + 60] for x in range(0, len(seq), 60))
                    elif k % 3 == 2:
                        seq = " ".join(seq[x : x + 10] for x in range(0, len(seq), 10))
                    parts.append("\n" + seq + "\n")
                parts.append(text[len(text) // 2 :])
                text = " ".join(parts)
            # Ids of their own per file: the mixed stage prepares both files in one dataset.
            doc_id = f"{'seqdoc' if with_sequences else 'doc'}{i}"
            line = json.dumps({"id": doc_id, "text": text}) + "\n"
            fh.write(line)
            written += len(line.encode())
            i += 1
    tmp.replace(path)


def write_genbank(path: Path, num_bytes: int, sources: list[str]) -> None:
    """Real GenBank records repeated, each copy with its own VERSION (so no duplicate ids)."""
    import re

    texts = [Path(p).read_text() for p in sources]
    tmp = path.with_name(path.name + ".tmp")
    written, copy = 0, 0
    with open(tmp, "w") as fh:
        while written < num_bytes:
            for text in texts:
                copy += 1
                out = re.sub(r"^(VERSION\s+\S+?)\.\d+", rf"\g<1>.{copy}", text, flags=re.M)
                fh.write(out)
                written += len(out)
    tmp.replace(path)


def ensure_text_inputs(out: Path, web_mb: float, genbank_mb: float, seed: int) -> dict:
    """Generate (or reuse) the web and GenBank inputs; return their paths."""
    from bsm_ray.ingest.samples import biopython_tests_dir

    gb_dir = biopython_tests_dir() / "GenBank"
    paths = {
        "web_prose_path": out / f"web_prose_{web_mb:g}mb_seed{seed}.jsonl",
        "web_seq_path": out / f"web_seq_{web_mb:g}mb_seed{seed}_ids2.jsonl",
        "genbank_path": out / f"genbank_{genbank_mb:g}mb.gb",
    }
    if not paths["web_prose_path"].exists():
        write_web_documents(paths["web_prose_path"], int(web_mb * 1e6), seed, False)
    if not paths["web_seq_path"].exists():
        write_web_documents(paths["web_seq_path"], int(web_mb * 1e6), seed + 1, True)
    if not paths["genbank_path"].exists():
        names = ("NC_000932.gb", "arab1.gb", "NC_005816.gb")
        sources = [str(gb_dir / n) for n in names]
        write_genbank(paths["genbank_path"], int(genbank_mb * 1e6), sources)
    return {k: str(v) for k, v in paths.items()}


def _bytes_stage(s: dict, path: str, run, notes) -> dict:
    times, value = harness.timed(run, s["repeats"], s["warmup"])
    return {"amount": Path(path).stat().st_size, "unit": "bytes", "times": times,
            "notes": notes(value), "extra": {"path": path}}  # fmt: skip


def _json_loads_stage(s: dict, path: str) -> dict:
    import json

    def run():
        n = 0
        with open(path, "rb") as fh:
            for line in fh:
                json.loads(line)
                n += 1
        return n

    return _bytes_stage(s, path, run, lambda n: f"{n:,d} documents")


def stage_web_json_loads(s: dict) -> dict:
    return _json_loads_stage(s, s["web_prose_path"])


def stage_web_seq_json_loads(s: dict) -> dict:
    return _json_loads_stage(s, s["web_seq_path"])


def stage_web_detector(s: dict) -> dict:
    """The detector's decision per document (bound, then rules where needed), texts in memory."""
    import json

    from bsm_ray.ingest.builders import WebConfig
    from bsm_ray.ingest.detect import candidate_blocks, detect_sequences

    cfg = WebConfig()
    with open(s["web_prose_path"], "rb") as fh:
        texts = [json.loads(line)["text"] for line in fh]
    num_bytes = sum(len(t.encode()) for t in texts)

    def run():
        kept = 0
        for text in texts:
            if candidate_blocks(text, cfg.detector) >= cfg.min_sequences:
                kept += len(detect_sequences(text, cfg.detector)) >= cfg.min_sequences
        return kept

    times, kept = harness.timed(run, s["repeats"], s["warmup"])
    return {"amount": num_bytes, "unit": "bytes", "times": times,
            "notes": f"{len(texts):,d} texts, {kept} kept (UTF-8 bytes of the texts)"}  # fmt: skip


def _prepare_stage(s: dict, path: str, kind: str, **cfg) -> dict:
    import shutil

    from bsm_ray.ingest.builders import RefSeqConfig, WebConfig
    from bsm_ray.ingest.prepare import PrepareConfig, prepare_dataset

    out = s["dataset_dir"] + "-" + kind
    inputs = {"web": WebConfig(documents=[path])} if kind == "web" else {
        "refseq": RefSeqConfig(genbank=[path])}  # fmt: skip

    shard_kind = "web" if kind == "web" else "refseq_pair"

    def run():
        config = PrepareConfig(sample=False, output_dir=out, progress=False, on_invalid="skip",
                               parallel="local", **inputs, **cfg)  # fmt: skip
        return prepare_dataset(config)

    def notes(result) -> str:
        totals = result.manifest["totals"].get(shard_kind, {})
        return f"{sum(t['rows'] for t in totals.values()):,d} rows"

    try:
        return _bytes_stage(s, path, run, notes)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def stage_web_prose(s: dict) -> dict:
    return _prepare_stage(s, s["web_prose_path"], "web")


def stage_web_sequences(s: dict) -> dict:
    return _prepare_stage(s, s["web_seq_path"], "web")


def stage_genbank_prepare(s: dict) -> dict:
    return _prepare_stage(s, s["genbank_path"], "refseq")


def stage_genbank_seqio(s: dict) -> dict:
    from Bio import SeqIO

    path = s["genbank_path"]

    def run():
        return sum(1 for _ in SeqIO.parse(path, "genbank"))

    return _bytes_stage(s, path, run, lambda n: f"{n:,d} records")


def _mixed_stage(s: dict, parallel: str, num_workers: int | None) -> dict:
    """Web prose + web with sequences + GenBank + the genome in one preparation, cut into units
    of `mixed_unit_bytes`: the same units locally and on Ray (the same dataset_sha256)."""
    import os
    import shutil

    from bsm_ray.ingest.builders import GenomeConfig, RefSeqConfig, WebConfig
    from bsm_ray.ingest.prepare import PrepareConfig, prepare_dataset

    os.environ.setdefault("RAY_ADDRESS", "local")  # a Ray of its own, not a running cluster
    out = s["dataset_dir"] + "-mixed-" + parallel + str(num_workers or "")
    paths = [s["web_prose_path"], s["web_seq_path"], s["genbank_path"], s["genome_path"]]

    def run():
        return prepare_dataset(PrepareConfig(
            sample=False, output_dir=out, progress=False, on_invalid="skip", parallel=parallel,
            num_workers=num_workers, unit_bytes=s["mixed_unit_bytes"],
            web=WebConfig(documents=paths[:2]), refseq=RefSeqConfig(genbank=paths[2:3]),
            genome=GenomeConfig(fasta=paths[3:]),  # one chromosome, cut into units inside it
        ))  # fmt: skip

    times, result = harness.timed(run, s["repeats"], s["warmup"])
    shutil.rmtree(out, ignore_errors=True)
    sha = result.manifest["dataset_sha256"]
    skipped = result.manifest["ledger"]["skipped"]  # shown: a degenerate mix would show here
    n_skipped = sum(sum(c.values()) for c in skipped.values())
    return {"amount": sum(Path(p).stat().st_size for p in paths), "unit": "bytes",
            "times": times, "notes": f"{result.num_units} units, {n_skipped} skipped, "
                                     f"sha256 {sha[:12]}",
            "extra": {"dataset_sha256": sha, "num_units": result.num_units,
                      "skipped": skipped}}  # fmt: skip


def stage_mixed_local(s: dict) -> dict:
    return _mixed_stage(s, "local", None)


def stage_mixed_processes_2(s: dict) -> dict:
    """The machine's own ceiling for this work, without Ray: the local preparation with every
    phase's calls (plans, genome scans, units, duplicate checks) handed to a pool of 2 forked
    processes, in order. What 2 workers of any engine can gain here is bounded by this."""
    import multiprocessing

    from bsm_ray.ingest.prepare import TaskRunner

    pool = multiprocessing.get_context("fork").Pool(2)
    pool.map(abs, [0, 1])  # started before the timing, as Ray's workers are after the warm-up

    def pooled(self, fn, calls, desc, stop=None):  # stop: error mode only (on_invalid=skip here)
        return pool.starmap(fn, calls, chunksize=1)

    TaskRunner.map = pooled
    try:
        return _mixed_stage(s, "local", None)
    finally:
        pool.close()


def stage_mixed_ray_1(s: dict) -> dict:
    return _mixed_stage(s, "ray", 1)


def stage_mixed_ray_2(s: dict) -> dict:
    return _mixed_stage(s, "ray", 2)


STAGE_FUNCTIONS = {
    "generate": harness.stage_generate,
    "baseline": stage_baseline,
    "read_iter_fasta": stage_read_iter_fasta,
    "read_biopython": stage_read_biopython,
    "genome_pieces": stage_genome_pieces,
    "prepare": stage_prepare,
    "kmer_ids": stage_kmer_ids,
    "kmer_encode_batch": stage_kmer_encode_batch,
    "char_encode": stage_char_encode,
    "char_encode_batch": stage_char_encode_batch,
    "web_json_loads": stage_web_json_loads,
    "web_detector": stage_web_detector,
    "web_prose": stage_web_prose,
    "web_seq_json_loads": stage_web_seq_json_loads,
    "web_sequences": stage_web_sequences,
    "genbank_seqio": stage_genbank_seqio,
    "genbank_prepare": stage_genbank_prepare,
    "mixed_local": stage_mixed_local,
    "mixed_ray_1": stage_mixed_ray_1,
    "mixed_ray_2": stage_mixed_ray_2,
    "mixed_processes_2": stage_mixed_processes_2,
}


# --- the driver (standard library only) ---------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Ingestion (prepare_dataset) and tokenizer throughput on a synthetic genome."
    )
    p.add_argument(
        "--genome-mbp",
        type=float,
        default=None,
        help="genome size in Mbp (10^6 bp); default 50 (2 with --quick)",
    )
    p.add_argument(
        "--num-chromosomes",
        type=int,
        default=1,
        help="records in the genome FASTA (default 1: one chromosome-sized record)",
    )
    harness.add_out_arg(p, "folder for the genome, the scratch dataset and the JSON result")
    p.add_argument("--seed", type=int, default=0, help="genome and prepare_dataset seed")
    p.add_argument(
        "--chunk-mb",
        type=float,
        default=4.0,
        help="chunk size in MiB for the iter_fasta and build_genome_pieces rows "
        "(prepare_dataset uses the library default, 4 MiB)",
    )
    p.add_argument("--gzip", action="store_true", help="write and ingest a gzipped FASTA")
    p.add_argument(
        "--char-mbp",
        type=float,
        default=None,
        help="Mbp of the genome for the BSM char tokenizer rows (default 10, 1 quick)",
    )
    harness.add_stage_run_args(
        p,
        STAGE_NAMES,
        repeats_help="timed runs per stage (median)",
        quick_help=f"small smoke run ({QUICK_GENOME_MBP:g} Mbp genome, "
        f"{QUICK_CHAR_MBP:g} Mbp for the char tokenizer)",
    )
    p.add_argument(
        "--keep-dataset",
        action="store_true",
        help="keep the dataset prepare_dataset wrote (default: removed)",
    )
    p.add_argument("--web-mb", type=float, default=None,
                   help="MB of each web JSONL file (prose; with sequences); default 50, 2 quick")
    p.add_argument("--genbank-mb", type=float, default=None,
                   help="MB of the GenBank file (real records repeated); default 30, 1 quick")
    p.add_argument("--mixed-unit-mb", type=float, default=None,
                   help="unit size of the local-vs-Ray rows; default 8, 0.25 quick")  # fmt: skip
    harness.add_hidden_stage_args(p, STAGE_FUNCTIONS)
    args = p.parse_args(argv)
    for name, full, quick in (("web_mb", 50.0, 2.0), ("genbank_mb", 30.0, 1.0),
                              ("mixed_unit_mb", 8.0, 0.25)):  # fmt: skip
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if args.genome_mbp is None:
        args.genome_mbp = QUICK_GENOME_MBP if args.quick else 50.0
    if args.char_mbp is None:
        args.char_mbp = QUICK_CHAR_MBP if args.quick else 10.0
    if args.genome_mbp <= 0 or args.char_mbp <= 0 or args.chunk_mb <= 0:
        p.error("--genome-mbp, --char-mbp and --chunk-mb must be positive")
    if args.repeats < 1 or args.warmup < 0 or args.num_chromosomes < 1:
        p.error("--repeats >= 1, --warmup >= 0 and --num-chromosomes >= 1 are required")
    if args.quick and args.stages == ",".join(STAGE_NAMES):  # each Ray row starts a Ray
        args.stages = ",".join(n for n in STAGE_NAMES if n != "mixed_ray_1")
    harness.check_stages(p, args.stages, STAGE_NAMES)
    return args


def _ratios(results: dict) -> dict:
    """Speed ratios of the rows measured side by side (time of one / time of the other)."""

    def med(name):
        import statistics

        r = results.get(name)
        return statistics.median(r["times"]) if r and r.get("times") else None

    out: dict = {"lines": []}
    pairs = (("web_prose", "web_json_loads", "web prose through the job vs json.loads alone"),
             ("web_sequences", "web_seq_json_loads", "web w/ seqs through the job vs json.loads"),
             ("genbank_prepare", "genbank_seqio", "GenBank through the job vs SeqIO.parse"),
             ("mixed_ray_1", "mixed_local", "ray 1 worker vs local (speed-up)"),
             ("mixed_ray_2", "mixed_local", "ray 2 workers vs local (speed-up)"),
             ("mixed_processes_2", "mixed_local",
              "2 plain processes vs local (this machine's ceiling)"))  # fmt: skip
    for slow, fast, label in pairs:
        a, b = med(slow), med(fast)
        if a and b:
            speedup = slow.startswith("mixed_")
            out[f"{slow}_speedup" if speedup else f"{fast}/{slow}"] = b / a
            out["lines"].append(f"{label}: {b / a:.2f}x" if speedup
                                else f"{label}: {b / a:.2f} of its speed")  # fmt: skip
    shas = {results[n]["extra"]["dataset_sha256"] for n in ("mixed_local", "mixed_ray_1",
            "mixed_ray_2", "mixed_processes_2") if n in results}  # fmt: skip
    if shas:
        out["same_dataset_sha256"] = len(shas) == 1
        out["lines"].append(f"local and ray give the same dataset_sha256: {len(shas) == 1}")
    return out


def generate_row(genome: dict, genome_bp: int, baseline: float, record_desc: str) -> dict:
    """The genome generation's row (shown for its memory and time; not ingestion)."""
    return harness.add_throughput(
        {
            "stage": "generate",
            "label": "generate genome (not ingestion)",
            "amount": genome_bp,
            "unit": "bp",
            "seconds": genome.get("seconds"),
            "times": [genome.get("seconds")],
            "peak_rss_mib": genome.get("peak_rss_mib", 0.0),
            "vm_hwm_mib": genome.get("vm_hwm_mib"),
            "over_baseline_mib": genome.get("peak_rss_mib", 0.0) - baseline,
            "notes": ("reused; " if genome["reused"] else "")
            + f"{record_desc}, {genome['bytes'] / 2**20:,.0f} MiB file",
        }
    )


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if harness.run_stage_from_args(args, STAGE_FUNCTIONS, _import_common):
        return {}

    out, work_dir = harness.make_out_dirs(args.out, ".stages")
    genome_bp = int(round(args.genome_mbp * 1e6))
    path = harness.genome_path(out, genome_bp, args.seed, args.num_chromosomes, args.gzip)
    settings = {
        "genome_path": str(path),
        "genome_bp": genome_bp,
        "seed": args.seed,
        "num_chromosomes": args.num_chromosomes,
        "chunk_bytes": int(args.chunk_mb * (1 << 20)),
        "char_bp": min(genome_bp, int(round(args.char_mbp * 1e6))),
        "repeats": args.repeats,
        "warmup": args.warmup,
        "dataset_dir": str(out / "dataset"),
        "keep_dataset": bool(args.keep_dataset),
        **ensure_text_inputs(out, args.web_mb, args.genbank_mb, args.seed),
        "mixed_unit_bytes": int(args.mixed_unit_mb * 1e6),
    }
    started = time.time()
    genome = harness.ensure_genome(
        __file__, settings, work_dir, gzip=args.gzip, regenerate=args.regenerate
    )
    results = harness.run_stages(
        __file__, harness.wanted_stages(args.stages, STAGE_NAMES), settings, work_dir
    )

    baseline = results["baseline"]["peak_rss_mib"]
    # The stages inherit the launcher's small high-water mark, whatever this process holds;
    # a stage whose ru_maxrss is far above its own image's VmHWM would show it did not.
    inherited = [
        r["stage"]
        for r in (*results.values(), {"stage": "generate", **genome})
        if r.get("vm_hwm_mib") and r["peak_rss_mib"] > r["vm_hwm_mib"] + 8
    ]
    per_record = genome_bp // args.num_chromosomes
    record_desc = f"{args.num_chromosomes} record(s) of {per_record / 1e6:g} Mbp"
    labels = dict(STAGES)
    rows = []
    for name, r in results.items():
        rows.append(harness.stage_row(name, labels[name], r, baseline))
        if name == "baseline":  # generation right under it
            rows.append(generate_row(genome, genome_bp, baseline, record_desc))

    report = {
        "benchmark": "ingest_throughput",
        "created_unix": started,
        "wall_seconds": time.time() - started,
        "settings": {
            **settings,
            "gzip": bool(args.gzip),
            "genome_mbp": args.genome_mbp,
            "char_mbp": args.char_mbp,
            "quick": bool(args.quick),
        },
        "genome": {"path": str(path), **genome},
        "machine": harness.machine_info(("numpy", "biopython", "pyarrow")),
        "rss_note": "peak_rss_mib = getrusage(RUSAGE_SELF).ru_maxrss of the stage's own "
        "subprocess; over_baseline_mib = that minus the imports-only subprocess",
        "baseline_rss_mib": baseline,
        "driver_peak_rss_mib": harness.peak_rss_mib(),
        "rows": rows,
    }
    result_path = out / RESULT_NAME
    harness.atomic_write_json(result_path, report)

    print(
        f"genome: {path} ({record_desc}; {'gzip' if args.gzip else 'plain'}, "
        f"seed {args.seed}); median of {args.repeats} after {args.warmup} warm-up; "
        f"peak RSS = ru_maxrss of each stage's own subprocess"
    )
    print(harness.format_table(rows))
    ratios = _ratios(results)
    report["ratios"] = ratios
    harness.atomic_write_json(result_path, report)
    for line in ratios.get("lines", []):
        print(line)
    if inherited:
        print(
            f"WARNING: ru_maxrss of {', '.join(inherited)} exceeds the stage's own VmHWM by "
            "more than 8 MiB: it may include memory inherited at exec (see vm_hwm_mib)"
        )
    print(harness.baseline_summary(baseline, result_path))
    harness.remove_if_empty(work_dir)
    return report


if __name__ == "__main__":
    main()
