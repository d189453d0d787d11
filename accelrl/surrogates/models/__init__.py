"""Surrogate models of simulation datasets: deep ensembles with uncertainty, validity
classifier, training, validation report and ONNX export.

>>> from accelrl.surrogates.models import load_surrogate
>>> model = load_surrogate("lpa_beamloading")  # doctest: +SKIP
>>> model.predict({"plasma_density": 2e23, ...})["mean"]  # doctest: +SKIP
"""

from __future__ import annotations

from accelrl.surrogates.models.ensemble import (
    Z95,
    Architecture,
    EnsembleMLP,
    InputInfo,
    OutputInfo,
    Surrogate,
    SurrogateError,
    SurrogateOutput,
)
from accelrl.surrogates.models.io import (
    export_onnx,
    load_surrogate,
    onnx_parity,
    resolve_model_dir,
    save_surrogate,
)
from accelrl.surrogates.models.report import evaluate, write_report
from accelrl.surrogates.models.train import Split, TrainConfig, TrainResult, train_surrogate

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
