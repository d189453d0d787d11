"""Optimisers by name: ``make_optimiser("nelder-mead:simplex_size=0.1")``.

A spec is ``NAME`` or ``NAME:key=value,key=value``; the keys are the optimiser's
constructor parameters (numbers, booleans ``true``/``false``, strings; ``spec=PATH`` loads a
task-spec YAML for the model-based optimisers). ``policy:PATH`` loads a trained policy
directory through :func:`accelrl.agents.policy.load_policy_optimiser`.

>>> from accelrl.agents.registry import OptimiserFactory, make_optimiser
>>> make_optimiser("random").name
'random'
>>> make_optimiser("nelder-mead:simplex_size=0.1").simplex_size
0.1
>>> factory = OptimiserFactory("model-based")   # picklable: for process pools
>>> optimiser = factory()                        # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import typing
from typing import Any

from accelrl.agents.bo.optimiser import BOOptimiser
from accelrl.agents.tuners.baselines import (
    DoNothing,
    ExtremumSeeking,
    NelderMead,
    RandomSearch,
    RandomSteps,
)
from accelrl.agents.tuners.gradient import GradientTuner
from accelrl.agents.tuners.model_based import ModelBasedTuner
from accelrl.protocol import Optimiser

__all__ = ["OPTIMISERS", "OptimiserFactory", "available_optimisers", "make_optimiser", "parse_spec"]

#: Registered optimiser names -> classes.
OPTIMISERS: dict[str, type] = {
    "do-nothing": DoNothing,
    "random": RandomSearch,
    "random-steps": RandomSteps,
    "nelder-mead": NelderMead,
    "extremum-seeking": ExtremumSeeking,
    "gradient": GradientTuner,
    "model-based": ModelBasedTuner,
    "bo": BOOptimiser,
}

#: Prefix of specs that load a trained policy.
POLICY = "policy"

_SIMPLE = (bool, int, float, str)


def _parameters(cls: type) -> dict[str, type]:
    """Constructor parameters of ``cls`` settable from a spec string -> their type."""
    hints = typing.get_type_hints(cls.__init__)
    out: dict[str, type] = {}
    for name in inspect.signature(cls.__init__).parameters:
        if name == "self":
            continue
        hint = hints.get(name)
        if hint in _SIMPLE:
            out[name] = hint
        elif name == "spec":  # a task spec, given as the path of its YAML
            out[name] = str
    return out


def available_optimisers() -> dict[str, list[str]]:
    """Registered names -> the parameters a spec may set (plus ``policy:PATH``)."""
    return {name: sorted(_parameters(cls)) for name, cls in OPTIMISERS.items()}


def _convert(value: str, kind: type, where: str) -> Any:
    text = value.strip()
    if kind is bool:
        lowered = text.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ValueError(f"{where}: expected a boolean (true/false), got {value!r}")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{where}: expected an integer, got {value!r}") from None
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{where}: expected a number, got {value!r}") from None
    return text


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Split and validate an optimiser spec.

    :return: ``(name, keyword arguments)`` with values converted to the parameter types;
        for ``policy:PATH`` it is ``("policy", {"path": PATH})``.
    :raises ValueError: For an unknown name or key or a malformed value, listing what is
        allowed.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"optimiser spec must be a non-empty string, got {spec!r}")
    name, _, rest = spec.strip().partition(":")
    name = name.strip().lower().replace("_", "-")
    if name == POLICY:
        if not rest.strip():
            raise ValueError("policy spec needs a path: 'policy:PATH'")
        return POLICY, {"path": rest.strip()}
    if name not in OPTIMISERS:
        raise ValueError(
            f"unknown optimiser {name!r}; available: {sorted(OPTIMISERS)} and 'policy:PATH'"
        )
    allowed = _parameters(OPTIMISERS[name])
    kwargs: dict[str, Any] = {}
    if rest.strip():
        for item in rest.split(","):
            key, sep, value = item.partition("=")
            key = key.strip()
            if not sep or not key:
                raise ValueError(
                    f"optimiser {name!r}: malformed parameter {item!r}; use key=value,key=value"
                )
            if key not in allowed:
                raise ValueError(
                    f"optimiser {name!r} has no parameter {key!r}; allowed: {sorted(allowed)}"
                )
            if key in kwargs:
                raise ValueError(f"optimiser {name!r}: parameter {key!r} given twice")
            kwargs[key] = _convert(value, allowed[key], f"optimiser {name!r}, {key}")
    return name, kwargs


def _canonical(name: str, kwargs: dict[str, Any]) -> str:
    if not kwargs:
        return name
    return name + ":" + ",".join(f"{k}={v}" for k, v in sorted(kwargs.items()))


def _build(name: str, kwargs: dict[str, Any]) -> Optimiser:
    if name == POLICY:
        try:
            from accelrl.agents.policy import load_policy_optimiser
        except ImportError as err:
            raise ValueError(
                "'policy:PATH' needs accelrl.agents.policy.load_policy_optimiser, which is not "
                f"available in this installation ({err})"
            ) from err
        return load_policy_optimiser(kwargs["path"])
    label = _canonical(name, kwargs)
    kwargs = dict(kwargs)
    if "spec" in kwargs:
        from accelrl.envs.spec import TaskSpec

        kwargs["spec"] = TaskSpec.from_yaml(kwargs["spec"])
    optimiser = OPTIMISERS[name](**kwargs)
    optimiser.name = label
    return optimiser


def make_optimiser(spec: str) -> Optimiser:
    """A fresh optimiser from ``spec`` (see the module documentation).

    Its ``name`` is the registered name, followed by the overrides when there are any
    (``"nelder-mead:simplex_size=0.1"``), so differently configured runs stay apart in
    reports.

    :raises ValueError: For an unknown name or parameter, or a malformed value.
    """
    name, kwargs = parse_spec(spec)
    return _build(name, kwargs)


class OptimiserFactory:
    """Picklable callable that returns a fresh optimiser of ``spec`` at every call.

    The spec is validated on construction (names, keys, value types), the optimiser is
    built in the calling process, e.g. in a process-pool worker.

    :param spec: Optimiser spec, as for :func:`make_optimiser`.
    """

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self._name, self._kwargs = parse_spec(spec)

    def __call__(self) -> Optimiser:
        return _build(self._name, self._kwargs)

    def __repr__(self) -> str:
        return f"OptimiserFactory({self.spec!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OptimiserFactory) and (self._name, self._kwargs) == (
            other._name,
            other._kwargs,
        )

    def __hash__(self) -> int:
        return hash((self._name, tuple(sorted(self._kwargs.items()))))
