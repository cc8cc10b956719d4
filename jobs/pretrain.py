"""Pretrain a BSM causal LM for one round (Ray Train + DeepSpeed).

    python jobs/pretrain.py --round 1            # paper preset: jobs/configs/bsm_round1.yaml
    python jobs/pretrain.py --round 2            # starts from round 1's final model
    python jobs/pretrain.py --round 1 --config jobs/configs/bsm_smoke.yaml   # a minute on CPU
    python jobs/pretrain.py --round 1 --set num_workers=0 --set max_steps=5

The run is named `<name>-round<N>`; round N > 1 starts from `<name>-round<N-1>`'s final model
unless `init_from` is set. See bsm_ray/train/config.py (TrainConfig) for every setting.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from bsm_ray.cli import build_parser, durable_outputs  # noqa: E402
from bsm_ray.config import load_config  # noqa: E402
from bsm_ray.errors import BsmRayError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(__doc__.splitlines()[0])
    parser.add_argument("--round", type=int, required=True, choices=(1, 2, 3))
    args = parser.parse_args(argv)
    from bsm_ray.train.config import TrainConfig
    from bsm_ray.train.rounds import final_model_of, round_config_path

    try:
        config = load_config(TrainConfig, args.config or round_config_path(args.round),
                             args.overrides)  # fmt: skip
        if not args.print_config:
            durable_outputs(config)  # refuses a Ray job's temporary working dir as storage
        base = config.name
        config.name = f"{base}-round{args.round}"
        config.round = args.round
        if args.round > 1 and config.init_from is None:
            config.init_from = str(
                final_model_of(config.storage_path, f"{base}-round{args.round - 1}")
            )
        if args.print_config:
            from bsm_ray.config import dump_yaml

            print(dump_yaml(config), end="")
            return 0
        from bsm_ray.train.launcher import launch

        result = launch(config)
    except BsmRayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"run {config.name}: step {result.metrics.get('step')}, "
          f"val/loss {result.metrics.get('val/loss', float('nan')):.4f}")  # fmt: skip
    print(f"checkpoint: {result.checkpoint}")
    print(f"final model: {result.final_model}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
