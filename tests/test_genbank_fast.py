"""The fast GenBank path (`ingest/genbank.py`) held to Biopython's: same rows, same ledger.

The reference is the same builder with every fast path switched off: records from
`parse_genbank` (Bio.SeqIO), CDS spliced by `feature.extract` and translated by
`feature.translate`, gene DNA cut from a Seq. Every GenBank file of Biopython's test corpus and
a set of edited records (internal stop, bad table, pseudo, ambiguous bases, warnings Biopython
raises in features and sequence lines, ...) must give the same rows, error message, ledger,
statistics and warnings both ways.
"""

from __future__ import annotations

import gzip
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

import bsm_ray.ingest.builders as builders
from bsm_ray.errors import InputError
from bsm_ray.ingest import genbank
from bsm_ray.ingest.builders import BuildContext, RefSeqConfig, build_refseq_pairs
from bsm_ray.ingest.genbank import CDS_QUALIFIERS, cds_record, iter_cds_records
from bsm_ray.ingest.prepare import input_rows
from bsm_ray.ingest.records import Ledger, parse_genbank


def _prepare(path: Path, on_invalid: str, flank_bp: int = 50):
    """Everything one GenBank input gives through the builder and `input_rows`."""
    ctx = BuildContext(Ledger(on_invalid=on_invalid), 0, 0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            rows = list(
                input_rows(
                    "refseq_pair",
                    str(path),
                    build_refseq_pairs(RefSeqConfig(flank_bp=flank_bp), str(path), ctx),
                    ctx,
                )
            )
            error = None
        except InputError as exc:
            rows, error = None, str(exc)
    return {
        "rows": rows,
        "error": error,
        "ledger": ctx.ledger.as_dict(),
        "stats": dict(ctx.stats),
        "records_read": dict(ctx.records_read),
        "warnings": [f"{w.category.__name__}: {w.message}" for w in caught],
    }


def _reference_records(path, part=None):
    return ((cds_record(record), repairs) for record, repairs in parse_genbank(path, part))


def _prepare_with_biopython(monkeypatch, path: Path, on_invalid: str, flank_bp: int = 50):
    with monkeypatch.context() as m:
        m.setattr(builders, "iter_cds_records", _reference_records)
        m.setattr(builders, "fast_cds", lambda *args: None)
        m.setattr(builders, "acgt_only", lambda seq: False)
        return _prepare(path, on_invalid, flank_bp)


def _assert_same(monkeypatch, path: Path) -> dict:
    for on_invalid in ("error", "skip"):
        fast = _prepare(path, on_invalid)
        reference = _prepare_with_biopython(monkeypatch, path, on_invalid)
        assert fast == reference, (path.name, on_invalid)
    return fast


def test_every_file_of_biopythons_corpus_gives_what_biopython_gives(monkeypatch, genbank_dir):
    files = sorted(p for p in genbank_dir.iterdir() if p.is_file())
    assert len(files) == 58
    num_rows = 0
    for path in files:
        num_rows += len(_assert_same(monkeypatch, path)["rows"] or [])
    assert num_rows > 100  # the comparison covered real rows, not only errors


def test_records_read_fast_have_biopythons_values(genbank_dir):
    """Record by record: label, molecule type, sequence, CDS locations and the qualifiers
    RefSeq pairs read, or the same error; and the clean records took the fast path."""
    num_fast = 0
    for path in sorted(p for p in genbank_dir.iterdir() if p.is_file()):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fast, fast_error = _records(iter_cds_records, path)
            reference, reference_error = _records(_reference_records, path)
        assert fast_error == reference_error, path.name
        assert len(fast) == len(reference), path.name
        for (a, a_repairs), (b, b_repairs) in zip(fast, reference, strict=True):
            assert (a.label, a.molecule_type, a.seq, a_repairs) == (
                b.label, b.molecule_type, b.seq, b_repairs), path.name  # fmt: skip
            assert [f.location for f in a.cds] == [f.location for f in b.cds], path.name
            assert [_used(f) for f in a.cds] == [_used(f) for f in b.cds], path.name
    for name in ("NC_005816.gb", "NC_000932.gb", "arab1.gb", "cor6_6.gb"):
        text = (genbank_dir / name).read_text()
        for record_text in re.findall(r"LOCUS.*?\n//\n", text, flags=re.S):
            assert genbank._scan_record(record_text) is not None, name
            num_fast += 1
    assert num_fast == 9


def _records(read, path):
    """The (record, repairs) pairs `read(path)` gives, and its error (or None)."""
    out = []
    try:
        for item in read(str(path)):
            out.append(item)
    except InputError as exc:
        return out, str(exc)
    return out, None


def _used(feature) -> dict:
    return {k: v for k, v in feature.qualifiers.items() if k in CDS_QUALIFIERS}


# --- edited records -----------------------------------------------------------------------------


def _set_bases(text: str, position: int, letters: str) -> str:
    """`text` with the ORIGIN letters from 1-based `position` replaced by `letters`."""
    head, origin = text.split("\nORIGIN", 1)
    lines = origin.split("\n")
    for i, letter in enumerate(letters):
        p = position + i - 1
        row, col = 1 + p // 60, 10 + p % 60 + (p % 60) // 10
        line = lines[row]
        lines[row] = line[:col] + letter + line[col + 1 :]
    return head + "\nORIGIN" + "\n".join(lines)


def _first(old: str, new: str):
    return lambda text: text.replace(old, new, 1)


_CDS1 = "     CDS             87..1109\n"
_GENE1 = "     gene            87..1109\n"
EDITS = {
    "internal_stop": lambda t: _set_bases(t, 117, "taa"),
    "ambiguous_base_in_cds": lambda t: _set_bases(t, 120, "n"),
    "ambiguous_base_in_flank": lambda t: _set_bases(t, 80, "r"),
    "non_iupac_letter_in_cds": lambda t: _set_bases(t, 200, "j"),
    "bad_start_codon": lambda t: _set_bases(t, 87, "ccc"),
    "bad_transl_table": _first("/transl_table=11", "/transl_table=99"),
    "transl_table_4": _first("/transl_table=11", "/transl_table=4"),
    "dual_coding_table_27": _first("/transl_table=11", "/transl_table=27"),
    "codon_start_2": _first("/codon_start=1", "/codon_start=2"),
    "pseudo": _first(_CDS1, _CDS1 + "                     /pseudo\n"),
    "trans_splicing": _first(_CDS1, _CDS1 + "                     /trans_splicing\n"),
    "rna_editing": _first(_CDS1, _CDS1 + '                     /exception="RNA editing"\n'),
    "translation_mismatch": _first('/translation="MVTFETVMEI', '/translation="MVTFETWMEI'),
    "no_translation": _first('/translation="MVTFETV', '/xtranslation="MVTFETV'),
    "complement_join": _first(_CDS1, "     CDS             complement(join(87..500,501..1109))\n"),
    "origin_spanning": _first(_CDS1, "     CDS             join(9000..9609,1..100)\n"),
    "order_location": _first(_CDS1, "     CDS             order(87..500,501..1109)\n"),
    "wrapped_location": _first(_CDS1, "     CDS             join(87..500,\n"
                                      "                     501..1109)\n"),
    "other_record_part": _first(_CDS1, "     CDS             join(X00001.1:1..10,87..1109)\n"),
    "fuzzy_ends": _first(_CDS1, "     CDS             <87..>1109\n"),
    "between_location": _first(_GENE1, "     gene            86^87\n"),
    "gene_wraps_origin": _first(_GENE1, "     gene            9000..100\n"),
    "gene_starts_at_zero": _first(_GENE1, "     gene            0..1109\n"),
    "gene_unbalanced_location": _first(_GENE1, "     gene            87..1109)\n"),
    "gene_bad_quote": _first('/locus_tag="YP_pPCP01"', '/locus_tag="YP_"pPCP01"'),
    "cds_note_bad_quote": _first("sequenced pPCP plasmid", 'sequenced "pPCP plasmid'),
    "cds_escaped_quotes": _first("sequenced pPCP plasmid", 'sequenced ""pPCP"" plasmid'),
    "cds_unterminated_quote": _first('(Interpro|IPR007101)"', "(Interpro|IPR007101)"),
    "qualifier_space_after_equals": _first('/locus_tag="YP_pPCP01"', '/locus_tag= "YP_pPCP01"'),
    "qualifier_no_value_then_text": _first(_CDS1, _CDS1 + "                     /pseudo\n"
                                                  "                     text\n"),
    "blank_line_in_features": _first(_CDS1, "\n" + _CDS1),
    "blank_qualifier_line": _first(_CDS1, _CDS1 + "                     \n"),
    "over_indented_key": _first(_CDS1, "      CDS            87..1109\n"),
    "space_in_location": _first(_CDS1, "     CDS             join(87..500, 501..1109)\n"),
    "location_one_column_right": _first(_CDS1, "     CDS              87..1109\n"),
    "short_feature_line": _first(_CDS1, "     misc\n" + _CDS1),
    "blank_line_in_sequence": lambda t: t.replace("\n       61 ", "\n\n       61 ", 1),
    "sequence_indented_one_more": lambda t: t.replace("\n       61 ", "\n        61 ", 1),
    "sequence_line_without_number": lambda t: t.replace("\n       61 ", "\n          ", 1),
    "wrong_length_in_locus": _first("9609 bp", "9610 bp"),
    "no_origin": lambda t: t.split("ORIGIN")[0] + "//\n",
    "no_end_marker": lambda t: t[: t.rindex("//")],
    "two_feature_headers": _first("FEATURES             Location/Qualifiers\n",
                                  "FEATURES             Location/Qualifiers\nFEATURES\n"),
    "protein_molecule": _first("9609 bp    DNA  ", "9609 aa    PRT  "),
    "no_version": lambda t: re.sub(r"\nVERSION[^\n]*", "", t, count=1),
    "trailing_spaces": lambda t: t.replace("\n", "  \n"),
    "crlf_line_ends": lambda t: t.replace("\n", "\r\n"),
    "duplicate_id": lambda t: t + t,
    "junk_between_records": lambda t: t + "junk before the next record\n\n" + t.replace(
        "NC_005816.1", "NC_005816.2"),
    "two_records_one_broken": lambda t: t + t.replace("NC_005816.1", "NC_005816.2").replace(
        '(Interpro|IPR007101)"', "(Interpro|IPR007101)"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(EDITS))
def test_edited_record_gives_what_biopython_gives(monkeypatch, tmp_path, genbank_dir, name):
    original = (genbank_dir / "NC_005816.gb").read_text()
    edited = EDITS[name](original)
    assert edited != original, name
    path = tmp_path / f"{name}.gb"
    path.write_bytes(edited.encode())
    _assert_same(monkeypatch, path)


@pytest.mark.parametrize("read_chars", [4096, 1 << 20])
def test_read_failure_hits_the_same_record(monkeypatch, tmp_path, genbank_dir, read_chars):
    """A byte that is not UTF-8 early in a record: Biopython's reader decodes 8 KiB ahead, so
    it fails while reading the record before; the fast reader keeps and fails on the same ones
    (records are handed out only with text well past them decoded, then the replay)."""
    monkeypatch.setattr(genbank, "_READ_CHARS", read_chars)
    text = (genbank_dir / "NC_005816.gb").read_text()
    records = [text.replace("NC_005816.1", f"NC_005816.{k}").encode() for k in range(1, 40)]
    data = b"".join(records)
    for k in (20, 38):  # the definition line of record k + 1 (of 39)
        cut = data.index(b"plasmid pPCP1", sum(len(r) for r in records[:k]))
        broken = data[:cut] + b"\xe9" + data[cut + 1 :]
        for name, raw in ((f"bad{k}.gb", broken), (f"bad{k}.gb.gz", gzip.compress(broken))):
            path = tmp_path / name
            path.write_bytes(raw)
            result = _assert_same(monkeypatch, path)
            assert "not_utf8" in str(result["ledger"]), name
            assert k - 2 <= result["records_read"][str(path)] <= k, name  # good ones kept


def test_big_record_read_in_growing_blocks(monkeypatch, tmp_path, genbank_dir):
    """A record longer than one read block, and records straddling block ends."""
    text = (genbank_dir / "NC_000932.gb").read_text()  # 0.3 MB
    many = "".join(text.replace("NC_000932.1", f"NC_000932.{k}") for k in range(1, 8))
    path = tmp_path / "many.gb"
    path.write_text(many)
    monkeypatch.setattr(genbank, "_READ_CHARS", 4096)
    monkeypatch.setattr(genbank, "_LOOKAHEAD_CHARS", 1000)
    result = _assert_same(monkeypatch, path)
    assert len(result["rows"]) == 7 * 85


def test_shuffled_combination_draws_what_numpys_choice_draws():
    """`shuffled_combination` searches numpy's cumulative probabilities itself: it must pick
    what `rng.choice(sizes, p=...)` picks and leave the generator in the same state."""

    def with_choice(rng, members):
        sizes = [n for n in (2, 3) if n <= len(members)]
        weights = np.array([np.prod(range(len(members) - n + 1, len(members) + 1)) for n in sizes])
        size = int(rng.choice(sizes, p=weights / weights.sum()))
        return [members[i] for i in rng.permutation(len(members))[:size]]

    for num in (2, 3):
        members = [("dna", "A"), ("rna", "C"), ("protein", "M")][:num]
        for seed in range(3000):
            a, b = np.random.default_rng([7, seed]), np.random.default_rng([7, seed])
            assert builders.shuffled_combination(a, members) == with_choice(b, members)
            assert a.random() == b.random()


def test_read_failure_sweep_with_unaligned_reads(monkeypatch, tmp_path, genbank_dir):
    """Reads of 10,000 characters do not end where Biopython's 8 KiB decoding steps end: a bad
    byte a few KB into each record in turn must still stop the fast reader at Biopython's
    record (this is what the look-ahead before handing a record out is for)."""
    monkeypatch.setattr(genbank, "_READ_CHARS", 10_000)
    text = (genbank_dir / "NC_005816.gb").read_text()
    records = [text.replace("NC_005816.1", f"NC_005816.{k}").encode() for k in range(1, 40)]
    data = b"".join(records)
    path = tmp_path / "bad.gb"
    for k in range(1, 39):
        cut = data.index(b"FEATURES", sum(len(r) for r in records[:k])) + 2
        path.write_bytes(data[:cut] + b"\xe9" + data[cut + 1 :])
        fast, fast_error = _records(iter_cds_records, path)
        reference, reference_error = _records(_reference_records, path)
        assert "not_utf8" in str(reference_error)
        assert (len(fast), fast_error) == (len(reference), reference_error), k
