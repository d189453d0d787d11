"""Composable rewards for transverse tuning, batched over environments.

A reward is a weighted sum of terms, configured by name (``"icml"``) or as a list of
``{"term": NAME, "weight": W, ...options}``. Terms see the screen readings (what a real
machine provides), never the hidden state, so every reward is computable in operation.

Terms
-----
``icml``
    Kaiser, Stein, Eichler (ICML 2022): with ``o = |dmu_x| + |dmu_y| + 2|dsigma_x| +
    2|dsigma_y|`` [m], ``r = log(o_prev) - log(o)``, doubled when negative.
``feedback``
    ``-d`` (or ``-log d``) of the beam distance ``d`` to the target; option ``norm`` =
    ``"l1"`` (mean absolute error) or ``"l2"`` (root mean square); ``log``; ``normalise``
    divides by (subtracts the log of) the distance at the start of the episode.
``differential``
    ``d_prev - d`` (or ``log d_prev - log d``), same options as ``feedback``.
``on_screen``
    ``+1`` while the beam is on the screen, ``-1`` when it is off.
``magnet_change``
    ``-mean(|setting change| / actuator range)``, penalising large moves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np

_ICML_WEIGHTS = np.array([1.0, 2.0, 1.0, 2.0])  # (mu_x, sigma_x, mu_y, sigma_y)

#: Floor of distances inside logarithms [m] (1 pm: far below any screen resolution).
EPS = 1e-12


@dataclass
class RewardInputs:
    """Batched inputs of a reward evaluation (shapes ``[B, ...]``, SI units)."""

    error: np.ndarray  # [B, 4] reading - target after the step
    previous_error: np.ndarray  # [B, 4] reading - target before the step
    initial_reading: np.ndarray  # [B, 4] reading at the start of the episode
    target: np.ndarray  # [B, 4]
    on_screen: np.ndarray  # [B] bool
    magnets: np.ndarray  # [B, K]
    previous_magnets: np.ndarray  # [B, K]
    magnet_range: np.ndarray  # [K] high - low

    @cached_property
    def initial_error(self) -> np.ndarray:
        """``[B, 4]`` reading - target at the start of the episode (computed when used)."""
        return self.initial_reading - self.target


#: The last frozen error and its objective: a step's ``previous_error`` is often the
#: previous step's ``error`` (the single environment hands the same array on), whose
#: objective is then not computed again. Only a read-only array that owns its data is
#: remembered (a read-only view would change with the array it views), and it is used again
#: only while still read-only (an owner can be made writeable again; state arrays of the
#: environments never are). The reference held here keeps the array, and so its identity,
#: alive; the pair is one tuple, read and replaced whole (safe with environments stepped in
#: several threads).
_last_objective: tuple[np.ndarray, np.ndarray] | None = None


def _frozen(a: np.ndarray) -> bool:
    return a.base is None and not a.flags.writeable


def _icml_objective(error: np.ndarray) -> np.ndarray:
    global _last_objective
    last = _last_objective
    if last is not None and last[0] is error and _frozen(error):
        return last[1]
    value = np.maximum(np.abs(error) @ _ICML_WEIGHTS, EPS)
    if _frozen(error):
        value.flags.writeable = False
        _last_objective = (error, value)
    return value


def _distance(d: np.ndarray, norm: str) -> np.ndarray:
    if norm == "l1":
        out = np.add.reduce(np.abs(d), axis=1) / d.shape[1]
    else:
        out = np.sqrt(np.add.reduce(d * d, axis=1) / d.shape[1])
    return np.maximum(out, EPS)


def icml(x: RewardInputs) -> np.ndarray:
    r = np.log(_icml_objective(x.previous_error) / _icml_objective(x.error))
    return r + np.minimum(r, 0.0)  # negative values count twice


def _shaped(kind: str, norm: str = "l1", log: bool = False, normalise: bool = True) -> Callable:
    if norm not in ("l1", "l2"):
        raise ValueError(f"reward norm must be 'l1' or 'l2', got {norm!r}")

    def term(x: RewardInputs) -> np.ndarray:
        d = _distance(x.error, norm)
        d0 = _distance(x.initial_error, norm)
        ref = _distance(x.previous_error, norm) if kind == "differential" else None
        if log:
            value = np.log(d) - (np.log(d0) if normalise else 0.0)
            prev = None if ref is None else np.log(ref) - (np.log(d0) if normalise else 0.0)
        else:
            value = d / d0 if normalise else d
            prev = None if ref is None else (ref / d0 if normalise else ref)
        return -value if prev is None else prev - value

    return term


def on_screen(x: RewardInputs) -> np.ndarray:
    return np.where(x.on_screen, 1.0, -1.0)


def magnet_change(x: RewardInputs) -> np.ndarray:
    change = np.abs(x.magnets - x.previous_magnets) / x.magnet_range
    return -np.add.reduce(change, axis=1) / change.shape[1]


_SIMPLE = {"icml": icml, "on_screen": on_screen, "magnet_change": magnet_change}
TERMS: tuple[str, ...] = ("icml", "feedback", "differential", "on_screen", "magnet_change")


class Reward:
    """A weighted sum of reward terms.

    :param config: A term name, or a list of ``{"term": NAME, "weight": W, **options}``.
    :raises ValueError: For unknown terms or options, naming them and the allowed ones.

    >>> Reward([{"term": "differential", "norm": "l2", "log": True},
    ...         {"term": "on_screen", "weight": 0.1}])
    Reward(differential*1.0 + on_screen*0.1)
    """

    def __init__(self, config: str | list[dict]) -> None:
        items = [{"term": config}] if isinstance(config, str) else [dict(c) for c in config]
        if not items:
            raise ValueError("a reward needs at least one term")
        self.terms: list[tuple[str, float, Callable[[RewardInputs], np.ndarray]]] = []
        for item in items:
            name = item.pop("term", None)
            weight = float(item.pop("weight", 1.0))
            if name not in TERMS:
                raise ValueError(f"unknown reward term {name!r}; allowed: {TERMS}")
            if name in _SIMPLE:
                if item:
                    raise ValueError(f"reward term {name!r} takes no options, got {sorted(item)}")
                fn = _SIMPLE[name]
            else:
                allowed = {"norm", "log", "normalise"}
                if set(item) - allowed:
                    raise ValueError(
                        f"reward term {name!r}: unknown options {sorted(set(item) - allowed)}; "
                        f"allowed: {sorted(allowed)}"
                    )
                fn = _shaped(name, **item)
            self.terms.append((name, weight, fn))

    def __call__(self, inputs: RewardInputs) -> np.ndarray:
        total = None
        for _, weight, fn in self.terms:
            value = fn(inputs) if weight == 1.0 else weight * fn(inputs)
            total = value if total is None else total + value
        return total

    def __repr__(self) -> str:
        return "Reward(" + " + ".join(f"{n}*{w}" for n, w, _ in self.terms) + ")"
