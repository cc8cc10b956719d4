"""Every YAML config shipped in jobs/configs loads strictly into its config class."""

from __future__ import annotations

from pathlib import Path

import pytest

from bsm_ray.config import load_config
from bsm_ray.data.pmi_build import PmiConfig
from bsm_ray.eval.promotion import PromoteConfig
from bsm_ray.eval.suite import EvaluateConfig
from bsm_ray.ingest.prepare import PrepareConfig
from bsm_ray.train.config import TrainConfig
from bsm_ray.tune.config import AnnealConfig

CONFIG_DIR = Path(__file__).resolve().parents[1] / "jobs" / "configs"
# File name prefix -> config class of the job that reads it.
CLASSES = {
    "prepare": PrepareConfig,
    "pmi": PmiConfig,
    "bsm": TrainConfig,
    "dnabert6": TrainConfig,
    "logo": TrainConfig,
    "mlm": TrainConfig,
    "anneal": AnnealConfig,
    "promote": PromoteConfig,
    "evaluate": EvaluateConfig,
}


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_config_loads(path):
    prefix = path.name.split("_")[0]
    assert prefix in CLASSES, f"{path.name}: no config class registered for prefix {prefix!r}"
    config = load_config(CLASSES[prefix], path)
    if isinstance(config, TrainConfig):  # batch sizes must split over the configured workers
        low, high = config.worker_range
        sizes = config.check_world_sizes()  # an elastic range: its ends must both be taken
        assert sizes[0] == max(1, low) and sizes[-1] == max(1, high), (path.name, sizes)
    if isinstance(config, AnnealConfig):  # fixed points fit the space and the sample count
        from bsm_ray.tune.space import fixed_points

        config.train.check_world_sizes()
        fixed_points(config, config.train.masking.strategy == "cm_gems"
                     and config.search.switch_threshold is not None)


def test_at_least_one_config_shipped():
    assert list(CONFIG_DIR.glob("*.yaml"))


def test_prepare_example_shows_every_setting():
    """The README says jobs/configs/prepare_example.yaml shows every setting of the
    preparation job: every field of PrepareConfig and of its sections is in the file."""
    import yaml

    from bsm_ray.config import to_dict

    def keys(data: dict, prefix: str = "") -> set[str]:
        out = set()
        for key, value in data.items():
            out.add(prefix + key)
            if isinstance(value, dict):
                out |= keys(value, f"{prefix}{key}.")
        return out

    shown = keys(yaml.safe_load((CONFIG_DIR / "prepare_example.yaml").read_text()))
    assert keys(to_dict(PrepareConfig())) - shown == set()
