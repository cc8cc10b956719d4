"""Deterministic, resumable mixture plans over sources of fixed-length token windows.

A mix is a set of ratios in *tokens*, e.g. {"single": 10, "refseq": 2, "gene": 1}. Every source
is packed into full windows of the same length before mixing, so a row is a fixed number of
tokens and a plan over rows realises token ratios (ARCHITECTURE.md, "Ratios are in tokens").

Which source the global row t comes from is decided by smooth weighted round robin: each source
earns its weight in credit per row, and the source with the most credit (ties: the first in
the mix) takes the row and pays the total weight. For every prefix of rows, each source's count
is within one row of its exact share. Within a source, rows are drawn through seeded per-epoch
permutations; a source that runs out starts a new epoch (upsampling, as in BSM round 3) and the
epoch number is its repeat count.

The whole position is `MixState` (rows drawn in total and per source): a restart loads it and
continues with the next row, with nothing re-read or skipped.

Pure module: numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bsm_ray.ingest.builders import stable_hash


@dataclass
class MixState:
    """Position of a plan: rows drawn so far, in total and per source."""

    rows_drawn: int = 0
    per_source: dict[str, int] = field(default_factory=dict)
    credit: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"rows_drawn": self.rows_drawn, "per_source": dict(self.per_source),
                "credit": dict(self.credit)}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict) -> MixState:
        return cls(int(data["rows_drawn"]), {k: int(v) for k, v in data["per_source"].items()},
                   {k: float(v) for k, v in data["credit"].items()})  # fmt: skip


class MixturePlan:
    """Rows of several sources in a fixed, seeded order that realises the given ratios."""

    def __init__(self, weights: dict[str, float], num_rows: dict[str, int], seed: int = 0):
        if not weights:
            raise ValueError("a mix needs at least one source")
        unknown = sorted(set(weights) - set(num_rows))
        if unknown:
            raise ValueError(f"mix names unknown source(s) {unknown}; known: {sorted(num_rows)}")
        if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError(f"mix weights must be >= 0 with a positive sum, got {weights}")
        self.weights = {s: float(w) for s, w in weights.items() if w > 0}
        empty = [s for s in self.weights if num_rows[s] == 0]
        if empty:
            raise ValueError(f"mix source(s) {empty} have no rows")
        self.num_rows = {s: int(num_rows[s]) for s in self.weights}
        self.total_weight = sum(self.weights.values())
        self.seed = seed
        self.state = MixState(0, {s: 0 for s in self.weights}, {s: 0.0 for s in self.weights})
        self._perm_cache: dict[tuple[str, int], np.ndarray] = {}

    @property
    def target_fractions(self) -> dict[str, float]:
        return {s: w / self.total_weight for s, w in self.weights.items()}

    def _row_of(self, source: str, j: int) -> int:
        """The j-th row drawn from `source`: epoch j // n, seeded permutation of that epoch."""
        n = self.num_rows[source]
        epoch, pos = divmod(j, n)
        key = (source, epoch)
        perm = self._perm_cache.get(key)
        if perm is None:
            perm = np.random.default_rng([self.seed, stable_hash(source), epoch]).permutation(n)
            self._perm_cache = {k: v for k, v in self._perm_cache.items() if k[0] != source}
            self._perm_cache[key] = perm
        return int(perm[pos])

    def take_sources(self, count: int) -> list[str]:
        """The sources of the next `count` rows (streaming: each source's own stream supplies
        the rows); advances the state."""
        st = self.state
        out = []
        for _ in range(count):
            for s, w in self.weights.items():
                st.credit[s] += w
            source = max(self.weights, key=lambda s: st.credit[s])  # first wins ties
            st.credit[source] -= self.total_weight
            out.append(source)
            st.per_source[source] += 1
            st.rows_drawn += 1
        return out

    def take(self, count: int) -> list[tuple[str, int]]:
        """The next `count` rows as (source, row index); advances the state."""
        drawn = dict(self.state.per_source)
        out = []
        for source in self.take_sources(count):
            out.append((source, self._row_of(source, drawn[source])))
            drawn[source] += 1
        return out

    def repeats(self) -> dict[str, int]:
        """How many times each source has been started again (epochs completed)."""
        return {s: self.state.per_source[s] // self.num_rows[s] for s in self.weights}
