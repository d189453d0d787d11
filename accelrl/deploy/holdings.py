"""What each knob's setpoint may hold: the bookkeeping behind the safety layer's worst-case
rules.

A put that raises may still have landed, and a put that returned may not have: between a put
and the next setpoint read the safety layer cannot know which of several values a knob holds.
:class:`Holdings` keeps, per knob, every value it may hold, in the order they may have
reached the machine:

* the last value read back (or the initial one), then every value put since;
* :meth:`Holdings.before_put` adds a value *before* the put is sent;
* :meth:`Holdings.observe` takes a setpoint read: a value within ``tolerance`` of one the
  knob may hold shows which it holds, so it and every later put remain possible (a later
  put may still land, a read may lag) and the read value replaces the match (it is what the
  machine holds); a value within tolerance of none of them was written by another client
  (a **foreign write**): the knob is marked and the safety layer never writes it again.

This relies on two properties of the machine's channels that Channel Access and PV Access
have: puts to one channel land in the order they were sent, and each lands at most once (a
put lost with its connection is not sent again).

>>> h = Holdings({"Q1": 10.0}, {"Q1": 1e-3})
>>> h.before_put({"Q1": 11.0})          # the put raises: it may or may not have landed
>>> h.may_hold("Q1")
(10.0, 11.0)
>>> h.observe("Q1", 10.0)               # read back: not (yet) applied; it may still land
'held'
>>> h.observe("Q1", 11.0)               # read back: applied
'held'
>>> h.may_hold("Q1")
(11.0,)
>>> h.observe("Q1", 20.0)               # another client wrote it
'foreign'

This module needs nothing beyond the standard library.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Literal

Observed = Literal["held", "foreign", "unreadable"]


class Holdings:
    """Per knob, the values its setpoint may hold (see the module documentation).

    :param initial: Knob -> setpoint read at the start (SI).
    :param tolerance: Knob -> resolution at which a read matches a value (SI, > 0).
    """

    def __init__(self, initial: Mapping[str, float], tolerance: Mapping[str, float]) -> None:
        self._values: dict[str, list[float]] = {n: [float(v)] for n, v in initial.items()}
        self._tol = {n: float(tolerance[n]) for n in initial}
        #: Knobs this run has put (the only ones a rollback may write).
        self.moved: set[str] = set()
        #: Knob -> the value another client wrote (read back; never written again).
        self.foreign: dict[str, float] = {}

    def may_hold(self, name: str) -> tuple[float, ...]:
        """Every value the knob may hold, oldest first (the last is the last put)."""
        return tuple(self._values[name])

    def latest(self, name: str) -> float:
        """The last value that may have reached the machine (the last put, or the last read
        when nothing was put since)."""
        return self._values[name][-1]

    def span(self, name: str) -> tuple[float, float]:
        """``(least, most)`` of the values the knob may hold."""
        v = self._values[name]
        return min(v), max(v)

    def known(self, name: str) -> bool:
        """The knob holds one known value (nothing put since it was read)."""
        return len(self._values[name]) == 1

    def before_put(self, values: Mapping[str, float]) -> None:
        """Record values about to be put (call *before* sending the put: a put that raises
        may have landed)."""
        for name, value in values.items():
            held = self._values[name]
            if float(value) != held[-1]:
                held.append(float(value))
            self.moved.add(name)

    def observe(self, name: str, value: float) -> Observed:
        """Take a setpoint read of ``name``.

        :return: ``"held"`` (it matches a value the knob may hold; the values before the
            match are dropped), ``"foreign"`` (it matches none: another client wrote it;
            recorded in :attr:`foreign`), or ``"unreadable"`` (not finite; nothing learnt).
        """
        value = float(value)
        if not math.isfinite(value):
            return "unreadable"
        if name in self.foreign:
            self.foreign[name] = value
            return "foreign"
        held = self._values[name]
        tol = self._tol[name]
        for i in range(len(held) - 1, -1, -1):  # the latest match: later puts may still land
            if abs(value - held[i]) <= tol:
                self._values[name] = [value, *held[i + 1 :]]
                return "held"
        self.foreign[name] = value
        return "foreign"

    def matches(self, name: str, value: float, target: float) -> bool:
        """``value`` is within the knob's tolerance of ``target``."""
        return abs(float(value) - float(target)) <= self._tol[name]

    def own(self, names: Iterable[str]) -> list[str]:
        """The knobs of ``names`` this run moved and no other client wrote since."""
        return [n for n in names if n in self.moved and n not in self.foreign]
