"""Plasma-accelerator simulation datasets and surrogate models.

Light on import: the submodules (and Wake-T, FBPIC, torch behind them) load on first access.

``accelrl.surrogates.spec``
    :class:`~accelrl.surrogates.spec.DatasetSpec`, the YAML dataset specification.
``accelrl.surrogates.dataset``
    :func:`~accelrl.surrogates.dataset.load_dataset` and the on-disk table format.
``accelrl.surrogates.simulators``
    Wake-T and FBPIC adapters behind one :class:`~accelrl.surrogates.simulators.Simulator`
    protocol; :func:`~accelrl.surrogates.simulators.make_simulator`.
``accelrl.surrogates.generate``
    Sobol design, parallel and resumable dataset generation.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["load_dataset", "DatasetSpec", "Dataset", "make_simulator"]

_LAZY = {
    "load_dataset": "accelrl.surrogates.dataset",
    "Dataset": "accelrl.surrogates.dataset",
    "DatasetSpec": "accelrl.surrogates.spec",
    "make_simulator": "accelrl.surrogates.simulators",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'accelrl.surrogates' has no attribute {name!r}")
