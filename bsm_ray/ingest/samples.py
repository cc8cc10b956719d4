"""The embedded sample corpus: real GenBank/FASTA records from Biopython's sdist, plus seeded
synthetic data for what no shipped file provides.

Real data. Biopython's *source distribution* (not the wheel) ships real NCBI records under
`Tests/GenBank/` and `Tests/Fasta/`. On first use we fetch it through the package registry
(`pip download biopython==<installed> --no-binary :all:`), extract those two folders into the
cache (`$BSM_RAY_CACHE`, default `~/.cache/bsm_ray`), and reuse them afterwards. With no
registry, point `BSM_RAY_BIOPYTHON_SDIST` at a downloaded `biopython-<version>.tar.gz`.

From them the sample inputs of every source kind are derived (`sample_inputs`):
- single-modal: real DNA FASTA (a plasmid genome, Tests/Fasta nucleotide files), real protein
  FASTA (RefSeq proteomes, Tests/Fasta protein files), and RNA = the real CDS sequences of a
  plasmid (NC_005816.ffn) read as cDNA (T -> U);
- RefSeq pairs: the real GenBank records with CDS features (NC_005816, NC_000932, ...);
- gene-related pairs: a gene-id -> accession TSV and FASTA files derived from those records
  (per GeneID: the protein under its real accession, its mRNA, its genomic locus with flanks);
- genome pieces: the real Arabidopsis chloroplast genome (NC_000932) plus a seeded synthetic
  genome (soft-masked regions, N gaps, a few IUPAC codes), marked synthetic in the manifest;
- web documents: seeded *synthetic* documents (templated prose quoting real sequences from the
  records in FASTA, GenBank ORIGIN and inline layouts), marked synthetic in the manifest.

The synthetic generator (`random_cds`, `write_synthetic_genome`, `synthetic_documents`) also
makes inputs of any size for scale tests and benchmarks.

Imports Biopython and numpy; no ray, torch or mlflow.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from bsm_ray.errors import SampleDataUnavailable
from bsm_ray.fileio import atomic_path, atomic_write_text

SAMPLE_FORMAT = 3  # bump when the derived sample inputs change

# Real, well-formed GenBank records with CDS features (Tests/GenBank of Biopython's sdist).
REAL_GENBANK = (
    "NC_005816.gb",
    "NC_000932.gb",
    "arab1.gb",
    "cor6_6.gb",
    "EU851978.gbk",
    "HM138502.gbk",
    "KF527485.gbk",
    "gbvrl1_start.seq",
)
REAL_DNA_FASTA = ("GenBank/NC_005816.fna", "Fasta/lupine.nu", "Fasta/elderberry.nu",
                  "Fasta/phlox.nu", "Fasta/sweetpea.nu", "Fasta/wisteria.nu")  # fmt: skip
REAL_PROTEIN_FASTA = ("GenBank/NC_005816.faa", "GenBank/NC_000932.faa", "Fasta/aster.pro",
                      "Fasta/rose.pro", "Fasta/loveliesbleeding.pro")  # fmt: skip
REAL_CDS_FASTA = "GenBank/NC_005816.ffn"
# UCSC multiz alignment of a mouse chr10 region (mm9) with 20 other vertebrates: its human
# (hg18) and mouse (mm9) rows are real mammalian genome sequence, the only such data shipped.
MAF_NAME = "ucsc_mm9_chr10_big.maf"
MAMMAL_ASSEMBLIES = ("hg18", "mm9")


def cache_dir() -> Path:
    return Path(os.environ.get("BSM_RAY_CACHE", Path.home() / ".cache" / "bsm_ray"))


def biopython_tests_dir() -> Path:
    """The `Tests/` folder (GenBank + Fasta) of Biopython's sdist, fetched once and cached."""
    import Bio

    version = Bio.__version__
    target = cache_dir() / f"biopython-{version}-tests-v2"
    if (target / "MAF" / MAF_NAME).is_file():
        return target
    cache_dir().mkdir(parents=True, exist_ok=True)
    # The staging folder lives inside the cache so the final rename stays on one filesystem.
    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=".fetch-") as tmp:
        tmp_path = Path(tmp)
        sdist = os.environ.get("BSM_RAY_BIOPYTHON_SDIST")
        if sdist is None:
            cmd = [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                "--disable-pip-version-check",
                "-q",
                "-d",
                str(tmp_path),
                f"biopython=={version}",
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            found = sorted(tmp_path.glob("biopython-*.tar.gz"))
            if proc.returncode != 0 or not found:
                last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                raise SampleDataUnavailable(
                    f"could not fetch Biopython {version}'s source distribution from the package "
                    f"registry ({last}); download biopython-{version}.tar.gz elsewhere and set "
                    "BSM_RAY_BIOPYTHON_SDIST to its path"
                )
            sdist = str(found[0])
        staging = tmp_path / "tests"
        with tarfile.open(sdist, "r:gz") as tar:
            for member in tar.getmembers():
                parts = Path(member.name).parts
                wanted = len(parts) >= 4 and (
                    parts[2] in ("GenBank", "Fasta") or parts[2:] == ("MAF", MAF_NAME)
                )
                if wanted and parts[1] == "Tests":
                    if not member.isfile():
                        continue
                    out = staging / parts[2] / Path(*parts[3:])
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with tar.extractfile(member) as src, open(out, "wb") as dst:  # type: ignore[union-attr]
                        shutil.copyfileobj(src, dst)
        for needed in ("GenBank/NC_000932.gb", f"MAF/{MAF_NAME}"):
            if not (staging / needed).is_file():
                raise SampleDataUnavailable(f"{sdist}: no Tests/{needed} inside")
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(staging, target)
        except OSError:  # another process published it first
            if not (target / "MAF" / MAF_NAME).is_file():
                raise
    return target


# --- synthetic generator ------------------------------------------------------------------------


def random_cds(rng: np.random.Generator, num_codons: int, table: int = 11) -> tuple[str, str]:
    """A random protein-coding sequence: ATG, `num_codons` sense codons, a stop.

    Returns (dna, protein) with the protein from Biopython's translation with `table`.
    """
    from Bio.Data.CodonTable import unambiguous_dna_by_id
    from Bio.Seq import Seq

    codon_table = unambiguous_dna_by_id[table]
    sense = sorted(codon_table.forward_table)
    stops = sorted(codon_table.stop_codons)
    codons = rng.choice(sense, size=num_codons)
    dna = "ATG" + "".join(codons) + stops[int(rng.integers(len(stops)))]
    protein = str(Seq(dna).translate(table=table, cds=True))
    return dna, protein


def write_synthetic_genome(
    path: str | Path,
    genome_bp: int,
    seed: int = 0,
    num_chromosomes: int = 1,
    line_width: int = 60,
    gap_every_bp: int = 100_000,
    softmask_fraction: float = 0.3,
) -> Path:
    """Write a seeded random genome FASTA of `genome_bp` bases, streaming (bounded memory).

    Realistic nuisances: lowercase (soft-masked) stretches, runs of N (assembly gaps) about
    every `gap_every_bp`, and a rare IUPAC ambiguity code (R/Y). Plain text unless the name ends
    with .gz.
    """
    import gzip

    rng = np.random.default_rng(seed)
    path = Path(path)
    per_chrom = genome_bp // num_chromosomes
    block = 1 << 20
    letters = np.frombuffer(b"ACGT", dtype=np.uint8)
    with atomic_path(path) as tmp:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(tmp, "wb") as fh:
            for c in range(num_chromosomes):
                fh.write(f">chr{c + 1} synthetic seed={seed} length={per_chrom}\n".encode())
                written = 0
                carry = b""
                while written < per_chrom:
                    n = min(block, per_chrom - written)
                    arr = letters[rng.integers(0, 4, n)]
                    # soft-masked stretches: lowercase runs of 300 bp
                    for start in rng.integers(0, n, int(n * softmask_fraction / 300)):
                        arr[start : start + 300] |= 32  # ASCII lowercase bit
                    for start in rng.integers(0, n, max(1, n // gap_every_bp)):
                        arr[start : start + int(rng.integers(50, 5000))] = ord("N")
                    for pos in rng.integers(0, n, max(1, n // 500_000)):
                        arr[pos] = ord("R")
                    text = carry + arr.tobytes()
                    cut = len(text) - len(text) % line_width
                    lines = [text[i : i + line_width] for i in range(0, cut, line_width)]
                    if lines:
                        fh.write(b"\n".join(lines) + b"\n")
                    carry = text[cut:]
                    written += n
                if carry:
                    fh.write(carry + b"\n")
    return path


_PROSE = (
    "In this tutorial we look at how the {gene} gene is organised and expressed.",
    "The sequence below was obtained from the reference record {acc}.",
    "Students often confuse the coding strand with the template strand.",
    "Primers were designed around the start codon; see the methods section.",
    "The encoded protein, {product}, is shown after the nucleotide sequence.",
    "Compare the two sequences and count the positions that differ.",
    "Codon usage in plastid genomes differs from that of the nucleus.",
)


def _layout(rng: np.random.Generator, seq: str) -> str:
    """Render a sequence the way web pages do: FASTA, GenBank ORIGIN, or inline."""
    style = int(rng.integers(3))
    if style == 0:  # FASTA, wrapped at 60
        return ">seq\n" + "\n".join(seq[i : i + 60] for i in range(0, len(seq), 60))
    if style == 1 and set(seq) <= set("ACGTN"):  # GenBank ORIGIN: numbered, lowercase blocks
        lines = []
        for i in range(0, len(seq), 60):
            blocks = [seq[j : j + 10].lower() for j in range(i, min(i + 60, len(seq)), 10)]
            lines.append(f"{i + 1:>9} " + " ".join(blocks))
        return "\n".join(lines)
    return f"The sequence is {seq}."


def synthetic_documents(rng: np.random.Generator, pool: list[dict], num_docs: int) -> list[dict]:
    """Seeded synthetic web documents quoting real sequences from `pool`.

    `pool` items: {"gene", "acc", "product", "dna", "protein"}. About a third of the documents
    quote fewer than 3 sequences (the builder must filter them out).
    """
    docs = []
    for i in range(num_docs):
        item = pool[int(rng.integers(len(pool)))]
        num_seqs = int(rng.choice([1, 2, 3, 4, 5], p=[0.15, 0.2, 0.3, 0.2, 0.15]))
        paragraphs = []
        for j in range(num_seqs + 2):
            sentence = _PROSE[int(rng.integers(len(_PROSE)))].format(**item)
            paragraphs.append(sentence)
            if j < num_seqs:
                other = pool[int(rng.integers(len(pool)))]
                seq = other["dna"] if j % 2 == 0 else other["protein"]
                paragraphs.append(_layout(rng, seq))
        docs.append(
            {
                "id": f"synthetic-web-{i:05d}",
                "text": "\n\n".join(paragraphs),
                "synthetic": True,
                "num_sequences_quoted": num_seqs,
            }
        )
    return docs


# --- sample inputs ------------------------------------------------------------------------------


def _cds_pool(genbank_paths: list[Path]) -> list[dict]:
    """(gene, accession, product, CDS DNA, protein) of every clean CDS of the records."""
    from Bio import SeqIO

    pool = []
    for path in genbank_paths:
        for record in SeqIO.parse(path, "genbank"):
            for f in record.features:
                q = f.qualifiers
                if f.type != "CDS" or "translation" not in q or "trans_splicing" in q:
                    continue
                if "exception" in q:
                    continue
                dna = str(f.extract(record.seq)).upper()
                pool.append(
                    {
                        "gene": q.get("gene", q.get("locus_tag", ["?"]))[0],
                        "acc": q.get("protein_id", [record.id])[0],
                        "product": q.get("product", ["an uncharacterised protein"])[0],
                        "dna": dna,
                        "protein": q["translation"][0],
                        "record": record,
                        "feature": f,
                        "geneid": next(
                            (
                                x.split(":", 1)[1]
                                for x in q.get("db_xref", [])
                                if x.startswith("GeneID:")
                            ),
                            None,
                        ),
                    }
                )
    return pool


def write_maf_rows_fasta(maf: Path, out: Path, assemblies: tuple[str, ...]) -> Path:
    """The ungapped rows of the given assemblies in a MAF alignment, one FASTA record per block.

    Record ids are `<assembly.chrom>:<start>-<end>(<strand>)` from the MAF coordinates.
    """
    from Bio import AlignIO

    records = []
    for block in AlignIO.parse(str(maf), "maf"):
        for row in block:
            if row.id.split(".")[0] not in assemblies:
                continue
            a = row.annotations
            strand = "+" if a.get("strand", 1) == 1 else "-"
            rid = f"{row.id}:{a['start']}-{a['start'] + a['size']}({strand})"
            seq = str(row.seq).replace("-", "").upper()
            if seq:
                records.append((rid, seq))
    _write_fasta(out, records)
    return out


def _write_fasta(path: Path, records: list[tuple[str, str]]) -> None:
    lines = []
    for rid, seq in records:
        lines.append(f">{rid}")
        lines.extend(seq[i : i + 70] for i in range(0, len(seq), 70))
    atomic_write_text(path, "\n".join(lines) + "\n")


def sample_inputs(seed: int = 0, synthetic_genome_bp: int = 200_000) -> dict:
    """Build (once, cached) the raw sample inputs; return their paths by source kind."""
    tests = biopython_tests_dir()
    root = cache_dir() / f"sample-v{SAMPLE_FORMAT}-seed{seed}-genome{synthetic_genome_bp}"
    index_path = root / "inputs.json"
    if index_path.is_file():
        return json.loads(index_path.read_text())
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    genbank = [tests / "GenBank" / name for name in REAL_GENBANK]
    pool = _cds_pool(genbank)

    # Gene-related: per GeneID, protein (real accession), mRNA (CDS as cDNA) and genomic locus.
    gene_rows, gene_seqs = [], []
    for item in pool:
        if item["geneid"] is None:
            continue
        record, feature = item["record"], item["feature"]
        start = max(0, int(feature.location.start) - 200)
        end = min(len(record.seq), int(feature.location.end) + 200)
        locus = record.seq[start:end]
        if feature.location.strand == -1:
            locus = locus.reverse_complement()
        gid = f"GeneID:{item['geneid']}"
        acc = item["acc"]
        for suffix, modality, seq in (
            ("", "protein", item["protein"]),
            ("-mRNA", "rna", item["dna"]),
            (f"-locus-{record.id}:{start + 1}-{end}", "dna", str(locus).upper()),
        ):
            gene_rows.append(f"{gid}\t{acc}{suffix}\t{modality}")
            gene_seqs.append((f"{acc}{suffix}", seq))
    genes_dir = root / "gene_related"
    genes_dir.mkdir(exist_ok=True)
    atomic_write_text(
        genes_dir / "gene_map.tsv", "gene_id\taccession\tmodality\n" + "\n".join(gene_rows) + "\n"
    )
    _write_fasta(genes_dir / "sequences.fa", gene_seqs)

    # Genomes: the real chloroplast as FASTA, plus a synthetic genome.
    from Bio import SeqIO

    genome_dir = root / "genome"
    genome_dir.mkdir(exist_ok=True)
    chloroplast = next(SeqIO.parse(tests / "GenBank" / "NC_000932.gb", "genbank"))
    _write_fasta(genome_dir / "NC_000932.fna", [(chloroplast.id, str(chloroplast.seq))])
    synthetic_genome = genome_dir / "synthetic_genome.fna"
    if synthetic_genome_bp > 0:
        write_synthetic_genome(synthetic_genome, synthetic_genome_bp, seed=seed)

    mammal = genome_dir / "mammal_hg18_mm9.fna"
    write_maf_rows_fasta(tests / "MAF" / MAF_NAME, mammal, MAMMAL_ASSEMBLIES)

    # Web: synthetic documents quoting real sequences.
    web_dir = root / "web"
    web_dir.mkdir(exist_ok=True)
    docs = synthetic_documents(rng, pool, num_docs=300)
    atomic_write_text(web_dir / "documents.jsonl", "\n".join(json.dumps(d) for d in docs) + "\n")

    index = {
        "root": str(root),
        "single": (
            [{"path": str(tests / p), "modality": "dna"} for p in REAL_DNA_FASTA]
            + [{"path": str(tests / p), "modality": "protein"} for p in REAL_PROTEIN_FASTA]
            + [{"path": str(tests / REAL_CDS_FASTA), "modality": "rna", "t_to_u": True}]
        ),
        "genbank": [str(p) for p in genbank],
        "gene_tsv": str(genes_dir / "gene_map.tsv"),
        "gene_fasta": [str(genes_dir / "sequences.fa")],
        "web": [str(web_dir / "documents.jsonl")],
        "genome": [str(genome_dir / "NC_000932.fna")]
        + ([str(synthetic_genome)] if synthetic_genome_bp > 0 else []),
        "pmi_fasta": [str(mammal)],
        "synthetic": [str(web_dir / "documents.jsonl")]
        + ([str(synthetic_genome)] if synthetic_genome_bp > 0 else []),
    }
    atomic_write_text(index_path, json.dumps(index, indent=2))
    return index


def sample_prepare_inputs(config):
    """Return (config with the sample inputs added in front, set of synthetic input paths)."""
    from bsm_ray.ingest.builders import SingleInput

    idx = sample_inputs(config.seed, config.sample_synthetic_genome_bp)
    refseq = dataclasses.replace(
        config.refseq, genbank=idx["genbank"] + list(config.refseq.genbank)
    )
    genes = config.gene_pairs
    if genes.tsv is None:  # the sample's gene map is used unless the user gave one
        genes = dataclasses.replace(
            genes, tsv=idx["gene_tsv"], fasta=idx["gene_fasta"] + list(genes.fasta)
        )
    web = dataclasses.replace(config.web, documents=idx["web"] + list(config.web.documents))
    genome = dataclasses.replace(config.genome, fasta=idx["genome"] + list(config.genome.fasta))
    single = [SingleInput(**s) for s in idx["single"]] + list(config.single)
    new = dataclasses.replace(
        config,
        sample=False,
        single=single,
        refseq=refseq,
        gene_pairs=genes,
        web=web,
        genome=genome,
    )
    return new, set(idx["synthetic"])
