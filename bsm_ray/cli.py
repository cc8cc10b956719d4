"""Shared command-line plumbing for `jobs/*.py`: `--config`, `--set`, clean user errors.

A job calls `run_job(main, ConfigClass, description)`: the config is loaded strictly, its
output locations are made durable (`durable_outputs`), `main` runs, and a `BsmRayError` (bad
input, bad config) is printed as one line on stderr with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from bsm_ray.config import dump_yaml, load_config
from bsm_ray.errors import BsmRayError

OUTPUT_FIELDS = ("storage_path", "output_dir", "output")
"""Config fields that name where a job writes its results."""


def build_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help="YAML config file (defaults apply when omitted)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set seed=3 --set genome.val_fraction=0.2",
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config and exit"
    )
    return parser


def durable_outputs(config: Any) -> None:
    """Take the config's relative output locations (OUTPUT_FIELDS) under $BSM_RAY_STORAGE_ROOT
    when it is set, then refuse to start inside a Ray job's temporary working directory if
    they or the MLflow store would be written there (bsm_ray.storage)."""
    from bsm_ray.storage import require_durable, under_storage_root

    outputs = {}
    for name in OUTPUT_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, str):
            setattr(config, name, under_storage_root(value))
            outputs[name] = getattr(config, name)
    tracking = getattr(config, "tracking", None)
    uri = None
    if tracking is not None and tracking.enabled:
        from bsm_ray.tracking.config import resolve_tracking_uri

        uri = resolve_tracking_uri(tracking.uri)
    require_durable(outputs, uri)


def run_job(
    main: Callable[[Any], Any],
    config_cls: type,
    description: str,
    argv: list[str] | None = None,
    extra_args: Callable[[argparse.ArgumentParser], None] | None = None,
) -> int:
    parser = build_parser(description)
    if extra_args is not None:
        extra_args(parser)
    args = parser.parse_args(argv)
    try:
        config = load_config(config_cls, args.config, args.overrides)
        if args.print_config:
            print(dump_yaml(config), end="")
            return 0
        durable_outputs(config)
        main(config, args) if extra_args is not None else main(config)
    except BsmRayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
