"""The prior-mean wrapper's contract, calibration by marginal likelihood, and the fallback."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from bo_testlib import Bowl
from torch import nn

from accelrl.agents.bo.model import CalibratedMean, PriorMean, fit_gp, fit_models
from accelrl.agents.bo.prior import BeamlinePrior
from accelrl.agents.bo.problem import ares_ea_problem

LOW = torch.tensor([-1.0, -8.0], dtype=torch.float64)
HIGH = torch.tensor([1.0, 8.0], dtype=torch.float64)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_wrapped_mean_is_standardised_prior_at_physical_x(sign: float) -> None:
    """PriorMean(x_norm) == (sign * prior(x_phys) - mean) / std, columns mapped by name."""
    prior = Bowl()
    mean = PriorMean(prior, ["a", "b"], LOW, HIGH, sign=sign)
    mean.set_standardisation(0.7, 2.5)
    u = torch.rand(3, 7, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x_phys = LOW + u * (HIGH - LOW)
    expected = (sign * prior(x_phys[..., [1, 0]]) - 0.7) / 2.5  # prior's own order: (b, a)
    torch.testing.assert_close(mean(u), expected, rtol=1e-12, atol=1e-12)


def test_contract_holds_inside_a_fitted_singletaskgp() -> None:
    """After fitting, the GP's mean module uses the GP's own outcome standardisation."""
    prior = Bowl()
    pm = PriorMean(prior, ["a", "b"], LOW, HIGH, sign=-1.0)
    g = torch.Generator().manual_seed(0)
    X = torch.rand(8, 2, dtype=torch.float64, generator=g)
    Y = -prior(pm.physical(X)[..., [1, 0]]) + 0.05 * torch.randn(8, generator=g, dtype=X.dtype)
    fit = fit_models(X, Y, pm, maxiter=10)
    ot = fit.model.outcome_transform
    x = torch.rand(5, 2, dtype=torch.float64, generator=g)
    raw = prior(pm.physical(x)[..., [1, 0]])
    expected = (-raw - ot.means.reshape(())) / ot.stdvs.reshape(())
    with torch.no_grad():
        torch.testing.assert_close(pm(x), expected, rtol=1e-10, atol=1e-10)
    # the raw prior is recoverable in objective units
    torch.testing.assert_close(pm.raw(pm.physical(x)), raw.detach())


def test_fixed_inputs_and_missing_inputs() -> None:
    prior = Bowl()
    mean = PriorMean(prior, ["a"], LOW[:1], HIGH[:1], fixed_inputs={"b": -2.0})
    u = torch.tensor([[0.65]], dtype=torch.float64)  # a = 0.3: the minimum when b = -2
    torch.testing.assert_close(mean(u), torch.log(torch.tensor([1e-3], dtype=torch.float64)))
    with pytest.raises(ValueError, match="prior input 'b' is not a problem variable"):
        PriorMean(prior, ["a"], LOW[:1], HIGH[:1])
    with pytest.raises(ValueError, match="input_names"):
        PriorMean(nn.Linear(2, 1), ["a", "b"], LOW, HIGH)


def test_any_module_over_named_inputs_works_as_mean() -> None:
    """A learned surrogate (here: a small MLP) plugs in the same way."""

    class Surrogate(nn.Module):
        input_names = ("a", "b")

        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1)).double()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x).squeeze(-1)

    pm = PriorMean(Surrogate(), ["a", "b"], LOW, HIGH)
    X = torch.rand(6, 2, dtype=torch.float64)
    fit = fit_models(X, torch.randn(6, dtype=torch.float64), pm, maxiter=5)
    with torch.no_grad():
        assert fit.model.posterior(X).mean.shape == (6, 1)


def _trial_like_prior() -> tuple[BeamlinePrior, BeamlinePrior]:
    """A "machine" (the beamline with known offsets) and the design prior to calibrate."""
    target = [5e-4, 2e-4, -3e-4, 1e-4]
    machine = BeamlinePrior(target, calibrate=False)
    with torch.no_grad():
        machine.raw_centroid.copy_(torch.tensor([0.8, -0.5, -0.6, 0.4]))
        machine.raw_misalignment.copy_(torch.linspace(-0.7, 0.7, machine.raw_misalignment.numel()))
        machine.raw_size.copy_(torch.tensor([0.5, -0.3, -0.4, 0.2]))
    return machine, BeamlinePrior(target)


def test_calibration_is_fitted_with_the_gp_hyperparameters() -> None:
    """Fitting the joint marginal likelihood moves the calibrated readings towards the
    machine's: the reading error at the data falls by more than half."""
    machine, prior = _trial_like_prior()
    problem = ares_ea_problem()
    pm = PriorMean(prior, problem.names, problem.low, problem.high, sign=-1.0)
    g = torch.Generator().manual_seed(3)
    X = 0.5 + 0.15 * (torch.rand(12, 5, dtype=torch.float64, generator=g) - 0.5)
    with torch.no_grad():
        x_phys = pm.physical(X)
        readings = machine.observe(x_phys)
        Y = -machine(x_phys)
        before = (prior.observe(x_phys) - readings).abs().mean()
    fit = None
    for _ in range(4):  # warm-started refits, as in a session
        fit = fit_models(
            X, Y, pm, None if fit is None else fit.states, maxiter=15, observables=readings
        )
    with torch.no_grad():
        after = (prior.observe(x_phys) - readings).abs().mean()
    assert fit is not None and fit.uses_prior
    assert float(after) < 0.5 * float(before)
    assert any("raw_misalignment" in k for k in fit.states["prior"])


def test_fallback_to_constant_mean_on_poor_correlation() -> None:
    pm = PriorMean(Bowl(), ["a", "b"], LOW, HIGH, sign=-1.0)
    X = torch.rand(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    Y = torch.randn(8, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    bad = fit_models(X, Y, pm, maxiter=5, predictive=(0.1, 8))
    assert bad.fallback and not bad.uses_prior
    assert not isinstance(bad.model.mean_module, CalibratedMean)
    good = fit_models(X, Y, pm, maxiter=5, predictive=(0.9, 8))
    assert good.uses_prior and not good.fallback
    assert isinstance(good.model.mean_module, CalibratedMean)
    early = fit_models(X[:3], Y[:3], pm, maxiter=5, predictive=(-0.9, 3))  # too few points
    assert early.uses_prior and math.isclose(early.correlation, -0.9)


def test_fit_survives_constant_and_duplicate_data() -> None:
    X = torch.full((5, 2), 0.5, dtype=torch.float64)
    model = fit_gp(X, torch.zeros(5, dtype=torch.float64), maxiter=5)
    with torch.no_grad():
        post = model.posterior(torch.rand(4, 2, dtype=torch.float64))
    assert torch.all(torch.isfinite(post.mean)) and torch.all(torch.isfinite(post.variance))


def test_beamline_prior_matches_environment_model() -> None:
    """The design prior's reading is the compiled beamline with the design beam."""
    from accelrl.envs.model import default_model

    model = default_model()
    prior = BeamlinePrior([0, 0, 0, 0], calibrate=False)
    x = np.array([[10.0, -10.0, 1e-3, 10.0, -2e-3]])
    expected = model.evaluate(x, model.incoming_nominal, np.zeros(model.num_misalignments))
    with torch.no_grad():
        got = prior.observe(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert prior.config()["kind"] == "beamline"
    with pytest.raises(ValueError, match="target must be 4 finite values"):
        BeamlinePrior([0.0, 1.0])


def test_multi_output_and_tuple_priors() -> None:
    """A surrogate returning ``(mean [..., k], std [..., k])`` plugs in via SelectOutput."""
    from accelrl.agents.bo.prior import SelectOutput

    class TwoOutputs(nn.Module):
        input_names = ("a", "b")

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            mean = torch.stack([x.sum(-1), (x**2).sum(-1) + 1.0], dim=-1)
            return mean, torch.ones_like(mean)

    x = torch.rand(4, 2, dtype=torch.float64)
    pm = PriorMean(SelectOutput(TwoOutputs(), 1, log=True), ["a", "b"], LOW, HIGH)
    phys = pm.physical(x)
    torch.testing.assert_close(pm(x), torch.log((phys**2).sum(-1) + 1.0))
    bad = PriorMean(TwoOutputs(), ["a", "b"], LOW, HIGH)
    with pytest.raises(ValueError, match="wrap multi-output models with SelectOutput"):
        bad(x)


def test_a_prior_without_calibration_is_never_changed(toy_problem, tmp_path) -> None:
    """A module prior with its own (trainable) parameters and no ``calibration_vector()``,
    e.g. a learned surrogate: the session works on a frozen copy in evaluation mode and
    leaves the caller's weights, gradients and mode alone; its state is not saved."""
    from bo_testlib import FAST, bowl_value

    from accelrl.agents.bo.session import TuningSession

    class Learned(torch.nn.Module):
        input_names = ("a", "b")

        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 1, dtype=torch.float64)
            self.drop = torch.nn.Dropout(0.5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.drop(self.layer(x))[..., 0]

    prior = Learned().eval()
    before = {k: v.clone() for k, v in prior.state_dict().items()}
    session = TuningSession(toy_problem, prior, FAST)
    x = toy_problem.initial_vector
    for _ in range(6):
        session.ingest({"a": x[0], "b": x[1]}, {"f": bowl_value(x[0], x[1]), "ok": 1.0})
        s = session.suggest()
        x = [s["a"], s["b"]]
    assert session.diagnostics()["uses_prior"] or session.diagnostics()["prior_fallback"]
    assert not prior.training
    for k, v in prior.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in prior.parameters())  # no gradients piled up
    session.save(tmp_path / "s")
    with np.load(tmp_path / "s" / "model.npz", allow_pickle=False) as saved:
        assert "prior" not in saved["index"][:, 0].tolist()  # only GP parameters
    held = PriorMean(prior.train(), ["a", "b"], [-1.0, -8.0], [1.0, 8.0])
    assert held.prior is not prior and not held.prior.training and prior.training
    assert list(held.parameters()) == [] and not any("layer" in k for k in held.state_dict())
