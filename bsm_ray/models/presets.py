"""Model presets: the papers' sizes (REFERENCE.md section 2) and tiny ones for tests.

BSM (causal LM) is transformers' `LlamaForCausalLM`: RoPE with base 100,000, context 1024,
SwiGLU MLP, RMSNorm, tied input/output embeddings. The papers give layers, heads and hidden
size; the intermediate size is ours, chosen so the parameter counts land near 110M and 270M:
3072 for bsm-110m (113.3M) and 3840 for bsm-270m (271M). The vocabulary is the BSM character
tokenizer's 34 ids padded to 48 (a multiple of 16 keeps the embedding matmuls aligned; the
padding ids are never produced).

DNABERT-6 and LOGO are transformers' `BertForMaskedLM` with the DNABERT vocabulary (4101 ids)
and 512 positions, so the original DNABERT-6 weights load into `dnabert-6`.

Attention: `flash_attention_2` when the flash-attn package is importable and a CUDA device is
present, `sdpa` otherwise; `choose_attention` returns the choice and the reason, which the
trainer logs.

Pure module apart from the lazy transformers/torch imports inside functions.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

BSM_VOCAB_SIZE = 48  # 34 BSM tokenizer ids, padded
KMER_VOCAB_SIZE = 4101


@dataclass(frozen=True)
class ModelPreset:
    name: str
    family: str  # "bsm" (causal LM) or "bert" (masked LM)
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_positions: int
    vocab_size: int
    dropout: float = 0.0
    rope_theta: float = 100_000.0


PRESETS: dict[str, ModelPreset] = {
    p.name: p
    for p in (
        ModelPreset("bsm-110m", "bsm", 768, 12, 12, 3072, 1024, BSM_VOCAB_SIZE),
        ModelPreset("bsm-270m", "bsm", 896, 20, 16, 3840, 1024, BSM_VOCAB_SIZE),
        ModelPreset("dnabert-6", "bert", 768, 12, 12, 3072, 512, KMER_VOCAB_SIZE, dropout=0.1),
        ModelPreset("logo", "bert", 256, 2, 8, 3072, 512, KMER_VOCAB_SIZE, dropout=0.0),
        # Tiny presets for tests and smoke runs (2 layers, width 64).
        ModelPreset("bsm-tiny", "bsm", 64, 2, 4, 128, 256, BSM_VOCAB_SIZE),
        ModelPreset("bert-tiny", "bert", 64, 2, 4, 128, 512, KMER_VOCAB_SIZE),
    )
}


def get_preset(name: str) -> ModelPreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; choose from {sorted(PRESETS)}") from None


def hf_config(preset: ModelPreset, attn_implementation: str = "sdpa"):
    """The transformers config object of a preset."""
    if preset.family == "bsm":
        from transformers import LlamaConfig

        from bsm_ray.tokenizers.char import BOS_ID, EOS_ID, PAD_ID

        return LlamaConfig(
            vocab_size=preset.vocab_size,
            hidden_size=preset.hidden_size,
            intermediate_size=preset.intermediate_size,
            num_hidden_layers=preset.num_layers,
            num_attention_heads=preset.num_heads,
            num_key_value_heads=preset.num_heads,
            max_position_embeddings=preset.max_positions,
            rope_theta=preset.rope_theta,
            tie_word_embeddings=True,
            attention_dropout=preset.dropout,
            pad_token_id=PAD_ID,
            bos_token_id=BOS_ID,
            eos_token_id=EOS_ID,
            attn_implementation=attn_implementation,
        )
    from transformers import BertConfig

    from bsm_ray.tokenizers.kmer import PAD_ID as KMER_PAD

    return BertConfig(
        vocab_size=preset.vocab_size,
        hidden_size=preset.hidden_size,
        num_hidden_layers=preset.num_layers,
        num_attention_heads=preset.num_heads,
        intermediate_size=preset.intermediate_size,
        hidden_act="gelu",
        hidden_dropout_prob=preset.dropout,
        attention_probs_dropout_prob=preset.dropout,
        max_position_embeddings=preset.max_positions,
        type_vocab_size=2,
        pad_token_id=KMER_PAD,
        attn_implementation=attn_implementation,
    )


def choose_attention(preset: ModelPreset, device_type: str) -> tuple[str, str]:
    """(attn_implementation, reason)."""
    has_flash = importlib.util.find_spec("flash_attn") is not None
    if device_type == "cuda" and has_flash:
        return "flash_attention_2", "flash-attn installed and a CUDA device present"
    if device_type != "cuda":
        return "sdpa", "no CUDA device: PyTorch scaled_dot_product_attention"
    return "sdpa", "flash-attn not installed: PyTorch scaled_dot_product_attention"


def build_model(preset: ModelPreset, attn_implementation: str = "sdpa", seed: int | None = None):
    """A freshly initialised transformers model for the preset (weights seeded if given)."""
    import torch
    from transformers import BertForMaskedLM, LlamaForCausalLM

    if seed is not None:
        torch.manual_seed(seed)
    config = hf_config(preset, attn_implementation)
    cls = LlamaForCausalLM if preset.family == "bsm" else BertForMaskedLM
    return cls(config)


def count_parameters(preset: ModelPreset) -> int:
    """Parameter count without allocating weights (model built on the meta device)."""
    import torch

    with torch.device("meta"):
        model = build_model(preset)
    # Tied embeddings are one tensor: count unique parameters.
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def flops_per_token(preset: ModelPreset, seq_len: int, num_params: int | None = None) -> float:
    """Training FLOPs per token: 6N for the weights plus 12 * layers * hidden * seq_len for
    attention scores and values (forward + backward), the usual estimate (PaLM appendix B)."""
    n = num_params if num_params is not None else count_parameters(preset)
    return 6.0 * n + 12.0 * preset.num_layers * preset.hidden_size * seq_len
