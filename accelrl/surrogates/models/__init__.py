"""Surrogate models of simulation datasets: deep ensembles with uncertainty, validity
classifier, training, validation report and ONNX export.

>>> from accelrl.surrogates.models import load_surrogate
>>> model = load_surrogate("lpa_beamloading")  # doctest: +SKIP
>>> model.predict({"plasma_density": 2e23, ...})["mean"]  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "Architecture",
    "EnsembleMLP",
    "InputInfo",
    "OutputInfo",
    "Split",
    "Surrogate",
    "SurrogateError",
    "SurrogateOutput",
    "TrainConfig",
    "TrainResult",
    "Z95",
    "evaluate",
    "export_onnx",
    "load_surrogate",
    "onnx_parity",
    "resolve_model_dir",
    "save_surrogate",
    "train_surrogate",
    "write_report",
]

# Names load on first use: the environments need the ensemble and its loader, not the
# training stack (pandas, tqdm).
_LAZY = {
    "Z95": "accelrl.surrogates.models.ensemble",
    "Architecture": "accelrl.surrogates.models.ensemble",
    "EnsembleMLP": "accelrl.surrogates.models.ensemble",
    "InputInfo": "accelrl.surrogates.models.ensemble",
    "OutputInfo": "accelrl.surrogates.models.ensemble",
    "Surrogate": "accelrl.surrogates.models.ensemble",
    "SurrogateError": "accelrl.surrogates.models.ensemble",
    "SurrogateOutput": "accelrl.surrogates.models.ensemble",
    "export_onnx": "accelrl.surrogates.models.io",
    "load_surrogate": "accelrl.surrogates.models.io",
    "onnx_parity": "accelrl.surrogates.models.io",
    "resolve_model_dir": "accelrl.surrogates.models.io",
    "save_surrogate": "accelrl.surrogates.models.io",
    "evaluate": "accelrl.surrogates.models.report",
    "write_report": "accelrl.surrogates.models.report",
    "Split": "accelrl.surrogates.models.train",
    "TrainConfig": "accelrl.surrogates.models.train",
    "TrainResult": "accelrl.surrogates.models.train",
    "train_surrogate": "accelrl.surrogates.models.train",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'accelrl.surrogates.models' has no attribute {name!r}")
