"""Evaluate one model: perplexity per modality, few-shot Central Dogma, mutation fitness,
fine-tuning heads; print the tables and log them to MLflow.

    python jobs/evaluate.py --config jobs/configs/evaluate_bsm.yaml --set model=runs/<run>
    python jobs/evaluate.py --config jobs/configs/evaluate_bsm.yaml \
        --set model=models:/bsm-causal@champion

The model is a model directory, a run folder or checkpoint (its newest final_model/), or a
registry URI. See bsm_ray/eval/suite.py (EvaluateConfig) for every setting.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from bsm_ray.cli import run_job  # noqa: E402
from bsm_ray.eval.suite import EvaluateConfig  # noqa: E402


def main(config: EvaluateConfig) -> None:
    from bsm_ray.eval.suite import run_suite

    report = run_suite(config)
    print(f"model {config.model} ({report['model_dir']})")
    for task, table in report["tables"].items():
        print(f"\n== {task} ==\n{table}")
    print(f"\n-> {report['output_dir']}")
    if report.get("run_id"):
        from bsm_ray.tracking.runs import describe_run

        print(describe_run(config.tracking, report["run_id"]))


if __name__ == "__main__":
    sys.exit(run_job(main, EvaluateConfig, __doc__.splitlines()[0]))
