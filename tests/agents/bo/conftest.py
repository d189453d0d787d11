"""Fixtures of the BO tests (one torch thread, the toy problem); helpers live in
``bo_testlib``."""

from __future__ import annotations

import pytest
import torch

from accelrl.agents.bo.problem import TuningProblem

torch.set_num_threads(1)


@pytest.fixture
def toy_problem() -> TuningProblem:
    """Two variables with different units and step limits; objective ``f`` minimised in log;
    ``ok >= 0.5`` critical."""
    return TuningProblem.create(
        {
            "variables": [
                {"name": "a", "low": -1.0, "high": 1.0, "unit": "rad", "max_step": 0.2},
                {"name": "b", "low": -8.0, "high": 8.0, "unit": "1/m^2", "max_step": 1.0},
            ],
            "objective": {"name": "f", "minimise": True, "log": True},
            "constraints": [{"name": "ok", "lower": 0.5, "critical": True}],
            "initial": {"a": 0.9, "b": 6.0},
        }
    )
