"""Checks of numbers given on the command line (typer callbacks).

Click parses ``nan``, ``inf`` and ``-inf`` as floats, and its ``min=``/``max=`` checks let
NaN through (every comparison with NaN is false). :func:`finite` refuses them, naming the
option, the value and the allowed range.

>>> import typer
>>> limit = typer.Option("--time-limit", callback=finite("--time-limit", low=0.0, low_open=True))
"""

from __future__ import annotations

import math
from collections.abc import Callable

import typer


def finite(
    option: str,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    unit: str = "",
) -> Callable[[float | None], float | None]:
    """A typer callback accepting ``None`` or a finite number within ``[low, high]``.

    :param option: The option's name, e.g. ``"--time-limit"``.
    :param low: Smallest allowed value (``None``: unbounded).
    :param high: Largest allowed value (``None``: unbounded).
    :param low_open: Exclude ``low`` itself (``> low`` instead of ``>= low``).
    :param unit: Unit for the message (``"minutes"``).
    """
    what = f"a finite number of {unit}" if unit else "a finite number"
    if low is not None:
        what += f" {'>' if low_open else '>='} {low:g}"
    if high is not None:
        what += f"{',' if low is not None else ''} <= {high:g}"

    def check(value: float | None) -> float | None:
        if value is None:
            return None
        ok = math.isfinite(value)
        ok = ok and (low is None or (value > low if low_open else value >= low))
        ok = ok and (high is None or value <= high)
        if not ok:
            raise typer.BadParameter(f"must be {what}, got {value}", param_hint=f"'{option}'")
        return value

    return check
