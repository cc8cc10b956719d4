"""Search spaces over mixes and thresholds, the objective, and the sweep summary. Pure module.

A trial's mix is sampled as one raw weight per source (`w_<source>`, log-uniform in
`search.weight_range`) and normalised to token fractions. Log-weights make 10:1 and 1:10 equally
reachable; fixed points (the paper's candidates) are expressed in the same raw weights, scaled
so the largest is the top of the range.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bsm_ray.errors import ConfigError
from bsm_ray.tune.config import AnnealConfig
from bsm_ray.tune.law import MixingLaw, Proposal

THRESHOLD_KEY = "switch_threshold"
LAW_PARAM = "law_proposal"  # in the params of the mixing law's confirmation trial


def param_key(source: str) -> str:
    return f"w_{source}"


def swept_sources(config: AnnealConfig) -> list[str]:
    """Sources of the mix: those of the candidates (first-seen order), else train.data.mix."""
    out: list[str] = []
    for mix in config.search.candidates:
        out += [s for s in mix if s not in out]
    return out or list(config.train.data.mix)


def normalize(mix: Mapping[str, float]) -> dict[str, float]:
    total = float(sum(mix.values()))
    if any(w < 0 for w in mix.values()) or total <= 0:
        raise ConfigError(f"a mix needs weights >= 0 with a positive sum, got {dict(mix)}")
    return {s: float(w) / total for s, w in mix.items()}


def neighbours(mix: Mapping[str, float]) -> list[dict[str, float]]:
    """The mix with one source's weight doubled or halved, one source at a time."""
    out = []
    for source in mix:
        for factor in (2.0, 0.5):
            out.append({s: w * factor if s == source else w for s, w in mix.items()})
    return out


def raw_point(mix: Mapping[str, float], sources: list[str], weight_range) -> dict[str, float]:
    """Raw weights (largest = top of the range) that normalise to `mix`."""
    unknown = sorted(set(mix) - set(sources))
    if unknown:
        raise ConfigError(f"candidate mix {dict(mix)} names {unknown}, not among {sources}")
    lo, hi = weight_range
    top = max(mix.get(s, 0.0) for s in sources)
    if top <= 0:
        raise ConfigError(f"candidate mix {dict(mix)} has no positive weight")
    raw = {param_key(s): hi * mix.get(s, 0.0) / top for s in sources}
    low = [s for s in sources if raw[param_key(s)] < lo * (1 - 1e-9)]
    if low:
        raise ConfigError(
            f"candidate mix {dict(mix)}: weight of {low} is below search.weight_range "
            f"{lo}..{hi} relative to the largest (widen the range)"
        )
    return {k: min(hi, max(lo, v)) for k, v in raw.items()}


def mix_of(params: Mapping[str, Any], sources: list[str]) -> dict[str, float]:
    return normalize({s: float(params[param_key(s)]) for s in sources})


def fixed_points(config: AnnealConfig, tune_threshold: bool) -> list[dict[str, float]]:
    """The trials evaluated first: candidates, neighbours of the first, threshold candidates."""
    sources = swept_sources(config)
    mixes = [dict(m) for m in config.search.candidates]
    if mixes and config.search.neighbours:
        mixes += neighbours(mixes[0])
    points: list[dict[str, float]] = []
    seen: set[tuple] = set()
    for mix in mixes:
        point = raw_point(mix, sources, config.search.weight_range) if len(sources) > 1 else {}
        key = tuple(round(v, 9) for v in normalize(mix).values()) if mix else ()
        if key in seen:
            continue
        seen.add(key)
        points.append(point)
    if tune_threshold:
        lo, hi = config.search.switch_threshold
        thresholds = list(config.search.threshold_candidates) or [math.sqrt(lo * hi)]
        first = points[0] if points else {}
        if points:  # the candidate mixes take the geometric middle of the threshold range
            points = [{**p, THRESHOLD_KEY: math.sqrt(lo * hi)} for p in points]
        for t in thresholds:
            if not lo <= t <= hi:
                raise ConfigError(f"threshold candidate {t} is outside search.switch_threshold")
            points.append({**first, THRESHOLD_KEY: float(t)})
    if len(points) > config.search.num_samples:
        raise ConfigError(
            f"{len(points)} fixed points (candidates, neighbours, thresholds) exceed "
            f"search.num_samples={config.search.num_samples}"
        )
    return points


def objective_weights(config: AnnealConfig, val_sources: set[str]) -> dict[str, float]:
    """Per-source weights of the validation loss; every weighted source must have a val split."""
    weights = dict(config.objective) or {s: 1.0 for s in swept_sources(config) if s in val_sources}
    if not weights:
        raise ConfigError(
            f"none of the swept sources {swept_sources(config)} has a validation split; "
            f"set objective: {{source: weight}} over sources with one ({sorted(val_sources)})"
        )
    missing = sorted(set(weights) - val_sources)
    if missing:
        raise ConfigError(f"objective weights {missing}: no validation split for them "
                          f"(sources with one: {sorted(val_sources)})")  # fmt: skip
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ConfigError(f"objective weights must be >= 0 with a positive sum: {weights}")
    return weights


def objective_of(metrics: Mapping[str, Any], weights: Mapping[str, float]) -> float | None:
    """Weighted mean of `val/loss/<source>`; None when a weighted source is not in `metrics`."""
    total, acc = 0.0, 0.0
    for source, w in weights.items():
        value = metrics.get(f"val/loss/{source}")
        if value is None:
            return None
        acc += w * float(value)
        total += w
    return acc / total


def mix_label(mix: Mapping[str, float]) -> str:
    """Fractions as a compact ratio, e.g. '0.77:0.15:0.08'."""
    return ":".join(f"{v:.2f}" for v in mix.values())


@dataclass
class TrialRow:
    trial_id: str
    mix: dict[str, float]
    threshold: float | None
    steps_asha: int
    """Steps the trial trained during the ASHA sweep."""
    objective_asha: float | None
    """Objective at the last step it reported in the sweep."""
    objective_full: float | None
    """Objective at `steps` (None for a trial ASHA stopped, unless the grid check ran it on)."""
    losses: dict[str, float]
    run_id: str | None = None
    switch_step: int | None = None
    """CM-GEMS: the step after which the trial masked with Global (None: it did not switch)."""
    proposed: bool = False
    """The confirmation trial of the fitted mixing law's proposal (not a sampled mix)."""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def switch_label(self, steps: int) -> str:
        """The switch step, 'never' (trained all `steps` without one), or '>N' (stopped at N)."""
        if self.switch_step is not None:
            return str(self.switch_step)
        return "never" if self.steps_asha >= steps else f">{self.steps_asha}"


@dataclass
class LawOutcome:
    """What the fitted mixing law found: why there is none, or the fit, its proposal and the
    proposal's measured objective (summary.json's `law`)."""

    skipped: str | None = None
    """Why no law was fitted or no proposal made (too few finished trials, one source, ...)."""
    fit_step: int | None = None
    """The step every fitted trial was measured at (the sweep's `steps`)."""
    fitted_trials: list[str] = field(default_factory=list)
    loo_rmse: float | None = None
    """Leave-one-out RMS error of the predicted objective over the fitted trials."""
    law: MixingLaw | None = None
    caps: dict[str, float] = field(default_factory=dict)
    """Largest token fraction per source under the repetition cap (1.0: none)."""
    max_repetitions: dict[str, float] = field(default_factory=dict)
    """The cap: passes allowed over each source's training tokens."""
    proposal: Proposal | None = None
    repetitions: dict[str, float] = field(default_factory=dict)
    """Passes the confirmation trial makes over each source's training tokens."""
    confirmation: TrialRow | None = None
    best_sampled: TrialRow | None = None
    """The sampled trial with the lowest objective measured at `fit_step`."""

    @property
    def measured(self) -> float | None:
        return self.confirmation.objective_full if self.confirmation else None

    @property
    def beats_sampled(self) -> bool | None:
        """Whether the proposal's measured objective is below every sampled mix's at the same
        step (None: not measured)."""
        if self.measured is None or self.best_sampled is None:
            return None
        return self.measured < self.best_sampled.objective_full

    def as_dict(self) -> dict[str, Any]:
        law = None
        if self.law is not None:
            law = {"form": "loss_s = a_s + sum_j b_sj * log(fraction_j)",
                   "intercept": self.law.intercept, "coef": self.law.coef,
                   "objective_weights": self.law.weights}  # fmt: skip
        return {
            "skipped": self.skipped, "fit_step": self.fit_step,
            "fitted_trials": self.fitted_trials, "loo_rmse": self.loo_rmse, "law": law,
            "caps": self.caps, "max_repetitions": self.max_repetitions,
            "proposal": dict(self.proposal.__dict__) if self.proposal else None,
            "repetitions": self.repetitions,
            "predicted": self.proposal.predicted if self.proposal else None,
            "measured": self.measured, "beats_sampled": self.beats_sampled,
            "best_sampled": ({"trial_id": self.best_sampled.trial_id,
                              "objective": self.best_sampled.objective_full}
                             if self.best_sampled else None),
            "confirmation": self.confirmation.as_dict() if self.confirmation else None,
        }  # fmt: skip

    def lines(self) -> list[str]:
        """The report's lines about the law."""
        if self.skipped:
            return [f"Mixing law: {self.skipped}."]
        p = self.proposal
        loo = f", leave-one-out error {self.loo_rmse:.4f}" if self.loo_rmse is not None else ""
        out = [f"Mixing law (per-source log-linear, fitted on {len(self.fitted_trials)} trials "
               f"at step {self.fit_step}{loo}): proposes "
               + ", ".join(f"{s} {v:.3f}" for s, v in p.mix.items())
               + (f" (at the repetition cap: {', '.join(p.capped)})" if p.capped else "")
               + f"; predicted objective {p.predicted:.4f}."]  # fmt: skip
        if self.confirmation is None:
            out.append("Mixing law: no confirmation trial (search.regression.confirm: false).")
        elif self.measured is None:
            out.append(f"Mixing law: the confirmation trial {self.confirmation.trial_id} did not "
                       f"reach step {self.fit_step}.")  # fmt: skip
        else:
            b = self.best_sampled
            verdict = ("beats every sampled mix" if self.beats_sampled
                       else "does not beat the best sampled mix")  # fmt: skip
            out.append(f"Confirmation trial {self.confirmation.trial_id}: measured objective "
                       f"{self.measured:.4f} (predicted {p.predicted:.4f}, "
                       f"{self.measured - p.predicted:+.4f}); {verdict} (best sampled: trial "
                       f"{b.trial_id}, {b.objective_full:.4f}).")  # fmt: skip
        return out


@dataclass
class SweepSummary:
    rows: list[TrialRow]
    steps: int
    winner: TrialRow
    """ASHA's winner: lowest objective among trials that trained all `steps`."""
    asha_steps: int
    grid_steps: int
    grid_winner: TrialRow | None
    """The full grid's winner (all trials at `steps`), when every trial has a full objective."""
    law: LawOutcome | None = None
    """The fitted mixing law and its confirmation trial (None: search.regression off)."""

    @property
    def best(self) -> TrialRow:
        """The sweep's choice: the law's confirmation trial when it beats every sampled mix,
        else ASHA's winner."""
        if self.law is not None and self.law.beats_sampled:
            return self.law.confirmation
        return self.winner

    @property
    def same_winner(self) -> bool | None:
        if self.grid_winner is None:
            return None
        return self.grid_winner.trial_id == self.winner.trial_id

    def undecided(self) -> str | None:
        """Why the sweep chose nothing (every trial that trained all steps has the same
        objective, or a threshold sweep's trials all switched at the same step), else None."""
        done = [r for r in self.rows if r.steps_asha >= self.steps and r.objective_asha is not None]
        if len(done) < 2:
            return None
        values = [r.objective_full if r.objective_full is not None else r.objective_asha
                  for r in done]  # fmt: skip
        if max(values) - min(values) <= 1e-9 * max(1.0, abs(min(values))):
            return (f"all {len(done)} finished trials have the same objective "
                    f"{min(values):.6g}: the winner is arbitrary")
        if any(r.threshold is not None for r in done):
            switches = {r.switch_step for r in done}
            if len(switches) == 1:
                at = next(iter(switches))
                at = "never" if at is None else f"step {at}"
                return (f"every trial switched at the same point ({at}): the thresholds did not "
                        "change the runs; widen search.switch_threshold or use "
                        "train.masking.switch_rule: relative")  # fmt: skip
        return None


def summarize(rows: list[TrialRow], steps: int) -> SweepSummary:
    finished = [r for r in rows if r.steps_asha >= steps and r.objective_asha is not None]
    if not finished:
        raise ConfigError("no trial finished all its steps: nothing to choose from")
    winner = min(finished, key=lambda r: r.objective_asha)
    grid_winner = None
    if all(r.objective_full is not None for r in rows):
        grid_winner = min(rows, key=lambda r: r.objective_full)
    return SweepSummary(rows, steps, winner, sum(r.steps_asha for r in rows), len(rows) * steps,
                        grid_winner)  # fmt: skip


def ranked(rows: list[TrialRow], steps: int) -> list[TrialRow]:
    """Trials that trained all steps by objective, then stopped ones by how far they got."""
    def key(r: TrialRow):
        full = r.objective_full if r.objective_full is not None else (
            r.objective_asha if r.steps_asha >= steps else None)
        return (full is None, full if full is not None else 0.0, -r.steps_asha,
                r.objective_asha if r.objective_asha is not None else math.inf)

    return sorted(rows, key=key)


def format_table(summary: SweepSummary) -> str:
    """The ranked trials, the law's confirmation trial among them (marked)."""
    extra = [summary.law.confirmation] if summary.law and summary.law.confirmation else []
    rows = ranked(summary.rows + extra, summary.steps)
    sources = list(rows[0].mix)
    header = f"{'rank':>4}  {'trial':<10} " + " ".join(f"{s[:12]:>12}" for s in sources)
    has_t = any(r.threshold is not None for r in rows)
    header += (f" {'threshold':>9} {'switch':>6}" if has_t else "")
    header += f" {'steps':>6} {'objective':>10}"
    header += f" {'at ' + str(summary.steps):>10}"
    lines = [header]
    for i, r in enumerate(rows, 1):
        line = f"{i:>4}  {r.trial_id[-10:]:<10} " + " ".join(f"{r.mix[s]:>12.3f}" for s in sources)
        if has_t:
            line += f" {r.threshold:>9.3g}" if r.threshold is not None else f" {'':>9}"
            line += f" {r.switch_label(summary.steps):>6}"
        obj = f"{r.objective_asha:.4f}" if r.objective_asha is not None else "-"
        full = f"{r.objective_full:.4f}" if r.objective_full is not None else "stopped"
        marks = (["winner"] if r.trial_id == summary.best.trial_id else []) + (
            ["law's proposal"] if r.proposed else [])
        mark = f"  <- {', '.join(marks)}" if marks else ""
        lines.append(line + f" {r.steps_asha:>6} {obj:>10} {full:>10}{mark}")
    return "\n".join(lines)
