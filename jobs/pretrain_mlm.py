"""Pretrain a DNABERT-6 or LOGO masked LM on genome pieces (Ray Train + DeepSpeed).

    python jobs/pretrain_mlm.py --config jobs/configs/dnabert6_genemask.yaml
    python jobs/pretrain_mlm.py --config jobs/configs/logo_cm_gems.yaml
    python jobs/pretrain_mlm.py --config jobs/configs/mlm_smoke.yaml          # a minute on CPU
    python jobs/pretrain_mlm.py --config jobs/configs/mlm_smoke.yaml --set masking.strategy=global

Masking: dnabert (random spans), genemask, global, cm_step, cm_gems (bsm_ray/data/masking.py,
curriculum.py). See bsm_ray/train/config.py (TrainConfig) for every setting.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from bsm_ray.cli import run_job  # noqa: E402
from bsm_ray.errors import ConfigError  # noqa: E402
from bsm_ray.train.config import TrainConfig  # noqa: E402


def main(config: TrainConfig) -> None:
    from bsm_ray.train.launcher import launch

    if config.objective != "mlm":
        raise ConfigError("pretrain_mlm.py needs objective: mlm (use pretrain.py for BSM)")
    result = launch(config)
    print(f"run {config.name}: step {result.metrics.get('step')}, "
          f"val/loss {result.metrics.get('val/loss', float('nan')):.4f}, "
          f"masking {config.masking.strategy}")  # fmt: skip
    print(f"checkpoint: {result.checkpoint}")
    print(f"final model: {result.final_model}")


if __name__ == "__main__":
    sys.exit(run_job(main, TrainConfig, __doc__.splitlines()[0]))
