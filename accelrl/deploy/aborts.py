"""Why a run stops: :class:`AbortReason`, :class:`SafetyAbort`, and :func:`machine_call`,
which turns a machine's errors into aborts.

This module needs nothing beyond the standard library and :mod:`accelrl.deploy.machine`.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import TypeVar

from accelrl.deploy.machine import Disconnected, MachineError, PutRejected, SettleTimeout

T = TypeVar("T")


class AbortReason(StrEnum):
    """Why a run was aborted."""

    interlock = "interlock"
    beam_loss = "beam_loss"
    disconnected = "disconnected"
    stale_heartbeat = "stale_heartbeat"
    put_rejected = "put_rejected"
    put_unverified = "put_unverified"
    settle_timeout = "settle_timeout"
    setpoint_changed = "setpoint_changed"
    stale_reading = "stale_reading"
    nonfinite_reading = "nonfinite_reading"
    nonfinite_action = "nonfinite_action"
    initial_out_of_bounds = "initial_out_of_bounds"
    unsafe_setpoint = "unsafe_setpoint"
    machine_error = "machine_error"
    operator_abort = "operator_abort"
    internal_error = "internal_error"


class SafetyAbort(RuntimeError):
    """The run must stop and roll back.

    :param reason: The rule that fired.
    :param detail: Human-readable specifics (knob, values, limits).
    """

    def __init__(self, reason: AbortReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


def machine_call(what: str, fn: Callable[[], T]) -> T:
    """``fn()``, its machine errors raised as :class:`SafetyAbort` (``disconnected``,
    ``put_rejected``, ``settle_timeout``, else ``machine_error``) naming ``what``."""
    try:
        return fn()
    except Disconnected as err:
        raise SafetyAbort(AbortReason.disconnected, f"{what}: {err}") from err
    except PutRejected as err:
        raise SafetyAbort(AbortReason.put_rejected, f"{what}: {err}") from err
    except SettleTimeout as err:
        raise SafetyAbort(AbortReason.settle_timeout, f"{what}: {err}") from err
    except MachineError as err:
        raise SafetyAbort(
            AbortReason.machine_error, f"{what}: {type(err).__name__}: {err}"
        ) from err
