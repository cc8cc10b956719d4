"""Promotion: move a registered model's `champion` alias only when evaluation gates pass.

    candidate = the version to judge ("latest", a number, or an alias)
    champion  = the version the alias points at now (none yet: the candidate is judged alone)
    both are downloaded from the registry and evaluated on the same held-out data
    (bsm_ray.eval.perplexity); each evaluation is an MLflow run whose id is recorded on the
    version (tag bsm_ray.eval_run_id)

Gates (all must pass):
    primary    the primary metric (lower is better, e.g. eval/ppl) improves on the champion's by
               at least `min_improvement` (relative; 0 means any improvement, a tie fails)
    guardrail  each guardrail metric is not worse than the champion's by more than its
               tolerance (relative); by default every per-modality perplexity, 2%

The decision table (metric, champion, candidate, change, rule, verdict) is printed, logged as
`decision.txt`/`decision.json` on the candidate's evaluation run, and summarized on the version
(tag bsm_ray.promotion). `dry_run` evaluates and prints the table and writes nothing.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bsm_ray.config import to_dict
from bsm_ray.errors import ConfigError, TrackingError
from bsm_ray.eval.perplexity import MODALITY, PerplexityConfig, evaluate_path
from bsm_ray.log import get_logger
from bsm_ray.tracking.config import TrackingConfig

logger = get_logger(__name__)


@dataclass
class Gate:
    """A guardrail: `metric` (lower is better) may be worse than the champion's by at most
    `tolerance` (relative: 0.02 = 2%)."""

    metric: str
    tolerance: float = 0.02


@dataclass
class PromoteConfig:
    """Promotion of a registered model version to an alias, gated on evaluation."""

    model_name: str = "bsm-causal"
    """Registered model (bsm-causal, dnabert, logo, or a tiny preset's name)."""
    candidate: str | int = "latest"
    """Version to judge: "latest", a version number, or an alias."""
    alias: str = "champion"
    primary: str = "eval/ppl"
    """Lower is better; the candidate must beat the champion on it."""
    min_improvement: float = 0.0
    """Relative improvement of the primary metric required (0.01 = 1% lower)."""
    guardrails: list[Gate] = field(default_factory=list)
    """Explicit guardrails; empty: every per-modality perplexity with `guardrail_tolerance`."""
    guardrail_tolerance: float = 0.02
    eval: PerplexityConfig = field(default_factory=PerplexityConfig)
    dry_run: bool = False
    """Evaluate and print the decision table; change nothing in the registry."""
    tracking: TrackingConfig = field(
        default_factory=lambda: TrackingConfig(experiment="bsm_ray-eval", register=False))


@dataclass
class Row:
    metric: str
    champion: float | None
    candidate: float | None
    rule: str
    passed: bool
    why: str

    @property
    def change(self) -> float | None:
        if self.champion is None or self.candidate is None or self.champion == 0:
            return None
        return self.candidate / self.champion - 1.0


@dataclass
class Decision:
    model_name: str
    candidate: str
    champion: str | None
    rows: list[Row]
    promote: bool
    reason: str
    eval_run_ids: dict[str, str] = field(default_factory=dict)
    dry_run: bool = False
    alias: str = "champion"

    def as_dict(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "candidate": self.candidate,
                "champion": self.champion, "promote": self.promote, "reason": self.reason,
                "dry_run": self.dry_run, "alias": self.alias, "eval_run_ids": self.eval_run_ids,
                "rows": [{**r.__dict__, "change": r.change} for r in self.rows]}  # fmt: skip


def gates(config: PromoteConfig, champion: dict[str, float]) -> list[Gate]:
    if config.guardrails:
        return list(config.guardrails)
    modalities = sorted({m for m in MODALITY.values() if f"eval/ppl/{m}" in champion})
    return [Gate(f"eval/ppl/{m}", config.guardrail_tolerance) for m in modalities
            if f"eval/ppl/{m}" != config.primary]  # fmt: skip


def decide(config: PromoteConfig, candidate: dict[str, float],
           champion: dict[str, float] | None) -> tuple[list[Row], bool, str]:
    """The decision rows, whether to promote, and why (pure)."""
    p = config.primary
    if p not in candidate:
        raise ConfigError(f"primary metric {p!r} is not among the evaluation's metrics "
                          f"{sorted(candidate)[:12]}")  # fmt: skip
    if champion is None:
        row = Row(p, None, candidate[p], "no champion yet", math.isfinite(candidate[p]),
                  "first version judged" if math.isfinite(candidate[p]) else "not finite")
        return [row], row.passed, (f"no {config.alias} yet: the candidate becomes it"
                                   if row.passed else f"{p} is not finite")
    rows: list[Row] = []
    need = champion[p] * (1.0 - config.min_improvement)
    ok = candidate[p] < need
    rows.append(Row(p, champion[p], candidate[p],
                    f"primary: lower by >= {config.min_improvement:.1%}", ok,
                    "better" if ok else ("not better" if candidate[p] >= champion[p]
                                         else "better, but by less than required")))
    for gate in gates(config, champion):
        if gate.metric not in champion or gate.metric not in candidate:
            rows.append(Row(gate.metric, champion.get(gate.metric), candidate.get(gate.metric),
                            f"guardrail: worse by <= {gate.tolerance:.1%}", False,
                            "missing on one side"))  # fmt: skip
            continue
        limit = champion[gate.metric] * (1.0 + gate.tolerance)
        passed = candidate[gate.metric] <= limit
        rows.append(Row(gate.metric, champion[gate.metric], candidate[gate.metric],
                        f"guardrail: worse by <= {gate.tolerance:.1%}", passed,
                        "within tolerance" if passed else "worse than tolerated"))  # fmt: skip
    failed = [r for r in rows if not r.passed]
    if not failed:
        return rows, True, f"{p} better and every guardrail within tolerance"
    return rows, False, "; ".join(f"{r.metric} {r.why}" for r in failed)


def format_decision(d: Decision) -> str:
    head = (f"{d.model_name}: candidate version {d.candidate} vs "
            + (f"{d.alias} version {d.champion}" if d.champion else f"no {d.alias} yet"))
    lines = [head, f"{'metric':<26}{'champion':>11}{'candidate':>11}{'change':>9}  "
                   f"{'rule':<30}{'verdict':<8}why"]  # fmt: skip
    for r in d.rows:
        champ = f"{r.champion:>11.4f}" if r.champion is not None else f"{'-':>11}"
        cand = f"{r.candidate:>11.4f}" if r.candidate is not None else f"{'-':>11}"
        change = f"{r.change:>+9.1%}" if r.change is not None else f"{'-':>9}"
        lines.append(f"{r.metric:<26}{champ}{cand}{change}  {r.rule:<30}"
                     f"{'pass' if r.passed else 'FAIL':<8}{r.why}")  # fmt: skip
    verb = ("would move" if d.dry_run else "moved") if d.promote else "stays"
    target = d.candidate if d.promote else (d.champion or "unset")
    lines.append(f"decision: {'PROMOTE' if d.promote else 'KEEP'} ({d.reason}); "
                 f"{d.model_name}@{d.alias} {verb} -> version {target}"
                 + ("  [dry run: nothing changed]" if d.dry_run else ""))
    return "\n".join(lines)


def _evaluate_version(config: PromoteConfig, version: str, workdir: Path) -> dict[str, float]:
    from bsm_ray.tracking.runs import download_model

    local = download_model(config.tracking, f"models:/{config.model_name}/{version}",
                           workdir / f"v{version}")  # fmt: skip
    result = evaluate_path(local, config.eval)
    for source, why in result.skipped.items():
        logger.info(f"{config.model_name}/{version}: {source} not evaluated ({why})")  # fmt: skip
    return result.metrics


def _log_eval_run(config: PromoteConfig, version: str, metrics: dict[str, float],
                  files: list[Path]) -> str:
    from bsm_ray.tracking.registry import set_version_tags
    from bsm_ray.tracking.runs import log_finished_run

    run_id = log_finished_run(
        config.tracking, f"eval-{config.model_name}-v{version}",
        params={"eval": to_dict(config.eval), "model_name": config.model_name,
                "version": version},
        tags={"bsm_ray.model_name": config.model_name, "bsm_ray.model_version": version},
        metrics=metrics, files=files,
    )  # fmt: skip
    set_version_tags(config.tracking, config.model_name, version,
                     {"bsm_ray.eval_run_id": run_id})  # fmt: skip
    return run_id


def promote(config: PromoteConfig) -> Decision:
    """Evaluate, decide, and (unless dry run) record and move the alias."""
    from bsm_ray.tracking.registry import resolve_version, set_alias, set_version_tags

    candidate = resolve_version(config.tracking, config.model_name, str(config.candidate))
    if candidate is None:
        raise TrackingError(f"{config.model_name}: no version behind {config.candidate!r}")
    champion = resolve_version(config.tracking, config.model_name, config.alias)
    if champion == candidate:
        d = Decision(config.model_name, candidate, champion, [], False,
                     f"version {candidate} already is {config.alias}", dry_run=config.dry_run,
                     alias=config.alias)
        logger.info(format_decision(d))
        return d
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cand_metrics = _evaluate_version(config, candidate, work)
        champ_metrics = _evaluate_version(config, champion, work) if champion else None
        rows, ok, reason = decide(config, cand_metrics, champ_metrics)
        d = Decision(config.model_name, candidate, champion, rows, ok, reason,
                     dry_run=config.dry_run, alias=config.alias)  # fmt: skip
        text = format_decision(d)
        logger.info(text)
        if config.dry_run:
            return d
        (work / "decision.txt").write_text(text + "\n")
        if champion:
            d.eval_run_ids[champion] = _log_eval_run(config, champion, champ_metrics, [])
        (work / "decision.json").write_text(json.dumps(d.as_dict(), indent=2))
        d.eval_run_ids[candidate] = _log_eval_run(
            config, candidate, cand_metrics, [work / "decision.txt", work / "decision.json"])
    verdict = "promoted" if ok else "rejected"
    set_version_tags(config.tracking, config.model_name, candidate, {
        "bsm_ray.promotion": f"{verdict} against {champion or 'none'}: {reason}"[:5000],
        "bsm_ray.promotion_eval_run_id": d.eval_run_ids[candidate],
        **({"bsm_ray.champion_eval_run_id": d.eval_run_ids[champion]} if champion else {}),
    })  # fmt: skip
    if ok:
        set_alias(config.tracking, config.model_name, config.alias, candidate)
    return d
