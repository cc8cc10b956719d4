"""Shared fixtures.

`bio_tests` is the Tests/ folder of Biopython's source distribution (real NCBI records and
deliberately malformed files), fetched once through the package registry and cached.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def bio_tests() -> Path:
    from bsm_ray.data.samples import biopython_tests_dir

    return biopython_tests_dir()


@pytest.fixture(scope="session")
def genbank_dir(bio_tests: Path) -> Path:
    return bio_tests / "GenBank"
