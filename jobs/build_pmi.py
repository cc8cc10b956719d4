"""Count k-mers and write the NPMI table (kmer, count, pmi, npmi, rank) as Parquet.

    python jobs/build_pmi.py                                   # the sample's mammalian sequence
    python jobs/build_pmi.py --set sample=false --set 'fasta=[hg38/chr1.fa.gz, hg38/chr2.fa.gz]' \
        --set min_count=101 --set max_piece_len=2              # the authors' table definition
    python jobs/build_pmi.py --set 'datasets=[data/sample]'    # genome shards of a dataset

See `bsm_ray/data/pmi_build.py` (PmiConfig) for every setting.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from bsm_ray.cli import run_job  # noqa: E402
from bsm_ray.data.pmi_build import PmiConfig, build_pmi_table  # noqa: E402


def main(config: PmiConfig) -> None:
    print(build_pmi_table(config).summary())


if __name__ == "__main__":
    sys.exit(run_job(main, PmiConfig, __doc__.splitlines()[0]))
