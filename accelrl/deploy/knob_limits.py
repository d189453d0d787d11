"""The effective limits of each knob: the machine config's intersected with a bundle's.

>>> from accelrl.deploy.config import load_machine_config
>>> limits = effective_limits(load_machine_config("deploy/sim_ares_ea.yaml"), {"Q1": (-30, 30)})
>>> limits["Q1"].low, limits["Q1"].high
(-30.0, 30.0)

This module needs nothing beyond the standard library and :mod:`accelrl.deploy.config`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from accelrl.deploy.config import MachineConfig


@dataclass(frozen=True)
class KnobLimit:
    """Effective limits of one knob (SI).

    :param name: Knob name.
    :param low: Hard lower bound (config intersected with the bundle).
    :param high: Hard upper bound.
    :param max_step: Largest change per write.
    :param tolerance: Accepted ``|readback - setpoint|``, and the resolution at which a
        setpoint read back is compared with a value written.
    :param unit: SI unit.
    """

    name: str
    low: float
    high: float
    max_step: float
    tolerance: float
    unit: str = ""


def effective_limits(
    config: MachineConfig,
    bundle_knobs: Mapping[str, tuple[float, float]] | None = None,
    bundle_max_step: Mapping[str, float] | None = None,
) -> dict[str, KnobLimit]:
    """Per-knob limits: the machine config's, intersected with the bundle's (never wider).

    :param config: The machine config (owner of the hard limits).
    :param bundle_knobs: Knob -> ``(low, high)`` the policy was trained within.
    :param bundle_max_step: Knob -> largest change the policy can ask for per step.
    :raises ValueError: If a bundle names a knob the machine lacks, or the intersection of
        a knob's limits is empty.
    """
    bundle_knobs = dict(bundle_knobs or {})
    bundle_max_step = dict(bundle_max_step or {})
    unknown = sorted((set(bundle_knobs) | set(bundle_max_step)) - set(config.knob_names))
    if unknown:
        raise ValueError(f"bundle knobs {unknown} are not knobs of machine {config.name!r}")
    out = {}
    for k in config.knobs:
        low, high = k.low, k.high
        if k.name in bundle_knobs:
            b_low, b_high = bundle_knobs[k.name]
            low, high = max(low, float(b_low)), min(high, float(b_high))
        if not low < high:
            raise ValueError(
                f"knob {k.name!r}: machine limits [{k.low}, {k.high}] and bundle limits "
                f"{bundle_knobs.get(k.name)} do not overlap"
            )
        step = k.max_step
        if k.name in bundle_max_step and bundle_max_step[k.name] > 0:
            step = min(step, float(bundle_max_step[k.name]))
        out[k.name] = KnobLimit(k.name, float(low), float(high), step, k.tolerance, k.unit)
    return out
