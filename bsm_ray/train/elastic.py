"""Elastic runs: Ray Train's elastic policy, held to the world sizes the run can take.

`num_workers: [min, max]` selects Ray Train's `ElasticScalingPolicy` (Ray 2.60): it asks for
`max` workers, starts once `min` fit, restarts the group from the latest checkpoint after a
failure with as many workers as the cluster's nodes hold, and resizes when they change. It picks
any count in [min, max]; a run whose global batch is fixed cannot take every count (16 rows per
step do not split over 3 workers). `SizedElasticPolicy` rounds the count it would pick down to the
largest size the run can take (`TrainConfig.world_sizes()`), so a cluster that has room for 3
workers of a [1, 4] run of 16 rows runs 2, and grows to 4 when a fourth fits.

`ElasticTorchTrainer` is a `TorchTrainer` that hands that policy to its controller. The hook it
overrides (`_initialize_and_run_controller`, the one place Ray 2.60 passes the policy in) is not
public API: tests/test_elastic.py holds the policy to its contract, and the two-node test to a
real resize.

Imports ray (a launcher edge: only an elastic launch imports this module).
"""

from __future__ import annotations

from ray.train.torch import TorchTrainer
from ray.train.v2._internal.execution.scaling_policy import ElasticScalingPolicy


class SizedElasticPolicy(ElasticScalingPolicy):
    """Ray Train's elastic policy, choosing only among `sizes` (ascending)."""

    def __init__(self, scaling_config, sizes: list[int]) -> None:
        super().__init__(scaling_config)
        self.sizes = sorted(sizes)

    def _count_possible_workers(self, reserved_resources) -> int:
        fits = super()._count_possible_workers(reserved_resources)
        return round_down(fits, self.sizes)


def round_down(count: int, sizes: list[int]) -> int:
    """The largest of `sizes` not above `count` (0 when none is: the policy then waits)."""
    return max((s for s in sizes if s <= count), default=0)


class ElasticTorchTrainer(TorchTrainer):
    """A TorchTrainer whose elastic runs use `SizedElasticPolicy` over `sizes`."""

    def __init__(self, *args, sizes: list[int], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._sizes = list(sizes)

    def _initialize_and_run_controller(self, **kwargs):
        if self.scaling_config.elasticity_enabled:
            kwargs["scaling_policy"] = SizedElasticPolicy(self.scaling_config, self._sizes)
        return super()._initialize_and_run_controller(**kwargs)
