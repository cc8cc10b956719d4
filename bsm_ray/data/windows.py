"""Token windows for training, built from prepared shards.

Causal LM (BSM): each source's documents are tokenized with the BSM character tokenizer and
packed back to back into rows of exactly `seq_len` tokens with `<eos>` after every document;
the last partial row is padded with `<pad>` (labels -100 there), so no token is lost. Rows are
numbered (`row_id`) in shard order; the packing is deterministic.

MLM (DNABERT / LOGO): each genome piece is one row `[CLS] 6-mers [SEP] [PAD]...` of 512
positions (a 511-nt piece gives 506 6-mers).

`TokenWindows` is what the training loop consumes: numpy arrays and row ids. The streaming
pipeline (Ray Data) produces the same thing per batch; the loop does not care which.

Pure module: numpy and pyarrow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from bsm_ray.ingest.shards import GENOME_KIND, shard_paths
from bsm_ray.tokenizers.char import EOS_ID, PAD_ID, BsmCharTokenizer
from bsm_ray.tokenizers.kmer import KmerTokenizer


@dataclass
class TokenWindows:
    """Rows of one source: input ids [rows, length] (int32), attention mask, row ids."""

    source: str
    input_ids: np.ndarray
    attention_mask: np.ndarray
    row_ids: np.ndarray

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())


def pack_documents(docs: list[np.ndarray], seq_len: int, eos_id: int = EOS_ID,
                   pad_id: int = PAD_ID) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Concatenate documents with `eos` after each, cut into rows of `seq_len` (last padded)."""
    if not docs:
        return np.zeros((0, seq_len), np.int32), np.zeros((0, seq_len), np.int8)
    stream = np.concatenate([np.append(d.astype(np.int32), eos_id) for d in docs])
    num_rows = -(-stream.size // seq_len)
    ids = np.full(num_rows * seq_len, pad_id, dtype=np.int32)
    ids[: stream.size] = stream
    mask = np.zeros(num_rows * seq_len, dtype=np.int8)
    mask[: stream.size] = 1
    return ids.reshape(num_rows, seq_len), mask.reshape(num_rows, seq_len)


def causal_windows(dataset: str | Path, kind: str, split: str, seq_len: int) -> TokenWindows:
    """Packed BSM windows of one source kind of a prepared dataset."""
    tok = BsmCharTokenizer()
    texts: list[str] = []
    for path in shard_paths(dataset, kind, split):
        texts.extend(pq.read_table(path, columns=["text"])["text"].to_pylist())
    ids, offsets = tok.encode_batch(texts)
    docs = [ids[offsets[i] : offsets[i + 1]] for i in range(len(texts))]
    input_ids, mask = pack_documents(docs, seq_len)
    return TokenWindows(kind, input_ids, mask, np.arange(len(input_ids), dtype=np.int64))


def mlm_windows(dataset: str | Path, split: str, max_len: int = 512, k: int = 6) -> TokenWindows:
    """One `[CLS] k-mers [SEP]` row per genome piece of a prepared dataset."""
    seqs: list[str] = []
    for path in shard_paths(dataset, GENOME_KIND, split):
        seqs.extend(pq.read_table(path, columns=["seq"])["seq"].to_pylist())
    enc = KmerTokenizer(k, max_len=max_len).encode_batch(seqs)
    return TokenWindows(GENOME_KIND, enc["input_ids"], enc["attention_mask"],
                        np.arange(len(seqs), dtype=np.int64))  # fmt: skip
