"""Tests for bsm_ray.tokenizers: the DNABERT k-mer tokenizer, the BSM char tokenizer, alphabets.

Exact ids are part of the checkpoint format (DNABERT weights, BSM checkpoints), so most tests
pin literal values or recompute them independently of the implementation.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from bsm_ray.tokenizers import (
    ALPHABETS,
    MODALITIES,
    BsmCharTokenizer,
    KmerTokenizer,
    first_invalid,
    format_document,
    guess_modality,
)

IUPAC_AMBIGUITY = "NRYSWKMBDHV"


def random_dna(rng: np.random.Generator, n: int, letters: str = "ACGT") -> str:
    return "".join(rng.choice(list(letters), size=n))


def independent_kmer_table(k: int) -> dict[str, int]:
    """DNABERT's vocab.txt layout, built without the tokenizer: 5 specials, then product(ATCG)."""
    return {"".join(p): 5 + i for i, p in enumerate(itertools.product("ATCG", repeat=k))}


def formula_id(kmer: str) -> int:
    idx = {"A": 0, "T": 1, "C": 2, "G": 3}
    k = len(kmer)
    return 5 + sum(idx[c] * 4 ** (k - 1 - i) for i, c in enumerate(kmer))


# ===========================================================================================
# k-mer tokenizer: ids
# ===========================================================================================


@pytest.mark.parametrize(
    ("kmer", "expected"),
    [
        ("AAAAAA", 5),
        ("AAAAAT", 6),
        ("AAAAAC", 7),
        ("AAAAAG", 8),
        ("AAAATA", 9),
        ("TAAAAA", 5 + 1024),
        ("GGGGGG", 4100),
    ],
)
def test_kmer6_known_ids(kmer: str, expected: int) -> None:
    tok = KmerTokenizer(k=6)
    assert tok.kmer_ids(kmer).tolist() == [expected]
    assert tok.token_to_id[kmer] == expected
    assert tok.vocab[expected] == kmer


@pytest.mark.parametrize(("k", "size"), [(3, 69), (4, 261), (5, 1029), (6, 4101)])
def test_kmer_vocab_sizes(k: int, size: int) -> None:
    tok = KmerTokenizer(k=k)
    assert tok.vocab_size == size
    assert len(tok.vocab) == size
    assert len(set(tok.vocab)) == size


@pytest.mark.parametrize("k", [3, 4, 5, 6])
def test_kmer_vocab_layout_matches_dnabert(k: int) -> None:
    tok = KmerTokenizer(k=k)
    assert tok.vocab[:5] == ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
    table = independent_kmer_table(k)
    assert {t: i for i, t in enumerate(tok.vocab) if i >= 5} == table
    assert tok.vocab[-1] == "G" * k


@pytest.mark.parametrize("k", [0, 1, 2, 7, 8])
def test_kmer_rejects_k_outside_3_to_6(k: int) -> None:
    with pytest.raises(ValueError, match="3..6"):
        KmerTokenizer(k=k)


@pytest.mark.parametrize("k", [3, 4, 5, 6])
def test_kmer_ids_match_independent_formula(k: int) -> None:
    rng = np.random.default_rng(1000 + k)
    table = independent_kmer_table(k)
    tok = KmerTokenizer(k=k)
    for _ in range(25):
        kmer = random_dna(rng, k)
        assert formula_id(kmer) == table[kmer]  # the two independent derivations agree
        assert tok.kmer_ids(kmer).tolist() == [table[kmer]]


@pytest.mark.parametrize("k", [3, 4, 5, 6])
def test_kmer_ids_of_random_sequence_match_windows(k: int) -> None:
    rng = np.random.default_rng(7 + k)
    seq = random_dna(rng, 200)
    table = independent_kmer_table(k)
    expected = [table[seq[i : i + k]] for i in range(len(seq) - k + 1)]
    ids = KmerTokenizer(k=k).kmer_ids(seq)
    assert ids.dtype == np.int32
    assert ids.tolist() == expected


@pytest.mark.parametrize(
    "kmer",
    ["AAAAAN", "NAAAAA", "NNNNNN", "aaaaaa", "AAaAAA", "ACGTAU", "AAA AA", "AAAAA?", "AAAAAé"]
    + [f"ACG{c}TA" for c in IUPAC_AMBIGUITY],
)
def test_kmer_with_non_acgt_letter_is_unk(kmer: str) -> None:
    assert KmerTokenizer(k=6).kmer_ids(kmer).tolist() == [1]


def test_kmer_unk_covers_exactly_the_windows_holding_the_bad_letter() -> None:
    tok = KmerTokenizer(k=3)
    seq = "ACGTNACGT"  # N at index 4: windows starting 2, 3, 4 hold it
    ids = tok.kmer_ids(seq).tolist()
    table = independent_kmer_table(3)
    assert ids == [table["ACG"], table["CGT"], 1, 1, 1, table["ACG"], table["CGT"]]


def test_kmer_lowercase_is_never_folded() -> None:
    tok = KmerTokenizer(k=3)
    assert tok.kmer_ids("acgt").tolist() == [1, 1]
    assert "acg" not in tok.token_to_id


@pytest.mark.parametrize("k", [3, 4, 5, 6])
def test_kmer_token_count_is_n_minus_k_plus_1(k: int) -> None:
    tok = KmerTokenizer(k=k)
    for n in range(0, 3 * k):
        ids = tok.kmer_ids("A" * n)
        assert ids.size == max(n - k + 1, 0), n
        assert ids.dtype == np.int32


def test_kmer_bytes_and_str_inputs_agree() -> None:
    tok = KmerTokenizer(k=4)
    seq = "ACGTTGCANNACGTacgt"
    assert tok.kmer_ids(seq).tolist() == tok.kmer_ids(seq.encode()).tolist()


# ===========================================================================================
# k-mer tokenizer: batches
# ===========================================================================================


def test_kmer_ids_batch_equals_per_sequence() -> None:
    rng = np.random.default_rng(3)
    tok = KmerTokenizer(k=5)
    seqs = [random_dna(rng, int(n)) for n in rng.integers(0, 40, size=30)]
    seqs += ["", "ACG", "ACGTN", "acgtacgt", b"ACGTACGT"]
    ids, offsets = tok.kmer_ids_batch(seqs)
    assert offsets.dtype == np.int64
    assert offsets.shape == (len(seqs) + 1,)
    assert offsets[0] == 0 and offsets[-1] == ids.size
    for i, seq in enumerate(seqs):
        assert ids[offsets[i] : offsets[i + 1]].tolist() == tok.kmer_ids(seq).tolist(), i


def test_kmer_ids_batch_empty() -> None:
    ids, offsets = KmerTokenizer(k=6).kmer_ids_batch([])
    assert ids.size == 0
    assert offsets.tolist() == [0]


def test_kmer_windows_never_cross_sequence_boundaries() -> None:
    tok = KmerTokenizer(k=6)
    # Concatenated, "AAAAAA"+"GGGGGG" holds AAAAAG, AAAAGG, ... which belong to neither.
    ids, offsets = tok.kmer_ids_batch(["AAAAAA", "GGGGGG"])
    assert ids.tolist() == [5, 4100]
    assert offsets.tolist() == [0, 1, 2]
    # Too-short sequences give nothing, though "AAA"+"CCC" would be a valid 6-mer.
    ids, offsets = tok.kmer_ids_batch(["AAA", "CCC", "TTTTTTT"])
    assert ids.tolist() == [tok.token_to_id["TTTTTT"]] * 2
    assert offsets.tolist() == [0, 0, 0, 2]
    out = tok.encode_batch(["AAAAAAA", "CCCCCCC"], max_len=8)
    c6 = tok.token_to_id["CCCCCC"]
    assert out["input_ids"].tolist() == [[2, 5, 5, 3, 0, 0, 0, 0], [2, c6, c6, 3, 0, 0, 0, 0]]


def test_kmer_batch_ids_only_contain_kmers_of_their_own_sequence() -> None:
    rng = np.random.default_rng(11)
    tok = KmerTokenizer(k=4)
    seqs = [random_dna(rng, int(n)) for n in rng.integers(1, 12, size=50)]
    ids, offsets = tok.kmer_ids_batch(seqs)
    for i, seq in enumerate(seqs):
        own = {tok.token_to_id[seq[j : j + 4]] for j in range(len(seq) - 3)}
        assert set(ids[offsets[i] : offsets[i + 1]].tolist()) == own


def test_encode_batch_layout_exact() -> None:
    tok = KmerTokenizer(k=3)
    t = independent_kmer_table(3)
    out = tok.encode_batch(["ACGTA", "GG", "TTT"], max_len=7)
    assert set(out) == {"input_ids", "attention_mask", "num_truncated"}
    assert out["input_ids"].dtype == np.int32
    assert out["attention_mask"].dtype == np.int8
    assert out["num_truncated"].dtype == np.int32
    assert out["input_ids"].tolist() == [
        [2, t["ACG"], t["CGT"], t["GTA"], 3, 0, 0],
        [2, 3, 0, 0, 0, 0, 0],
        [2, t["TTT"], 3, 0, 0, 0, 0],
    ]
    assert out["attention_mask"].tolist() == [
        [1, 1, 1, 1, 1, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],
    ]
    assert out["num_truncated"].tolist() == [0, 0, 0]


def test_encode_batch_truncates_and_counts() -> None:
    tok = KmerTokenizer(k=3)
    rng = np.random.default_rng(5)
    long_seq = random_dna(rng, 20)  # 18 k-mers
    exact = random_dna(rng, 10)  # 8 k-mers == max_len - 2: fits exactly
    out = tok.encode_batch([long_seq, exact, "ACGT"], max_len=10)
    ids = out["input_ids"]
    assert out["num_truncated"].tolist() == [10, 0, 0]
    assert ids[0].tolist() == [2] + tok.kmer_ids(long_seq)[:8].tolist() + [3]
    assert ids[1].tolist() == [2] + tok.kmer_ids(exact).tolist() + [3]
    assert out["attention_mask"][:2].all()
    assert out["attention_mask"][2].tolist() == [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]


def test_encode_batch_default_max_len_and_override() -> None:
    tok = KmerTokenizer(k=6, max_len=16)
    assert tok.encode_batch(["ACGTACGT"])["input_ids"].shape == (1, 16)
    assert tok.encode_batch(["ACGTACGT"], max_len=5)["input_ids"].shape == (1, 5)
    assert KmerTokenizer().encode_batch(["A"])["input_ids"].shape == (1, 512)


def test_encode_batch_minimal_max_len() -> None:
    out = KmerTokenizer(k=3).encode_batch(["ACGTAC"], max_len=2)
    assert out["input_ids"].tolist() == [[2, 3]]
    assert out["num_truncated"].tolist() == [4]


@pytest.mark.parametrize("max_len", [1, -3])
def test_encode_batch_rejects_max_len_without_room_for_cls_sep(max_len: int) -> None:
    with pytest.raises(ValueError, match="max_len"):
        KmerTokenizer(k=3).encode_batch(["ACGTAC"], max_len=max_len)


@pytest.mark.parametrize("k", [3, 6])
def test_encode_batch_rows_equal_per_sequence_kmer_ids(k: int) -> None:
    rng = np.random.default_rng(21 + k)
    tok = KmerTokenizer(k=k)
    max_len = 40
    seqs = [random_dna(rng, int(n), "ACGTN") for n in rng.integers(0, 60, size=40)]
    out = tok.encode_batch(seqs, max_len=max_len)
    for r, seq in enumerate(seqs):
        kmers = tok.kmer_ids(seq).tolist()
        keep = min(len(kmers), max_len - 2)
        row = out["input_ids"][r].tolist()
        assert row == [2] + kmers[:keep] + [3] + [0] * (max_len - keep - 2)
        assert out["attention_mask"][r].tolist() == [1] * (keep + 2) + [0] * (max_len - keep - 2)
        assert out["num_truncated"][r] == len(kmers) - keep


def test_encode_batch_empty_batch() -> None:
    out = KmerTokenizer(k=6).encode_batch([], max_len=8)
    assert out["input_ids"].shape == (0, 8)
    assert out["num_truncated"].shape == (0,)


# ===========================================================================================
# k-mer tokenizer: decoding
# ===========================================================================================


def test_kmer_decode_tokens() -> None:
    tok = KmerTokenizer(k=6)
    assert tok.decode([2, 5, 6, 4100, 3, 0]) == ["AAAAAA", "AAAAAT", "GGGGGG"]
    assert tok.decode([2, 5, 1, 3, 0], skip_special=False) == [
        "[CLS]",
        "AAAAAA",
        "[UNK]",
        "[SEP]",
        "[PAD]",
    ]
    assert tok.decode([]) == []


@pytest.mark.parametrize("bad", [[-1], [4101], [5, 99999]])
def test_kmer_decode_rejects_out_of_range_ids(bad: list[int]) -> None:
    tok = KmerTokenizer(k=6)
    with pytest.raises(ValueError, match="out of range"):
        tok.decode(bad)
    with pytest.raises(ValueError):
        tok.decode_to_sequence(bad)


@pytest.mark.parametrize("k", [3, 4, 5, 6])
def test_kmer_decode_round_trips_random_sequences(k: int) -> None:
    rng = np.random.default_rng(100 + k)
    tok = KmerTokenizer(k=k)
    for n in [k, k + 1, 37, 300]:
        seq = random_dna(rng, n)
        ids = tok.kmer_ids(seq)
        assert tok.decode(ids) == [seq[i : i + k] for i in range(n - k + 1)]
        assert tok.decode_to_sequence(ids) == seq
        row = tok.encode_batch([seq], max_len=n + 10)["input_ids"][0]  # with [CLS]/[SEP]/[PAD]
        assert tok.decode_to_sequence(row) == seq


def test_kmer_decode_to_sequence_errors() -> None:
    tok = KmerTokenizer(k=3)
    assert tok.decode_to_sequence([]) == ""
    assert tok.decode_to_sequence([2, 3, 0]) == ""
    with pytest.raises(ValueError, match="UNK"):
        tok.decode_to_sequence(tok.kmer_ids("ACGNT"))
    with pytest.raises(ValueError, match="MASK"):
        tok.decode_to_sequence([tok.token_to_id["ACG"], 4])
    with pytest.raises(ValueError, match="overlap"):
        tok.decode_to_sequence([tok.token_to_id["ACG"], tok.token_to_id["TTT"]])


def test_to_kmer_string() -> None:
    assert KmerTokenizer.to_kmer_string("ACGTAC", k=3) == "ACG CGT GTA TAC"
    assert KmerTokenizer.to_kmer_string("AAAAAAT") == "AAAAAA AAAAAT"
    assert KmerTokenizer.to_kmer_string("ACG", k=6) == ""


def test_kmer_fingerprint_depends_on_k() -> None:
    prints = {KmerTokenizer(k=k).fingerprint() for k in (3, 4, 5, 6)}
    assert len(prints) == 4
    assert KmerTokenizer(k=6).fingerprint() == KmerTokenizer(k=6, max_len=64).fingerprint()


# ===========================================================================================
# BSM character tokenizer
# ===========================================================================================


@pytest.fixture(scope="module")
def char_tok() -> BsmCharTokenizer:
    return BsmCharTokenizer()


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("<pad>", 0),
        ("<bos>", 1),
        ("<eos>", 2),
        ("<sep>", 3),
        ("<unk>", 4),
        ("<dna>", 5),
        ("<rna>", 6),
        ("<protein>", 7),
        ("A", 8),
        ("C", 9),
        ("G", 10),
        ("T", 11),
        ("U", 12),
        ("N", 13),
        ("K", 18),
        ("M", 19),
        ("*", 33),
    ],
)
def test_char_exact_ids(char_tok: BsmCharTokenizer, token: str, expected: int) -> None:
    assert char_tok.encode(token).tolist() == [expected]
    assert char_tok.token_to_id[token] == expected
    assert char_tok.decode([expected], skip_pad=False) == token


def test_char_vocab_shape(char_tok: BsmCharTokenizer) -> None:
    assert char_tok.vocab_size == 34
    assert len(set(char_tok.vocab)) == 34
    assert char_tok.vocab[8:] == tuple("ACGTUNRYSWKMBDHVEFILPQXZO*")
    ids = (char_tok.pad_id, char_tok.bos_id, char_tok.eos_id, char_tok.sep_id, char_tok.unk_id)
    assert ids == (0, 1, 2, 3, 4)


def test_char_every_alphabet_letter_has_its_own_id(char_tok: BsmCharTokenizer) -> None:
    for modality, letters in ALPHABETS.items():
        ids = char_tok.encode(letters).tolist()
        assert 4 not in ids, modality
        assert len(set(ids)) == len(letters), modality
        assert all(8 <= i < 34 for i in ids)


@pytest.mark.parametrize(
    "char", ["J", "a", "c", "t", " ", "\t", "\n", "é", "\U0001f600", "<", ">", "-", "."]
)
def test_char_unknown_characters_are_unk(char_tok: BsmCharTokenizer, char: str) -> None:
    assert char_tok.encode(char).tolist() == [4]
    assert char_tok.encode(f"A{char}C").tolist() == [8, 4, 9]


@pytest.mark.parametrize("ctrl", [chr(i) for i in range(0, 32)] + ["\x7f", "\x80", "\xff"])
def test_char_control_characters_are_unk_not_special(char_tok: BsmCharTokenizer, ctrl: str) -> None:
    # Control bytes must not alias the special tokens (they did: "\x01" encoded as <pad>).
    assert char_tok.encode(ctrl + "A").tolist() == [4, 8]


def test_char_one_id_per_unknown_character(char_tok: BsmCharTokenizer) -> None:
    text = "AéJ ü漢字C"
    ids = char_tok.encode(text).tolist()
    assert ids == [8, 4, 4, 4, 4, 4, 4, 9]
    assert len(ids) == len(text)


def test_char_partial_or_miscased_specials_are_characters(char_tok: BsmCharTokenizer) -> None:
    assert char_tok.encode("<dn").tolist() == [4, 4, 4]
    assert char_tok.encode("<DNA>").tolist() == [4, 21, 13, 8, 4]  # "<", D, N, A, ">"
    assert char_tok.encode("<<dna>>").tolist() == [4, 5, 4]
    assert char_tok.encode("<dna><sep>").tolist() == [5, 3]


def test_char_encode_dtype_and_empty(char_tok: BsmCharTokenizer) -> None:
    assert char_tok.encode("ACGT").dtype == np.int32
    assert char_tok.encode("").tolist() == []
    assert char_tok.decode([]) == ""


def test_format_document() -> None:
    doc = format_document([("dna", "ATGAAA"), ("protein", "MK"), ("rna", "AUG")])
    assert doc == "<dna>ATGAAA<sep><protein>MK<sep><rna>AUG"
    assert format_document([]) == ""
    with pytest.raises(KeyError):
        format_document([("rnaa", "AUG")])


def test_char_encode_formatted_document_exact(char_tok: BsmCharTokenizer) -> None:
    doc = format_document([("dna", "ATGAAA"), ("protein", "MK*")])
    assert char_tok.encode(doc).tolist() == [5, 8, 11, 10, 8, 8, 8, 3, 7, 19, 18, 33]


def test_char_encode_sequence(char_tok: BsmCharTokenizer) -> None:
    assert char_tok.encode_sequence("ACGU", "rna").tolist() == [6, 8, 9, 10, 12]
    assert char_tok.encode_sequence("", "protein").tolist() == [7]


def random_document(rng: np.random.Generator) -> str:
    segments = []
    for _ in range(int(rng.integers(1, 4))):
        modality = str(rng.choice(MODALITIES))
        letters = ALPHABETS[modality]
        segments.append((modality, random_dna(rng, int(rng.integers(0, 50)), letters)))
    return format_document(segments)


def test_char_round_trip_random_documents(char_tok: BsmCharTokenizer) -> None:
    rng = np.random.default_rng(42)
    for _ in range(100):
        doc = random_document(rng)
        ids = char_tok.encode(doc)
        assert char_tok.decode(ids) == doc
        assert char_tok.count_tokens(doc) == ids.size


def test_char_decode_pad_handling(char_tok: BsmCharTokenizer) -> None:
    ids = [1, 5, 8, 2, 0, 0]
    assert char_tok.decode(ids) == "<bos><dna>A<eos>"
    assert char_tok.decode(ids, skip_pad=False) == "<bos><dna>A<eos><pad><pad>"


@pytest.mark.parametrize("bad", [[-1], [34], [8, 1000]])
def test_char_decode_rejects_out_of_range(char_tok: BsmCharTokenizer, bad: list[int]) -> None:
    with pytest.raises(ValueError, match="out of range"):
        char_tok.decode(bad)


def test_char_encode_batch_equals_per_text(char_tok: BsmCharTokenizer) -> None:
    rng = np.random.default_rng(9)
    texts = [random_document(rng) for _ in range(20)]
    texts += ["", "Jé\x01<dn", "<pad><eos>", "A"]
    ids, offsets = char_tok.encode_batch(texts)
    assert ids.dtype == np.int32
    assert offsets.dtype == np.int64
    assert offsets.shape == (len(texts) + 1,)
    assert offsets[0] == 0 and offsets[-1] == ids.size
    for i, text in enumerate(texts):
        assert ids[offsets[i] : offsets[i + 1]].tolist() == char_tok.encode(text).tolist(), i


def test_char_encode_batch_empty(char_tok: BsmCharTokenizer) -> None:
    ids, offsets = char_tok.encode_batch([])
    assert ids.size == 0
    assert offsets.tolist() == [0]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ACGT",
        "<dna>ACGT<sep><protein>MK*",
        "<pad><bos><eos><sep><unk><dna><rna><protein>",
        "<dn<dna>a>",
        "<<protein>>",
        "Jé漢\U0001f600 \n\x01",
        "<DNA>acgt",
        "<protein" * 3,
    ],
)
def test_char_count_tokens_equals_len_encode(char_tok: BsmCharTokenizer, text: str) -> None:
    assert char_tok.count_tokens(text) == len(char_tok.encode(text))


def test_char_fingerprint_is_stable() -> None:
    a, b = BsmCharTokenizer(), BsmCharTokenizer()
    assert a.fingerprint() == b.fingerprint()
    assert len(a.fingerprint()) == 64
    assert a.fingerprint() != KmerTokenizer(k=3).fingerprint()


# ===========================================================================================
# Hugging Face interop
# ===========================================================================================

HF_CHAR_TEXTS = [
    "<dna>ACGTNRYSWKMBDHV<sep><protein>MKEFILPQXZO*",
    "<rna>ACGU<eos><bos><pad><unk>",
    "<dna>AJé C\tT\n<sep>",
    "J a\x01\x05é\nx<dn",
    "<DNA>acgt\U0001f600<<dna>>",
    "",
]


@pytest.fixture(scope="module")
def hf_char(tmp_path_factory: pytest.TempPathFactory):
    transformers = pytest.importorskip("transformers")
    out = tmp_path_factory.mktemp("char_tok")
    BsmCharTokenizer().save_pretrained(out)
    return out, transformers.AutoTokenizer.from_pretrained(out)


def test_hf_char_autotokenizer_gives_same_ids(char_tok: BsmCharTokenizer, hf_char) -> None:
    _, hf = hf_char
    for text in HF_CHAR_TEXTS:
        ours = char_tok.encode(text).tolist()
        theirs = hf(text, add_special_tokens=False)["input_ids"]
        assert theirs == ours, text
    assert hf.pad_token_id == 0 and hf.bos_token_id == 1 and hf.eos_token_id == 2
    assert hf.unk_token_id == 4 and hf.sep_token_id == 3
    assert len(hf) == 34


def test_hf_char_on_random_documents(char_tok: BsmCharTokenizer, hf_char) -> None:
    _, hf = hf_char
    rng = np.random.default_rng(17)
    texts = [random_document(rng) for _ in range(20)]
    theirs = hf(texts, add_special_tokens=False)["input_ids"]
    assert theirs == [char_tok.encode(t).tolist() for t in texts]


def test_hf_char_autotokenizer_decodes_to_the_text(char_tok: BsmCharTokenizer, hf_char) -> None:
    """decode(encode(s)) == s through transformers' AutoTokenizer on the exported files, for
    texts in the vocabulary; any text decodes as our own decoder does (unknowns as <unk>)."""
    _, hf = hf_char
    rng = np.random.default_rng(23)
    texts = [random_document(rng) for _ in range(20)] + HF_CHAR_TEXTS[:2]
    for text in texts:
        ids = hf(text, add_special_tokens=False)["input_ids"]
        assert hf.decode(ids) == text
    assert hf.decode(hf("<bos><dna>ATG<sep><protein>MK<eos>")["input_ids"],
                     skip_special_tokens=True) == "ATGMK"  # fmt: skip
    for text in HF_CHAR_TEXTS:
        ids = hf(text, add_special_tokens=False)["input_ids"]
        assert hf.decode(ids) == char_tok.decode(ids, skip_pad=False), text


def test_hf_char_config_records_fingerprint(char_tok: BsmCharTokenizer, hf_char) -> None:
    out, _ = hf_char
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["bsm_ray_fingerprint"] == char_tok.fingerprint()
    assert config["bsm_ray_tokenizer"] == "bsm-char"


def test_char_from_pretrained_round_trip(hf_char) -> None:
    out, _ = hf_char
    tok = BsmCharTokenizer.from_pretrained(out)
    assert isinstance(tok, BsmCharTokenizer)
    assert tok.encode("<dna>ACGT").tolist() == [5, 8, 9, 10, 11]


def test_char_from_pretrained_rejects_corrupted_vocab(tmp_path) -> None:
    pytest.importorskip("tokenizers")
    BsmCharTokenizer().save_pretrained(tmp_path)
    path = tmp_path / "tokenizer.json"
    data = json.loads(path.read_text())
    vocab = data["model"]["vocab"]
    vocab["A"], vocab["C"] = vocab["C"], vocab["A"]  # swap two ids
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="vocabulary differs"):
        BsmCharTokenizer.from_pretrained(tmp_path)


@pytest.mark.parametrize("k", [3, 6])
def test_hf_kmer_autotokenizer_gives_same_ids(tmp_path, k: int) -> None:
    transformers = pytest.importorskip("transformers")
    tok = KmerTokenizer(k=k)
    tok.save_pretrained(tmp_path)
    assert (tmp_path / "vocab.txt").read_text().splitlines() == list(tok.vocab)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    rng = np.random.default_rng(k)
    seqs = [random_dna(rng, 30) for _ in range(5)] + ["ACGTNACGTACGTA", "GGGGGGGG", "AAAAAAT"]
    for seq in seqs:
        ours = tok.kmer_ids(seq).tolist()
        theirs = hf(KmerTokenizer.to_kmer_string(seq, k=k))["input_ids"]
        assert theirs == [2, *ours, 3], seq
        row = tok.encode_batch([seq], max_len=len(ours) + 2)["input_ids"][0].tolist()
        assert row == theirs
    assert (hf.pad_token_id, hf.unk_token_id, hf.cls_token_id, hf.sep_token_id) == (0, 1, 2, 3)
    assert hf.mask_token_id == 4
    # Decoding gives DNABERT's text form back (k-mers separated by spaces), not the sequence:
    # the overlapping k-mers become the sequence with KmerTokenizer.decode_to_sequence.
    seq = seqs[0]
    ids = hf(KmerTokenizer.to_kmer_string(seq, k=k))["input_ids"]
    assert hf.decode(ids, skip_special_tokens=True) == KmerTokenizer.to_kmer_string(seq, k=k)
    assert tok.decode_to_sequence(ids) == seq


@pytest.mark.parametrize("k", [3, 4, 5, 6])
def test_kmer_from_pretrained_round_trip(tmp_path, k: int) -> None:
    KmerTokenizer(k=k).save_pretrained(tmp_path)
    tok = KmerTokenizer.from_pretrained(tmp_path)
    assert tok.k == k
    assert tok.vocab == KmerTokenizer(k=k).vocab
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["bsm_ray_tokenizer"] == f"kmer-{k}"
    assert config["bsm_ray_fingerprint"] == tok.fingerprint()
    assert config["do_lower_case"] is False


def test_kmer_from_pretrained_rejects_corrupted_vocab(tmp_path) -> None:
    KmerTokenizer(k=4).save_pretrained(tmp_path)
    path = tmp_path / "vocab.txt"
    lines = path.read_text().splitlines()
    lines[5], lines[6] = lines[6], lines[5]  # AAAA <-> AAAT
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="ids differ"):
        KmerTokenizer.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "content",
    ["", "\n", "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n", "[PAD]\nAA\n", "[PAD]\nAAAAAAA\n"],
)
def test_kmer_from_pretrained_rejects_truncated_vocab(tmp_path, content: str) -> None:
    (tmp_path / "vocab.txt").write_text(content)
    with pytest.raises(ValueError):
        KmerTokenizer.from_pretrained(tmp_path)


# ===========================================================================================
# alphabets
# ===========================================================================================


@pytest.mark.parametrize(
    ("seq", "modality", "expected"),
    [
        ("ACGT", "dna", -1),
        ("", "dna", -1),
        ("ACGTNRYSWKMBDHV", "dna", -1),
        ("ACGXT", "dna", 3),
        ("XACGT", "dna", 0),
        ("ACGTX", "dna", 4),
        ("ACGU", "dna", 3),
        ("acgt", "dna", 0),
        ("ACgT", "dna", 2),
        ("AC GT", "dna", 2),
        ("ACé", "dna", 2),
        ("éé", "dna", 0),
        ("ACGU", "rna", -1),
        ("ACGT", "rna", 3),
        ("ACDEFGHIKLMNPQRSTVWYBZXUO*", "protein", -1),
        ("MKJ", "protein", 2),
        ("MK-", "protein", 2),
        (b"ACGT", "dna", -1),
        (b"ACG\xffT", "dna", 3),
    ],
)
def test_first_invalid(seq, modality: str, expected: int) -> None:
    assert first_invalid(seq, modality) == expected


def test_first_invalid_matches_python_loop() -> None:
    rng = np.random.default_rng(0)
    pool = "ACGTUNXJ*-a"
    for _ in range(200):
        seq = random_dna(rng, int(rng.integers(0, 12)), pool)
        for modality, letters in ALPHABETS.items():
            expected = next((i for i, c in enumerate(seq) if c not in letters), -1)
            assert first_invalid(seq, modality) == expected, (seq, modality)


def test_first_invalid_unknown_modality_raises() -> None:
    with pytest.raises(KeyError):
        first_invalid("ACGT", "dnaa")


@pytest.mark.parametrize(
    ("seq", "expected"),
    [
        ("ACGT", "dna"),
        ("ACGTN", "dna"),
        ("NNNN", "dna"),
        ("ACGTRYKM", "dna"),
        ("ACGU", "rna"),
        ("ACGUN", "rna"),
        ("UUUU", "rna"),
        ("ACGTU", "protein"),  # both T and U: not a nucleotide sequence
        ("MKTAYIAKQR", "protein"),
        ("ACDE", "protein"),
        ("MK*", "protein"),
        ("ACGT*", "protein"),
    ],
)
def test_guess_modality(seq: str, expected: str) -> None:
    assert guess_modality(seq) == expected


def test_alphabets_are_uppercase_and_consistent() -> None:
    assert MODALITIES == ("dna", "rna", "protein")
    assert set(ALPHABETS) == set(MODALITIES)
    for letters in ALPHABETS.values():
        assert letters == letters.upper()
        assert len(set(letters)) == len(letters)
    assert set(ALPHABETS["dna"]) - set(ALPHABETS["rna"]) == {"T"}
    assert set(ALPHABETS["rna"]) - set(ALPHABETS["dna"]) == {"U"}
