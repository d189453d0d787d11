"""PV Access plumbing of :class:`~accelrl.deploy.epics.EpicsMachine` (p4p, optional):
the same calls as :class:`~accelrl.deploy.epics.ca.CaChannels` over PVA.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from accelrl.deploy.epics.ca import ChannelValue
from accelrl.deploy.machine import (
    Disconnected,
    MachineError,
    PutRejected,
)


class PvaChannels:
    """PV Access through p4p's threading client (optional)."""

    def __init__(self, addresses: list[str] | None) -> None:
        try:
            from p4p.client.thread import Context
        except ImportError as err:
            raise MachineError(
                "transport 'pva' needs p4p, which is not installed: pip install p4p "
                "(or use transport: ca)"
            ) from err
        conf = None
        if addresses is not None:
            conf = {"EPICS_PVA_ADDR_LIST": " ".join(addresses), "EPICS_PVA_AUTO_ADDR_LIST": "NO"}
        self._context = Context("pva", conf=conf, useenv=conf is None)
        self._up: set[str] = set()
        self.stats = {"cached": 0, "round_trips": 0, "barriers": 0}

    def connect(self, names: Sequence[str], timeout: float) -> list[str]:
        results = self._context.get(list(names), timeout=timeout, throw=False)
        missing = [n for n, r in zip(names, results, strict=True) if isinstance(r, Exception)]
        self._up = set(names) - set(missing)
        return missing

    def connected(self, name: str) -> bool:
        return name in self._up

    def monitor(self, names: Sequence[str]) -> None:
        """No monitors over PV Access: every call reads."""

    def read(
        self,
        names: Sequence[str],
        timeout: float,
        max_lag: float | None = None,
        synced: bool = True,
    ) -> dict[str, ChannelValue]:
        """Read ``names`` concurrently (``max_lag``, ``synced``: ignored, no monitors)."""
        self.stats["round_trips"] += 1
        results = self._context.get(list(names), timeout=timeout, throw=False)
        out = {}
        for name, r in zip(names, results, strict=True):
            if isinstance(r, Exception):
                self._up.discard(name)
                raise Disconnected(f"{name}: read failed: {r!r}")
            out[name] = ChannelValue(
                float(r) if not hasattr(r, "__len__") else r,
                float(getattr(r, "timestamp", time.time())),
                int(getattr(r, "severity", 0)),
            )
        return out

    def write(self, values: Mapping[str, float], timeout: float) -> None:
        names = list(values)
        results = self._context.put(
            names, [values[n] for n in names], timeout=timeout, wait=True, throw=False
        )
        for name, r in zip(names, results or [None] * len(names), strict=True):
            if isinstance(r, TimeoutError):
                raise Disconnected(f"{name}: write not confirmed within {timeout:.3g} s")
            if isinstance(r, Exception):
                raise PutRejected(f"{name}: write of {values[name]!r} refused: {r}")

    def close(self) -> None:
        self._context.close()


# --------------------------------------------------------------------------- the machine
