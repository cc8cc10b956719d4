"""Annealing sweep on Ray Tune: choose the data-mix ratios (and the CM-GEMS switch threshold).

    python jobs/anneal_mix.py                           # embedded default (anneal_sample.yaml)
    python jobs/anneal_mix.py --resume                  # continue an interrupted sweep
    python jobs/anneal_mix.py --config jobs/configs/anneal_round2.yaml   # the paper's round 2
    ray job submit --working-dir . -- python jobs/anneal_mix.py --set storage_path=/shared/runs

Every trial anneals the same base weights for `steps` steps (LR linearly to 0) on one mix and
reports per-source validation loss; ASHA stops weak trials. At the end: a ranked table, the
winning mix as a YAML for jobs/pretrain.py, a plot, and MLflow runs (a parent, one child per
trial). On a cluster (RAY_ADDRESS set, as under `ray job submit`) it connects to it; otherwise it
starts a local Ray instance. Under `ray job submit --working-dir`, results must go to durable
storage ($BSM_RAY_STORAGE_ROOT or an absolute storage_path; MLFLOW_TRACKING_URI), or the job
refuses to start (bsm_ray/storage.py). See bsm_ray/tune/config.py (AnnealConfig) for every
setting.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from bsm_ray.cli import run_job  # noqa: E402
from bsm_ray.tune.config import AnnealConfig  # noqa: E402

LAW_LABEL = ", the mixing law's proposal"
DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "anneal_sample.yaml"


def _args(parser) -> None:
    parser.add_argument("--resume", action="store_true",
                        help="continue the sweep of this name; finished trials are not re-run")
    parser.add_argument("--overwrite", action="store_true",
                        help="start the sweep of this name again (keeps its base model)")


def main(config: AnnealConfig, args) -> None:
    from bsm_ray.tune.sweep import run_sweep

    outcome = run_sweep(config, resume=args.resume, overwrite=args.overwrite)
    print(outcome.report, flush=True)
    w = outcome.summary.best
    print(f"winning mix: {', '.join(f'{s} {v:.3f}' for s, v in w.mix.items())}"
          + (f"; {config.train.masking.switch_rule} switch threshold {w.threshold:.4g} "
             f"(switched at {w.switch_label(outcome.summary.steps)})"
             if w.threshold is not None else "")
          + f" (trial {w.trial_id}{LAW_LABEL if w.proposed else ''}"
             f", objective {w.objective_asha:.4f})")  # fmt: skip
    print(f"next round config: {outcome.best_yaml}")
    print(f"plot: {outcome.plot}")
    print(f"dashboard: {outcome.dashboard}")
    if outcome.parent_run_id:
        from bsm_ray.tracking.runs import describe_run

        print(f"parent run: {describe_run(config.tracking, outcome.parent_run_id)}")


if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--config" not in argv and not any(a.startswith("--config=") for a in argv):
        argv = ["--config", str(DEFAULT_CONFIG), *argv]
    sys.exit(run_job(main, AnnealConfig, __doc__.splitlines()[0], argv, extra_args=_args))
