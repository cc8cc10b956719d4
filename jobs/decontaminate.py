"""Remove evaluation sequences from a prepared dataset (exact and k-mer overlap rules).

    python jobs/decontaminate.py --set dataset=data/sample --set output_dir=data/sample-clean \
        --set 'eval_sets={central_dogma: [runs/eval/central_dogma.parquet]}'
    python jobs/decontaminate.py --config jobs/configs/decontaminate_sample.yaml

Writes a new dataset (the input is never modified) whose manifest and decontamination.json
report the rows removed per evaluation set, rule, kind and split. With --set parallel=ray, one
Ray task per input shard (the same output). See
bsm_ray/ingest/decontaminate.py (DecontaminateConfig) for every setting.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from bsm_ray.cli import run_job  # noqa: E402
from bsm_ray.ingest.decontaminate import (  # noqa: E402
    DecontaminateConfig,
    decontaminate,
    format_report,
)


def main(config: DecontaminateConfig) -> None:
    print(format_report(decontaminate(config)))
    print(f"-> {config.output_dir}")


if __name__ == "__main__":
    sys.exit(run_job(main, DecontaminateConfig, __doc__.splitlines()[0]))
