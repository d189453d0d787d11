"""The counter-based random streams of :mod:`accelrl.envs.rng`, on a torch device.

The same splitmix64 construction on ``int64`` tensors (multiplication and addition wrap
modulo 2^64 as on ``uint64``; right shifts are made logical with a mask), so a device
environment draws bit for bit the numbers of the numpy core, with no host round trip.

>>> import numpy as np, torch
>>> from accelrl.envs import rng
>>> keys = np.array([rng.key_from_seed(0)], dtype=np.uint64)
>>> a = uniform(torch.tensor(keys.astype(np.int64)), torch.zeros(1, dtype=torch.int64), 3)
>>> bool((a.numpy() == rng.uniform(keys, np.zeros(1, dtype=np.uint64), 3)).all())
True
"""

from __future__ import annotations

import math

import torch

from accelrl.envs.rng import STRIDE


def _signed(value: int) -> int:
    """The ``int64`` with the bits of the unsigned 64-bit ``value``."""
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_M1 = _signed(0xBF58476D1CE4E5B9)
_M2 = _signed(0x94D049BB133111EB)


def _shr(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of ``int64`` bits."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def _splitmix64(z: torch.Tensor) -> torch.Tensor:
    z = z + _GOLDEN
    z = (z ^ _shr(z, 30)) * _M1
    z = (z ^ _shr(z, 27)) * _M2
    return z ^ _shr(z, 31)


def uniform(keys: torch.Tensor, counters: torch.Tensor, n: int) -> torch.Tensor:
    """``[B, n]`` float64 uniforms in ``[0, 1)``: :func:`accelrl.envs.rng.uniform` on ``int64``
    keys and counters (on their device)."""
    if not 0 < n <= STRIDE:
        raise ValueError(f"n must be in 1..{STRIDE}, got {n}")
    idx = counters[:, None] * STRIDE + torch.arange(n, device=keys.device, dtype=torch.int64)
    z = _splitmix64(keys[:, None] ^ _splitmix64(idx))
    return _shr(z, 11).to(torch.float64) * (1.0 / 9007199254740992.0)


def normal(keys: torch.Tensor, counters: torch.Tensor, n: int) -> torch.Tensor:
    """``[B, n]`` standard normals (Box-Muller, as :func:`accelrl.envs.rng.normal`)."""
    u = uniform(keys, counters, 2 * n)
    u1, u2 = 1.0 - u[:, :n], u[:, n:]
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)
