"""The live sweep dashboard: one self-contained HTML page per sweep (runs/<name>/dashboard.html).
Pure module: no ray, torch or mlflow (plotly, imported where used).

The page is rebuilt from the sweep's own files, so a live render (from a Tune callback, as
trials report) and the final one (after the grid check and the law) draw the same things:

- learning curves: the objective (weighted per-source validation loss) at every evaluation of
  every trial, with an X where ASHA stopped it (a trial the grid check trained on goes on past
  its X);
- the objective against each source's token fraction (a threshold sweep: against the switch
  threshold, log x), at the last step for trials measured there, else where they stopped;
  with the fitted law, its prediction at each fitted mix, the law along each source's axis
  through the proposal, and the proposal (predicted and measured);
- the ranked table.

plotly.js is inlined (`include_plotlyjs=True`, ~4.7 MB), so the page opens offline, from a
cluster's storage or an MLflow artifact. While the sweep runs the page reloads itself every
15 s. Writes are atomic: a browser never reads a half-written page.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bsm_ray.fileio import atomic_write_text
from bsm_ray.tune.space import (
    LAW_PARAM,
    THRESHOLD_KEY,
    SweepSummary,
    mix_label,
    objective_of,
    ranked,
)

REFRESH_S = 15


@dataclass
class TrialCurve:
    trial_id: str
    mix: dict[str, float]
    threshold: float | None
    steps: list[int] = field(default_factory=list)
    objective: list[float] = field(default_factory=list)
    proposed: bool = False


def trial_curves(sweep_dir: Path, weights: Mapping[str, float]) -> list[TrialCurve]:
    """Every trial that has started (its trial.json), with the objective at each evaluation
    (the last value logged for a step: a resumed run may log a step twice)."""
    from bsm_ray.train.context import read_metrics

    out = []
    for info_path in sorted((Path(sweep_dir) / "trials").glob("*/trial.json")):
        try:
            info = json.loads(info_path.read_text())
        except ValueError:  # written atomically, but be safe against a foreign file
            continue
        curve = TrialCurve(info["trial_id"], dict(info["train"]["data"]["mix"]),
                           info["params"].get(THRESHOLD_KEY),
                           proposed=bool(info["params"].get(LAW_PARAM)))  # fmt: skip
        if info["train"].get("objective") == "mlm":
            curve.mix = {"genome": 1.0}
        by_step: dict[int, float] = {}
        for m in read_metrics(info_path.parent):
            value = objective_of(m, weights)
            if value is not None:
                by_step[int(m["step"])] = value
        curve.steps = sorted(by_step)
        curve.objective = [by_step[s] for s in curve.steps]
        out.append(curve)
    return out


def _label(c: TrialCurve) -> str:
    return f"{c.trial_id} (law's proposal)" if c.proposed else c.trial_id


def build_html(name: str, curves: list[TrialCurve], steps: int, stops: Mapping[str, int],
               summary: SweepSummary | None = None, running: bool = True) -> str:  # fmt: skip
    """The page: learning curves, objective against the mix (or threshold), the law, the
    ranked table. `stops`: trial id -> step at which ASHA stopped it."""
    import plotly.graph_objects as go
    import plotly.io as pio
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    palette = qualitative.Plotly
    color = {c.trial_id: palette[i % len(palette)] for i, c in enumerate(curves)}
    law = summary.law if summary is not None else None

    # 1. learning curves, ASHA stops marked
    fig = go.Figure()
    for c in curves:
        fig.add_trace(go.Scatter(x=c.steps, y=c.objective, mode="lines+markers", name=_label(c),
                                 legendgroup=c.trial_id, line={"color": color[c.trial_id],
                                 "dash": "dash" if c.proposed else "solid"},
                                 hovertext=f"mix {mix_label(c.mix)}"))  # fmt: skip
    stopped = [(c, stops[c.trial_id]) for c in curves
               if c.trial_id in stops and stops[c.trial_id] in c.steps]  # fmt: skip
    if stopped:  # one trace, one X per stopped trial in its curve's colour
        fig.add_trace(go.Scatter(
            x=[at for _, at in stopped], y=[c.objective[c.steps.index(at)] for c, at in stopped],
            mode="markers", name="stopped by ASHA", text=[c.trial_id for c, _ in stopped],
            hovertemplate="%{text} stopped by ASHA at step %{x}<extra></extra>",
            marker={"symbol": "x", "size": 13, "color": [color[c.trial_id] for c, _ in stopped],
                    "line": {"width": 1, "color": "black"}}))  # fmt: skip
    fig.update_layout(title="Learning curves (objective = weighted validation loss; "
                            "X = stopped by ASHA)", xaxis_title="step",
                      yaxis_title="objective", height=420, margin={"t": 50})  # fmt: skip
    figures = [fig]

    # 2. objective against each source's fraction, or the threshold
    threshold_sweep = bool(curves) and all(c.threshold is not None for c in curves) and all(
        len(c.mix) == 1 for c in curves)
    axes = ["threshold"] if threshold_sweep else (list(curves[0].mix) if curves else [])
    if axes:
        mixfig = make_subplots(rows=1, cols=len(axes), shared_yaxes=True,
                               subplot_titles=[f"token fraction of {a}" if a != "threshold"
                                               else "CM-GEMS switch threshold" for a in axes])
        for col, axis in enumerate(axes, 1):
            for c in curves:
                if not c.objective:
                    continue
                x = c.threshold if axis == "threshold" else c.mix.get(axis, 0.0)
                full = bool(c.steps) and c.steps[-1] >= steps
                y = c.objective[c.steps.index(steps)] if steps in c.steps else c.objective[-1]
                mixfig.add_trace(go.Scatter(
                    x=[x], y=[y], mode="markers", name=_label(c), legendgroup=c.trial_id,
                    showlegend=False, hovertext=f"{c.trial_id}: mix {mix_label(c.mix)}, "
                    f"step {steps if full else c.steps[-1]}",
                    marker={"size": 16 if c.proposed else 11, "color": color[c.trial_id],
                            "symbol": "star" if c.proposed else
                            ("circle" if full else "circle-open")}), row=1, col=col)  # fmt: skip
            if law is not None and law.law is not None and axis != "threshold":
                import numpy as np

                fitted = [c for c in curves if c.trial_id in law.fitted_trials]
                mixfig.add_trace(go.Scatter(
                    x=[c.mix[axis] for c in fitted], y=[law.law.predict(c.mix) for c in fitted],
                    mode="markers", name="law's prediction at the fitted mixes",
                    legendgroup="law-fit", showlegend=col == 1,
                    marker={"symbol": "diamond-open", "size": 10, "color": "black"}),
                    row=1, col=col)  # fmt: skip
                if law.proposal is not None:
                    p = law.proposal.mix
                    rest = 1.0 - p[axis]
                    xs = np.linspace(0.005, 0.995, 120)
                    ys = [law.law.predict({s: (x if s == axis else
                                               (p[s] / rest if rest > 0 else 0.0) * (1 - x))
                                           for s in p}) for x in xs]  # fmt: skip
                    mixfig.add_trace(go.Scatter(
                        x=list(xs), y=ys, mode="lines", name="law through the proposal "
                        "(other sources in the proposal's proportions)", legendgroup="law-line",
                        showlegend=col == 1, line={"color": "black", "dash": "dot"}),
                        row=1, col=col)  # fmt: skip
                    mixfig.add_trace(go.Scatter(
                        x=[p[axis]], y=[law.proposal.predicted], mode="markers",
                        name=f"proposal, predicted {law.proposal.predicted:.4f}",
                        legendgroup="law-proposal", showlegend=col == 1,
                        marker={"symbol": "star-open", "size": 18, "color": "black"}),
                        row=1, col=col)  # fmt: skip
        if threshold_sweep:
            mixfig.update_xaxes(type="log")
        lo_y = [v for c in curves for v in c.objective[-1:]]
        if law is not None and law.proposal is not None:
            lo_y.append(law.proposal.predicted)
        mixfig.update_layout(
            title=f"Objective against the {'threshold' if threshold_sweep else 'mix'} "
                  f"(filled: measured at step {steps}; hollow: where ASHA stopped it; "
                  "star: the law's proposal)", height=420, margin={"t": 80},
            yaxis_title="objective")  # fmt: skip
        if lo_y:
            pad = 0.1 * (max(lo_y) - min(lo_y) or 0.05)
            mixfig.update_yaxes(range=[min(lo_y) - pad, max(lo_y) + pad])
        figures.append(mixfig)

    # 3. the ranked table
    table_rows = _table_rows(curves, steps, stops, summary)
    if table_rows:
        cols = list(table_rows[0])
        figures.append(go.Figure(go.Table(
            header={"values": cols, "align": "left"},
            cells={"values": [[r[k] for r in table_rows] for k in cols], "align": "left"}),
            layout={"title": "Ranked trials", "height": 80 + 28 * len(table_rows),
                    "margin": {"t": 40, "b": 10}}))  # fmt: skip

    parts = [pio.to_html(f, full_html=False, include_plotlyjs=(i == 0), config={
        "displaylogo": False}) for i, f in enumerate(figures)]  # fmt: skip
    status = ("running" if running else "finished") + f", {len(curves)} trials, updated " + \
        time.strftime("%Y-%m-%d %H:%M:%S %Z")
    lines = [] if summary is None else (law.lines() if law is not None else [])
    refresh = f'<meta http-equiv="refresh" content="{REFRESH_S}">' if running else ""
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'>" + refresh
            + f"<title>sweep {html.escape(name)}</title></head>"
            "<body style='font-family:sans-serif;margin:16px'>"
            f"<h2>Sweep {html.escape(name)}</h2><p id='status'>{html.escape(status)}</p>"
            + "".join(f"<p>{html.escape(x)}</p>" for x in lines)
            + "".join(parts) + "</body></html>")  # fmt: skip


def _table_rows(curves, steps, stops, summary) -> list[dict[str, Any]]:
    if summary is not None:
        extra = [summary.law.confirmation] if summary.law and summary.law.confirmation else []
        out = []
        for i, r in enumerate(ranked(summary.rows + extra, steps), 1):
            out.append({
                "rank": i, "trial": r.trial_id + (" (law's proposal)" if r.proposed else "")
                + (" <- winner" if r.trial_id == summary.best.trial_id else ""),
                f"mix ({':'.join(r.mix)})": mix_label(r.mix), **({"threshold": f"{r.threshold:.4g}"}
                                            if r.threshold is not None else {}),
                "ASHA steps": r.steps_asha,
                "objective": f"{r.objective_asha:.4f}" if r.objective_asha is not None else "-",
                f"at {steps}": (f"{r.objective_full:.4f}" if r.objective_full is not None
                                else "stopped"),
            })  # fmt: skip
        return out
    done = sorted(curves, key=lambda c: (not c.steps or c.steps[-1] < steps,
                                         c.objective[-1] if c.objective else 0.0))  # fmt: skip
    return [{"rank": i, "trial": _label(c), f"mix ({':'.join(c.mix)})": mix_label(c.mix),
             "step": c.steps[-1] if c.steps else 0,
             "objective": f"{c.objective[-1]:.4f}" if c.objective else "-",
             "ASHA": f"stopped at {stops[c.trial_id]}" if c.trial_id in stops else ""}
            for i, c in enumerate(done, 1)]  # fmt: skip


def write_dashboard(path: Path, name: str, sweep_dir: Path, weights: Mapping[str, float],
                    steps: int, stops: Mapping[str, int], summary: SweepSummary | None = None,
                    running: bool = True) -> Path:  # fmt: skip
    """Render the page from the sweep's files and write it atomically."""
    curves = trial_curves(sweep_dir, weights)
    atomic_write_text(path, build_html(name, curves, steps, stops, summary, running))
    return path
