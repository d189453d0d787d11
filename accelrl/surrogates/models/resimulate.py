"""Re-simulating settings in the real code and comparing with the surrogate's prediction.

>>> from accelrl.surrogates.models import load_surrogate
>>> from accelrl.surrogates.models.resimulate import resimulate
>>> from accelrl.surrogates.spec import DatasetSpec
>>> spec = DatasetSpec.from_yaml("surrogates/lpa_beamloading.yaml")  # doctest: +SKIP
>>> rows = resimulate(load_surrogate("lpa_beamloading"), spec, [setting])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from accelrl.surrogates.models.ensemble import Surrogate


def compare(
    model: Surrogate, setting: Mapping[str, float], status: str, outputs: Mapping[str, float]
) -> dict[str, Any]:
    """Surrogate prediction (mean, 95% interval) against one simulated result.

    :return: ``{"setting", "status", "p_valid", "outputs": {name: {"simulated", "mean",
        "low95", "high95", "inside95", "rel_error"}}, "inside_fraction"}``.
    """
    pred = model.predict({k: [setting[k]] for k in model.input_names}, check_bounds=False)
    rows: dict[str, Any] = {}
    inside = []
    for j, name in enumerate(model.output_names):
        sim = float(outputs.get(name, np.nan))
        mean, lo, hi = (float(pred[k][0, j]) for k in ("mean", "low95", "high95"))
        ok = bool(lo <= sim <= hi) if np.isfinite(sim) else None
        if ok is not None:
            inside.append(ok)
        rows[name] = {
            "simulated": sim,
            "mean": mean,
            "low95": lo,
            "high95": hi,
            "inside95": ok,
            "rel_error": abs(mean - sim) / abs(sim) if np.isfinite(sim) and sim != 0 else None,
        }
    return {
        "setting": {k: float(setting[k]) for k in model.input_names},
        "status": status,
        "p_valid": float(pred["p_valid"][0]),
        "outputs": rows,
        "inside_fraction": float(np.mean(inside)) if inside else None,
    }


def resimulate(
    model: Surrogate,
    spec: Any,
    settings: Sequence[Mapping[str, float]],
    timeout_s: float | None = None,
    on_result: Callable[[int, dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run each setting through the spec's simulator and compare with the surrogate.

    :param model: The surrogate.
    :param spec: The dataset spec (:class:`~accelrl.surrogates.spec.DatasetSpec`) whose
        simulator, fixed parameters and fidelity produced the training data.
    :param settings: Complete input settings (SI).
    :param timeout_s: Wall-time limit of one run [s].
    :param on_result: Called with ``(index, comparison)`` after each run (progress, saving).
    :return: One :func:`compare` record per setting, with ``wall_time_s`` and ``message``.
    :raises ValueError: If a setting misses an input.
    """
    from accelrl.surrogates.simulators import make_simulator

    for i, s in enumerate(settings):
        missing = [n for n in spec.input_names if n not in s]
        if missing:
            raise ValueError(f"setting {i} misses inputs {missing}")
    sim = make_simulator(spec, timeout_s=timeout_s)
    records = []
    for i, s in enumerate(settings):
        result = sim.run({n: float(s[n]) for n in spec.input_names})
        rec = compare(model, s, result.status, result.outputs)
        rec["wall_time_s"] = float(result.wall_time_s)
        rec["message"] = result.message
        records.append(rec)
        if on_result is not None:
            on_result(i, rec)
    return records
