"""The constants of the masking rules, shared by `masking` (numpy streams, reference rules)
and `masking_kernel` (the compiled pass), so neither imports the other for them.

Probabilities are the papers' (REFERENCE.md §5): DNABERT centres at 0.025 with 6-spans,
GeneMask and Global centres with 11-spans. The hash constants define the counter-based random
streams: changing one changes every mask ever drawn.

Pure module: numpy only.
"""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = -100
DNABERT_P = 0.025
GENEMASK_P = 0.0176
GLOBAL_P = 0.0136
GENEMASK_ALL_BELOW = 8  # with this many centres or fewer, every centre gets its 11-span
STRATEGIES = ("dnabert", "genemask", "global")
KERNEL_MODES = {"dnabert": 0, "genemask": 1, "global": 2}  # the kernel's `mode` argument

# splitmix64's multipliers and the golden-ratio increment of the counter-based streams
MIX_M1 = np.uint64(0xBF58476D1CE4E5B9)
MIX_M2 = np.uint64(0x94D049BB133111EB)
GOLDEN = np.uint64(0x9E3779B97F4A7C15)

# Random streams (one per use of randomness, so they never alias).
STREAM_CENTRE, STREAM_REPLACE, STREAM_RANDOM_ID, STREAM_GLOBAL_K = 1, 2, 3, 4
