"""A fitted mixing law: validation loss as a function of the mix, and the mix it proposes.
Pure module: no ray, torch or mlflow (SciPy and scikit-learn, imported where used).

The swarm-of-small-runs method of RegMix, Data Mixing Laws and olmix, on the trials of a sweep:

- One model per objective source s (olmix's log-linear form):
      loss_s(r) = a_s + sum_j b_sj * log(r_j)
  where r is the mix (token fractions, each > 0: raw weights are >= search.weight_range's low
  end). It is linear in its k + 1 coefficients, fitted by least squares (scikit-learn's
  LinearRegression, all sources at once); the objective is the same weighted mean of the
  predicted per-source losses as of the measured ones.
- Only trials measured at the same step are fitted (ASHA gives trials unequal budgets, and a
  loss at step 10 is not comparable with one at step 40): the caller passes losses at one step.
- The proposal minimizes the predicted objective over raw weights inside search.weight_range
  (the same box the searcher samples, so every mix the sweep could have tried is reachable),
  with a repetition cap: a source whose share of the trial's tokens exceeds what it holds is
  repeated, and the law, fitted on the repetition the trials saw, knows nothing of the
  diminishing returns beyond it. SciPy's SLSQP with bounds and the cap as inequality
  constraints, started from every fitted mix and the centre; the best feasible optimum wins.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

# A source with no tokens in the mix has log(0): fractions are floored here (raw weights are
# bounded below by search.weight_range, so a sweep's mixes never reach it).
MIN_FRACTION = 1e-9


def min_trials(num_sources: int) -> int:
    """Trials needed to fit: k + 1 coefficients per source and one more (a residual)."""
    return num_sources + 2


def _features(mixes: Sequence[Mapping[str, float]], sources: list[str]):
    import numpy as np

    return np.log(np.array([[max(float(m[s]), MIN_FRACTION) for s in sources] for m in mixes]))


@dataclass
class MixingLaw:
    """loss_s(r) = intercept[s] + sum_j coef[s][j] * log(r_j), for each objective source s."""

    sources: list[str]
    """The mix's sources (the features), in the order of the mix."""
    intercept: dict[str, float]
    coef: dict[str, dict[str, float]]
    """Objective source -> mix source -> coefficient of log(fraction)."""
    weights: dict[str, float]
    """Weights of the per-source losses in the objective."""

    def predict_losses(self, mix: Mapping[str, float]) -> dict[str, float]:
        logs = {j: math.log(max(float(mix[j]), MIN_FRACTION)) for j in self.sources}
        return {s: self.intercept[s] + sum(self.coef[s][j] * logs[j] for j in self.sources)
                for s in self.weights}  # fmt: skip

    def predict(self, mix: Mapping[str, float]) -> float:
        losses = self.predict_losses(mix)
        return sum(w * losses[s] for s, w in self.weights.items()) / sum(self.weights.values())

    def objective_coef(self) -> dict[str, float]:
        """The objective's own coefficient of each log(fraction) (a weighted mean of sources')."""
        total = sum(self.weights.values())
        return {j: sum(w * self.coef[s][j] for s, w in self.weights.items()) / total
                for j in self.sources}  # fmt: skip


def fit_law(mixes: Sequence[Mapping[str, float]], losses: Sequence[Mapping[str, float]],
            weights: Mapping[str, float]) -> MixingLaw:  # fmt: skip
    """Least-squares fit of the per-source log-linear law to measured (mix, losses) pairs."""
    import numpy as np
    from sklearn.linear_model import LinearRegression

    sources = list(mixes[0])
    if len(mixes) < min_trials(len(sources)):
        raise ValueError(f"{len(mixes)} points; a law over {len(sources)} sources needs "
                         f"{min_trials(len(sources))}")  # fmt: skip
    targets = list(weights)
    x = _features(mixes, sources)
    y = np.array([[float(loss[s]) for s in targets] for loss in losses])
    model = LinearRegression().fit(x, y)
    return MixingLaw(
        sources=sources,
        intercept={s: float(model.intercept_[i]) for i, s in enumerate(targets)},
        coef={s: {j: float(model.coef_[i][k]) for k, j in enumerate(sources)}
              for i, s in enumerate(targets)},
        weights={s: float(w) for s, w in weights.items()},
    )  # fmt: skip


def loo_error(mixes: Sequence[Mapping[str, float]], losses: Sequence[Mapping[str, float]],
              weights: Mapping[str, float]) -> float | None:  # fmt: skip
    """Leave-one-out RMS error of the predicted objective (each point predicted by a law fitted
    on the others); None when leaving one out leaves too few to fit."""
    if len(mixes) - 1 < min_trials(len(mixes[0])):
        return None
    errors = []
    for i in range(len(mixes)):
        rest = [k for k in range(len(mixes)) if k != i]
        law = fit_law([mixes[k] for k in rest], [losses[k] for k in rest], weights)
        measured = sum(w * float(losses[i][s]) for s, w in weights.items()) / sum(weights.values())
        errors.append(law.predict(mixes[i]) - measured)
    return math.sqrt(sum(e * e for e in errors) / len(errors))


def fraction_caps(source_tokens: Mapping[str, int], trial_tokens: int,
                  max_repetitions: float | Mapping[str, float]) -> dict[str, float]:  # fmt: skip
    """The largest token fraction of each source that repeats it at most `max_repetitions`
    times (a number, or one per source) in a run of `trial_tokens`; 1.0 means no cap. A source
    is never capped below one pass over what it holds."""
    caps = {}
    for s, held in source_tokens.items():
        reps = max_repetitions[s] if isinstance(max_repetitions, Mapping) else max_repetitions
        caps[s] = min(1.0, max(1.0, float(reps)) * held / trial_tokens) if held > 0 else 0.0
    return caps


def repetitions(mix: Mapping[str, float], source_tokens: Mapping[str, int],
                trial_tokens: int) -> dict[str, float]:  # fmt: skip
    """How many times a run of `trial_tokens` on `mix` passes over each source's tokens."""
    return {s: float(mix[s]) * trial_tokens / source_tokens[s] if source_tokens[s] > 0
            else math.inf for s in mix}  # fmt: skip


@dataclass
class Proposal:
    mix: dict[str, float]
    """Token fractions (sum 1)."""
    raw: dict[str, float]
    """Raw weights inside search.weight_range that normalise to `mix` (the trial's params)."""
    predicted: float
    """The law's objective at `mix`."""
    predicted_losses: dict[str, float]
    capped: list[str] = field(default_factory=list)
    """Sources at their repetition cap."""


def propose(law: MixingLaw, weight_range: tuple[float, float],
            caps: Mapping[str, float] | None = None,
            starts: Sequence[Mapping[str, float]] = ()) -> Proposal | None:  # fmt: skip
    """The mix of least predicted objective with raw weights in `weight_range` and each
    source's fraction at most its cap; None when no such mix exists."""
    import numpy as np
    from scipy.optimize import minimize

    sources = law.sources
    lo, hi = (float(v) for v in weight_range)
    caps = {s: float((caps or {}).get(s, 1.0)) for s in sources}
    beta = np.array([law.objective_coef()[s] for s in sources])
    base = law.predict({s: 1.0 for s in sources})  # the intercepts' weighted mean

    def objective(w):
        return float(base + beta @ np.log(np.maximum(w / w.sum(), MIN_FRACTION)))

    def gradient(w):  # d/dw_i of sum_j beta_j (log w_j - log sum w)
        return beta / w - beta.sum() / w.sum()

    cap_vec = np.array([caps[s] for s in sources])
    constraints = [{"type": "ineq", "fun": lambda w: cap_vec - w / w.sum()}]
    x0s = [np.full(len(sources), hi)]
    for m in starts:  # a fitted mix as raw weights with its largest at the top of the range
        v = np.array([max(float(m[s]), MIN_FRACTION) for s in sources])
        x0s.append(np.clip(hi * v / v.max(), lo, hi))
    best = None
    for x0 in x0s:
        res = minimize(objective, x0, jac=gradient, method="SLSQP", bounds=[(lo, hi)] * len(x0),
                       constraints=constraints, options={"maxiter": 500, "ftol": 1e-12})
        w = np.clip(res.x, lo, hi)
        if np.any(w / w.sum() > cap_vec + 1e-6):  # infeasible from this start
            continue
        if best is None or objective(w) < objective(best):
            best = w
    if best is None:
        return None
    mix = {s: float(v) for s, v in zip(sources, best / best.sum(), strict=True)}
    raw = {s: float(v) for s, v in zip(sources, hi * best / best.max(), strict=True)}
    raw = {s: min(hi, max(lo, v)) for s, v in raw.items()}
    capped = [s for s in sources if caps[s] < 1.0 and mix[s] >= caps[s] - 1e-4]
    return Proposal(mix, raw, law.predict(mix), law.predict_losses(mix), capped)
