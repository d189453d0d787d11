"""Module paths of the previous release, importable for one more release with a warning.

``import accelrl.agents.apg`` gives :mod:`accelrl.agents.training.apg` (the same module
object) and a :class:`DeprecationWarning` naming the new path. Installed by ``import
accelrl``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import ModuleType

#: Old module path -> where it lives now.
MOVED: dict[str, str] = {
    "accelrl.agents.protocol": "accelrl.protocol",
    "accelrl.deploy.bundle": "accelrl.bundle",
    "accelrl.agents.metrics": "accelrl.agents.evaluation.metrics",
    "accelrl.agents.report": "accelrl.agents.evaluation.report",
    "accelrl.agents.baselines": "accelrl.agents.tuners.baselines",
    "accelrl.agents.gradient": "accelrl.agents.tuners.gradient",
    "accelrl.agents.model_based": "accelrl.agents.tuners.model_based",
    "accelrl.agents.apg": "accelrl.agents.training.apg",
    "accelrl.agents.recipes": "accelrl.agents.training.recipes",
    "accelrl.agents.sb3_export": "accelrl.agents.export.sb3",
    "accelrl.agents.bo.safety": "accelrl.agents.bo.guard",
    "accelrl.deploy.export": "accelrl.agents.export.writer",
    "accelrl.deploy.onnx_graph": "accelrl.agents.export.onnx_graph",
    "accelrl.agents.evaluate_cli": "accelrl.cli.evaluate",
    "accelrl.agents.train_cli": "accelrl.cli.train",
    "accelrl.agents.tune_cli": "accelrl.cli.tune",
    "accelrl.deploy.cli": "accelrl.cli.deploy",
    "accelrl.deploy.virtual.cli": "accelrl.cli.serve_virtual",
    "accelrl.surrogates.cli": "accelrl.cli.surrogates",
    "accelrl.surrogates.train_cli": "accelrl.cli.surrogates",
}


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves an old path to the module at its new path."""

    def __init__(self) -> None:
        self._specs: dict[str, importlib.machinery.ModuleSpec | None] = {}

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = MOVED[spec.name]
        warnings.warn(
            f"{spec.name} moved to {new}; the old path will be removed in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        module = importlib.import_module(new)
        self._specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the module is the one at the new path. The import system has just
        given it the old path's spec; its own is restored."""
        module.__spec__ = self._specs.pop(module.__spec__.name, module.__spec__)


def install() -> None:
    """Put the finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
