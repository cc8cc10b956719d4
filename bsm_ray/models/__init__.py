"""Model presets on Hugging Face transformers (LlamaForCausalLM for BSM, BertForMaskedLM for
DNABERT / LOGO). The model code is transformers'; this package only holds the sizes, the
attention choice and FLOP/parameter arithmetic. Imports torch/transformers lazily."""

from bsm_ray.models.presets import (
    PRESETS,
    ModelPreset,
    build_model,
    choose_attention,
    count_parameters,
    flops_per_token,
    get_preset,
)

__all__ = [
    "PRESETS",
    "ModelPreset",
    "build_model",
    "choose_attention",
    "count_parameters",
    "flops_per_token",
    "get_preset",
]
