"""Numeric backends for generated beamline maps.

A generated map (see :mod:`accelrl.physics.symbolic`) uses ``+ - * /`` on its operands and
calls a handful of primitives on a backend object ``F``. Three backends are provided and give
the same numbers up to floating-point rounding:

* :data:`TORCH`: torch tensors of shape ``[B]``, batched, differentiable (autograd-safe at
  the removable singularities, so gradients are finite for ``k1 = 0``);
* :data:`NUMPY`: numpy arrays of shape ``[B]``;
* :data:`SCALAR`: Python floats, for one beamline at the lowest latency.

The focusing functions of a plane with focusing strength ``kappa`` [1/m^2] over a length
``L`` [m] are ``C = cos(sqrt(kappa) L)``, ``S = sin(sqrt(kappa) L) / sqrt(kappa)`` (cosh,
sinh for ``kappa < 0``), ``D = (1 - C) / kappa`` and ``F = (L - S) / kappa``; near
``kappa L^2 = 0`` they are evaluated from their Taylor series (see :data:`SMALL`, :data:`TINY`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

#: Below this |kappa L^2|, D and F (which cancel) come from their Taylor series to order 5
#: (truncation error < 1e-19 relative).
SMALL = 1e-2
#: Below this |kappa L^2|, C and S (which do not cancel) come from their first-order Taylor
#: series (truncation error < 1e-19); it only removes the 0/0 at kappa = 0.
TINY = 1e-9

# Taylor coefficients in x = kappa L^2 (lowest order first).
_D = (1 / 2, -1 / 24, 1 / 720, -1 / 40320, 1 / 3628800, -1 / 479001600)  # D / L^2
_F = (1 / 6, -1 / 120, 1 / 5040, -1 / 362880, 1 / 39916800, -1 / 6227020800)  # F / L^3


def _horner(x: Any, coefficients: tuple[float, ...]) -> Any:
    acc = coefficients[-1]
    for c in reversed(coefficients[:-1]):
        acc = acc * x + c
    return acc


class ScalarBackend:
    """Primitives on Python floats (one beamline, no autograd)."""

    sqrt = staticmethod(math.sqrt)
    cos = staticmethod(math.cos)
    sin = staticmethod(math.sin)
    tan = staticmethod(math.tan)

    @staticmethod
    def full_like(like: Any, value: float) -> float:
        return value

    @staticmethod
    def focus(kappa: float, length: float) -> tuple[float, float]:
        """``(C, S)`` of a plane with focusing ``kappa`` [1/m^2] over ``length`` [m]."""
        x = kappa * length * length
        if abs(x) < TINY:
            return 1.0 - 0.5 * x, length - length / 6 * x
        w = math.sqrt(abs(kappa))
        u = w * length
        if kappa > 0:
            return math.cos(u), math.sin(u) / w
        return math.cosh(u), math.sinh(u) / w

    @staticmethod
    def focus_pair(k1: float, length: float) -> tuple[float, float, float, float]:
        """``(Cx, Sx, Cy, Sy)`` of a quadrupole with ``k1`` [1/m^2] (kappa_x = k1 = -kappa_y):
        :meth:`focus` of ``k1`` and of ``-k1``, sharing ``sqrt(|k1|) L``."""
        x = k1 * length * length
        if abs(x) < TINY:
            return (
                1.0 - 0.5 * x,
                length - length / 6 * x,
                1.0 - 0.5 * -x,
                length - length / 6 * -x,
            )
        w = math.sqrt(abs(k1))
        u = w * length
        if k1 > 0:
            return math.cos(u), math.sin(u) / w, math.cosh(u), math.sinh(u) / w
        return math.cosh(u), math.sinh(u) / w, math.cos(u), math.sin(u) / w

    @classmethod
    def dispersion(cls, kappa: float, length: float) -> tuple[float, float]:
        """``(D, F)`` = ``((1 - C) / kappa, (L - S) / kappa)`` [m^2, m^3]."""
        x = kappa * length * length
        if abs(x) < SMALL:
            return length**2 * _horner(x, _D), length**3 * _horner(x, _F)
        c, s = cls.focus(kappa, length)
        return (1.0 - c) / kappa, (length - s) / kappa


class ArrayBackend:
    """Primitives on numpy arrays or torch tensors of shape ``[B]``.

    Both branches of every removable singularity are evaluated on safe inputs and selected
    with ``where``, so that torch gradients stay finite everywhere.

    With ``branch_free=True`` (the torch backend) nothing in a call depends on the values
    of its inputs: no host synchronisation (such as ``bool(tensor.any())``) breaks a
    ``torch.compile`` graph or a CUDA-graph capture. The numpy backend skips the Taylor
    branch when no entry needs it, which gives the same numbers faster.

    :param xp: The array namespace, ``numpy`` or ``torch``.
    :param branch_free: Never branch on values (select with ``where`` only).
    """

    def __init__(self, xp: Any, branch_free: bool = False) -> None:
        self.xp = xp
        self.branch_free = branch_free
        self.sqrt = xp.sqrt
        self.cos = xp.cos
        self.sin = xp.sin
        self.tan = xp.tan

    def full_like(self, like: Any, value: float) -> Any:
        return self.xp.full_like(like, value)

    def _arrays(self, *values: Any) -> list[Any]:
        """Arrays of one dtype: Python floats become arrays like the first array argument
        (torch would otherwise promote ``float + bool tensor`` to float32)."""
        like = next(v for v in values if not isinstance(v, float))
        return [self.xp.full_like(like, v) if isinstance(v, float) else v for v in values]

    def focus_pair(self, k1: Any, length: Any) -> tuple[Any, Any, Any, Any]:
        """``(Cx, Sx, Cy, Sy)`` with ``kappa_x = k1 = -kappa_y``."""
        xp = self.xp
        k1, length = self._arrays(k1, length)
        x = k1 * (length * length)
        tiny = xp.abs(x) < TINY
        w = xp.sqrt(xp.abs(xp.where(tiny, 1.0, k1)))  # a safe value where tiny: finite gradient
        u = w * length
        cos, sin, cosh, sinh = xp.cos(u), xp.sin(u), xp.cosh(u), xp.sinh(u)
        pos = k1 > 0
        cx, cy = xp.where(pos, cos, cosh), xp.where(pos, cosh, cos)
        sx, sy = xp.where(pos, sin, sinh) / w, xp.where(pos, sinh, sin) / w
        if self.branch_free or bool(tiny.any()):  # where() is a no-op where ~tiny
            half_x, sixth_x = 0.5 * x, (length / 6) * x
            cx = xp.where(tiny, 1.0 - half_x, cx)
            cy = xp.where(tiny, 1.0 + half_x, cy)
            sx = xp.where(tiny, length - sixth_x, sx)
            sy = xp.where(tiny, length + sixth_x, sy)
        return cx, sx, cy, sy

    def focus(self, kappa: Any, length: Any) -> tuple[Any, Any]:
        cx, sx, _, _ = self.focus_pair(kappa, length)
        return cx, sx

    def dispersion(self, kappa: Any, length: Any) -> tuple[Any, Any]:
        xp = self.xp
        kappa, length = self._arrays(kappa, length)
        x = kappa * (length * length)
        small = xp.abs(x) < SMALL
        safe = xp.where(small, 1.0, kappa)
        c, s = self.focus(safe, length)
        return (
            xp.where(small, length**2 * _horner(x, _D), (1.0 - c) / safe),
            xp.where(small, length**3 * _horner(x, _F), (length - s) / safe),
        )


class _NumpyTrig:
    """numpy's namespace with ``sin``/``cos`` taken from torch (zero-copy).

    NumPy 2 evaluates float64 ``sin``/``cos`` with scalar libm calls (its SIMD versions
    were withdrawn for accuracy), about 10x slower than torch's vectorised ones (SLEEF,
    <= 1 ulp) on x86-64; every other function is numpy's own.
    """

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)

    @staticmethod
    def sin(x: np.ndarray) -> np.ndarray:
        return torch.from_numpy(np.ascontiguousarray(x)).sin().numpy()

    @staticmethod
    def cos(x: np.ndarray) -> np.ndarray:
        return torch.from_numpy(np.ascontiguousarray(x)).cos().numpy()


SCALAR = ScalarBackend()
NUMPY = ArrayBackend(_NumpyTrig())
TORCH = ArrayBackend(torch, branch_free=True)
