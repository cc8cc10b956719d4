"""The annealing sweep on Ray Tune (Ray Train V2 pattern).

    run_sweep(config) -> SweepOutcome

1. The base weights: a given model folder / checkpoint / registry URI, or a short base run.
2. One Tune trial per candidate mix (threshold): a function trainable that launches a
   `TorchTrainer` (`bsm_ray.train.launcher.launch`) with a `TuneReportCallback` subclass adding
   the objective to every report. Trials take no CPU themselves; concurrency is capped so that
   every running trial's workers fit the cluster, so a trial never waits on workers that cannot
   be placed.
3. The search: fixed points first (the paper's candidates and their neighbours), then Optuna
   (TPE) or random points; ASHA stops weak trials at eval steps after a grace period.
4. Results: a ranked table, the winner as a next-round YAML, a plot of the objective against
   the mix, one MLflow child run per trial under a parent run (params, metrics over steps).

A trial writes `trials/<id>/trial.json` (its exact TrainConfig and MLflow run) before training.
A trial that Tune starts again (after `--resume`) and whose run already holds its final model
re-reports its final metrics instead of training; an interrupted trial's TorchTrainer resumes
from its last checkpoint (same run name and storage), so no finished work is redone.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bsm_ray.config import dump_yaml, from_dict, load_config, to_dict
from bsm_ray.errors import BsmRayError, ConfigError
from bsm_ray.fileio import atomic_write_text
from bsm_ray.log import get_logger
from bsm_ray.train.checkpointing import (
    is_training_checkpoint,
    latest_local_checkpoint,
    read_trainer_state,
)
from bsm_ray.train.config import TrainConfig
from bsm_ray.train.context import read_metrics
from bsm_ray.tune.config import AnnealConfig, SweepSpec
from bsm_ray.tune.space import (
    LAW_PARAM,
    THRESHOLD_KEY,
    LawOutcome,
    SweepSummary,
    TrialRow,
    fixed_points,
    format_table,
    mix_of,
    objective_of,
    objective_weights,
    param_key,
    ranked,
    summarize,
    swept_sources,
)

logger = get_logger(__name__)

TUNE_DIR = "tune"
LAW_TUNE_DIR = "tune-law"  # the mixing law's confirmation trial (a Tune experiment of one)
TRIAL_DRIVER_MEMORY = 512 * 1024**2
HEAD_NODE_RESOURCE = "node:__internal_head__"  # ray._common.constants.HEAD_NODE_RESOURCE_NAME


@dataclass
class SweepOutcome:
    summary: SweepSummary
    sweep_dir: Path
    best_yaml: Path
    plot: Path
    parent_run_id: str | None
    report: str
    """The ranked table and the ASHA-vs-grid lines (also in summary.txt); the job prints it."""
    dashboard: Path | None = None
    """The sweep's self-contained HTML dashboard (rewritten as trials report)."""


# ----------------------------------------------------------------------------- set-up


def _abs(path: str) -> str:
    return path if "://" in path else str(Path(path).expanduser().resolve())


def _tune_threshold(config: AnnealConfig) -> bool:
    return config.train.masking.strategy == "cm_gems" and config.search.switch_threshold is not None


def _val_sources(config: AnnealConfig) -> set[str]:
    from bsm_ray.ingest.shards import read_manifest

    totals = read_manifest(config.train.data.dataset)["totals"]
    return {kind for kind, splits in totals.items() if splits.get("val", {}).get("rows", 0) > 0}


def trial_concurrency(config: AnnealConfig, resources: dict[str, float]) -> int:
    """Trials that can run at once with all their workers placed (at least 1)."""
    if config.max_concurrent > 0:
        return config.max_concurrent
    train = config.train
    workers = train.max_workers
    n = int(resources.get("CPU", 0) // (workers * train.cpus_per_worker))
    if train.use_gpu:
        n = min(n, int(resources.get("GPU", 0) // workers))
    if n < 1:
        # An autoscaling cluster may add the nodes; say so rather than wait silently.
        logger.info(f"the cluster has {resources.get('CPU', 0):g} CPUs / "
              f"{resources.get('GPU', 0):g} GPUs now; one trial needs {workers} workers x "
              f"{train.cpus_per_worker} CPUs{' + 1 GPU' if train.use_gpu else ''}: running one "
              f"trial at a time and waiting for the autoscaler")  # fmt: skip
        n = 1
    return min(n, config.search.num_samples)


def resolve_base(config: AnnealConfig, sweep_dir: Path) -> Path:
    """What every trial starts from: a training checkpoint (weights and AdamW moments) when the
    base has one and `base.optimizer_state` allows it, else a Hugging Face model folder. Says
    which."""
    path = config.base.path
    if path is None:
        found = _train_base(config, sweep_dir)
    elif path.startswith("models:/"):
        from bsm_ray.tracking.runs import download_model

        found = download_model(config.tracking, path, sweep_dir / "base_download")
    else:
        found = Path(path).expanduser().resolve()
    checkpoint = _training_checkpoint(found)
    want = config.base.optimizer_state
    if checkpoint is not None and want is not False:
        step = read_trainer_state(checkpoint)["step"]
        logger.info(f"trials start from {checkpoint} (step {step}) with its optimizer state: "
                    f"weights and AdamW moments, continuing the round")  # fmt: skip
        return checkpoint
    if want:
        raise ConfigError(f"base.optimizer_state: true, but {found} holds no training "
                          f"checkpoint (a model folder or a registry version has weights only)")
    from bsm_ray.train.export import find_model_dir

    try:
        model = find_model_dir(found)
    except BsmRayError as exc:
        raise ConfigError(f"base.path {exc}") from exc
    why = ("base.optimizer_state: false" if checkpoint is not None
           else "the base has no optimizer state")  # fmt: skip
    logger.info(f"trials start from the weights of {model} with fresh AdamW moments ({why})")
    return model


def _training_checkpoint(path: Path) -> Path | None:
    """`path` if it is a training checkpoint, the newest one in it if it is a run folder (or a
    checkpoint's final_model/ inside one), else None."""
    path = Path(path)
    if path.name == "final_model" and is_training_checkpoint(path.parent):
        return path.parent
    if is_training_checkpoint(path):
        return path
    return latest_local_checkpoint(path) if path.is_dir() else None


def _train_base(config: AnnealConfig, sweep_dir: Path) -> Path:
    from bsm_ray.train.launcher import launch

    done = sorted((sweep_dir / "base").glob("checkpoints/checkpoint_*/final_model"))
    done += sorted((sweep_dir / "base").glob("checkpoint_*/final_model"))
    if done:
        logger.info(f"base model: {done[-1]} (reused)")
        return done[-1]
    data = to_dict(config.train)
    data.update(
        name="base", storage_path=str(sweep_dir), max_steps=config.base.steps,
        num_workers=config.base.num_workers, init_from=None,
        eval_every=config.base.steps, checkpoint_every=config.base.steps, keep_checkpoints=1,
        schedule={"kind": "round", "start_lr": config.base.start_lr,
                  "end_lr": config.base.end_lr, "warmup_steps": 0},
        tracking={**data["tracking"], "enabled": False, "run_id": None},
    )  # fmt: skip
    data["data"]["mix"] = dict(config.base.mix)
    base = from_dict(TrainConfig, data)
    t0 = time.perf_counter()
    logger.info(f"training the base model: {base.model}, {base.max_steps} steps on "
          f"{dict(base.data.mix)}")  # fmt: skip
    result = launch(base)
    if result.final_model is None:
        raise BsmRayError("the base run ended without a final model")
    logger.info(f"base model: {result.final_model} ({time.perf_counter() - t0:.0f} s, "
          f"val/loss {result.metrics.get('val/loss', float('nan')):.4f})")
    return Path(result.final_model)


def trial_train_config(spec: SweepSpec, params: dict[str, Any], trial_id: str,
                       run_id: str | None) -> TrainConfig:
    """The exact TrainConfig of one trial: the recipe + mix + anneal schedule + base weights."""
    data = to_dict(spec.train)  # a deep copy
    sources = spec.sources
    if len(sources) > 1:
        data["data"]["mix"] = mix_of(params, sources)
    if THRESHOLD_KEY in params:
        data["masking"]["switch_threshold"] = float(params[THRESHOLD_KEY])
    data.update(
        name=trial_id, storage_path=str(Path(spec.sweep_dir) / "trials"),
        max_steps=spec.steps, init_from=spec.base,
        eval_every=spec.eval_every, checkpoint_every=spec.eval_every,
        schedule={"kind": "anneal", "start_lr": spec.start_lr, "end_lr": 0.0,
                  "warmup_steps": 0},
        tracking={**to_dict(spec.tracking), "run_id": run_id, "enabled": run_id is not None},
    )  # fmt: skip
    return from_dict(TrainConfig, data)


# ----------------------------------------------------------------------------- the trial


def _objective_callback(weights: dict[str, float]):
    from ray.tune.integration.ray_train import TuneReportCallback

    class ObjectiveReportCallback(TuneReportCallback):
        """Forward rank 0's report to Tune with the weighted validation loss added."""

        def __init__(self, weights: dict[str, float]) -> None:
            super().__init__()
            self.weights = weights

        def after_report(self, run_context, metrics, checkpoint):
            with_objective = []
            for m in metrics:
                m = dict(m)
                value = objective_of(m, self.weights)
                if value is not None:
                    m["objective"] = value
                with_objective.append(m)
            super().after_report(run_context, with_objective, checkpoint)

    return ObjectiveReportCallback(weights)


def run_trial(params: dict[str, Any], spec: SweepSpec) -> None:
    """Tune function trainable: one annealing trial (launches its own TorchTrainer)."""
    from ray import tune

    from bsm_ray.train.launcher import launch

    trial_id = tune.get_context().get_trial_id()
    trial_dir = Path(spec.sweep_dir) / "trials" / trial_id
    final = finished_metrics(trial_dir, spec.steps)
    if final is not None:  # finished before an interruption: never train it again
        value = objective_of(final, spec.objective)
        tune.report({**final, **({"objective": value} if value is not None else {})})
        return
    info_path = trial_dir / "trial.json"
    if info_path.is_file():  # restarted: same config, same MLflow run, resume its checkpoint
        info = json.loads(info_path.read_text())
    else:
        run_id = None
        if spec.tracking.enabled:
            from bsm_ray.tracking.runs import create_run
            from bsm_ray.tracking.tags import run_tags

            probe = trial_train_config(spec, params, trial_id, None)
            run_id = create_run(
                spec.tracking, f"trial-{trial_id}",
                parent_run_id=spec.parent_run_id, params=to_dict(probe),
                tags={**run_tags(probe), "bsm_ray.trial_id": trial_id},
            )  # fmt: skip
        config = trial_train_config(spec, params, trial_id, run_id)
        info = {"trial_id": trial_id, "params": params, "run_id": run_id, "train": to_dict(config)}
        trial_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(info_path, json.dumps(info, indent=2))
    # Tune may end this function as soon as the last report arrives (ASHA at max_t), so
    # nothing must depend on code after launch(): "finished" is the run's final model.
    launch(from_dict(TrainConfig, info["train"]),
           callbacks=[_objective_callback(spec.objective)])


def finished_metrics(trial_dir: Path, steps: int) -> dict[str, Any] | None:
    """The final metrics of a trial whose training run finished (its final model exists)."""
    if not any(trial_dir.glob("checkpoint_*/final_model/config.json")):
        return None
    last = [m for m in read_metrics(trial_dir) if int(m.get("step", -1)) == steps]
    return last[-1] if last else None


def _continue_trial(info: dict[str, Any], weights: dict[str, float]) -> dict[str, Any]:
    """Grid check: train a stopped trial on to its last step (resuming its checkpoint)."""
    from bsm_ray.train.launcher import launch

    config = from_dict(TrainConfig, info["train"])
    result = launch(config)
    metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
    metrics["objective"] = objective_of(metrics, weights)
    return metrics


# ----------------------------------------------------------------------------- the sweep


DASHBOARD = "dashboard.html"
DASHBOARD_EVERY_S = 10.0  # a render inlines ~4.7 MB of plotly.js: not on every report


def _dashboard_callback(config: AnnealConfig, spec: SweepSpec,
                        known_stops: dict[str, int] | None = None):  # fmt: skip
    """A Tune callback (in the driver) that rewrites dashboard.html as trials report, at most
    every DASHBOARD_EVERY_S. Stateless apart from its arguments (Tune pickles it with the
    experiment, and a resumed sweep runs the unpickled copy): where ASHA stopped a trial is
    read from Tune's trials (ended before the last step) at each render; `known_stops` are
    those of an earlier experiment (the main sweep, for the confirmation trial's)."""
    from ray.tune import Callback

    from bsm_ray.tune.dashboard import write_dashboard

    sweep_dir = Path(spec.sweep_dir)

    class DashboardCallback(Callback):
        def __init__(self) -> None:
            self.last = 0.0

        def render(self, trials) -> None:
            stops = dict(known_stops or {})
            for t in trials:
                step = int((t.last_result or {}).get("step", 0))
                if t.status == "TERMINATED" and 0 < step < spec.steps:
                    stops[t.trial_id] = step
            try:
                write_dashboard(sweep_dir / DASHBOARD, config.name, sweep_dir, spec.objective,
                                spec.steps, stops)  # fmt: skip
            except Exception as exc:  # a page must never stop a sweep
                logger.warning(f"dashboard not updated: {type(exc).__name__}: {exc}")
            self.last = time.monotonic()

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if time.monotonic() - self.last >= DASHBOARD_EVERY_S:
                self.render(trials)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.render(trials)

    return DashboardCallback()


def _trainable(config: AnnealConfig, spec: SweepSpec):
    from ray import tune

    # A trial driver only waits on its TorchTrainer: it reserves memory, not the CPUs its
    # workers need (a bundle must reserve something; Ray rejects an all-zero one). On the head
    # node by default, so a lost worker node cannot take a Train controller with it.
    driver = {"cpu": 0, "memory": TRIAL_DRIVER_MEMORY}
    if config.trial_drivers_on_head:
        driver[HEAD_NODE_RESOURCE] = 0.001  # every node has none of it but the head (1.0)
    return tune.with_resources(tune.with_parameters(run_trial, spec=spec), driver)


def _tuner(config: AnnealConfig, spec: SweepSpec, sweep_dir: Path, resume: bool):
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    trainable = _trainable(config, spec)
    tune_path = sweep_dir / TUNE_DIR
    if resume and tune.Tuner.can_restore(str(tune_path)):
        logger.info(f"resuming sweep {tune_path}")
        # the dashboard callback comes back with the experiment (pickled in tuner.pkl)
        return tune.Tuner.restore(str(tune_path), trainable=trainable, resume_unfinished=True,
                                  resume_errored=True)  # fmt: skip
    sources = spec.sources
    lo, hi = config.search.weight_range
    space: dict[str, Any] = {}
    if len(sources) > 1:
        space.update({param_key(s): tune.loguniform(lo, hi) if lo < hi else lo for s in sources})
    if _tune_threshold(config):
        space[THRESHOLD_KEY] = tune.loguniform(*config.search.switch_threshold)
    if not space:
        raise ConfigError("nothing to tune: give two or more sources (search.candidates or "
                          "train.data.mix) or, for cm_gems, search.switch_threshold")
    points = fixed_points(config, _tune_threshold(config))
    if config.search.searcher == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        search = OptunaSearch(points_to_evaluate=points or None,
                              sampler=optuna.samplers.TPESampler(seed=config.train.seed))
    else:
        from ray.tune.search import BasicVariantGenerator

        search = BasicVariantGenerator(points_to_evaluate=points or None,
                                       random_state=config.train.seed)  # fmt: skip
    if config.asha.enabled:
        scheduler = ASHAScheduler(time_attr="step", max_t=config.steps,
                                  grace_period=config.asha.grace_period,
                                  reduction_factor=config.asha.reduction_factor)  # fmt: skip
    else:
        scheduler = FIFOScheduler()
    concurrency = trial_concurrency(config, ray.cluster_resources())
    logger.info(f"sweep {config.name}: {config.search.num_samples} trials ({len(points)} "
          f"fixed, the rest by {config.search.searcher}), {config.steps} steps each, "
          f"{concurrency} at a time, ASHA {'on' if config.asha.enabled else 'off'}")  # fmt: skip
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(metric="objective", mode="min", search_alg=search,
                                    scheduler=scheduler, num_samples=config.search.num_samples,
                                    max_concurrent_trials=concurrency),
        run_config=tune.RunConfig(name=TUNE_DIR, storage_path=str(sweep_dir),
                                  failure_config=tune.FailureConfig(max_failures=2),
                                  callbacks=[_dashboard_callback(config, spec)]),
    )  # fmt: skip


def _rows(sweep_dir: Path, spec: SweepSpec, result_grid) -> tuple[list[TrialRow], list[str]]:
    rows, errors = [], []
    for result in result_grid:
        if result.error is not None:
            errors.append(f"trial {result.path}: {type(result.error).__name__}: {result.error}")
            continue
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id") or Path(result.path).name
        info_path = sweep_dir / "trials" / trial_id / "trial.json"
        if not info_path.is_file():
            errors.append(f"trial {trial_id}: no trial.json (it never started training)")
            continue
        info = json.loads(info_path.read_text())
        train = info["train"]
        trained = [int(m["step"]) for m in read_metrics(sweep_dir / "trials" / trial_id)]
        steps_asha = max(trained, default=0)
        reported_step = int(metrics.get("step", 0))
        objective = metrics.get("objective")
        full = objective if reported_step >= spec.steps else None
        rows.append(TrialRow(
            trial_id=trial_id, mix=from_dict(TrainConfig, train).trained_mix,
            threshold=info["params"].get(THRESHOLD_KEY),
            steps_asha=max(steps_asha, reported_step), objective_asha=objective,
            objective_full=full,
            losses={k.removeprefix("val/loss/"): v for k, v in metrics.items()
                    if isinstance(k, str) and k.startswith("val/loss/")},
            run_id=info["run_id"],
        ))  # fmt: skip
    return rows, errors


def switch_step_of(trial_dir: Path) -> int | None:
    """The step at which a CM-GEMS trial switched to Global (from its metrics), or None."""
    steps = [int(m["mask/switch_step"]) for m in read_metrics(trial_dir) if "mask/switch_step" in m]
    return min(steps) if steps else None


def _grid_check(config: AnnealConfig, sweep_dir: Path, rows: list[TrialRow], weights, limit: int):
    import ray

    stopped = [r for r in rows if r.objective_full is None]
    if not stopped:
        return
    logger.info(f"grid check: training the {len(stopped)} trial(s) ASHA stopped on to step "
          f"{config.steps}")  # fmt: skip
    task = ray.remote(num_cpus=0)(_continue_trial)
    pending: dict[Any, TrialRow] = {}
    queue = list(stopped)
    while queue or pending:
        while queue and len(pending) < limit:
            row = queue.pop(0)
            info = json.loads((sweep_dir / "trials" / row.trial_id / "trial.json").read_text())
            pending[task.remote(info, weights)] = row
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            row = pending.pop(ref)
            row.objective_full = ray.get(ref)["objective"]
            if row.run_id and config.tracking.enabled:
                from bsm_ray.tracking.runs import set_run_tags

                set_run_tags(config.tracking, row.run_id,
                             {"bsm_ray.asha_stopped_at_step": str(row.steps_asha),
                              "bsm_ray.grid_check": "continued to the last step"})  # fmt: skip


def losses_at(trial_dir: Path, step: int, sources) -> dict[str, float] | None:
    """Per-source validation losses of a trial at `step` (its last evaluation there, from its
    own metrics.jsonl: a resumed run may have logged a step twice); None if not measured."""
    for m in reversed(read_metrics(trial_dir)):
        if int(m.get("step", -1)) == step and all(f"val/loss/{s}" in m for s in sources):
            return {s: float(m[f"val/loss/{s}"]) for s in sources}
    return None


def mixing_law(config: AnnealConfig, spec: SweepSpec, sweep_dir: Path, rows: list[TrialRow],
                resume: bool) -> LawOutcome:  # fmt: skip
    """Fit the law on the trials that trained all `steps` (measured at that step), propose
    the mix it predicts best, and run the proposal as one confirmation trial."""
    from bsm_ray.tune.law import (
        fit_law,
        fraction_caps,
        loo_error,
        min_trials,
        propose,
        repetitions,
    )  # fmt: skip

    sources, steps = spec.sources, config.steps
    if _tune_threshold(config):
        return LawOutcome(skipped="not fitted: the sweep tunes the CM-GEMS switch threshold, "
                                  "and the law models the mix alone")  # fmt: skip
    if len(sources) < 2:
        return LawOutcome(skipped="not fitted: one source, no mix to model")
    # Equal steps: only trials that trained all `steps` (ASHA's survivors and, with the grid
    # check, the ones it stopped and that were trained on), each measured at `steps`.
    fitted = []
    for r in rows:
        losses = losses_at(sweep_dir / "trials" / r.trial_id, steps, spec.objective)
        if r.objective_full is not None and losses is not None:
            fitted.append((r, losses))
    need = min_trials(len(sources))
    if len(fitted) < need:
        return LawOutcome(skipped=(
            f"not fitted: {len(fitted)} of {len(rows)} trials trained all {steps} steps, and a "
            f"law over {len(sources)} sources needs {need} ({len(sources) + 1} coefficients per "
            f"source and one more); raise search.num_samples, or set grid_check: true to train "
            f"the trials ASHA stopped on to step {steps}"))  # fmt: skip
    mixes = [r.mix for r, _ in fitted]
    losses = [ls for _, ls in fitted]
    law = fit_law(mixes, losses, spec.objective)
    tokens = _train_tokens(config)
    held = {s: tokens.get(s, 0) for s in sources}
    trial_tokens = steps * config.train.global_batch_tokens
    cap = config.search.regression.max_repetitions
    if cap is None:  # no more repetition than the fitted trials saw, never below one pass
        seen = [repetitions(m, held, trial_tokens) for m in mixes]
        reps = {s: max(1.0, max(x[s] for x in seen)) for s in sources}
    else:
        reps = {s: max(1.0, float(cap)) for s in sources}
    caps = fraction_caps(held, trial_tokens, reps)
    best_sampled = min((r for r, _ in fitted), key=lambda r: r.objective_full)
    out = LawOutcome(fit_step=steps, fitted_trials=[r.trial_id for r, _ in fitted],
                     loo_rmse=loo_error(mixes, losses, spec.objective), law=law, caps=caps,
                     max_repetitions=reps, best_sampled=best_sampled)  # fmt: skip
    proposal = propose(law, config.search.weight_range, caps, starts=mixes)
    if proposal is None:
        out.skipped = (f"no mix with raw weights in search.weight_range "
                       f"{tuple(config.search.weight_range)} meets the repetition cap {caps}")
        return out
    out.proposal = proposal
    out.repetitions = repetitions(proposal.mix, held, trial_tokens)
    logger.info(f"mixing law: proposes {', '.join(f'{s} {v:.3f}' for s, v in proposal.mix.items())}"
                f", predicted objective {proposal.predicted:.4f}"
                + ("; running it as a confirmation trial" if config.search.regression.confirm
                   else ""))  # fmt: skip
    if config.search.regression.confirm:
        out.confirmation = _confirm(config, spec, sweep_dir, proposal, resume, rows)
    return out


def _confirm(config: AnnealConfig, spec: SweepSpec, sweep_dir: Path, proposal, resume: bool,
             rows: list[TrialRow]) -> TrialRow | None:  # fmt: skip
    """The proposal as one more trial through the same Tune trainable (same recipe, base,
    steps, evaluation rows and objective as the sampled trials), without early stopping."""
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    trainable = _trainable(config, spec)
    path = sweep_dir / LAW_TUNE_DIR
    stops = {r.trial_id: r.steps_asha for r in rows if r.steps_asha < spec.steps}
    if resume and tune.Tuner.can_restore(str(path)):
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)  # fmt: skip
    else:
        shutil.rmtree(path, ignore_errors=True)
        tuner = tune.Tuner(
            trainable,
            # LAW_PARAM marks the trial in its trial.json (the dashboard reads it)
            param_space={**{param_key(s): w for s, w in proposal.raw.items()}, LAW_PARAM: True},
            tune_config=tune.TuneConfig(metric="objective", mode="min", num_samples=1,
                                        scheduler=FIFOScheduler()),
            run_config=tune.RunConfig(name=LAW_TUNE_DIR, storage_path=str(sweep_dir),
                                      failure_config=tune.FailureConfig(max_failures=2),
                                      callbacks=[_dashboard_callback(config, spec, stops)]),
        )  # fmt: skip
    rows, errors = _rows(sweep_dir, spec, tuner.fit())
    for e in errors:
        logger.error(f"confirmation trial: {e}")
    if not rows:
        return None
    row = rows[0]
    row.proposed = True
    if row.run_id and config.tracking.enabled:
        from bsm_ray.tracking.runs import set_run_tags

        set_run_tags(config.tracking, row.run_id,
                     {"bsm_ray.law_proposal": "true",
                      "bsm_ray.law_predicted": f"{proposal.predicted:.6f}"})  # fmt: skip
    return row


def _plot(summary: SweepSummary, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(summary.rows[0].mix) == 1 and all(r.threshold is not None for r in summary.rows):
        return _plot_thresholds(summary, path, plt)
    sources = list(summary.rows[0].mix)
    fig, axes = plt.subplots(1, len(sources), figsize=(4 * len(sources), 3.4), sharey=True,
                             squeeze=False)  # fmt: skip
    for ax, source in zip(axes[0], sources, strict=True):
        for r in summary.rows:
            full = r.objective_full if r.objective_full is not None else None
            x = r.mix[source]
            if full is not None:
                ax.scatter(x, full, color="tab:blue", zorder=3)
            if r.objective_full is None or r.steps_asha < summary.steps:
                if r.objective_asha is not None:
                    ax.scatter(x, r.objective_asha, facecolors="none", edgecolors="tab:gray",
                               zorder=2)  # fmt: skip
        w = summary.winner
        ax.scatter(w.mix[source], w.objective_asha, marker="*", s=180, color="tab:red", zorder=4)
        ax.set_xlabel(f"token fraction of {source}")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"objective (val loss) at step {summary.steps}")
    fig.suptitle("annealing trials: filled = all steps, hollow = stopped by ASHA "
                 "(last value), star = winner", fontsize=9)  # fmt: skip
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def _plot_thresholds(summary: SweepSummary, path: Path, plt) -> None:
    """A threshold sweep: objective against the switch threshold (log x), switch step marked."""
    from matplotlib.ticker import NullFormatter

    fig, ax = plt.subplots(figsize=(6, 3.8))
    for i, r in enumerate(sorted(summary.rows, key=lambda r: r.threshold)):
        full = r.objective_full is not None
        y = r.objective_full if full else r.objective_asha
        if y is None:
            continue
        ax.scatter(r.threshold, y, zorder=3, **({"color": "tab:blue"} if full else
                   {"facecolors": "none", "edgecolors": "tab:gray"}))  # fmt: skip
        ax.annotate(f"switch {r.switch_label(summary.steps)}", (r.threshold, y), fontsize=7,
                    xytext=(4, 4 if i % 2 else -10), textcoords="offset points")  # fmt: skip
    w = summary.winner
    ax.scatter(w.threshold, w.objective_asha, marker="*", s=180, color="tab:red", zorder=4)
    ax.set_xscale("log")
    ticks = sorted({r.threshold for r in summary.rows})  # the trials' own thresholds
    ax.set_xticks(ticks, [f"{t:.3g}" for t in ticks], rotation=45, fontsize=7)
    ax.xaxis.set_minor_formatter(NullFormatter())  # decade labels collide on a short range
    ax.set_xlabel("CM-GEMS switch threshold")
    ax.set_ylabel(f"objective (val loss) at step {summary.steps}")
    ax.grid(alpha=0.3)
    ax.set_title("threshold trials: filled = all steps, hollow = stopped by ASHA, star = winner",
                 fontsize=8)  # fmt: skip
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def _write_winner(config: AnnealConfig, summary: SweepSummary, path: Path) -> None:
    if config.next_round:
        nxt = load_config(TrainConfig, config.next_round, [])
    else:
        nxt = from_dict(TrainConfig, to_dict(config.train))
    w = summary.best
    base = json.loads((Path(config.storage_path) / config.name / "sweep.json").read_text())["base"]
    nxt.data.mix = {s: round(v, 6) for s, v in w.mix.items()}
    if nxt.init_from is None:  # the next round continues from the weights the trials annealed
        nxt.init_from = base
    if w.threshold is not None:  # the threshold is in the units of the rule it was tuned with
        nxt.masking.switch_threshold = float(w.threshold)
        nxt.masking.switch_rule = config.train.masking.switch_rule
    header = (f"# Winner of annealing sweep '{config.name}': trial {w.trial_id}, objective "
              f"{w.objective_asha:.5f} at step {summary.steps}.\n"
              + ("# The fitted mixing law's proposal, measured by a confirmation trial: it beat "
                 f"every sampled mix (best {summary.law.best_sampled.objective_full:.5f}).\n"
                 if w.proposed else "")
              + (f"# CM-GEMS: {config.train.masking.switch_rule} switch threshold "
                 f"{w.threshold:.6g} (the trial switched at {w.switch_label(summary.steps)}).\n"
                 if w.threshold is not None else "")
              + f"# Mix (token fractions): {json.dumps(nxt.data.mix)}\n"
              f"# Use: python jobs/pretrain.py --round N --config {path}\n")  # fmt: skip
    atomic_write_text(path, header + dump_yaml(nxt))


def sweep_spec(config: AnnealConfig, sweep_dir: Path, base: Path, weights,
               parent_run_id) -> SweepSpec:  # fmt: skip
    start_lr = config.start_lr if config.start_lr is not None else config.train.schedule.start_lr
    return SweepSpec(sweep_dir=str(sweep_dir), train=config.train, sources=swept_sources(config),
                     steps=config.steps, eval_every=config.eval_every, base=str(base),
                     start_lr=start_lr, objective=dict(weights), tracking=config.tracking,
                     parent_run_id=parent_run_id)  # fmt: skip


def run_sweep(config: AnnealConfig, resume: bool = False, overwrite: bool = False) -> SweepOutcome:
    from bsm_ray.train.launcher import connect_ray, ensure_dataset

    config = from_dict(AnnealConfig, to_dict(config))
    config.storage_path = _abs(config.storage_path)
    ensure_dataset(config.train)
    config.train.data.dataset = _abs(config.train.data.dataset)
    if config.tracking.enabled:
        from bsm_ray.tracking.config import resolve_tracking_uri

        config.tracking.uri = resolve_tracking_uri(config.tracking.uri)
    sweep_dir = Path(config.storage_path) / config.name
    state_path = sweep_dir / "sweep.json"
    if state_path.is_file() and not resume:
        if not overwrite:
            raise ConfigError(
                f"sweep '{config.name}' exists at {sweep_dir}: --resume continues it, "
                f"--overwrite starts it again, --set name=<new> starts another"
            )
        for sub in (TUNE_DIR, LAW_TUNE_DIR, "trials"):
            shutil.rmtree(sweep_dir / sub, ignore_errors=True)
        state_path.unlink()
    if resume and not state_path.is_file():
        raise ConfigError(f"--resume: no sweep '{config.name}' at {sweep_dir} to resume")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    weights = objective_weights(config, _val_sources(config))
    fixed_points(config, _tune_threshold(config))  # config errors before any training
    sources = swept_sources(config)
    unknown = sorted(set(sources) - _train_sources(config))
    if unknown:
        raise ConfigError(f"mix source(s) {unknown} have no training rows in "
                          f"{config.train.data.dataset}")  # fmt: skip
    connect_ray(log_to_driver=config.worker_logs)
    if resume:
        state = json.loads(state_path.read_text())
        base, parent_run_id = Path(state["base"]), state["parent_run_id"]
    else:
        base = resolve_base(config, sweep_dir)
        parent_run_id = None
        if config.tracking.enabled:
            from bsm_ray.tracking.runs import create_run, describe_run

            parent_run_id = create_run(config.tracking, config.name, params=to_dict(config),
                                       tags={"bsm_ray.sweep_dir": str(sweep_dir),
                                             "bsm_ray.base": str(base)})  # fmt: skip
            logger.info(f"sweep parent: {describe_run(config.tracking, parent_run_id)}")
        atomic_write_text(state_path, json.dumps({"base": str(base),
                                                  "parent_run_id": parent_run_id,
                                                  "config": to_dict(config)}, indent=2))
    spec = sweep_spec(config, sweep_dir, base, weights, parent_run_id)
    try:
        return _sweep(config, spec, sweep_dir, resume, weights, parent_run_id)
    except BaseException:
        if parent_run_id:
            from bsm_ray.tracking.runs import end_run

            end_run(config.tracking, parent_run_id, "FAILED")
        raise


def _sweep(config, spec, sweep_dir, resume, weights, parent_run_id) -> SweepOutcome:
    tuner = _tuner(config, spec, sweep_dir, resume)
    logger.info(f"live dashboard: {sweep_dir / DASHBOARD} (rewritten as trials report)")
    t0 = time.perf_counter()
    result_grid = tuner.fit()
    rows, errors = _rows(sweep_dir, spec, result_grid)
    for e in errors:
        logger.error(f"error: {e}")
    if not rows:
        raise BsmRayError(f"every trial failed ({len(errors)}); see above")
    if config.grid_check:
        import ray

        _grid_check(config, sweep_dir, rows, weights, trial_concurrency(
            config, ray.cluster_resources()))
    summary = summarize(rows, config.steps)
    if config.search.regression.enabled:
        summary.law = mixing_law(config, spec, sweep_dir, rows, resume)
    elapsed = time.perf_counter() - t0
    return _finish(config, summary, sweep_dir, parent_run_id, errors, elapsed, weights)


def _train_sources(config: AnnealConfig) -> set[str]:
    from bsm_ray.ingest.shards import read_manifest

    totals = read_manifest(config.train.data.dataset)["totals"]
    return {k for k, s in totals.items() if s.get("train", {}).get("rows", 0) > 0}


def _train_tokens(config: AnnealConfig) -> dict[str, int]:
    """Training tokens each source holds (the manifest's totals)."""
    from bsm_ray.ingest.shards import read_manifest

    totals = read_manifest(config.train.data.dataset)["totals"]
    return {k: int(s.get("train", {}).get("tokens", 0)) for k, s in totals.items()}


def _finish(config, summary, sweep_dir, parent_run_id, errors, elapsed,
            weights) -> SweepOutcome:  # fmt: skip
    if _tune_threshold(config):  # after the grid check, which may train stopped trials on
        for r in summary.rows:
            r.switch_step = switch_step_of(sweep_dir / "trials" / r.trial_id)
    table = format_table(summary)
    best_yaml = sweep_dir / "best_mix.yaml"
    plot = sweep_dir / "objective_vs_mix.png"
    _write_winner(config, summary, best_yaml)
    _plot(summary, plot)
    from bsm_ray.tune.dashboard import write_dashboard

    stops = {r.trial_id: r.steps_asha for r in summary.rows if r.steps_asha < summary.steps}
    dashboard = write_dashboard(sweep_dir / DASHBOARD, config.name, sweep_dir, weights,
                                summary.steps, stops, summary, running=False)  # fmt: skip
    saved = 1 - summary.asha_steps / summary.grid_steps
    lines = [table, "",
             f"ASHA trained {summary.asha_steps} steps; the full grid is "
             f"{len(summary.rows)} trials x {summary.steps} steps = {summary.grid_steps} "
             f"({saved:.0%} saved)."]  # fmt: skip
    if summary.grid_winner is not None:
        lines.append(f"Full-grid winner: trial {summary.grid_winner.trial_id} "
                     f"(objective {summary.grid_winner.objective_full:.4f}); "
                     f"{'the same as' if summary.same_winner else 'NOT the same as'} "
                     f"ASHA's winner.")  # fmt: skip
    undecided = summary.undecided()
    if undecided:
        lines.append(f"WARNING: the sweep chose nothing: {undecided}.")
    if summary.law is not None:
        lines += summary.law.lines()
    report = "\n".join(lines)
    record = {
        "name": config.name, "steps": summary.steps, "elapsed_s": elapsed,
        "winner": summary.winner.as_dict(),
        "grid_winner": summary.grid_winner.as_dict() if summary.grid_winner else None,
        "same_winner": summary.same_winner, "asha_steps": summary.asha_steps,
        "grid_steps": summary.grid_steps, "errors": errors, "undecided": undecided,
        "switch_rule": config.train.masking.switch_rule if _tune_threshold(config) else None,
        "trials": [r.as_dict() for r in ranked(summary.rows, summary.steps)],
        "best": summary.best.as_dict(),
        "law": summary.law.as_dict() if summary.law is not None else None,
    }  # fmt: skip
    atomic_write_text(sweep_dir / "summary.json", json.dumps(record, indent=2))
    atomic_write_text(sweep_dir / "summary.txt", report + "\n")
    if parent_run_id:
        from bsm_ray.tracking.runs import end_run, finish_parent, set_run_tags

        law = summary.law
        for r in summary.rows + ([law.confirmation] if law and law.confirmation else []):
            if r.run_id is None:
                continue
            if r.steps_asha < summary.steps:
                set_run_tags(config.tracking, r.run_id,
                             {"bsm_ray.asha_stopped_at_step": str(r.steps_asha)})
            if r.threshold is not None:  # "never" too (the loop tags a switch when it happens)
                set_run_tags(config.tracking, r.run_id,
                             {"bsm_ray.switch_step": r.switch_label(summary.steps)})
            end_run(config.tracking, r.run_id,
                    "FINISHED" if r.objective_full is not None else "KILLED")

        finish_parent(config.tracking, parent_run_id, record,
                      [sweep_dir / "summary.json", sweep_dir / "summary.txt", best_yaml, plot,
                       dashboard])  # fmt: skip
    return SweepOutcome(summary, sweep_dir, best_yaml, plot, parent_run_id, report, dashboard)
