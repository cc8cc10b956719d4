"""Damaged and unusual input files, through `prepare_dataset` (what jobs/prepare_data.py calls)
and the job itself: every damaged file gives one clean error line or a counted skip, a file
that gives no row is never a silent empty dataset, and the valid variants files come in (line
ends, byte-order marks, UTF-16, latin-1 headers, multi-member gzip, bzip2, xz, zstd, zip) give
exactly the rows of the plain file."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bsm_ray.errors import BsmRayError, InputError
from bsm_ray.ingest.builders import (
    GenePairsConfig,
    GenomeConfig,
    RefSeqConfig,
    SingleInput,
    WebConfig,
)
from bsm_ray.ingest.prepare import PrepareConfig, prepare_dataset

ROOT = Path(__file__).resolve().parents[1]
TRUNCATED = (
    "truncated_file (the {fmt} stream ends before its end-of-stream marker: the file was cut "
    "short, as by an interrupted download or copy)"
)
COMPRESS = {
    "gzip": gzip.compress,
    "bzip2": bz2.compress,
    "xz": lzma.compress,
    "zstd": lambda data: pa.compress(data, codec="zstd", asbytes=True),
}


def _fasta(num_records: int = 3, record_bp: int = 200_000, seed: int = 19) -> bytes:
    """Seeded random DNA records chr1..chrN in 60-letter lines (random: compresses ~3.3x)."""
    rng = np.random.default_rng(seed)
    parts = []
    for i in range(1, num_records + 1):
        seq = rng.choice(np.frombuffer(b"ACGT", np.uint8), record_bp).tobytes()
        lines = b"\n".join(seq[j : j + 60] for j in range(0, record_bp, 60))
        parts.append(b">chr%d test record\n" % i + lines + b"\n")
    return b"".join(parts)


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _prepare(tmp_path: Path, on_invalid: str = "error", **inputs):
    out = tmp_path / "ds"
    return prepare_dataset(
        PrepareConfig(sample=False, output_dir=str(out), on_invalid=on_invalid, progress=False,
                      **inputs)
    )  # fmt: skip


def _single(*paths: Path) -> dict:
    return {"single": [SingleInput(str(p), "dna") for p in paths]}


def _docs(result, kind: str) -> list[tuple]:
    """Every row of `kind` in the published dataset, sorted: (doc_id or piece_id, text or seq)."""
    rows = []
    for infos in result.manifest["shards"].get(kind, {}).values():
        for info in infos:
            table = pq.read_table(result.output_dir / info["path"]).to_pylist()
            rows += [(r.get("doc_id", r.get("piece_id")), r.get("text", r.get("seq")))
                     for r in table]  # fmt: skip
    return sorted(rows)


def _skipped(result, kind: str) -> dict:
    return result.manifest["ledger"]["skipped"].get(kind, {})


def _job(tmp_path: Path, on_invalid: str, *sets: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "prepare_data.py"), "--set", "sample=false",
         "--set", f"output_dir={tmp_path / 'out'}", "--set", "progress=false",
         "--set", f"on_invalid={on_invalid}", *[a for s in sets for a in ("--set", s)]],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


# --- the job: one line, exit 2, nothing published ---------------------------------------------


def test_job_on_a_truncated_gz_prints_one_line_or_counts_it(tmp_path):
    """The user's report: an interrupted download ended in EOFError's traceback, both modes."""
    full = gzip.compress(_fasta())
    path = _write(tmp_path, "reads.fa.gz", full[: len(full) // 2])
    single = f"single=[{{path: {path}, modality: dna}}]"
    proc = _job(tmp_path, "error", single)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [
        f"error: {path}: record chr2: {TRUNCATED.format(fmt='gzip')}"
    ]
    assert not (tmp_path / "out").exists()
    proc = _job(tmp_path, "skip", single)
    assert proc.returncode == 0, proc.stderr
    # chr1 was whole before the cut and is kept; chr2 broke off and is counted with the file
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["ledger"]["skipped"] == {"single_dna": {"truncated_file": 1}}
    assert sum(t["rows"] for t in manifest["totals"]["single_dna"].values()) == 1
    assert "skipped  single_dna       truncated_file" in proc.stdout


@pytest.mark.parametrize(
    ("kind_set", "content", "on_invalid", "expected"),
    [
        ("genome.fasta=[{path}]", b"", "error", "error: {path}: no_rows (no records in the file)"),
        ("genome.fasta=[{path}]", b"", "skip",
         "error: no rows from any of the 1 input file; nothing published to {out} "
         "(skipped: genome/no_rows 1)"),
        ("genome.fasta=[{path}]", b">chr1 nothing after me\n", "error",
         "error: {path}: record chr1: empty_sequence"),
        ("genome.fasta=[{path}]", b">chr1 nothing after me\n", "skip",
         "error: no rows from any of the 1 input file; nothing published to {out} "
         "(skipped: genome/empty_sequence 1, genome/no_rows 1)"),
        ("web.documents=[{path}]", b"\n\n", "error",
         "error: {path}: no_rows (no records in the file)"),
    ],
)  # fmt: skip
def test_job_never_publishes_an_empty_dataset(tmp_path, kind_set, content, on_invalid, expected):
    path = _write(tmp_path, "input.txt", content)
    proc = _job(tmp_path, on_invalid, kind_set.format(path=path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [expected.format(path=path, out=tmp_path / "out")]
    assert not (tmp_path / "out").exists()


# --- compressed files -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "record", "rows_before_cut"),
    # What each decoder hands over before the cut: gzip and xz stream, so chr1 is whole and the
    # error names chr2; bzip2 decodes whole 900 kB blocks and pyarrow's zstd whole frames, so
    # nothing of a cut file comes out and no record is named.
    [("gzip", "chr2", 1), ("xz", "chr2", 1), ("bzip2", None, 0), ("zstd", None, 0)],
)
def test_truncated_compressed_fasta(tmp_path, fmt, record, rows_before_cut):
    full = COMPRESS[fmt](_fasta())
    path = _write(tmp_path, "genome.fa", full[: len(full) // 2])  # the name says nothing
    with pytest.raises(InputError) as info:
        _prepare(tmp_path, **_single(path))
    where = f"{path}: record {record}" if record else str(path)
    assert str(info.value) == f"{where}: {TRUNCATED.format(fmt=fmt)}"
    good = _write(tmp_path, "good.fa", b">other\nACGT\n")
    result = _prepare(tmp_path, "skip", **_single(path, good))
    assert _skipped(result, "single_dna") == {"truncated_file": 1}
    assert len(_docs(result, "single_dna")) == 1 + rows_before_cut


def test_corrupt_gzip_and_zip_archives(tmp_path):
    data = bytearray(gzip.compress(_fasta(1, 20_000)))
    data[len(data) // 2 : len(data) // 2 + 8] = b"\xff" * 8  # damaged in the middle
    corrupt = _write(tmp_path, "corrupt.fa.gz", bytes(data))
    with pytest.raises(InputError) as info:
        _prepare(tmp_path, **_single(corrupt))
    assert info.value.reason == "corrupt_compressed_file"
    assert str(info.value).startswith(f"{corrupt}: record chr1: corrupt_compressed_file (gzip: ")
    two = tmp_path / "two.zip"
    with zipfile.ZipFile(two, "w") as zf:
        zf.writestr("a.fa", ">a\nACGT\n")
        zf.writestr("b.fa", ">b\nACGT\n")
    with pytest.raises(InputError) as info:
        _prepare(tmp_path, **_single(two))
    assert str(info.value) == (
        f"{two}: unsupported_archive (a zip archive of 2 files; give each input file on its own)"
    )


def test_every_compression_reads_the_rows_of_the_plain_file(tmp_path):
    text = _fasta(3, 5_000)
    plain = _docs(_prepare(tmp_path, **_single(_write(tmp_path, "plain.fa", text))), "single_dna")
    assert [doc_id for doc_id, _ in plain] == ["chr1", "chr2", "chr3"]
    cut = text.index(b">chr3")
    variants = {
        # `cat a.gz b.gz`: a multi-member gzip file, as BGZF files are too
        "multi.fa.gz": gzip.compress(text[:cut]) + gzip.compress(text[cut:]),
        "gzip_without_suffix.fa": gzip.compress(text),  # detected by magic bytes, not name
        "plain_named.fa.gz": text,  # a name that lies: read as what it is
        **{f"reads.fa.{fmt}": compress(text) for fmt, compress in COMPRESS.items()},
    }
    zipped = tmp_path / "reads.fa.zip"
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("reads.fa", text)
    paths = [_write(tmp_path, name, data) for name, data in variants.items()] + [zipped]
    for path in paths:
        assert _docs(_prepare(tmp_path, **_single(path)), "single_dna") == plain, path.name


# --- encodings and line ends -------------------------------------------------------------------


def test_fasta_line_ends_byte_order_marks_and_utf16_read_the_same_rows(tmp_path):
    text = _fasta(3, 3_000)
    expected = _docs(_prepare(tmp_path, **_single(_write(tmp_path, "lf.fa", text))), "single_dna")
    variants = {
        "crlf.fa": text.replace(b"\n", b"\r\n"),
        "cr.fa": text.replace(b"\n", b"\r"),  # classic Mac OS
        "bom.fa": b"\xef\xbb\xbf" + text,
        "utf16le.fa": text.decode().encode("utf-16"),  # with its byte-order mark
        "utf16be.fa": b"\xfe\xff" + text.decode().encode("utf-16-be"),
        "utf16_crlf.fa.gz": gzip.compress(text.replace(b"\n", b"\r\n").decode().encode("utf-16")),
        "latin1_header.fa": text.replace(b"test record", "Escherichia côli".encode("latin-1")),
    }
    for name, data in variants.items():
        got = _docs(_prepare(tmp_path, **_single(_write(tmp_path, name, data))), "single_dna")
        assert got == expected, name


def test_crlf_split_across_read_blocks_is_one_line_end(tmp_path):
    """The reader takes 1 MiB blocks: a CR ending one block and its LF starting the next are one
    line end, not two (same pieces, and error messages give the line numbers of the LF file)."""
    lf = _fasta(1, 1_200_000)
    crlf = lf.replace(b"\n", b"\r\n")
    cr_positions = [i for i in range(1 << 20, 0, -1) if crlf[i - 1 : i] == b"\r"]
    shift = (1 << 20) - cr_positions[0]  # pad the header so a CR is the block's last byte
    crlf = crlf.replace(b"test record", b"test record" + b"x" * shift, 1)
    lf = lf.replace(b"test record", b"test record" + b"x" * shift, 1)
    assert crlf[(1 << 20) - 1 : (1 << 20) + 1] == b"\r\n"
    genome = GenomeConfig(fasta=[str(_write(tmp_path, "lf.fa", lf))])
    expected = _docs(_prepare(tmp_path, genome=genome), "genome")
    genome = GenomeConfig(fasta=[str(_write(tmp_path, "crlf.fa", crlf))])
    assert _docs(_prepare(tmp_path, genome=genome), "genome") == expected
    assert len(expected) > 2000
    broken = _write(tmp_path, "broken.fa", crlf + b">\r\n")  # a header with no id after it
    with pytest.raises(InputError) as info:
        _prepare(tmp_path, **_single(broken))
    line = lf.count(b"\n") + 1
    assert str(info.value) == f"{broken}: record #2: malformed_fasta (empty header at line {line})"


def test_genbank_crlf_and_utf16_read_and_latin1_is_a_clear_error(tmp_path, genbank_dir):
    original = (genbank_dir / "NC_005816.gb").read_bytes()

    def refseq(path: Path) -> list[tuple]:
        return _docs(_prepare(tmp_path, refseq=RefSeqConfig(genbank=[str(path)])), "refseq_pair")

    expected = refseq(genbank_dir / "NC_005816.gb")
    assert len(expected) == 10
    assert refseq(_write(tmp_path, "crlf.gb", original.replace(b"\n", b"\r\n"))) == expected
    utf16 = lzma.compress(original.decode().encode("utf-16"))
    assert refseq(_write(tmp_path, "utf16.gb.xz", utf16)) == expected
    latin1 = _write(tmp_path, "latin1.gb", original.replace(b"pestis biovar", b"p\xe9stis", 1))
    with pytest.raises(InputError) as info:
        _prepare(tmp_path, refseq=RefSeqConfig(genbank=[str(latin1)]))
    assert str(info.value) == (
        f"{latin1}: record #1: not_utf8 (line 2: byte 0xe9 at column 23 is not UTF-8 (invalid "
        "continuation byte); re-encode the file as UTF-8, e.g. iconv -f latin1 -t utf-8)"
    )


def test_web_jsonl_line_that_is_not_utf8_is_one_invalid_document(tmp_path):
    seqs = "ATGACCATGATTACGCCAAGCTTG and GGGCCCAAATTTGGGCCCAAATTT and CCCGGGTTTAAACCCGGGTTTAAA"
    lines = [json.dumps({"id": f"d{i}", "text": f"seqs {seqs}"}).encode() for i in range(5)]
    lines[2] = lines[2].replace(b"seqs", b"s\xe9qs")
    path = _write(tmp_path, "docs.jsonl", b"\n".join(lines) + b"\n")
    with pytest.raises(InputError) as info:
        _prepare(tmp_path, web=WebConfig(documents=[str(path)]))
    assert str(info.value) == (
        f"{path}: record line 3: not_utf8 (byte 0xe9 at column 24 is not UTF-8 (invalid "
        "continuation byte); re-encode the file as UTF-8, e.g. iconv -f latin1 -t utf-8)"
    )
    result = _prepare(tmp_path, "skip", web=WebConfig(documents=[str(path)]))
    assert _skipped(result, "web") == {"not_utf8": 1}
    assert [doc_id for doc_id, _ in _docs(result, "web")] == ["d0", "d1", "d3", "d4"]


# --- files that are not what they should be ---------------------------------------------------


def test_binary_garbage_is_not_a_text_file(tmp_path):
    garbage = np.random.default_rng(0).bytes(5000) + b"\x00"
    path = _write(tmp_path, "garbage.fa", garbage)
    binary = (
        f"{path}: binary_file (NUL bytes in the first 4 KiB: not a text file (or UTF-16 without a "
        "byte-order mark))"
    )
    for inputs in (_single(path), {"refseq": RefSeqConfig(genbank=[str(path)])},
                   {"web": WebConfig(documents=[str(path)])}):  # fmt: skip
        with pytest.raises(InputError) as info:
            _prepare(tmp_path, **inputs)
        assert str(info.value) == binary


def test_directory_missing_and_unreadable_paths_stop_the_run_in_both_modes(tmp_path, monkeypatch):
    import bsm_ray.fileio as fileio

    directory = tmp_path / "genome.fa"
    directory.mkdir()
    unreadable = _write(tmp_path, "secret.fa", b">a\nACGT\n")
    unreadable.chmod(0)
    if os.access(unreadable, os.R_OK):  # root reads anything: make open() refuse as it would

        def refusing_open(file, *args, **kwargs):
            if os.fspath(file) == str(unreadable):
                raise PermissionError(13, "Permission denied", str(unreadable))
            return open(file, *args, **kwargs)

        monkeypatch.setattr(fileio, "open", refusing_open, raising=False)
    cases = {
        directory: "is_a_directory (a file was expected)",
        tmp_path / "missing.fa": "file_not_found",
        unreadable: "unreadable_file (Permission denied)",
    }
    for path, reason in cases.items():
        for on_invalid in ("error", "skip"):  # a wrong path is a config mistake, not bad data
            with pytest.raises(InputError) as info:
                _prepare(tmp_path, on_invalid, **_single(path))
            assert str(info.value) == f"{path}: {reason}"
    assert not (tmp_path / "ds").exists()


def test_truncated_parquet_and_jsonl(tmp_path):
    seqs = "ATGACCATGATTACGCCAAGCTTG and GGGCCCAAATTTGGGCCCAAATTT and CCCGGGTTTAAACCCGGGTTTAAA"
    docs = [{"id": f"d{i}", "text": f"document {i}: {seqs}"} for i in range(40)]
    pq.write_table(pa.Table.from_pylist(docs), tmp_path / "full.parquet")
    full = (tmp_path / "full.parquet").read_bytes()
    parquet = _write(tmp_path, "docs.parquet", full[: len(full) // 2])  # its footer is gone
    with pytest.raises(InputError) as info:
        _prepare(tmp_path, web=WebConfig(documents=[str(parquet)]))
    assert str(info.value) == (
        f"{parquet}: malformed_parquet (Parquet magic bytes not found in footer. Either the file "
        "is corrupted or this is not a parquet file.)"
    )
    jsonl = b"".join(json.dumps(d).encode() + b"\n" for d in docs)
    cut = len(jsonl) // 2
    whole_lines = jsonl[:cut].count(b"\n")
    plain = _write(tmp_path, "docs.jsonl", jsonl[:cut])  # ends inside a line
    packed = gzip.compress(jsonl)
    gz = _write(tmp_path, "docs.jsonl.gz", packed[: len(packed) // 2])
    with pytest.raises(InputError) as info:
        _prepare(tmp_path, web=WebConfig(documents=[str(gz)]))
    assert info.value.reason == "truncated_file" and info.value.record.startswith("line ")
    result = _prepare(tmp_path, "skip", web=WebConfig(documents=[str(parquet), str(plain)]))
    assert _skipped(result, "web") == {"malformed_json": 1, "malformed_parquet": 1}
    assert len(_docs(result, "web")) == whole_lines
    assert result.manifest["ledger"]["examples"]["web/malformed_json"][0].startswith(
        f"{plain}: record line {whole_lines + 1}: malformed_json ("
    )


def test_empty_inputs_of_every_kind(tmp_path, genbank_dir):
    empty = _write(tmp_path, "empty.txt", b"")
    gene_fasta = _write(tmp_path, "genes.fa", b">NM_1.1\nATGAAA\n>NP_1.1\nMK\n")
    no_rows = f"{empty}: no_rows (no records in the file)"
    cases = [
        (_single(empty), no_rows),
        ({"genome": GenomeConfig(fasta=[str(empty)])}, no_rows),
        ({"web": WebConfig(documents=[str(empty)])}, no_rows),
        ({"refseq": RefSeqConfig(genbank=[str(empty)])},
         f"{empty}: malformed_genbank (no GenBank record found)"),
        ({"gene_pairs": GenePairsConfig(tsv=str(empty), fasta=[str(gene_fasta)])},
         f"{gene_fasta}: no_rows (2 records read, none in the gene map {empty})"),
    ]  # fmt: skip
    for inputs, expected in cases:
        with pytest.raises(InputError) as info:
            _prepare(tmp_path, **inputs)
        assert str(info.value) == expected
    # skip mode: counted beside a good input, which is published
    good = _write(tmp_path, "good.fa", b">a\nACGT\n")
    result = _prepare(tmp_path, "skip", **_single(empty, good))
    assert _skipped(result, "single_dna") == {"no_rows": 1}
    assert _docs(result, "single_dna") == [("a", "<dna>ACGT")]
    assert "skipped  single_dna       no_rows" in result.summary()


def test_a_file_whose_records_all_fail_is_no_rows_with_what_became_of_them(tmp_path):
    path = _write(tmp_path, "bad.fa", b">a\nAC!T\n>b\n\n>c\nAC1T\n")
    good = _write(tmp_path, "good.fa", b">d\nACGT\n")
    result = _prepare(tmp_path, "skip", **_single(path, good))
    assert _skipped(result, "single_dna") == {
        "empty_sequence": 1, "invalid_character": 2, "no_rows": 1,
    }  # fmt: skip
    assert (
        f"{path}: no_rows (3 records read, none gave a row: skipped empty_sequence 1, skipped "
        "invalid_character 2)" in result.manifest["ledger"]["examples"]["single_dna/no_rows"]
    )


def test_nothing_to_prepare_is_an_error(tmp_path):
    with pytest.raises(BsmRayError) as info:
        _prepare(tmp_path)
    assert str(info.value) == (
        "no input files: set sample: true or list inputs (single, refseq.genbank, ...)"
    )
    assert not (tmp_path / "ds").exists()


def test_gene_pair_fasta_that_breaks_off_or_gives_nothing(tmp_path):
    tsv = _write(tmp_path, "map.tsv", b"G1\tNM_1.1\nG1\tNP_1.1\nG2\tNM_2.1\nG2\tNP_2.1\n")
    good = _write(tmp_path, "g1.fa", b">NM_1.1\nATGAAACCC\n>NP_1.1\nMKP\n")
    unrelated = _write(tmp_path, "other.fa", b">XM_9.1\nATG\n")
    g2 = gzip.compress(b">NM_2.1\n" + b"ATGAAACCC" * 20_000 + b"\n>NP_2.1\nMKP\n")
    cut = _write(tmp_path, "g2.fa.gz", g2[: len(g2) // 2])
    gene_pairs = GenePairsConfig(tsv=str(tsv), fasta=[str(good), str(unrelated), str(cut)])
    with pytest.raises(InputError) as info:
        _prepare(tmp_path, gene_pairs=gene_pairs)
    assert str(info.value) == f"{unrelated}: no_rows (1 record read, none in the gene map {tsv})"
    result = _prepare(tmp_path, "skip", gene_pairs=gene_pairs)
    # G1 is paired; g2.fa.gz broke off inside NM_2.1, so G2's two accessions are not found
    assert _skipped(result, "gene_pair") == {
        "accession_not_found": 2, "no_rows": 1, "truncated_file": 1,
    }  # fmt: skip
    assert [doc_id for doc_id, _ in _docs(result, "gene_pair")] == ["G1|0"]
    assert result.manifest["ledger"]["examples"]["gene_pair/truncated_file"] == [
        f"{cut}: record NM_2.1: {TRUNCATED.format(fmt='gzip')}"
    ]
