"""The operator's say in confirm mode: what a proposed write looks like and the prompt.

:class:`ConfirmRequest` is what the controller shows before each write in ``confirm`` mode;
a :data:`Prompt` answers it (``"yes"`` write, ``"no"`` skip this step, ``"quit"`` stop the
run). :func:`terminal_prompt` asks on the terminal; a control-room GUI passes its own.

This module needs nothing but the standard library (and :mod:`accelrl.units`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from accelrl.units import display_unit

if TYPE_CHECKING:
    from accelrl.deploy.safety import Proposal

__all__ = ["ConfirmRequest", "Prompt", "terminal_prompt"]


@dataclass(frozen=True)
class ConfirmRequest:
    """What the operator is asked to approve in confirm mode.

    :param step: Step number (0-based).
    :param knob_names: Knobs in action order.
    :param units: Knob -> SI unit.
    :param current: Current setpoints (SI).
    :param proposal: The safe proposal (setpoints, clips).
    :param observation: The beam reading [m].
    :param target: The target [m].
    """

    step: int
    knob_names: tuple[str, ...]
    units: Mapping[str, str]
    current: Mapping[str, float]
    proposal: Proposal
    observation: Mapping[str, float]
    target: Mapping[str, float]

    def describe(self) -> str:
        """A plain-text table of the proposed change, in operator units (steerers in mrad)."""
        lines = [f"step {self.step}: proposed write"]
        lines.append(f"  {'knob':<6} {'current':>12} {'proposed':>12} {'change':>12}  unit")
        clipped = {c.knob for c in self.proposal.clips}
        for n in self.knob_names:
            scale, unit = display_unit(self.units.get(n, ""))
            cur, new = scale * self.current[n], scale * self.proposal.setpoints[n]
            mark = "  (clipped)" if n in clipped else ""
            lines.append(f"  {n:<6} {cur:>12.4f} {new:>12.4f} {new - cur:>+12.4f}  {unit}{mark}")
        err = ", ".join(
            f"{k} {1e6 * (self.observation[k] - self.target[k]):+.1f} um" for k in self.target
        )
        lines.append(f"  beam - target: {err}")
        return "\n".join(lines)


#: A confirm-mode prompt: returns ``"yes"``/``"no"``/``"quit"`` (or ``True``/``False``).
Prompt = Callable[[ConfirmRequest], "str | bool"]


def terminal_prompt(request: ConfirmRequest) -> str:
    """Ask on the terminal: ``y`` write, ``n`` skip this step, ``q`` stop the run."""
    print(request.describe(), flush=True)
    while True:
        try:
            answer = input("write? [y]es / [n]o, skip / [q]uit: ").strip().lower()
        except EOFError:
            return "quit"
        if answer in ("y", "yes"):
            return "yes"
        if answer in ("n", "no"):
            return "no"
        if answer in ("q", "quit"):
            return "quit"
