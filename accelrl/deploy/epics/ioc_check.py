"""What :class:`~accelrl.deploy.epics.EpicsMachine` checks on the IOC before it trusts it,
at connect, before anything is written.

**Units and limits** (:func:`check_control`, from ``DBR_CTRL`` / PVA ``display`` and
``control``):

* every knob's setpoint and readback and every observation (and ``frame_pv``) must carry the
  unit the machine config says (the IOC's ``EGU`` equal to the config's ``egu`` if given,
  else its ``unit``): a ``rad`` knob served in ``mrad`` is refused, naming the PV, the IOC's
  unit and the config's. An IOC without a unit is refused too unless the config says
  ``egu: ""``. A value whose config states no unit is not checked (and listed as such);
* a knob's setpoint must accept the config's whole range: the IOC's drive limits
  (``DRVL``/``DRVH``: the control limits of an ``ao``) must not be narrower than the config's
  ``low``/``high``. The IOC would clamp (or refuse) a write the safety layer allows, and the
  run would abort only after that write. A narrower IOC limit is refused -- the safety
  layer's limits come from the config before the machine connects, so the machine cannot
  narrow them itself; narrow the config's limits to the IOC's. Drive limits ``0, 0`` are
  EPICS for "none";
* every scalar PV must be a number with one element, ``frame_pv`` a number array with at
  least one element per observation.

Channel Access carries at most 7 characters of a unit (``MAX_UNITS_SIZE``): longer units are
compared on those.

**How monitors post** (:func:`exact_monitors`, from the record fields ``.RTYP`` and
``.MDEL``): a monitor's latest update is a channel's current value only where the record
posts every change -- an ``ai`` with ``MDEL > 0`` posts nothing for a change within its
deadband. Only channels whose ``MDEL`` reads ``<= 0``, or whose record type has no deadband
(``bi``, ``mbbi``, ``stringin``, ...), may be served from monitors; a channel whose fields do
not answer (a server without record fields) is read.

This module needs nothing beyond the standard library.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from accelrl.deploy.config import MachineConfig
from accelrl.deploy.epics.channels import ControlInfo
from accelrl.deploy.machine import MachineError

#: Characters of a unit Channel Access carries (``char units[8]``, NUL-terminated).
CA_UNITS_CHARS = 7
#: Record types that post every change of their value (they have no ``MDEL``).
NO_DEADBAND_RECORDS = frozenset(
    {"bi", "bo", "mbbi", "mbbo", "mbbiDirect", "mbboDirect", "stringin", "stringout", "lsi", "lso"}
)


class IocMismatch(MachineError):
    """The IOC disagrees with the machine config (units, limits, types): the machine
    refuses to run. The message names each PV, the IOC's value and the config's."""


@dataclass
class ControlCheck:
    """The outcome of :func:`check_control`.

    :param problems: Disagreements that refuse the run (PV, field, IOC value, config value).
    :param unchecked: Values whose unit the config does not state (not checked).
    :param notes: Things worth a log line (e.g. an IOC without drive limits).
    """

    problems: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def raise_problems(self, machine: str) -> None:
        """Raise :class:`IocMismatch` listing every problem (if any)."""
        if self.problems:
            raise IocMismatch(
                f"the IOC disagrees with machine config {machine!r}; nothing was written:\n  "
                + "\n  ".join(self.problems)
            )


def control_pvs(config: MachineConfig) -> list[str]:
    """The PVs whose ``DBR_CTRL`` :func:`check_control` needs, each once."""
    names: list[str | None] = []
    for k in config.knobs:
        names += [k.setpoint, k.readback_pv]
    names += [o.pv for o in config.observations]
    names.append(config.frame_pv)
    return list(dict.fromkeys(n for n in names if n))


def _units_problem(
    pv: str, info: ControlInfo, what: str, unit: str, egu: str | None, ca: bool
) -> str | None:
    """A unit disagreement of ``pv`` (``None``: they agree)."""
    expected = unit if egu is None else egu
    served = info.units.strip()
    compared = expected.strip()
    if ca and len(compared) > CA_UNITS_CHARS:
        compared = compared[:CA_UNITS_CHARS]
    if served == compared:
        return None
    source = "egu" if egu is not None else "unit"
    if not served:
        return (
            f"{pv} ({what}): the IOC gives no unit (EGU empty), the machine config says "
            f'{source} {expected!r} (write egu: "" to accept an IOC without units)'
        )
    return (
        f"{pv} ({what}): unit {served!r} on the IOC (EGU), {expected!r} in the machine config "
        f"({source})"
    )


def _count_problem(pv: str, info: ControlInfo, what: str, least: int, exact: bool) -> str | None:
    if not info.numeric:
        return f"{pv} ({what}): not a number on the IOC"
    if (exact and info.count != least) or info.count < least:
        want = f"{least}" if exact else f"at least {least}"
        return f"{pv} ({what}): {info.count} element(s) on the IOC, {want} expected"
    return None


def check_control(
    config: MachineConfig, infos: Mapping[str, ControlInfo], ca: bool = True
) -> ControlCheck:
    """Compare the IOC's units, drive limits and types with the machine config.

    :param config: The machine config.
    :param infos: PV -> its ``DBR_CTRL`` (every PV of :func:`control_pvs`).
    :param ca: Channel Access (units carry at most 7 characters) rather than PV Access.
    :return: The problems (refuse the run), unchecked values and notes.
    """
    out = ControlCheck()

    def units(pv: str, what: str, unit: str, egu: str | None) -> None:
        if egu is None and not unit.strip():
            out.unchecked.append(f"{pv} ({what}): the machine config states no unit")
            return
        problem = _units_problem(pv, infos[pv], what, unit, egu, ca)
        if problem:
            out.problems.append(problem)

    def counts(pv: str, what: str, least: int = 1, exact: bool = True) -> None:
        problem = _count_problem(pv, infos[pv], what, least, exact)
        if problem:
            out.problems.append(problem)

    for k in config.knobs:
        assert k.setpoint is not None and k.readback_pv is not None
        for pv, role in ((k.setpoint, "setpoint"), (k.readback_pv, "readback")):
            counts(pv, f"knob {k.name} {role}")
            units(pv, f"knob {k.name} {role}", k.unit, k.egu)
        info = infos[k.setpoint]
        low, high = info.lower_ctrl_limit, info.upper_ctrl_limit
        if low == 0.0 and high == 0.0:
            out.notes.append(f"{k.setpoint}: the IOC sets no drive limits (DRVL = DRVH = 0)")
        elif not (math.isfinite(low) and math.isfinite(high)):
            out.notes.append(f"{k.setpoint}: the IOC gives no drive limits")
        elif k.low < low or k.high > high:
            out.problems.append(
                f"{k.setpoint} (knob {k.name} setpoint): drive limits DRVL/DRVH = "
                f"[{low!r}, {high!r}] {info.units} on the IOC are narrower than the machine "
                f"config's low/high = [{k.low!r}, {k.high!r}] {k.unit}: the IOC would clamp or "
                "refuse writes the safety layer allows (narrow low/high to the IOC's)"
            )
    for o in config.observations:
        assert o.pv is not None
        counts(o.pv, f"observation {o.name}")
        units(o.pv, f"observation {o.name}", o.unit, o.egu)
    if config.frame_pv:
        pv = config.frame_pv
        counts(pv, "frame_pv", len(config.observations), exact=False)
        shared = {(o.unit, o.egu) for o in config.observations}
        if len(shared) == 1:
            unit, egu = shared.pop()
            units(pv, "frame_pv", unit, egu)
        else:
            out.unchecked.append(f"{pv} (frame_pv): the observations have different units")
    return out


def field_pvs(names: list[str]) -> list[str]:
    """The record fields :func:`exact_monitors` reads for ``names``."""
    return [f"{n}.{f}" for n in names for f in ("RTYP", "MDEL")]


def exact_monitors(names: list[str], fields: Mapping[str, str | None]) -> set[str]:
    """The channels of ``names`` whose monitors post every change of their value.

    :param names: Channel names.
    :param fields: ``"<name>.RTYP"`` / ``"<name>.MDEL"`` -> the field read as a string
        (``None``: no answer).
    """
    exact = set()
    for name in names:
        rtyp, mdel = fields.get(f"{name}.RTYP"), fields.get(f"{name}.MDEL")
        if mdel is not None:
            try:
                if float(mdel) <= 0.0:
                    exact.add(name)
            except ValueError:
                pass
        elif rtyp is not None and rtyp in NO_DEADBAND_RECORDS:
            exact.add(name)
    return exact
