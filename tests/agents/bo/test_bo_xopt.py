"""The prior module as an Xopt ``mean_modules`` entry: a few real Xopt BO steps."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from accelrl.agents.bo.prior import BeamlinePrior
from accelrl.agents.bo.xopt_interop import NamedInputs, expected_improvement_generator

_DEFAULT_DTYPE = torch.get_default_dtype()
xopt = pytest.importorskip("xopt")
pytest.importorskip("xopt.generators.bayesian")
# Importing Xopt's BO generators sets torch's global default dtype to float64: the rest of the
# suite (same worker process) must not inherit it.
torch.set_default_dtype(_DEFAULT_DTYPE)


@pytest.fixture(autouse=True)
def _xopt_default_dtype() -> Iterator[None]:
    """Xopt runs with the float64 default its import sets; restored afterwards."""
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(_DEFAULT_DTYPE)


def test_xopt_runs_bo_steps_with_the_physics_prior() -> None:
    from xopt import VOCS, Evaluator, Xopt

    from accelrl.envs import TASKS, TransverseTuningEnv, load_trials

    env = TransverseTuningEnv(
        TASKS["accelrl/AresEATransverseTuning-v0"](),
        action_mode="direct",
        terminate_on_target=False,
    )
    _, info = env.reset(seed=30, options={"trial": load_trials()[30]})
    target = np.asarray(info["target"])
    names = [a.name for a in env.task.actuators]
    bounds = {a.name: [a.low, a.high] for a in env.task.actuators}
    vocs = VOCS(  # variables in another order than the prior's inputs: the adapter reorders
        variables={n: bounds[n] for n in sorted(names)}, objectives={"log_mae": "MINIMIZE"}
    )
    assert list(vocs.variable_names) != names

    def machine(inputs: dict) -> dict:
        _, _, _, _, out = env.step(np.array([inputs[n] for n in names], dtype=np.float64))
        return {"log_mae": float(np.log(np.mean(np.abs(out["reading"] - target))))}

    prior = BeamlinePrior(target, calibrate=False)
    generator = expected_improvement_generator(vocs, "log_mae", prior)
    generator.numerical_optimizer.n_restarts = 2
    X = Xopt(evaluator=Evaluator(function=machine), generator=generator)
    X.evaluate_data({n: [float(v)] for n, v in zip(names, env.task.start, strict=True)})
    for _ in range(2):
        X.step()
    assert len(X.data) == 3 and np.all(np.isfinite(X.data["log_mae"].to_numpy(float)))

    # the GP's mean is our module, fed in Xopt's column order
    mean = X.generator.model.models[0].mean_module
    assert isinstance(mean.model, NamedInputs) and isinstance(mean.model.prior, BeamlinePrior)
    x = torch.tensor([[float(X.data[n].iloc[0]) for n in vocs.variable_names]], dtype=torch.float64)
    expected = prior(torch.tensor([[float(X.data[n].iloc[0]) for n in names]], dtype=torch.float64))
    torch.testing.assert_close(mean.model(x), expected)
