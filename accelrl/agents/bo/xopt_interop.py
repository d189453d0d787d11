"""Xopt interoperability: a prior module as an Xopt ``mean_modules`` entry (``[xopt]`` extra).

Xopt's ``StandardModelConstructor(mean_modules={output: module})`` wraps ``module`` in its
``CustomMean``, which hands it *physical* inputs with the columns in ``vocs.variable_names``
order and standardises its output itself. A prior of :mod:`accelrl.agents.bo.prior` expects
its own ``input_names`` order (which the VOCS need not follow), so :func:`xopt_mean_module`
puts :class:`NamedInputs` in front of it; nothing else changes.

>>> from xopt import VOCS                                                   # doctest: +SKIP
>>> vocs = VOCS(variables={"Q1": [-72, 72], ...}, objectives={"log_mae": "MINIMIZE"})
>>> generator = expected_improvement_generator(vocs, "log_mae", BeamlinePrior(target))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["NamedInputs", "expected_improvement_generator", "xopt_mean_module"]


class NamedInputs(nn.Module):
    """``prior`` with its input columns taken by name from a differently ordered input.

    :param prior: Module with ``input_names`` (see :mod:`accelrl.agents.bo.prior`).
    :param names: Column names of the inputs this module receives (e.g. Xopt's
        ``vocs.variable_names``).
    :param fixed_inputs: Values (SI) of prior inputs that are not among ``names``.
    :raises ValueError: When a prior input is neither in ``names`` nor fixed.
    """

    def __init__(
        self,
        prior: nn.Module,
        names: Sequence[str],
        fixed_inputs: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        fixed = dict(fixed_inputs or {})
        names = list(names)
        self.prior = prior
        self.names = tuple(names)
        self.input_names = tuple(names)
        self.columns: list[int] = []
        values = []
        for n in getattr(prior, "input_names", ()):
            if n in names:
                self.columns.append(names.index(n))
                values.append(0.0)
            elif n in fixed:
                self.columns.append(-1)
                values.append(float(fixed[n]))
            else:
                raise ValueError(f"prior input {n!r} is not in {names} and has no fixed value")
        if not self.columns:
            raise ValueError(f"{type(prior).__name__} has no `input_names`")
        self.register_buffer("fixed", torch.tensor(values, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The prior ``[...]`` (its objective units) at physical ``x [..., len(names)]``."""
        x = x.to(torch.float64)
        cols = [
            x[..., c] if c >= 0 else self.fixed[i].expand(x.shape[:-1])
            for i, c in enumerate(self.columns)
        ]
        return self.prior(torch.stack(cols, dim=-1))


def xopt_mean_module(
    prior: nn.Module, variable_names: Sequence[str], fixed_inputs: Mapping[str, float] | None = None
) -> NamedInputs:
    """``prior`` ready for ``StandardModelConstructor(mean_modules={output: ...})``.

    :param variable_names: ``vocs.variable_names`` (the column order Xopt uses).
    """
    return NamedInputs(prior, variable_names, fixed_inputs)


def expected_improvement_generator(
    vocs: Any, output: str, prior: nn.Module, trainable: bool = False, **kwargs: Any
) -> Any:
    """An Xopt ``ExpectedImprovementGenerator`` whose GP for ``output`` has ``prior`` as mean.

    :param vocs: The Xopt ``VOCS``.
    :param output: The objective (or constraint) name the prior predicts, in its units.
    :param prior: Prior module over named physical inputs.
    :param trainable: Let Xopt fit the prior's parameters with the GP (``trainable_mean_keys``).
    :param kwargs: Further ``ExpectedImprovementGenerator`` fields.
    :raises ImportError: Without the ``[xopt]`` extra.
    """
    # Importing Xopt's BO generators sets torch's *global* default dtype to float64
    # (xopt.generators.bayesian.__init__); give the caller's default back.
    default_dtype = torch.get_default_dtype()
    try:
        from xopt.generators.bayesian.expected_improvement import ExpectedImprovementGenerator
        from xopt.generators.bayesian.models.standard import StandardModelConstructor
    except ImportError as err:  # pragma: no cover - depends on the extra
        raise ImportError(
            "Xopt interop needs the [xopt] extra: pip install 'accelrl[xopt]'"
        ) from err
    finally:
        torch.set_default_dtype(default_dtype)
    constructor = StandardModelConstructor(
        mean_modules={output: xopt_mean_module(prior, vocs.variable_names)},
        trainable_mean_keys=[output] if trainable else [],
    )
    return ExpectedImprovementGenerator(vocs=vocs, gp_constructor=constructor, **kwargs)
