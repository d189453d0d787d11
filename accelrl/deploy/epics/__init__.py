"""The EPICS adapter of the :class:`~accelrl.deploy.machine.Machine` interface.

* :mod:`~accelrl.deploy.epics.machine`: :class:`EpicsMachine`, a machine described by a
  :class:`~accelrl.deploy.config.MachineConfig` over Channel Access or PV Access;
* :mod:`~accelrl.deploy.epics.ioc_check`: what the machine checks on the IOC before it
  trusts it (units, drive limits, types; which monitors post every change);
* the transports (:mod:`~accelrl.deploy.epics.channels`: what they share):
  :mod:`~accelrl.deploy.epics.ca` (Channel Access, caproto), :mod:`~accelrl.deploy.epics.libca`
  (Channel Access, EPICS base's libca through pyepics), :mod:`~accelrl.deploy.epics.pva`
  (PV Access, p4p); :mod:`~accelrl.deploy.epics.cache`: the monitors' latest updates.

>>> from accelrl.deploy.epics import EpicsMachine
>>> machine = EpicsMachine(config, addresses=["127.0.0.1:5064"])  # doctest: +SKIP

This package needs numpy and one EPICS client library only; it never imports torch.
"""

from accelrl.deploy.epics.ca import CaChannels
from accelrl.deploy.epics.channels import (
    CA_CLIENTS,
    INVALID_SEVERITY,
    MONITOR_MODES,
    ChannelValue,
    ControlInfo,
)
from accelrl.deploy.epics.ioc_check import IocMismatch
from accelrl.deploy.epics.machine import EpicsMachine

#: Former name of :class:`CaChannels`.
_CaChannels = CaChannels

__all__ = [
    "CA_CLIENTS",
    "INVALID_SEVERITY",
    "MONITOR_MODES",
    "CaChannels",
    "ChannelValue",
    "ControlInfo",
    "EpicsMachine",
    "IocMismatch",
]
