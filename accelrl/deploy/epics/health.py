"""The protection state of an EPICS machine from its interlock, beam-loss and heartbeat
values (:class:`HealthJudge`): tripped interlock (its ``tripped_when`` value, or INVALID
alarm), beam loss above ``beam_loss.max`` (or INVALID), and the heartbeat's age -- the time
since its value last *changed*, from the IOC's time stamp of that change (a monitor's or a
read's: both carry the time of the last change of a counter).

This module needs nothing beyond the standard library.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from accelrl.deploy.config import MachineConfig
from accelrl.deploy.epics.channels import INVALID_SEVERITY, ChannelValue
from accelrl.deploy.machine import Health


class HealthJudge:
    """Judges interlock, beam loss and heartbeat values (see the module documentation).

    :param config: The machine config (PVs and thresholds of the protections).
    """

    def __init__(self, config: MachineConfig) -> None:
        self.config = config
        self._heartbeat: tuple[Any, float] | None = None  # (value, IOC time of the change)
        self._lock = threading.Lock()

    @property
    def pvs(self) -> list[str]:
        """The interlock, beam-loss and heartbeat PVs the config names."""
        c = self.config
        return [p for p in (c.interlock.pv, c.beam_loss.pv, c.heartbeat.pv) if p]

    def judge(self, raw: Mapping[str, ChannelValue], down: Sequence[str]) -> Health:
        """The health of values ``raw`` (PV -> value, every PV of :attr:`pvs`) with the
        channels ``down`` not connected now."""
        c = self.config
        detail: list[str] = []
        if down:
            detail.append(f"disconnected: {list(down)}")
        interlock = beam_loss = False
        age = None
        if c.interlock.pv:
            v = raw[c.interlock.pv]
            interlock = float(v.value) == c.interlock.tripped_when or v.severity >= INVALID_SEVERITY
            if interlock:
                detail.append(f"interlock {c.interlock.pv} = {v.value!r} (tripped)")
        if c.beam_loss.pv:
            v = raw[c.beam_loss.pv]
            beam_loss = float(v.value) > c.beam_loss.max or v.severity >= INVALID_SEVERITY
            if beam_loss:
                detail.append(f"beam loss {c.beam_loss.pv} = {v.value!r} > {c.beam_loss.max}")
        if c.heartbeat.pv:
            v = raw[c.heartbeat.pv]
            with self._lock:
                if self._heartbeat is None or self._heartbeat[0] != v.value:
                    self._heartbeat = (v.value, v.timestamp)
                changed = self._heartbeat[1]
            age = max(0.0, time.time() - changed)
            if age > c.heartbeat.max_age_s:
                detail.append(
                    f"heartbeat {c.heartbeat.pv} unchanged for {age:.2f} s "
                    f"(> {c.heartbeat.max_age_s} s)"
                )
        return Health(
            connected=not down,
            interlock=interlock,
            beam_loss=beam_loss,
            heartbeat_age_s=age,
            detail=tuple(detail),
        )
