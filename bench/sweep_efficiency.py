"""How much of the grid's steps ASHA and successive halving spend, and how often they pick the
grid's winner: full learning curves recorded once, schedulers replayed offline.

    python bench/sweep_efficiency.py                    # record (once), then replay
    python bench/sweep_efficiency.py --replay-only      # replay bench/out/sweep_curves.json
    python bench/sweep_efficiency.py --num-trials 16 --orders 200

1. Record: the embedded default sweep (jobs/configs/anneal_sample.yaml) with ASHA off, the
   mixing law off and `--num-trials` trials (its 4 candidates, the rest sampled by Optuna), so
   every trial trains all its steps through the project's own trial path (Tune trainable ->
   TorchTrainer -> DeepSpeed). Each trial's objective at every evaluation goes to
   bench/out/sweep_curves.json (written atomically); a later run replays it without training.
2. Replay: for every (scheduler, grace_period, reduction_factor, concurrency) and `--orders`
   random arrival orders, Ray Tune's own scheduler objects (`ASHAScheduler`,
   `AsyncHyperBandScheduler` with 3 brackets) are fed the recorded results through
   `on_trial_add` / `on_trial_result` / `on_trial_complete`, in the time order a sweep of that
   concurrency would produce them (every trial trains at the same speed; a freed slot starts
   the next trial in the order). Synchronous successive halving (every trial reaches a rung
   before any is promoted) is replayed by its definition alongside, for comparison. A trial
   stops when the scheduler says STOP. Printed: the fraction of the grid's steps spent and
   the probability that the scheduler's winner (best objective among trials that trained all
   steps) is the grid's, or among the grid's best 3, and its regret (its final objective less
   the grid winner's), next to how well each evaluation step ranks the trials (Spearman).

Goal for the default (asha: in anneal_sample.yaml): <= 0.5 of the grid's steps with the
grid's winner in >= 90% of orders.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._harness import DEFAULT_OUT  # noqa: E402
from bsm_ray.fileio import atomic_write_text  # noqa: E402
from bsm_ray.log import get_logger  # noqa: E402

logger = get_logger("bench.sweep_efficiency")


def record(num_trials: int, out: Path, storage: Path, base: str | None = None) -> dict:
    """Run the embedded default with ASHA off and save every trial's curve."""
    from bsm_ray.config import load_config
    from bsm_ray.ingest.shards import read_manifest
    from bsm_ray.train.context import read_metrics
    from bsm_ray.tune.config import AnnealConfig
    from bsm_ray.tune.space import objective_of, objective_weights
    from bsm_ray.tune.sweep import run_sweep

    cfg = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "anneal_sample.yaml"
    config = load_config(AnnealConfig, str(cfg), [
        "name=sweep-efficiency", f"storage_path={storage}", f"search.num_samples={num_trials}",
        "asha.enabled=false", "grid_check=false", "search.regression.enabled=false",
        "tracking.enabled=false", *([f"base.path={base}"] if base else [])])  # fmt: skip
    t0 = time.perf_counter()
    outcome = run_sweep(config, overwrite=True)
    manifest = read_manifest(config.train.data.dataset)["totals"]
    weights = objective_weights(config, {k for k, v in manifest.items()
                                         if v.get("val", {}).get("rows", 0) > 0})  # fmt: skip
    curves = []
    for row in outcome.summary.rows:
        by_step = {}
        for m in read_metrics(outcome.sweep_dir / "trials" / row.trial_id):
            value = objective_of(m, weights)
            if value is not None:
                by_step[int(m["step"])] = value
        curves.append({"trial_id": row.trial_id, "mix": row.mix,
                       "steps": sorted(by_step), "objective": [by_step[s] for s in
                                                               sorted(by_step)]})  # fmt: skip
    data = {"config": str(cfg), "steps": config.steps, "eval_every": config.eval_every,
            "num_trials": len(curves), "record_s": time.perf_counter() - t0,
            "objective_weights": weights, "curves": curves}  # fmt: skip
    atomic_write_text(out, json.dumps(data, indent=1))
    return data


def _scheduler(kind: str, max_t: int, grace: int, rf: int):
    from ray.tune.schedulers import AsyncHyperBandScheduler

    if kind == "asha":
        from ray.tune.schedulers import ASHAScheduler

        return ASHAScheduler(time_attr="step", metric="objective", mode="min", max_t=max_t,
                             grace_period=grace, reduction_factor=rf)  # fmt: skip
    return AsyncHyperBandScheduler(time_attr="step", metric="objective", mode="min",
                                   max_t=max_t, grace_period=grace, reduction_factor=rf,
                                   brackets=3)  # fmt: skip


def replay_async(kind: str, curves: list[dict], order: list[int], concurrency: int, max_t: int,
                 grace: int, rf: int) -> tuple[int, int | None]:  # fmt: skip
    """(steps spent, winner index) of a Ray scheduler fed the recorded curves."""
    from ray.tune.schedulers import TrialScheduler

    sched = _scheduler(kind, max_t, grace, rf)
    trials = [SimpleNamespace(trial_id=f"t{i:03d}") for i in range(len(curves))]
    queue = list(order)
    events: list[tuple[float, int, int, int]] = []  # (time, seq, trial, index of the result)
    seq = itertools.count()
    reached = {}

    def start(now: float) -> None:
        i = queue.pop(0)
        sched.on_trial_add(None, trials[i])
        first = curves[i]["steps"][0]
        heapq.heappush(events, (now + first, next(seq), i, 0))

    for _ in range(min(concurrency, len(queue))):
        start(0.0)
    while events:
        now, _, i, k = heapq.heappop(events)
        c = curves[i]
        step = c["steps"][k]
        reached[i] = step
        result = {"step": step, "objective": c["objective"][k]}
        last = k + 1 == len(c["steps"])
        decision = sched.on_trial_result(None, trials[i], result)
        if last:
            sched.on_trial_complete(None, trials[i], result)
        if last or decision == TrialScheduler.STOP:
            if queue:
                start(now)
        else:
            heapq.heappush(events, (now + c["steps"][k + 1] - step, next(seq), i, k + 1))
    done = [i for i, s in reached.items() if s >= max_t]
    winner = min(done, key=lambda i: curves[i]["objective"][-1]) if done else None
    return sum(reached.values()), winner


def replay_sync_sh(curves: list[dict], max_t: int, grace: int, rf: int) -> tuple[int, int]:
    """Synchronous successive halving: all trials to `grace`, the best 1/rf on to grace*rf,
    ... then to max_t (independent of arrival order and concurrency)."""
    alive = list(range(len(curves)))
    spent = {i: 0 for i in alive}
    rung = grace
    while True:
        rung = min(rung, max_t)
        for i in alive:
            spent[i] = rung
        if rung >= max_t:
            break
        at = {i: curves[i]["objective"][curves[i]["steps"].index(rung)] for i in alive}
        keep = max(1, len(alive) // rf)
        alive = sorted(alive, key=at.get)[:keep]
        rung *= rf
    winner = min(alive, key=lambda i: curves[i]["objective"][-1])
    return sum(spent.values()), winner


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-trials", type=int, default=16)
    p.add_argument("--orders", type=int, default=200, help="random arrival orders per setting")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--replay-only", action="store_true")
    p.add_argument("--base", help="base weights of the recorded trials (default: a base run of "
                   "the embedded default's, trained first), e.g. runs/anneal-sample/base")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    curves_path = args.out / "sweep_curves.json"
    if args.replay_only or curves_path.is_file():
        data = json.loads(curves_path.read_text())
        logger.info(f"replaying {curves_path} ({data['num_trials']} recorded trials)")
    else:
        logger.info(f"recording {args.num_trials} full learning curves (ASHA off)")
        data = record(args.num_trials, curves_path, args.out / "runs", args.base)
    curves, max_t, every = data["curves"], data["steps"], data["eval_every"]
    curves = [c for c in curves if c["steps"] and c["steps"][-1] >= max_t]
    grid_steps = len(curves) * max_t
    grid_winner = min(range(len(curves)), key=lambda i: curves[i]["objective"][-1])
    final = [c["objective"][-1] for c in curves]
    ranked = sorted(range(len(curves)), key=final.__getitem__)
    # How well the rung at each evaluation ranks the trials by their final objective.
    from scipy.stats import spearmanr

    rank_at = {step: float(spearmanr([c["objective"][k] for c in curves], final).statistic)
               for k, step in enumerate(curves[0]["steps"]) if 0 < step < max_t}  # fmt: skip
    rng = np.random.default_rng(0)
    orders = [list(rng.permutation(len(curves))) for _ in range(args.orders)]
    rows = []
    graces = [g for g in (every, 2 * every, 4 * every) if g < max_t]
    for kind, grace, rf in itertools.product(("asha", "async_hyperband", "sync_sh"), graces,
                                             (2, 3, 4)):  # fmt: skip
        for conc in args.concurrency if kind != "sync_sh" else [0]:
            spent, hits, top3, regret = [], 0, 0, []
            np.random.seed(0)  # AsyncHyperBand draws each trial's bracket from np.random
            for order in orders if kind != "sync_sh" else orders[:1]:
                if kind == "sync_sh":
                    s, w = replay_sync_sh(curves, max_t, grace, rf)
                else:
                    s, w = replay_async(kind, curves, order, conc, max_t, grace, rf)
                spent.append(s / grid_steps)
                hits += w == grid_winner
                top3 += w in ranked[:3]
                regret.append(final[w] - final[grid_winner] if w is not None else np.inf)
            n = len(spent)
            rows.append({"scheduler": kind, "grace_period": grace, "reduction_factor": rf,
                         "concurrency": conc or "-", "orders": n,
                         "grid_fraction": float(np.mean(spent)),
                         "p_grid_winner": hits / n, "p_grid_top3": top3 / n,
                         "mean_regret": float(np.mean(regret)),
                         "max_regret": float(np.max(regret))})  # fmt: skip
    report = {"curves": str(curves_path), "num_trials": len(curves), "steps": max_t,
              "grid_steps": grid_steps, "grid_winner": curves[grid_winner]["trial_id"],
              "final_objectives": sorted(final), "spearman_with_final": rank_at,
              "rows": rows}  # fmt: skip
    atomic_write_text(args.out / "sweep_efficiency.json", json.dumps(report, indent=1))
    best = curves[grid_winner]
    second = sorted(final)[1]
    lines = [f"{len(curves)} trials x {max_t} steps = {grid_steps} grid steps; grid winner "
             f"{best['trial_id']} (objective {best['objective'][-1]:.4f}; the runner-up "
             f"{second - best['objective'][-1]:+.4f})",
             "Spearman rank correlation of the objective at a step with the final one: "
             + ", ".join(f"step {k}: {v:.2f}" for k, v in rank_at.items()),
             f"{'scheduler':<16} {'grace':>5} {'rf':>3} {'conc':>4} {'orders':>6} "
             f"{'grid steps':>10} {'P(grid winner)':>14} {'P(top 3)':>8} "
             f"{'mean regret':>11} {'max regret':>10}"]  # fmt: skip
    for r in rows:
        ok = r["grid_fraction"] <= 0.5 and r["p_grid_winner"] >= 0.9
        lines.append(f"{r['scheduler']:<16} {r['grace_period']:>5} {r['reduction_factor']:>3} "
                     f"{r['concurrency']!s:>4} {r['orders']:>6} {r['grid_fraction']:>10.2f} "
                     f"{r['p_grid_winner']:>14.2f} {r['p_grid_top3']:>8.2f} "
                     f"{r['mean_regret']:>11.4f} {r['max_regret']:>10.4f}"
                     + ("  <- meets the goal" if ok else ""))
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
