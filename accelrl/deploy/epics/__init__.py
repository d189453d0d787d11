"""The EPICS adapter of the :class:`~accelrl.deploy.machine.Machine` interface.

* :mod:`~accelrl.deploy.epics.machine`: :class:`EpicsMachine`, a machine described by a
  :class:`~accelrl.deploy.config.MachineConfig` over Channel Access or PV Access;
* :mod:`~accelrl.deploy.epics.ca`: the Channel Access channel layer (caproto);
* :mod:`~accelrl.deploy.epics.pva`: the PV Access channel layer (p4p, optional).

>>> from accelrl.deploy.epics import EpicsMachine
>>> machine = EpicsMachine(config, addresses=["127.0.0.1:5064"])  # doctest: +SKIP

This package needs numpy and caproto (or p4p) only; it never imports torch.
"""

from accelrl.deploy.epics.ca import INVALID_SEVERITY, MONITOR_MODES, CaChannels, ChannelValue
from accelrl.deploy.epics.machine import EpicsMachine

__all__ = ["INVALID_SEVERITY", "MONITOR_MODES", "CaChannels", "ChannelValue", "EpicsMachine"]
