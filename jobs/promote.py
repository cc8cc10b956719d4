"""Promote a registered model version to `champion` when it passes the evaluation gates.

    python jobs/promote.py --config jobs/configs/promote_bsm.yaml              # latest vs champion
    python jobs/promote.py --config jobs/configs/promote_bsm.yaml --dry-run    # table only
    python jobs/promote.py --set model_name=dnabert --set candidate=7

Both versions are downloaded from the registry and scored on the same held-out data; the
decision table says, metric by metric, why the alias moves or stays. See
bsm_ray/tracking/promotion.py (PromoteConfig) for every setting.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from bsm_ray.cli import run_job  # noqa: E402
from bsm_ray.eval.promotion import PromoteConfig  # noqa: E402


def main(config: PromoteConfig, args) -> None:
    from bsm_ray.eval.promotion import promote

    if args.dry_run:
        config.dry_run = True
    promote(config)


def _args(parser) -> None:
    parser.add_argument("--dry-run", action="store_true",
                        help="evaluate and print the decision table; change nothing")


if __name__ == "__main__":
    sys.exit(run_job(main, PromoteConfig, __doc__.splitlines()[0], extra_args=_args))
