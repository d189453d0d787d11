"""Everything that acts on an environment: optimisers, training, the evaluation protocol.

``accelrl.agents`` imports only the protocol; the rest loads on first access:
``evaluate``/``evaluate_many`` (:mod:`~accelrl.agents.evaluation`), ``make_optimiser``
(:mod:`~accelrl.agents.registry`), ``MLPPolicy``/``PolicyOptimiser``
(:mod:`~accelrl.agents.policy`), ``train_apg`` (:mod:`~accelrl.agents.training.apg`).
"""

from __future__ import annotations

import importlib
from typing import Any

from accelrl.protocol import BatchOptimiser, Observation, ObservationBatch, Optimiser, Problem

_LAZY = {
    "evaluate": "accelrl.agents.evaluation",
    "evaluate_many": "accelrl.agents.evaluation",
    "make_optimiser": "accelrl.agents.registry",
    "MLPPolicy": "accelrl.agents.policy",
    "PolicyOptimiser": "accelrl.agents.policy",
    "train_apg": "accelrl.agents.training.apg",
    "APGConfig": "accelrl.agents.training.apg",
}

__all__ = ["BatchOptimiser", "Observation", "ObservationBatch", "Optimiser", "Problem", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'accelrl.agents' has no attribute {name!r}")
