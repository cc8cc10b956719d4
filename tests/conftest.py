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


@pytest.fixture(scope="session")
def ray_instance():
    """One local Ray instance for the whole session (starting one costs ~15 s here).

    More logical CPUs than cores, as Ray's own tests do, so tasks never starve each other.
    """
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def pytest_collection_modifyitems(config, items):
    """Tests that start their own Ray cluster run last (they stop the in-process instance)."""
    items.sort(key=lambda item: item.get_closest_marker("cluster") is not None)
