"""Shared helpers of the BO tests (:mod:`accelrl.agents.bo`): a cheap toy prior and objective,
fast session settings. Fixtures live in ``conftest.py``."""

from __future__ import annotations

import torch
from torch import nn

torch.set_num_threads(1)

#: Session settings that keep a suggestion cheap in tests.
FAST = {"budget_s": 5.0, "fit_maxiter": 8, "raw_samples": 16, "restarts": 2, "acq_maxiter": 8}


class Bowl(nn.Module):
    """``log(1e-3 + sum((x - centre)^2 / scale^2))`` over inputs named ``("b", "a")`` —
    deliberately *not* the problem's order, to exercise the column mapping.

    :param centre: ``{"a": ..., "b": ...}`` minimum (SI).
    """

    input_names = ("b", "a")

    def __init__(self, centre: dict[str, float] | None = None) -> None:
        super().__init__()
        c = centre or {"a": 0.3, "b": -2.0}
        self.register_buffer("centre", torch.tensor([c["b"], c["a"]], dtype=torch.float64))
        self.register_buffer("scale", torch.tensor([4.0, 1.0], dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(1e-3 + (((x - self.centre) / self.scale) ** 2).sum(-1))


def bowl_value(a: float, b: float, centre: dict[str, float] | None = None) -> float:
    """The toy machine's objective (what :class:`Bowl` predicts, before the log)."""
    c = centre or {"a": 0.3, "b": -2.0}
    return 1e-3 + (a - c["a"]) ** 2 + ((b - c["b"]) / 4.0) ** 2
