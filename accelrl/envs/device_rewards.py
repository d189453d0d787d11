"""The reward terms of :mod:`accelrl.envs.rewards` on torch tensors (any device).

Same configuration, same formulas, same floor :data:`~accelrl.envs.rewards.EPS`; the values
agree with the numpy terms to floating-point rounding (sums may be taken in another order).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from accelrl.envs.rewards import EPS, Reward, RewardInputs

Term = Callable[[RewardInputs], torch.Tensor]


def _icml_objective(error: torch.Tensor) -> torch.Tensor:
    a = error.abs()
    return torch.clamp_min(a[:, 0] + 2.0 * a[:, 1] + a[:, 2] + 2.0 * a[:, 3], EPS)


def _distance(d: torch.Tensor, norm: str) -> torch.Tensor:
    if norm == "l1":
        out = d.abs().sum(dim=1) / d.shape[1]
    else:
        out = torch.sqrt((d * d).sum(dim=1) / d.shape[1])
    return torch.clamp_min(out, EPS)


def icml(x: RewardInputs) -> torch.Tensor:
    r = torch.log(_icml_objective(x.previous_error) / _icml_objective(x.error))
    return r + torch.clamp_max(r, 0.0)


def _shaped(kind: str, norm: str = "l1", log: bool = False, normalise: bool = True) -> Term:
    def term(x: RewardInputs) -> torch.Tensor:
        d = _distance(x.error, norm)
        d0 = _distance(x.initial_reading - x.target, norm)
        ref = _distance(x.previous_error, norm) if kind == "differential" else None
        if log:
            value = torch.log(d) - (torch.log(d0) if normalise else 0.0)
            prev = None if ref is None else torch.log(ref) - (torch.log(d0) if normalise else 0.0)
        else:
            value = d / d0 if normalise else d
            prev = None if ref is None else (ref / d0 if normalise else ref)
        return -value if prev is None else prev - value

    return term


def on_screen(x: RewardInputs) -> torch.Tensor:
    return torch.where(x.on_screen, 1.0, -1.0).to(x.error.dtype)


def magnet_change(x: RewardInputs) -> torch.Tensor:
    change = (x.magnets - x.previous_magnets).abs() / x.magnet_range
    return -change.sum(dim=1) / change.shape[1]


_SIMPLE: dict[str, Term] = {"icml": icml, "on_screen": on_screen, "magnet_change": magnet_change}


class DeviceReward:
    """A :class:`~accelrl.envs.rewards.Reward` evaluated on torch tensors.

    :param config: As for :class:`~accelrl.envs.rewards.Reward` (validated by it).
    """

    def __init__(self, config: str | list[dict[str, Any]]) -> None:
        self.reward = Reward(config)  # validates terms and options
        items = [{"term": config}] if isinstance(config, str) else [dict(c) for c in config]
        self.terms: list[tuple[float, Term]] = []
        for item in items:
            name = item.pop("term")
            weight = float(item.pop("weight", 1.0))
            fn = _SIMPLE[name] if name in _SIMPLE else _shaped(name, **item)
            self.terms.append((weight, fn))

    def __call__(self, inputs: RewardInputs) -> torch.Tensor:
        total: torch.Tensor | None = None
        for weight, fn in self.terms:
            value = fn(inputs) if weight == 1.0 else weight * fn(inputs)
            total = value if total is None else total + value
        assert total is not None
        return total
