"""One terminal line per controller step, as the run goes (``accelrl deploy run``, ``accelrl
tune`` on a machine config).

:class:`StepLines` is a :class:`~accelrl.deploy.controller.Controller` ``on_record``
callback: it turns each log record into text for the operator, in operator units (beam
error in um, quadrupole strengths in 1/m^2, steerer angles in mrad):

``step   3  auto   write    MAE  152.3 um  (mu_x +12.0 sigma_x -80.1 ...)  Q1 +1.2 1/m^2 ...``
    step, mode, what was done (``write``, ``shadow``: computed only, ``refused`` by the
    operator), the beam error before the step and each knob's change (the safe proposal
    minus the readback);
``  clipped Q1 by max_step: asked +5.2, applied +3 1/m^2``
    every limit the safety layer applied, and every other safety event;
``ABORT at step 7: interlock (...)`` / ``ROLLBACK ...``
    an abort, each rollback write and the rollback's outcome, in bold red (green when the
    rollback completed), also with ``quiet``.

>>> lines = StepLines(console, quiet=False)  # doctest: +SKIP
>>> Controller(..., on_record=lines)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.markup import escape

from accelrl.units import UM, display_unit

__all__ = ["StepLines"]


def _num(value: Any) -> float:
    """A record value as a float (NaN for anything else, ``"nan"``/``"inf"`` strings read)."""
    if isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _um(value: Any, sign: bool = True) -> str:
    v = _num(value) * UM
    if not math.isfinite(v):
        return "-"
    return f"{v:+.1f}" if sign else f"{v:.1f}"


class StepLines:
    """Prints controller records as they are written (see the module documentation).

    :param console: Where the lines go.
    :param quiet: Print only the abort, the rollback and safety events (no step lines).
    """

    def __init__(self, console: Console, quiet: bool = False) -> None:
        self.console = console
        self.quiet = bool(quiet)
        self.mode = "?"
        self.units: dict[str, str] = {}
        self.lines = 0

    def _print(self, text: str) -> None:
        self.console.print(text, highlight=False, soft_wrap=True)
        self.lines += 1

    def _knob(self, name: str, value: float, sign: bool = True) -> str:
        scale, unit = display_unit(self.units.get(name, ""))
        v = value * scale
        return f"{v:+.4g} {unit}" if sign else f"{v:.4g} {unit}"

    def __call__(self, record: Mapping[str, Any]) -> None:
        """Show one log record (``start``, ``step``, ``rollback`` or ``end``)."""
        kind = record.get("type")
        if kind == "start":
            self._start(record)
        elif kind == "step":
            self._step(record)
        elif kind == "rollback":
            self._rollback(record)
        elif kind == "end":
            self._end(record)

    def _start(self, record: Mapping[str, Any]) -> None:
        self.mode = str(record.get("mode", "?"))
        limits = record.get("limits") or {}
        self.units = {str(n): str(v.get("unit", "")) for n, v in limits.items()
                      if isinstance(v, Mapping)}  # fmt: skip
        if record.get("initial") is None:
            self._print("[bold red]ABORT before the first step: the knobs could not be read[/]")

    def _step(self, rec: Mapping[str, Any]) -> None:
        step = rec.get("step", "?")
        abort = rec.get("abort")
        decision = str(rec.get("decision", "?"))
        error = rec.get("error") if isinstance(rec.get("error"), Mapping) else {}
        if not self.quiet and (decision != "abort" or error):
            values = [abs(_num(v)) for v in error.values()]
            mae = sum(values) / len(values) if values else math.nan
            parts = [f"step {step:>4}", f"{self.mode:<7}", f"{decision:<14}",
                     f"MAE {_um(mae, sign=False):>7} um"]  # fmt: skip
            if error:
                parts.append("(" + " ".join(f"{n} {_um(v)}" for n, v in error.items()) + " um)")
            knobs = rec.get("knobs") if isinstance(rec.get("knobs"), Mapping) else {}
            safe = rec.get("safe_setpoints")
            if isinstance(safe, Mapping) and knobs:
                changes = [
                    f"{n} {self._knob(n, _num(safe[n]) - _num(knobs[n]))}"
                    for n in safe
                    if n in knobs
                ]
                parts.append(" ".join(changes))
            self._print(escape("  ".join(parts)))
        for clip in rec.get("clips") or []:
            if isinstance(clip, Mapping):
                n = str(clip.get("knob", "?"))
                self._print(
                    f"[yellow]  step {step}: clipped {escape(n)} by {escape(str(clip.get('rule')))}"
                    f": asked {escape(self._knob(n, _num(clip.get('requested')), sign=False))}, "
                    f"applied {escape(self._knob(n, _num(clip.get('applied')), sign=False))}[/]"
                )
        if decision == "refused":
            self._print(f"[yellow]  step {step}: the operator refused the write[/]")
        if isinstance(abort, Mapping):
            self._print(
                f"[bold red]ABORT at step {step}: {escape(str(abort.get('reason')))} -- "
                f"{escape(str(abort.get('detail', '')))}[/]"
            )
            self._print("[bold red]ROLLBACK to the initial settings, at the rate limit ...[/]")

    def _rollback(self, rec: Mapping[str, Any]) -> None:
        event = rec.get("event")
        if event == "write":
            setpoints = rec.get("setpoints") if isinstance(rec.get("setpoints"), Mapping) else {}
            values = " ".join(f"{n} {self._knob(str(n), _num(v), sign=False)}"
                              for n, v in setpoints.items())  # fmt: skip
            ok = rec.get("ok")
            state = "ok" if ok else f"FAILED ({rec.get('error')})"
            colour = "red" if ok else "bold red"
            index = rec.get("index", "?")
            self._print(f"[{colour}]ROLLBACK write {index}: {escape(values)} {escape(state)}[/]")
        else:
            detail = {k: v for k, v in rec.items() if k not in ("type", "time", "event")}
            self._print(f"[bold red]ROLLBACK {escape(str(event))}: {escape(str(detail))}[/]")

    def _end(self, rec: Mapping[str, Any]) -> None:
        rollback = rec.get("rollback")
        if isinstance(rollback, Mapping):
            if rollback.get("complete"):
                self._print(
                    f"[bold green]ROLLBACK COMPLETE in {rollback.get('writes', 0)} writes: the "
                    "knobs are back at their initial settings[/]"
                )
            else:
                self._print(
                    f"[bold red]ROLLBACK INCOMPLETE after {rollback.get('writes', 0)} writes: "
                    f"{escape(str(rollback.get('detail', '')))} -- check the machine[/]"
                )
        if not self.quiet:
            self._print(
                f"end: {escape(str(rec.get('reason', '?')))} after {rec.get('steps', '?')} steps, "
                f"{rec.get('writes', '?')} writes"
            )
