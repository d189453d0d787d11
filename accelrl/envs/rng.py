"""Counter-based random numbers: one stream per environment, vectorised over environments.

Every environment owns a 64-bit ``key`` (derived from its seed) and a ``counter``. Draw
``n`` of a call are ``splitmix64(key, counter * STRIDE + j)``, mapped to ``[0, 1)``; the
counter then advances by one. Because a draw depends only on (key, counter, j), a batch of
N environments draws exactly the numbers N separately seeded single environments would,
in one vectorised numpy operation.
"""

from __future__ import annotations

import numpy as np
from gymnasium.utils import seeding

#: Largest number of values one call may draw (the counter stride).
STRIDE = 1 << 12

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    z = z + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def key_from_seed(seed: int | None) -> int:
    """64-bit stream key of ``seed`` (``None``: fresh OS entropy), via Gymnasium's seeding."""
    rng, _ = seeding.np_random(seed)
    return int(rng.integers(0, 2**63 - 1, dtype=np.int64))


def uniform(keys: np.ndarray, counters: np.ndarray, n: int) -> np.ndarray:
    """``[B, n]`` uniforms in ``[0, 1)`` for streams ``keys[B]`` at ``counters[B]``."""
    if not 0 < n <= STRIDE:
        raise ValueError(f"n must be in 1..{STRIDE}, got {n}")
    with np.errstate(over="ignore"):
        idx = counters.astype(np.uint64)[:, None] * np.uint64(STRIDE) + np.arange(
            n, dtype=np.uint64
        )
        z = _splitmix64(keys.astype(np.uint64)[:, None] ^ _splitmix64(idx))
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def normal(keys: np.ndarray, counters: np.ndarray, n: int) -> np.ndarray:
    """``[B, n]`` standard normals (Box-Muller on ``2n`` uniforms)."""
    u = uniform(keys, counters, 2 * n)
    u1, u2 = 1.0 - u[:, :n], u[:, n:]  # u1 in (0, 1]
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
