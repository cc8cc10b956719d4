"""Build the few-shot Central Dogma task from GenBank records and write it as Parquet.

    python jobs/build_central_dogma.py                          # the sample's chloroplast record
    python jobs/build_central_dogma.py --set 'build.genbank=[my.gb]' --set output=cd.parquet

Rows: pair_id, split (train/val/test 4:3:25), label, corruption, dna, protein, record, cds.
See bsm_ray/eval/central_dogma.py (CentralDogmaConfig) for the task's rules.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from bsm_ray.cli import run_job  # noqa: E402
from bsm_ray.eval.central_dogma import CentralDogmaConfig  # noqa: E402


@dataclass
class BuildCentralDogmaConfig:
    build: CentralDogmaConfig = field(default_factory=CentralDogmaConfig)
    sample_record: str = "NC_000932"
    """A GenBank record of the sample corpus; used when build.genbank is empty."""
    output: str = "runs/eval/central_dogma_NC_000932.parquet"


def main(config: BuildCentralDogmaConfig) -> None:
    from bsm_ray.eval.central_dogma import build_task, sample_genbank, write_task

    if not config.build.genbank:
        config.build.genbank = sample_genbank(config.sample_record)
    rows, skipped = build_task(config.build)
    path = write_task(rows, config.output)
    counts = Counter((r["split"], r["label"]) for r in rows)
    print(f"{len(rows) // 2} pairs from {', '.join(config.build.genbank)}")
    for split in ("train", "val", "test"):
        print(f"  {split:5s} {counts[(split, 1)]:4d} true  {counts[(split, 0)]:4d} corrupted")
    print(f"  skipped CDS: {dict(skipped) or 'none'}")
    print(f"-> {path}")


if __name__ == "__main__":
    sys.exit(run_job(main, BuildCentralDogmaConfig, __doc__.splitlines()[0]))
