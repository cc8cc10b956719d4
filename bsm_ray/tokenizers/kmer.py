"""DNABERT-compatible overlapping k-mer tokenizer (k = 3..6).

Ids exactly as DNABERT's vocab files (REFERENCE.md section 1), so the original DNABERT-6
weights and vocab.txt line up with ours:

    0 [PAD]  1 [UNK]  2 [CLS]  3 [SEP]  4 [MASK]
    5 ..     every k-mer of itertools.product("ATCG", repeat=k): letter order A, T, C, G
             id = 5 + sum_i idx(c_i) * 4^(k-1-i) with A=0, T=1, C=2, G=3
             (k=6: AAAAAA=5, AAAAAT=6, AAAAAC=7, GGGGGG=4100; vocab 69/261/1029/4101 for k=3..6)

A sequence of n nucleotides gives n-k+1 k-mers (stride 1; none if n < k). A window holding any
letter other than uppercase A/C/G/T (N, IUPAC codes, lowercase) is `[UNK]`: DNABERT tokens are
never lowercased. Model input is `[CLS] k-mers [SEP]`, padded with `[PAD]`, at most 512 positions.

Encoding is vectorized over a whole batch: the sequences are concatenated once, each position's
k-mer id is built with k shifted adds, and windows that cross a sequence boundary are never
selected. Pure module: numpy only.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bsm_ray.fileio import atomic_write_text

PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(5)
SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
NUM_SPECIAL = len(SPECIAL_TOKENS)
BASE_ORDER = "ATCG"  # DNABERT's order, not ACGT

# Base code per byte: A=0 T=1 C=2 G=3, anything else 4 (invalid). uint8 keeps 1 byte per base.
BASE_CODE = np.full(256, 4, dtype=np.uint8)
for _i, _b in enumerate(BASE_ORDER):
    BASE_CODE[ord(_b)] = _i


class KmerTokenizer:
    """Overlapping k-mer tokenizer with DNABERT's vocabulary layout."""

    def __init__(self, k: int = 6, max_len: int = 512) -> None:
        if not 3 <= k <= 6:
            raise ValueError(f"k must be 3..6 (DNABERT vocabularies), got {k}")
        self.k = k
        self.max_len = max_len
        self.vocab: tuple[str, ...] = SPECIAL_TOKENS + tuple(
            "".join(p) for p in itertools.product(BASE_ORDER, repeat=k)
        )
        self.token_to_id = {tok: i for i, tok in enumerate(self.vocab)}

    pad_id, unk_id, cls_id, sep_id, mask_id = PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def fingerprint(self) -> str:
        return hashlib.sha256("\n".join(self.vocab).encode()).hexdigest()

    # --- encoding ---------------------------------------------------------------------------
    def _kmer_ids_concat(self, buf: bytes) -> np.ndarray:
        """k-mer id of the window starting at every position of `buf` (len(buf)-k+1 values).

        Windows containing an invalid byte get UNK_ID. Memory is about 7 bytes per base
        (uint8 codes and flags, int32 ids updated in place), so a chromosome fits.
        """
        k = self.k
        codes = BASE_CODE[np.frombuffer(buf, dtype=np.uint8)]
        n = codes.size - k + 1
        if n <= 0:
            return np.zeros(0, dtype=np.int32)
        bad = codes == 4
        any_bad = bool(bad.any())
        if any_bad:
            codes &= 3  # any value; those windows become [UNK] below
        ids = codes[:n].astype(np.int32)
        for j in range(1, k):  # Horner over the k letters of every window at once
            ids <<= 2
            ids += codes[j : j + n]
        ids += NUM_SPECIAL
        if any_bad:
            bad_window = bad[:n].copy()
            for j in range(1, k):
                bad_window |= bad[j : j + n]
            ids[bad_window] = UNK_ID
        return ids

    def kmer_ids(self, seq: str | bytes) -> np.ndarray:
        """One sequence -> its n-k+1 k-mer ids (int32, no [CLS]/[SEP])."""
        if isinstance(seq, str):
            seq = seq.encode("ascii", errors="replace")
        return self._kmer_ids_concat(seq)

    def kmer_ids_batch(self, seqs: Sequence[str | bytes]) -> tuple[np.ndarray, np.ndarray]:
        """Many sequences -> (flat int32 k-mer ids, int64 offsets of length len(seqs)+1).

        The sequences are concatenated once; the windows that would straddle two sequences
        (the last k-1 start positions of each) are then dropped with one boolean mask.
        """
        k = self.k
        parts = [s.encode("ascii", errors="replace") if isinstance(s, str) else s for s in seqs]
        lengths = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
        ends = np.cumsum(lengths)
        all_ids = self._kmer_ids_concat(b"".join(parts))
        counts = np.maximum(lengths - k + 1, 0)
        offsets = np.zeros(len(parts) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        if all_ids.size == 0:
            return all_ids, offsets
        # Start positions end_r - (k-1) .. end_r - 1 of every row r (clipped to its own start).
        tail = np.minimum(lengths, k - 1)
        row = np.repeat(np.arange(len(parts)), tail)
        within = np.arange(tail.sum()) - np.repeat(np.cumsum(tail) - tail, tail)
        drop = ends[row] - tail[row] + within
        keep = np.ones(all_ids.size, dtype=bool)
        keep[drop[drop < all_ids.size]] = False
        return all_ids[keep], offsets

    def encode_batch(
        self, seqs: Sequence[str | bytes], max_len: int | None = None
    ) -> dict[str, np.ndarray]:
        """Sequences -> padded model input `[CLS] k-mers [SEP] [PAD]...`.

        Returns int32 `input_ids` and int8 `attention_mask`, both [batch, max_len], and int32
        `num_truncated` (k-mers cut from each row to fit; 0 for GeneMask pieces of <= 511 nt).
        """
        max_len = max_len or self.max_len
        if max_len < 2:
            raise ValueError(f"max_len must be >= 2 (room for [CLS] and [SEP]), got {max_len}")
        ids, offsets = self.kmer_ids_batch(seqs)
        counts = np.diff(offsets)
        keep = np.minimum(counts, max_len - 2)
        batch = len(seqs)
        input_ids = np.full((batch, max_len), PAD_ID, dtype=np.int32)
        mask = np.zeros((batch, max_len), dtype=np.int8)
        col = np.arange(max_len)
        # Scatter row r's first keep[r] k-mers to columns 1..keep[r] in one fancy-index write.
        body = (col[None, :] >= 1) & (col[None, :] <= keep[:, None])
        src = offsets[:-1, None] + col[None, :] - 1
        input_ids[body] = ids[src[body]]
        input_ids[:, 0] = CLS_ID
        input_ids[np.arange(batch), keep + 1] = SEP_ID
        mask[col[None, :] <= (keep + 1)[:, None]] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": mask,
            "num_truncated": (counts - keep).astype(np.int32),
        }

    # --- decoding ---------------------------------------------------------------------------
    def decode(self, ids: Sequence[int] | np.ndarray, skip_special: bool = True) -> list[str]:
        """Ids -> tokens (k-mer strings); special tokens dropped unless `skip_special` is False."""
        arr = np.asarray(ids, dtype=np.int64)
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            raise ValueError(f"token id out of range 0..{self.vocab_size - 1}")
        if skip_special:
            arr = arr[arr >= NUM_SPECIAL]
        return [self.vocab[i] for i in arr]

    def decode_to_sequence(self, ids: Sequence[int] | np.ndarray) -> str:
        """Overlapping k-mer ids -> the nucleotide sequence they cover (specials dropped).

        Raises if the k-mers do not overlap consistently or contain [UNK].
        """
        arr = np.asarray(ids, dtype=np.int64)
        arr = arr[(arr != PAD_ID) & (arr != CLS_ID) & (arr != SEP_ID)]
        if arr.size == 0:
            return ""
        if (arr < NUM_SPECIAL).any():
            raise ValueError("cannot rebuild a sequence through [UNK] or [MASK] tokens")
        if arr.max() >= self.vocab_size:
            raise ValueError(f"token id out of range 0..{self.vocab_size - 1}")
        kmers = [self.vocab[i] for i in arr]
        for a, b in zip(kmers, kmers[1:], strict=False):
            if a[1:] != b[:-1]:
                raise ValueError(f"k-mers {a} and {b} do not overlap by k-1")
        return kmers[0] + "".join(km[-1] for km in kmers[1:])

    # --- Hugging Face format ----------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write DNABERT's `vocab.txt` and a BertTokenizer config.

        Hugging Face's BertTokenizer reads it; its input is the space-separated k-mer string
        (as in DNABERT), e.g. "AAAAAA AAAAAT".
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "vocab.txt", "\n".join(self.vocab) + "\n")
        config = {
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": False,
            "tokenize_chinese_chars": False,
            "strip_accents": False,
            "model_max_length": self.max_len,
            "pad_token": "[PAD]",
            "unk_token": "[UNK]",
            "cls_token": "[CLS]",
            "sep_token": "[SEP]",
            "mask_token": "[MASK]",
            "bsm_ray_tokenizer": f"kmer-{self.k}",
            "bsm_ray_fingerprint": self.fingerprint(),
        }
        atomic_write_text(out / "tokenizer_config.json", json.dumps(config, indent=2))
        return out

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> KmerTokenizer:
        path = Path(directory) / "vocab.txt"
        vocab = path.read_text().split()
        if not vocab:
            raise ValueError(f"{path}: empty vocabulary")
        k = len(vocab[-1])
        tok = cls(k=k)
        if tuple(vocab) != tok.vocab:
            raise ValueError(f"{path}: not a DNABERT {k}-mer vocabulary (ids differ)")
        return tok

    @staticmethod
    def to_kmer_string(seq: str, k: int = 6) -> str:
        """DNABERT's text input: the overlapping k-mers separated by spaces."""
        return " ".join(seq[i : i + k] for i in range(len(seq) - k + 1))
