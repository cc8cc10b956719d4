"""Prepare Parquet shards + manifest from FASTA / GenBank / text inputs.

    python jobs/prepare_data.py                       # the embedded sample corpus -> data/sample
    python jobs/prepare_data.py --config jobs/configs/prepare_example.yaml
    python jobs/prepare_data.py --set on_invalid=skip --set output_dir=data/mine
    python jobs/prepare_data.py --set parallel=ray --set num_workers=2   # units as Ray tasks
    ray job submit --working-dir . -- python jobs/prepare_data.py --set parallel=ray \
        --set output_dir=$PWD/data/mine                                  # on a running cluster

The same units of work run in this process or as Ray tasks (parallel: local | ray | auto, auto =
ray when RAY_ADDRESS names a cluster), giving the same dataset_sha256. A run that crashed is
resumed by the same command: finished units are not run again.

See `bsm_ray/ingest/prepare.py` (PrepareConfig) for every setting.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from bsm_ray.cli import run_job  # noqa: E402
from bsm_ray.ingest.prepare import PrepareConfig, prepare_dataset  # noqa: E402
from bsm_ray.outputs import join  # noqa: E402


def main(config: PrepareConfig) -> None:
    result = prepare_dataset(config)
    print(result.summary())
    print(f"manifest: {join(str(result.output_dir), 'manifest.json')}")


if __name__ == "__main__":
    sys.exit(run_job(main, PrepareConfig, __doc__.splitlines()[0]))
