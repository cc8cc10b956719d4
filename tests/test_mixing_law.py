"""The fitted mixing law (bsm_ray.tune.law): the fit recovers a known law, the proposal is the
known optimum, stays inside weight_range and under the repetition cap. Pure, no Ray."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bsm_ray.tune.law import (
    MixingLaw,
    fit_law,
    fraction_caps,
    loo_error,
    min_trials,
    propose,
    repetitions,
)

SOURCES = ["single_dna", "refseq_pair", "gene_pair"]
# A known law: each source's loss falls with its own share and a little with the others'.
INTERCEPT = {"single_dna": 1.2, "refseq_pair": 1.5, "gene_pair": 1.4}
COEF = {
    "single_dna": {"single_dna": -0.20, "refseq_pair": -0.02, "gene_pair": -0.01},
    "refseq_pair": {"single_dna": -0.01, "refseq_pair": -0.15, "gene_pair": -0.05},
    "gene_pair": {"single_dna": 0.00, "refseq_pair": -0.04, "gene_pair": -0.10},
}
WEIGHTS = {"single_dna": 1.0, "refseq_pair": 1.0, "gene_pair": 1.0}
TRUE = MixingLaw(SOURCES, INTERCEPT, COEF, WEIGHTS)


def _swarm(n: int, seed: int = 0, noise: float = 0.0):
    rng = np.random.default_rng(seed)
    mixes = [dict(zip(SOURCES, rng.dirichlet([1.0] * 3), strict=True)) for _ in range(n)]
    losses = [{s: v + rng.normal(0, noise) if noise else v
               for s, v in TRUE.predict_losses(m).items()} for m in mixes]  # fmt: skip
    return mixes, losses


def test_the_fit_recovers_a_known_law_from_synthetic_points():
    mixes, losses = _swarm(8)
    law = fit_law(mixes, losses, WEIGHTS)
    for s in SOURCES:
        assert law.intercept[s] == pytest.approx(INTERCEPT[s], abs=1e-9)
        for j in SOURCES:
            assert law.coef[s][j] == pytest.approx(COEF[s][j], abs=1e-9)
    assert loo_error(mixes, losses, WEIGHTS) == pytest.approx(0.0, abs=1e-9)
    # with noise the coefficients are close and the leave-one-out error is of the noise's size
    mixes, losses = _swarm(40, seed=1, noise=0.002)
    noisy = fit_law(mixes, losses, WEIGHTS)
    assert noisy.coef["single_dna"]["single_dna"] == pytest.approx(-0.20, abs=0.01)
    assert 0.0005 < loo_error(mixes, losses, WEIGHTS) < 0.005


def test_too_few_points_to_fit():
    assert min_trials(3) == 5
    mixes, losses = _swarm(4)
    with pytest.raises(ValueError, match="needs 5"):
        fit_law(mixes, losses, WEIGHTS)
    assert loo_error(*_swarm(5), WEIGHTS) is None  # leaving one out leaves 4


def test_the_proposal_is_the_known_optimum_inside_the_range():
    # sum_j beta_j log r_j with every beta_j < 0 is least at r_j = beta_j / sum(beta)
    beta = TRUE.objective_coef()
    want = {j: beta[j] / sum(beta.values()) for j in SOURCES}
    p = propose(TRUE, (0.02, 1.0), starts=_swarm(6)[0])
    assert p.mix == pytest.approx(want, abs=1e-4)
    assert p.predicted == pytest.approx(TRUE.predict(want), abs=1e-9)
    assert p.capped == []
    assert all(0.02 <= v <= 1.0 for v in p.raw.values()) and max(p.raw.values()) == 1.0
    assert {s: v / sum(p.raw.values()) for s, v in p.raw.items()} == pytest.approx(p.mix)


def test_the_proposal_respects_weight_range_and_the_repetition_cap():
    # A source whose loss rises with its own share is pushed to the bottom of the range:
    # its raw weight at the range's low end relative to the largest one.
    law = MixingLaw(SOURCES, INTERCEPT, {**COEF, "gene_pair": {j: 0.0 for j in SOURCES}},
                    {"single_dna": 1.0, "refseq_pair": 1.0})  # fmt: skip
    law.coef["single_dna"]["gene_pair"] = 0.05
    p = propose(law, (0.1, 1.0))
    assert p.raw["gene_pair"] == pytest.approx(0.1, rel=1e-4)
    assert p.mix["gene_pair"] / max(p.mix.values()) == pytest.approx(0.1, rel=1e-4)
    # A cap below the free optimum binds there; the rest is re-optimized.
    free = propose(TRUE, (0.02, 1.0))
    tokens = {"single_dna": 10_000, "refseq_pair": 200_000, "gene_pair": 200_000}
    caps = fraction_caps(tokens, trial_tokens=100_000, max_repetitions=2.0)
    assert caps == {"single_dna": pytest.approx(0.2), "refseq_pair": 1.0, "gene_pair": 1.0}
    assert free.mix["single_dna"] > 0.3
    capped = propose(TRUE, (0.02, 1.0), caps)
    assert capped.mix["single_dna"] == pytest.approx(0.2, abs=1e-5)
    assert capped.capped == ["single_dna"]
    assert repetitions(capped.mix, tokens, 100_000)["single_dna"] == pytest.approx(2.0, abs=1e-3)
    assert capped.predicted > free.predicted
    # the other two split the remaining 0.8 as their own optimum does
    beta = TRUE.objective_coef()
    ratio = beta["refseq_pair"] / beta["gene_pair"]
    assert capped.mix["refseq_pair"] / capped.mix["gene_pair"] == pytest.approx(ratio, rel=1e-3)
    # a source is never capped below one pass over what it holds
    assert fraction_caps({"a": 50_000}, 100_000, 0.5) == {"a": 0.5}
    # caps no mix can meet: no proposal
    tiny = fraction_caps({s: 1_000 for s in SOURCES}, 100_000, 1.0)
    assert propose(TRUE, (0.02, 1.0), tiny) is None
    assert math.isclose(sum(capped.mix.values()), 1.0)
