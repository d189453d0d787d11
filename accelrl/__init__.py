"""accelrl: autonomous beam tuning — differentiable beamline environments, agents, deployment.

``import accelrl`` registers the Gymnasium ids; the subpackages load on first access.
"""

from __future__ import annotations

import importlib
from typing import Any

from accelrl import _moved
from accelrl.registration import register_all

__version__ = "0.1.0"
__all__ = ["envs", "physics", "__version__"]

register_all()
_moved.install()


def __getattr__(name: str) -> Any:
    if name in ("envs", "physics"):
        return importlib.import_module(f"accelrl.{name}")
    raise AttributeError(f"module 'accelrl' has no attribute {name!r}")
