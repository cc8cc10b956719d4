"""Model presets (parameter counts on the meta device), LR schedules, batch layout, mixing."""

from __future__ import annotations

from collections import Counter

import pytest

from bsm_ray.data.mixing import MixState, MixturePlan
from bsm_ray.models import PRESETS, choose_attention, count_parameters, get_preset
from bsm_ray.models.presets import flops_per_token, hf_config
from bsm_ray.train.config import TrainConfig
from bsm_ray.train.schedules import ScheduleConfig, lr_at


@pytest.mark.parametrize(
    ("name", "target", "tolerance"),
    [("bsm-110m", 110e6, 0.05), ("bsm-270m", 270e6, 0.05), ("dnabert-6", 89.2e6, 0.01),
     ("logo", 4.9e6, 0.02)],
)  # fmt: skip
def test_paper_preset_parameter_counts(name, target, tolerance):
    n = count_parameters(get_preset(name))  # meta device: no weights allocated
    assert abs(n - target) / target < tolerance, n


def test_preset_configs_match_the_papers():
    llama = hf_config(PRESETS["bsm-270m"])
    assert (llama.num_hidden_layers, llama.num_attention_heads, llama.hidden_size) == (20, 16, 896)
    assert llama.max_position_embeddings == 1024
    assert llama.rope_parameters["rope_theta"] == 100_000.0  # stored here in transformers 5
    assert llama.tie_word_embeddings
    bert = hf_config(PRESETS["dnabert-6"])
    assert (bert.vocab_size, bert.max_position_embeddings, bert.num_hidden_layers) == (
        4101,
        512,
        12,
    )
    assert bert.hidden_dropout_prob == 0.1
    logo = hf_config(PRESETS["logo"])
    assert (logo.hidden_size, logo.num_hidden_layers, logo.num_attention_heads) == (256, 2, 8)
    assert logo.hidden_dropout_prob == 0.0
    with pytest.raises(ValueError, match="unknown model preset"):
        get_preset("gpt-2")


def test_attention_choice_and_flops():
    assert choose_attention(PRESETS["bsm-tiny"], "cpu")[0] == "sdpa"
    preset = PRESETS["bsm-110m"]
    n = count_parameters(preset)
    # 6N + 12 * layers * hidden * seq: about 0.74 GFLOP per token for BSM-110M at 1024
    assert flops_per_token(preset, 1024, n) == pytest.approx(6 * n + 12 * 12 * 768 * 1024)
    assert 0.6e9 < flops_per_token(preset, 1024, n) < 0.9e9


def test_schedules():
    warm = ScheduleConfig(kind="warmup_linear", start_lr=8e-4, end_lr=0.0, warmup_steps=500)
    assert lr_at(warm, 0, 10_000) == pytest.approx(8e-4 / 500)
    assert lr_at(warm, 499, 10_000) == pytest.approx(8e-4)
    assert lr_at(warm, 500, 10_000) == pytest.approx(8e-4)
    assert lr_at(warm, 5_250, 10_000) == pytest.approx(4e-4)
    assert lr_at(warm, 10_000, 10_000) == pytest.approx(0.0)
    round2 = ScheduleConfig(kind="round", start_lr=1e-5, end_lr=1e-7)
    assert lr_at(round2, 0, 100) == pytest.approx(1e-5)
    assert lr_at(round2, 50, 100) == pytest.approx((1e-5 + 1e-7) / 2)
    anneal = ScheduleConfig(kind="anneal", start_lr=1e-5)
    assert [lr_at(anneal, s, 1000) for s in (0, 500, 1000)] == pytest.approx([1e-5, 5e-6, 0.0])


def test_batch_layout_from_tokens():
    cfg = TrainConfig(seq_len=128, global_batch_tokens=4096, micro_batch_rows=4)
    assert cfg.batch_layout(2) == (32, 4)  # 32 rows = 2 workers x 4 rows x 4 accumulation
    assert cfg.batch_layout(1) == (32, 8)
    with pytest.raises(ValueError, match="not a multiple of the row length"):
        TrainConfig(seq_len=100, global_batch_tokens=4096).batch_layout(1)
    with pytest.raises(ValueError, match="do not split"):
        TrainConfig(seq_len=128, global_batch_tokens=4096, micro_batch_rows=3).batch_layout(2)
    mlm = TrainConfig(objective="mlm", global_batch_tokens=128_000, micro_batch_rows=25)
    assert mlm.batch_layout(2) == (250, 5)  # GeneMask: 250 sequences per step


def test_mixture_plan_ratios_upsampling_and_resume():
    weights = {"single": 10, "refseq": 2, "gene": 1}
    plan = MixturePlan(weights, {"single": 1000, "refseq": 7, "gene": 40}, seed=3)
    rows = plan.take(1300)
    counts = Counter(s for s, _ in rows)
    assert counts == {"single": 1000, "refseq": 200, "gene": 100}
    for t in range(1, 1300):  # every prefix within one row of the exact share
        prefix = Counter(s for s, _ in rows[:t])
        for s, w in weights.items():
            assert abs(prefix[s] - t * w / 13) < 1.0
    assert plan.repeats() == {"single": 1, "refseq": 28, "gene": 2}  # refseq upsampled
    # each epoch of a source is a permutation of its rows
    refseq_rows = [r for s, r in rows if s == "refseq"]
    assert sorted(refseq_rows[:7]) == list(range(7))
    # resume: a fresh plan loaded with the saved state continues identically
    state = MixState.from_dict(plan.state.as_dict())
    more = plan.take(50)
    again = MixturePlan(weights, {"single": 1000, "refseq": 7, "gene": 40}, seed=3)
    again.state = state
    assert again.take(50) == more
    with pytest.raises(ValueError, match="unknown source"):
        MixturePlan({"web": 1}, {"single": 3})
    with pytest.raises(ValueError, match="positive sum"):
        MixturePlan({"single": 0}, {"single": 3})
