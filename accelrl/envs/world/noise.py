"""Random numbers of the world models, drawn from the environments' counter-based streams.

Every draw of a world goes through :mod:`accelrl.envs.rng` (one stream per environment,
advanced by one counter step per call), so a batch draws exactly what separately seeded
single environments draw. A camera reading needs one standard normal per projection
pixel (``W + H``, ~1100 for the ARES screen at binning 4); drawing those with the
counter-based generator would cost more than the rest of the step. Instead each reading
draws two uniforms from its stream and reads ``n`` normals from a fixed table of
``2**21`` standard normals at a random offset with a random odd stride (the shared noise
table of Salimans et al., "Evolution strategies as a scalable alternative to reinforcement
learning", 2017). Two readings share a table entry with probability ``~n / 2**21`` per
entry: the noise of different readings is uncorrelated to ~5e-4.
"""

from __future__ import annotations

import functools

import numpy as np

#: log2 of the number of entries of the normal table.
TABLE_BITS = 21
#: Seed of the table (fixed: the table is part of the model, identical on every machine).
TABLE_SEED = 0x5EED_CA7


@functools.cache
def normal_table() -> np.ndarray:
    """The ``2**TABLE_BITS`` standard normals (float64, read-only)."""
    table = np.random.default_rng(TABLE_SEED).standard_normal(1 << TABLE_BITS)
    table.flags.writeable = False
    return table


def table_normals(u: np.ndarray, n: int) -> np.ndarray:
    """``[B, n]`` standard normals from the table, addressed by two uniforms per row.

    :param u: ``[B, 2]`` uniforms in ``[0, 1)``: offset and stride.
    :param n: Normals per row (at most ``2**TABLE_BITS``).
    """
    size = 1 << TABLE_BITS
    if not 0 < n <= size:
        raise ValueError(f"n must be in 1..{size}, got {n}")
    offset = (u[:, 0] * size).astype(np.int64)
    stride = 2 * (u[:, 1] * 1024.0).astype(np.int64) + 1  # odd: no repeats within a row
    idx = (offset[:, None] + stride[:, None] * np.arange(n, dtype=np.int64)) & (size - 1)
    return normal_table()[idx]


def box_muller(u: np.ndarray) -> np.ndarray:
    """``[B, k]`` standard normals from ``[B, 2k]`` uniforms in ``[0, 1)``."""
    k = u.shape[1] // 2
    u1, u2 = 1.0 - u[:, :k], u[:, k : 2 * k]  # u1 in (0, 1]
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
