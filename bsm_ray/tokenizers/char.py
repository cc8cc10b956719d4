"""The BSM character tokenizer: one token per nucleotide / amino-acid letter.

Vocabulary (ids are part of the checkpoint format; never reorder):

    0 <pad>  1 <bos>  2 <eos>  3 <sep>  4 <unk>  5 <dna>  6 <rna>  7 <protein>
    8.. letters: A C G T U N R Y S W K M B D H V  (nucleotides + IUPAC ambiguity codes)
                 E F I L P Q X Z O *              (the rest of the amino-acid alphabet)

34 ids in all. Design decision (the BSM paper leaves it open, REFERENCE.md section 2): DNA, RNA
and protein *share* ids for the letters they share (A/C/G/T are both bases and Ala/Cys/Gly/Thr),
and every sequence segment starts with a modality tag (`<dna>`, `<rna>`, `<protein>`), so the
model always sees which alphabet the following letters belong to. Sharing keeps the vocabulary
small and the embedding of "A" one row; the tag makes the letters unambiguous.

Text form of a document: segments joined by `<sep>`, each led by its tag, e.g.
    "<dna>ATGAAA<sep><protein>MK"
The packer (data pipeline) adds `<eos>` between documents; `<bos>` is available for evaluation
prompts. Encoding is case-sensitive (ingestion uppercases); any other character becomes `<unk>`.

Pure module: numpy (and `tokenizers`, only inside `save_pretrained`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from bsm_ray.fileio import atomic_write_text

SPECIAL_TOKENS: tuple[str, ...] = (
    "<pad>",
    "<bos>",
    "<eos>",
    "<sep>",
    "<unk>",
    "<dna>",
    "<rna>",
    "<protein>",
)
LETTERS = "ACGTUNRYSWKMBDHV" + "EFILPQXZO*"
MODALITY_TAGS = {"dna": "<dna>", "rna": "<rna>", "protein": "<protein>"}

PAD_ID, BOS_ID, EOS_ID, SEP_ID, UNK_ID, DNA_ID, RNA_ID, PROTEIN_ID = range(8)

# Each special token is replaced by one placeholder byte before the table lookup, so a whole
# text is encoded by a single vectorized gather. The placeholders are bytes 0x80.., which the
# ASCII-encoded text can never contain (non-ASCII becomes '?'), so no input character, control
# characters included, can turn into a special token.
_SPECIAL_BASE = 0x80
_SPECIAL_BYTES = {
    tok.encode("ascii"): bytes([_SPECIAL_BASE + i]) for i, tok in enumerate(SPECIAL_TOKENS)
}

_SPECIAL_RE = re.compile("|".join(re.escape(tok) for tok in SPECIAL_TOKENS))


def format_document(segments: Iterable[tuple[str, str]]) -> str:
    """[(modality, sequence), ...] -> the document's text form (tagged, `<sep>`-joined)."""
    return "<sep>".join(MODALITY_TAGS[modality] + seq for modality, seq in segments)


class BsmCharTokenizer:
    """Character tokenizer for BSM causal LMs. See the module docstring for the vocabulary."""

    vocab: tuple[str, ...] = SPECIAL_TOKENS + tuple(LETTERS)

    def __init__(self) -> None:
        self.token_to_id = {tok: i for i, tok in enumerate(self.vocab)}
        lut = np.full(256, UNK_ID, dtype=np.int32)
        for i, letter in enumerate(LETTERS):
            lut[ord(letter)] = len(SPECIAL_TOKENS) + i
        for i in range(len(SPECIAL_TOKENS)):
            lut[_SPECIAL_BASE + i] = i
        self._lut = lut
        self._id_to_str = np.array(self.vocab, dtype=object)

    # --- properties -------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    pad_id, bos_id, eos_id, sep_id, unk_id = PAD_ID, BOS_ID, EOS_ID, SEP_ID, UNK_ID

    def fingerprint(self) -> str:
        """sha256 of the vocabulary: recorded in manifests and checkpoints."""
        return hashlib.sha256("\n".join(self.vocab).encode()).hexdigest()

    # --- encoding ---------------------------------------------------------------------------
    def _to_bytes(self, text: str) -> bytes:
        # Non-ASCII characters become '?' (one <unk> per character).
        data = text.encode("ascii", errors="replace")
        if b"<" in data:
            for tok, byte in _SPECIAL_BYTES.items():
                data = data.replace(tok, byte)
        return data

    def encode(self, text: str) -> np.ndarray:
        """Text form -> int32 ids (no <bos>/<eos> added)."""
        return self._lut[np.frombuffer(self._to_bytes(text), dtype=np.uint8)]

    def encode_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Encode many texts at once -> (flat int32 ids, int64 offsets of length len(texts)+1).

        Row i is ids[offsets[i]:offsets[i+1]]. One join and one gather for the whole batch.
        """
        parts = [self._to_bytes(t) for t in texts]
        offsets = np.zeros(len(parts) + 1, dtype=np.int64)
        np.cumsum([len(p) for p in parts], out=offsets[1:])
        ids = self._lut[np.frombuffer(b"".join(parts), dtype=np.uint8)]
        return ids, offsets

    def count_tokens(self, text: str) -> int:
        """Number of ids `encode(text)` returns, without building them."""
        n = len(text)
        if "<" in text:  # one scan for all tokens (they cannot overlap: no '<' or '>' inside)
            for tok in _SPECIAL_RE.findall(text):
                n -= len(tok) - 1
        return n

    def encode_sequence(self, seq: str, modality: str) -> np.ndarray:
        """One bare sequence -> [tag, letters...]."""
        return self.encode(MODALITY_TAGS[modality] + seq)

    # --- decoding ---------------------------------------------------------------------------
    def decode(self, ids: Iterable[int] | np.ndarray, skip_pad: bool = True) -> str:
        arr = np.asarray(ids, dtype=np.int64)
        if skip_pad:
            arr = arr[arr != PAD_ID]
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            raise ValueError(f"token id out of range 0..{self.vocab_size - 1}")
        return "".join(self._id_to_str[arr])

    # --- Hugging Face format ----------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write `tokenizer.json` (+ config files) that `AutoTokenizer.from_pretrained` reads."""
        from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        tok = Tokenizer(models.WordLevel(dict(self.token_to_id), unk_token="<unk>"))
        # Every character is its own word; special tokens are matched before this split.
        tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
        tok.add_special_tokens(list(SPECIAL_TOKENS))
        # Tokens are characters: decoding joins them with nothing between (without a decoder,
        # transformers joins them with spaces: "<dna> A T G"), so decode(encode(s)) == s.
        tok.decoder = decoders.Fuse()
        atomic_write_text(out / "tokenizer.json", tok.to_str(pretty=True))
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": "<bos>",
            "eos_token": "<eos>",
            "pad_token": "<pad>",
            "unk_token": "<unk>",
            "sep_token": "<sep>",
            "additional_special_tokens": ["<dna>", "<rna>", "<protein>"],
            "model_max_length": 1024,
            "clean_up_tokenization_spaces": False,
            "bsm_ray_tokenizer": "bsm-char",
            "bsm_ray_fingerprint": self.fingerprint(),
        }
        atomic_write_text(out / "tokenizer_config.json", json.dumps(config, indent=2))
        return out

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> BsmCharTokenizer:
        """Load from a directory written by `save_pretrained`, checking the vocabulary matches."""
        path = Path(directory) / "tokenizer.json"
        data = json.loads(path.read_text())
        vocab = data["model"]["vocab"]
        tok = cls()
        if vocab != tok.token_to_id:
            raise ValueError(f"{path}: vocabulary differs from the BSM character vocabulary")
        return tok
