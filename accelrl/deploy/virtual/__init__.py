"""The virtual accelerator: a Channel Access soft IOC backed by the accelrl simulation.

It serves the PVs of a machine config (``deploy/virtual_ares_ea_machine.yaml``) on
127.0.0.1, with power-supply dynamics (ramps, busy flags, limits), a noisy screen, an
interlock, a beam-loss monitor, a heartbeat, and fault injection switchable by config and by
the ``<prefix>FAULT`` PV. See ``docs/virtual_accelerator.md``.

* :mod:`accelrl.deploy.virtual.config`: the IOC config (validated) and PV prefixes.
* :mod:`accelrl.deploy.virtual.ioc`: the IOC itself (imports the simulation, hence torch).
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
