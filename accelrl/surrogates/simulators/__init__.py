"""Plasma-accelerator codes behind one interface.

:class:`Simulator` (protocol): ``name``, ``version`` and ``run(inputs) -> RunResult``.
:func:`make_simulator` builds the adapter a :class:`~accelrl.surrogates.spec.DatasetSpec`
names; it works in a fresh process (the codes are imported on the first run):

>>> from accelrl.surrogates.spec import DatasetSpec
>>> from accelrl.surrogates.simulators import make_simulator
>>> spec = DatasetSpec.from_yaml("surrogates/lpa_beamloading.yaml")  # doctest: +SKIP
>>> result = make_simulator(spec).run(setting)  # doctest: +SKIP
>>> result.status, result.outputs["energy_median"]  # doctest: +SKIP

Adapters: :class:`~accelrl.surrogates.simulators.waket.WakeTSimulator` (``"wake-t"``) and
:class:`~accelrl.surrogates.simulators.fbpic_sim.FBPICSimulator` (``"fbpic"``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from accelrl.surrogates.simulators.base import (
    FAILED,
    NO_BEAM,
    OK,
    RunResult,
    Simulator,
)

if TYPE_CHECKING:
    from accelrl.surrogates.spec import DatasetSpec

__all__ = [
    "FAILED",
    "NO_BEAM",
    "OK",
    "RunResult",
    "Simulator",
    "make_simulator",
    "simulator_version",
]


def make_simulator(spec: DatasetSpec | dict[str, Any], timeout_s: float | None = None) -> Simulator:
    """The simulator adapter of ``spec`` (fixed parameters and fidelity applied).

    :param spec: Dataset spec (or its mapping).
    :param timeout_s: Wall-time limit of one run [s] (``None``: none); an exceeded limit
        gives a ``"failed"`` result.
    :raises ValueError: For an unknown simulator, physical parameter or fidelity setting.
    """
    from accelrl.surrogates.spec import DatasetSpec

    if not isinstance(spec, DatasetSpec):
        spec = DatasetSpec.from_dict(spec)
    fidelity = dict(spec.fidelity)
    if spec.simulator == "wake-t":
        from accelrl.surrogates.simulators.waket import WakeTSimulator

        return WakeTSimulator(spec.fixed, fidelity, spec.input_names, timeout_s=timeout_s)
    if spec.simulator == "fbpic":
        from accelrl.surrogates.simulators.fbpic_sim import FBPICSimulator

        return FBPICSimulator(spec.fixed, fidelity, spec.input_names, timeout_s=timeout_s)
    raise ValueError(f"unknown simulator {spec.simulator!r}; known: 'wake-t', 'fbpic'")


def simulator_version(name: str) -> str:
    """Installed version of the code ``name`` (``"wake-t"``, ``"fbpic"``), or ``"unknown"``."""
    from accelrl.execution import package_versions

    return package_versions([name], missing="unknown")[name]
