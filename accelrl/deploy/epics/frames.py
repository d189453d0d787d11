"""The observation of one camera frame, as :class:`~accelrl.deploy.epics.EpicsMachine` reads
it: from ``frame_pv`` (one array of every observation, one time stamp) when the machine
config has one, else from the observation PVs.

With monitors, a frame is served from them only when an update arrived that was not served
before and is newer than the last frame (the frame PV's, or the observation PVs' updates all
with one time stamp); otherwise the frame is read. A record that posts no update for an
unchanged value (a deadband, ``MDEL >= 0``) is thus still seen with its current time stamp,
and a frame served from the monitors is one the IOC posted, judged by its own time stamp.

This module needs nothing beyond the standard library.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from accelrl.deploy.config import MachineConfig
from accelrl.deploy.epics.channels import Channels, ChannelValue, require_valid
from accelrl.deploy.machine import MachineError, Reading


class FrameSource:
    """Reads the observation of one frame (see the module documentation).

    :param config: The machine config (observations, optional ``frame_pv``).
    """

    def __init__(self, config: MachineConfig) -> None:
        self.names = config.observation_names
        self.frame_pv = config.frame_pv
        self._scalars = {o.name: o.pv for o in config.observations}
        #: The PVs an observation comes from.
        self.pvs: list[str] = [self.frame_pv] if self.frame_pv else list(self._scalars.values())
        self._seen = (0, -math.inf)  # (update number, IOC time) of the last frame returned

    def read(self, channels: Channels, monitored: bool, timeout: float) -> Reading:
        """The newest frame: from the monitors (``monitored``) if they brought one not
        returned before, else read (one round trip, ``timeout`` [s]).

        :raises MachineError: If a value is in INVALID alarm or ``frame_pv`` holds fewer
            values than there are observations.
        :raises Disconnected: If the read fails.
        """
        cache = channels.cache if monitored else None
        if cache is None:
            return self.reading(channels.read(self.pvs, timeout))
        after = cache.updates
        entries = [cache.latest(pv, channels.circuit(pv)) for pv in self.pvs]
        if all(e is not None for e in entries):
            stamps = {e.value.timestamp for e in entries}  # type: ignore[union-attr]
            seq = max(e.seq for e in entries)  # type: ignore[union-attr]
            stamp = max(stamps)
            if len(stamps) == 1 and seq > self._seen[0] and stamp > self._seen[1]:
                served = {pv: e.value for pv, e in zip(self.pvs, entries, strict=True)}  # type: ignore[union-attr]
                reading = self.reading(served)
                channels.stats["cached"] += 1
                self._seen = (seq, stamp)
                return reading
        reading = self.reading(channels.read(self.pvs, timeout))
        # updates that arrived before the read was sent are no newer than its answer
        self._seen = (after, max(self._seen[1], reading.timestamp))
        return reading

    def reading(self, raw: Mapping[str, ChannelValue]) -> Reading:
        """The :class:`~accelrl.deploy.machine.Reading` of values ``raw`` (PV -> value)."""
        require_valid(raw, raw)
        if not self.frame_pv:
            values = {name: float(raw[pv].value) for name, pv in self._scalars.items()}
            return Reading(values, min(raw[pv].timestamp for pv in self._scalars.values()))
        frame = raw[self.frame_pv]
        data = frame.value
        n = len(self.names)
        count = 1 if isinstance(data, float | int | str) else len(data)
        if count < n:
            raise MachineError(
                f"{self.frame_pv}: frame_pv holds {count} value(s); {n} observations "
                f"{list(self.names)} expected"
            )
        values = {name: float(v) for name, v in zip(self.names, data, strict=False)}
        return Reading(values, frame.timestamp)
