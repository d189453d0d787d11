"""The machine interface the runtime controller drives: read, write, settle, health.

A machine exposes named knobs (actuators: setpoint, readback, optional busy flag) and named
observations (e.g. the screen's beam parameters), all in SI units. Adapters implement
:class:`Machine` for the accelrl simulation (:mod:`accelrl.deploy.sim`) and for EPICS
Channel Access (:mod:`accelrl.deploy.epics`). The protocol is deliberately small so that the
safety layer (:mod:`accelrl.deploy.safety`) can verify every step of it.

Every reading carries the wall-clock time at which its values were produced, so the safety
layer can apply the fresh-reading rule (only readings newer than the last settled write).

This module needs numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


class MachineError(RuntimeError):
    """Base class of machine-side failures; the controller aborts on any of them."""


class Disconnected(MachineError):
    """A channel (PV) is not connected or stopped answering."""


class PutRejected(MachineError):
    """A write was refused by the machine (or not applied, as seen on the readback)."""


class SettleTimeout(MachineError):
    """Actuators did not report done (busy flags / readbacks) within the settle timeout."""


@dataclass(frozen=True)
class Reading:
    """Values read from the machine at one time.

    :param values: Name -> value, SI units.
    :param timestamp: Wall-clock time [s since the epoch] at which the values were produced
        (the oldest of the channels read, i.e. the value the fresh-reading rule must check).
    """

    values: Mapping[str, float]
    timestamp: float

    def array(self, names: Sequence[str]) -> list[float]:
        """The values of ``names``, in that order (``KeyError`` naming a missing one)."""
        missing = [n for n in names if n not in self.values]
        if missing:
            raise KeyError(f"reading has no value for {missing}; it has {sorted(self.values)}")
        return [float(self.values[n]) for n in names]


@dataclass(frozen=True)
class Health:
    """The machine's protection state, read before and after every write.

    :param connected: All channels of the machine are connected.
    :param interlock: An interlock is tripped (writes must stop).
    :param beam_loss: Beam loss is above its threshold.
    :param heartbeat_age_s: Seconds since the machine's heartbeat last changed [s]
        (``None`` when the machine has no heartbeat).
    :param detail: Human-readable description of anything not OK.
    """

    connected: bool = True
    interlock: bool = False
    beam_loss: bool = False
    heartbeat_age_s: float | None = None
    detail: tuple[str, ...] = field(default_factory=tuple)


@runtime_checkable
class Machine(Protocol):
    """A machine the controller can drive.

    Implementations must be safe to call from one thread; they never clip or modify values
    themselves (limits are the safety layer's job) and never raise anything but
    :class:`MachineError` subclasses for machine-side failures.
    """

    #: Knob (actuator) names in the order of the policy's action.
    knob_names: tuple[str, ...]
    #: Observation names (e.g. ``("mu_x", "sigma_x", "mu_y", "sigma_y")``).
    observation_names: tuple[str, ...]

    def connect(self, timeout: float) -> None:
        """Connect all channels; raise :class:`Disconnected` naming those that did not
        connect within ``timeout`` [s]."""

    def close(self) -> None:
        """Release all channels (idempotent)."""

    def read_knobs(self) -> Reading:
        """Readbacks of all knobs (SI)."""

    def read_setpoints(self) -> Reading:
        """Current setpoints of all knobs (SI)."""

    def read_observation(self) -> Reading:
        """The current observation (SI), with the time its values were produced."""

    def put(self, setpoints: Mapping[str, float]) -> None:
        """Write setpoints (a subset of the knobs) without waiting for them to settle;
        raise :class:`PutRejected` if the machine refuses a write."""

    def settle(self, names: Sequence[str], timeout: float) -> None:
        """Wait until the named knobs are done moving (busy flags clear, where the machine
        has them); raise :class:`SettleTimeout` after ``timeout`` [s]."""

    def health(self) -> Health:
        """Interlock, beam loss, heartbeat and connection state."""


@dataclass(frozen=True)
class State:
    """Knob readbacks, setpoints and health read together (what was asked for, else
    ``None``); see :class:`ReadsState`.

    :param knobs: Readbacks of all knobs.
    :param setpoints: Setpoints of all knobs.
    :param health: The protection state.
    """

    knobs: Reading | None = None
    setpoints: Reading | None = None
    health: Health | None = None


@runtime_checkable
class ReadsState(Protocol):
    """Optional addition to :class:`Machine`: machines that read readbacks, setpoints and
    health in one request (e.g. one Channel Access round trip) instead of one per call.
    :class:`~accelrl.deploy.safety.SafetyLayer` uses it, when present, for the reads that
    verify a write; every value is checked exactly as with the separate calls."""

    def read_state(self, knobs: bool = True, setpoints: bool = True, health: bool = True) -> State:
        """What :meth:`Machine.read_knobs`, :meth:`Machine.read_setpoints` and
        :meth:`Machine.health` return (those asked for), read together."""


@runtime_checkable
class WaitsForUpdates(Protocol):
    """Optional addition to :class:`Machine`: machines that receive updates (e.g. EPICS
    monitors) let polling loops wake when one arrives instead of sleeping a fixed
    interval. :class:`~accelrl.deploy.safety.SafetyLayer` uses it, when present, between
    the polls for a fresh observation and for arrived readbacks."""

    def wait_for_update(self, timeout: float) -> None:
        """Return when an update has arrived since the last read, at the latest after
        ``timeout`` [s]."""
