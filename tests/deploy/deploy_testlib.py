"""Shared code of the deployment tests: a torch-free machine and machine configs.

:class:`LinearMachine` implements :class:`accelrl.deploy.machine.Machine` with numpy only: the
beam responds linearly to the knobs (a fixed response matrix around a reference beam), the
readbacks follow the setpoints at once (optionally perturbed), and every put is recorded
together with the setpoints the machine held before it -- what the safety invariants are
checked against.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from accelrl.deploy.config import MachineConfig
from accelrl.deploy.machine import Health, PutRejected, Reading

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "agents" / "apg-ares-ea" / "bundle"
SIM_CONFIG = ROOT / "deploy" / "sim_ares_ea.yaml"
KNOBS = ("Q1", "Q2", "CV", "Q3", "CH")
BEAM = ("mu_x", "sigma_x", "mu_y", "sigma_y")
#: ARES-EA limits and the shipped policy's largest change per step (SI).
LIMITS = {
    "Q1": (-72.0, 72.0, 7.2),
    "Q2": (-72.0, 72.0, 7.2),
    "CV": (-6.1782e-3, 6.1782e-3, 6.1782e-4),
    "Q3": (-72.0, 72.0, 7.2),
    "CH": (-6.1782e-3, 6.1782e-3, 6.1782e-4),
}


def machine_config(
    transport: str = "sim",
    settle_timeout_s: float = 0.2,
    reading_timeout_s: float = 0.2,
    poll_interval_s: float = 0.002,
    limits: Mapping[str, tuple[float, float, float]] | None = None,
    tolerance: Mapping[str, float] | None = None,
    ramp_steps_max: int = 50,
    outage_deadline_s: float = 5.0,
    protections: Mapping[str, object] | None = None,
) -> MachineConfig:
    """An ARES-EA machine config (fast timeouts for tests).

    :param protections: ``interlock``, ``beam_loss``, ``heartbeat`` entries; default for a
        ``ca``/``pva`` transport: PVs ``T:INTERLOCK``, ``T:BEAM_LOSS``, ``T:HEARTBEAT``.
    """
    limits = dict(limits or LIMITS)
    tolerance = dict(tolerance or {})
    knobs = []
    for name in KNOBS:
        low, high, step = limits[name]
        tol = tolerance.get(name, 1e-3 if name.startswith("Q") else 1e-7)
        knob = {"name": name, "low": low, "high": high, "max_step": step, "tolerance": tol}
        if transport != "sim":
            knob["setpoint"] = f"T:{name}:SP"
        knobs.append(knob)
    observations = [
        {"name": n, "unit": "m", **({"pv": f"T:{n}"} if transport != "sim" else {})} for n in BEAM
    ]
    if protections is None and transport != "sim":
        protections = {
            "interlock": {"pv": "T:INTERLOCK"},
            "beam_loss": {"pv": "T:BEAM_LOSS"},
            "heartbeat": {"pv": "T:HEARTBEAT"},
        }
    return MachineConfig.model_validate(
        {
            **dict(protections or {}),
            "name": "test-ares-ea",
            "env_id": "accelrl/AresEATransverseTuning-v0",
            "transport": transport,
            "knobs": knobs,
            "observations": observations,
            "timing": {
                "settle_timeout_s": settle_timeout_s,
                "reading_timeout_s": reading_timeout_s,
                "poll_interval_s": poll_interval_s,
                "connect_timeout_s": 1.0,
            },
            "rollback": {
                "ramp_steps_max": ramp_steps_max,
                "outage_deadline_s": outage_deadline_s,
            },
        }
    )


class LinearMachine:
    """A numpy-only machine: ``beam = beam0 + J (knobs - knobs0) / scale`` (see module doc).

    :param initial: Initial setpoints (SI).
    :param beam0: Beam at ``initial`` [m].
    :param seed: Seed of the response matrix.
    :param readback: ``f(name, setpoint) -> readback`` (default: the setpoint).
    :param put_hook: Called with the setpoints of every put before it is applied; may raise
        :class:`PutRejected` or return ``False`` to drop the put silently.
    """

    knob_names = KNOBS
    observation_names = BEAM

    def __init__(
        self,
        initial: Mapping[str, float] | None = None,
        beam0: Sequence[float] = (5e-4, 3e-4, -4e-4, 2e-4),
        seed: int = 0,
        readback: Callable[[str, float], float] | None = None,
        put_hook: Callable[[Mapping[str, float]], bool | None] | None = None,
    ) -> None:
        self.setpoints = dict(
            initial or {"Q1": 10.0, "Q2": -10.0, "CV": 0.0, "Q3": 10.0, "CH": 0.0}
        )
        self.knobs0 = np.array([self.setpoints[n] for n in KNOBS])
        self.scale = np.array([72.0, 72.0, 6.1782e-3, 72.0, 6.1782e-3])
        self.J = np.random.default_rng(seed).normal(0.0, 1e-3, size=(4, 5))
        self.beam0 = np.array(beam0, np.float64)
        self.readback = readback
        self.put_hook = put_hook
        #: ``(setpoints before, values put)`` for every put.
        self.puts: list[tuple[dict[str, float], dict[str, float]]] = []
        self.connected = True
        self.interlock = False

    def connect(self, timeout: float) -> None:
        pass

    def close(self) -> None:
        pass

    def read_knobs(self) -> Reading:
        values = dict(self.setpoints)
        if self.readback is not None:
            values = {n: self.readback(n, v) for n, v in values.items()}
        return Reading(values, time.time())

    def read_setpoints(self) -> Reading:
        return Reading(dict(self.setpoints), time.time())

    def beam(self) -> np.ndarray:
        k = np.array([self.setpoints[n] for n in KNOBS])
        b = self.beam0 + self.J @ ((k - self.knobs0) / self.scale)
        b[[1, 3]] = np.abs(b[[1, 3]])
        return b

    def read_observation(self) -> Reading:
        return Reading(dict(zip(BEAM, self.beam().tolist(), strict=True)), time.time())

    def put(self, setpoints: Mapping[str, float]) -> None:
        self.puts.append((dict(self.setpoints), {n: float(v) for n, v in setpoints.items()}))
        if not all(math.isfinite(float(v)) for v in setpoints.values()):
            raise PutRejected("non-finite")
        if self.put_hook is not None and self.put_hook(setpoints) is False:
            return
        self.setpoints.update({n: float(v) for n, v in setpoints.items()})

    def settle(self, names: Sequence[str], timeout: float) -> None:
        pass

    def health(self) -> Health:
        return Health(connected=self.connected, interlock=self.interlock, heartbeat_age_s=0.0)
