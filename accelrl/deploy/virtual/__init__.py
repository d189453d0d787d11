"""The virtual accelerator: an EPICS IOC backed by the accelrl simulation.

It serves the PVs of a machine config (``deploy/virtual_ares_ea_machine.yaml``) on
127.0.0.1, with power-supply dynamics (ramps, busy flags, limits), a noisy screen, an
interlock, a beam-loss monitor, a heartbeat, and fault injection switchable by config and by
the ``<prefix>SIM:FAULT`` PV. Two servers: an EPICS 7 IOC (``softioc``, default: Channel
Access and PV Access from EPICS base, records with fields and alarms) and a pure-Python
Channel Access server (``caproto``). See ``docs/virtual_accelerator.md``.

* :mod:`accelrl.deploy.virtual.config`: the IOC config (validated) and PV prefixes.
* :mod:`accelrl.deploy.virtual.core`: the behaviour both servers share (ramps, camera,
  faults); numpy only.
* :mod:`accelrl.deploy.virtual.records`, :mod:`~accelrl.deploy.virtual.devices`,
  :mod:`~accelrl.deploy.virtual.guard`, :mod:`~accelrl.deploy.virtual.softioc_ioc`,
  :mod:`~accelrl.deploy.virtual.supervisor`, :mod:`~accelrl.deploy.virtual.repeater`: the
  EPICS 7 IOC (record database, device support, write guard, IOC process, its supervisor,
  the CA repeater).
* :mod:`accelrl.deploy.virtual.ioc`: the caproto server.
* :mod:`accelrl.deploy.virtual.serve`: :func:`serve_in_subprocess` for tests and demos.
* :mod:`accelrl.cli.serve_virtual`: ``accelrl serve-virtual``.

Importing this package does not import torch.
"""

from __future__ import annotations

from accelrl.deploy.virtual.config import (
    FAULTS,
    LoadedConfig,
    VirtualConfig,
    VirtualConfigError,
    load_virtual_config,
    with_prefix,
)
from accelrl.deploy.virtual.serve import (
    ServeError,
    VirtualHandle,
    free_port,
    serve_in_subprocess,
    unique_prefix,
)

__all__ = [
    "FAULTS",
    "LoadedConfig",
    "ServeError",
    "VirtualConfig",
    "VirtualConfigError",
    "VirtualHandle",
    "free_port",
    "load_virtual_config",
    "serve_in_subprocess",
    "unique_prefix",
    "with_prefix",
]
