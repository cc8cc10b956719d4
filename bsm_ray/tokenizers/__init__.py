"""Tokenizers: the BSM character tokenizer and the DNABERT-compatible k-mer tokenizer.

Pure package: numpy only (the `tokenizers` library is imported lazily to write tokenizer.json).
"""

from bsm_ray.tokenizers.alphabets import ALPHABETS, MODALITIES, first_invalid, guess_modality
from bsm_ray.tokenizers.char import BsmCharTokenizer, format_document
from bsm_ray.tokenizers.kmer import KmerTokenizer

__all__ = [
    "ALPHABETS",
    "MODALITIES",
    "BsmCharTokenizer",
    "KmerTokenizer",
    "first_invalid",
    "format_document",
    "guess_modality",
]
