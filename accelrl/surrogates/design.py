"""Design of experiments: the scrambled Sobol design of a dataset spec.

>>> from accelrl.surrogates.design import sobol_design
>>> design = sobol_design(spec)  # doctest: +SKIP
>>> design.columns.tolist()  # doctest: +SKIP
['sample', 'laser_energy', 'plasma_density', ...]
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy.stats import qmc

from accelrl.surrogates.spec import DatasetSpec


def unit_to_physical(u: np.ndarray, spec: DatasetSpec) -> np.ndarray:
    """Map points of the unit cube ``[n, d]`` to the input bounds (SI), linear or log.

    :param u: Points in ``[0, 1]^d``.
    """
    u = np.asarray(u, dtype=np.float64)
    out = np.empty_like(u)
    for j, inp in enumerate(spec.inputs):
        if inp.scale == "log":
            lo, hi = np.log(inp.low), np.log(inp.high)
            out[:, j] = np.exp(lo + u[:, j] * (hi - lo))
        else:
            out[:, j] = inp.low + u[:, j] * (inp.high - inp.low)
        out[:, j] = np.clip(out[:, j], inp.low, inp.high)
    return out


def physical_to_unit(x: np.ndarray, spec: DatasetSpec) -> np.ndarray:
    """Inverse of :func:`unit_to_physical`: inputs (SI) ``[n, d]`` to the unit cube."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    for j, inp in enumerate(spec.inputs):
        if inp.scale == "log":
            lo, hi = np.log(inp.low), np.log(inp.high)
            out[:, j] = (np.log(x[:, j]) - lo) / (hi - lo)
        else:
            out[:, j] = (x[:, j] - inp.low) / (inp.high - inp.low)
    return out


def sobol_design(spec: DatasetSpec) -> pd.DataFrame:
    """The design of ``spec``: ``sample`` (int64, 0..n-1) and one float64 column per input.

    A scrambled Sobol sequence (:class:`scipy.stats.qmc.Sobol`) seeded with
    ``spec.design.seed``: the same spec always gives the same design. Any prefix of the
    samples is itself a low-discrepancy set (``--limit`` runs a prefix).
    """
    d = len(spec.inputs)
    n = spec.design.n_samples
    sampler = qmc.Sobol(d=d, scramble=True, seed=spec.design.seed)
    with warnings.catch_warnings():
        # a sample count that is no power of two loses the balance property; still valid
        warnings.simplefilter("ignore", UserWarning)
        u = sampler.random(n)
    x = unit_to_physical(u, spec)
    frame = pd.DataFrame(x, columns=spec.input_names)
    frame.insert(0, "sample", np.arange(n, dtype=np.int64))
    return frame
