"""Surrogate models: ensemble fit, uncertainty calibration, validity classifier, errors, ONNX.

The tables here are synthetic test fixtures (smooth known functions plus noise), built in
the tests; the shipped surrogate and every reported figure come from the Wake-T dataset.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from accelrl.surrogates.dataset import Dataset
from accelrl.surrogates.models import (
    Architecture,
    Surrogate,
    SurrogateError,
    SurrogateOutput,
    TrainConfig,
    evaluate,
    export_onnx,
    load_surrogate,
    onnx_parity,
    save_surrogate,
    train_surrogate,
    write_report,
)
from accelrl.surrogates.spec import DatasetSpec

torch.set_num_threads(1)


def fixture_spec() -> DatasetSpec:
    """Spec of the synthetic test fixture: two inputs (one log-scaled), three outputs."""
    return DatasetSpec.from_dict(
        {
            "name": "fixture_smooth",
            "simulator": "wake-t",
            "inputs": [
                {"name": "a", "unit": "J", "low": 1.0, "high": 3.0},
                {"name": "n", "unit": "m^-3", "low": 1e23, "high": 1e24, "scale": "log"},
            ],
            "outputs": [
                {"name": "energy_mean", "unit": "eV"},
                {"name": "charge", "unit": "C"},
                {"name": "noisy", "unit": ""},
            ],
            "design": {"n_samples": 64, "seed": 0},
        }
    )


def fixture_truth(a: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Known smooth functions of the fixture: energy [eV] and charge [C]."""
    u = np.log10(n) - 23.0  # 0..1
    energy = 1e9 * (0.5 + 0.4 * np.sin(1.5 * a) + 0.3 * u**2)
    charge = 1e-12 * 10 ** (1.0 + a - u)  # spans ~2.5 decades
    return energy, charge


def fixture_dataset(n_rows: int = 600, seed: int = 0, no_beam: bool = True) -> Dataset:
    """Synthetic table with the dataset columns: known functions, 1% noise on energy,
    heteroscedastic noise on ``noisy``, ``no_beam`` where ``a + u < 1.3``."""
    rng = np.random.default_rng(seed)
    a = rng.uniform(1.0, 3.0, n_rows)
    n = 10 ** rng.uniform(23.0, 24.0, n_rows)
    energy, charge = fixture_truth(a, n)
    u = np.log10(n) - 23.0
    energy = energy * (1 + 0.01 * rng.standard_normal(n_rows))
    noisy = 1.0 + a + (0.05 + 0.3 * u) * rng.standard_normal(n_rows)
    status = np.where((a + u < 1.3) & no_beam, "no_beam", "ok")
    bad = status != "ok"
    table = pd.DataFrame(
        {
            "sample": np.arange(n_rows),
            "a": a,
            "n": n,
            "energy_mean": np.where(bad, np.nan, energy),
            "charge": np.where(bad, np.nan, charge),
            "noisy": np.where(bad, np.nan, noisy),
            "status": status,
            "message": "",
            "fidelity": "fixture",
            "simulator": "fixture",
            "wall_time_s": 1.0,
        }
    )
    return Dataset(spec=fixture_spec(), table=table)


FAST = TrainConfig(
    architecture=Architecture(members=4, hidden=[64, 64], classifier_hidden=[32]),
    max_epochs=400,
    patience=60,
    batch_size=64,
    learning_rate=3e-3,
    seed=0,
)


@pytest.fixture(scope="module")
def trained() -> tuple[Dataset, object]:
    ds = fixture_dataset()
    return ds, train_surrogate(ds, FAST, progress=False)


def test_ensemble_recovers_known_function(trained) -> None:
    ds, result = trained
    model = result.model
    rng = np.random.default_rng(5)
    a = rng.uniform(1.0, 3.0, 400)
    n = 10 ** rng.uniform(23.0, 24.0, 400)
    energy, charge = fixture_truth(a, n)
    pred = model.predict({"a": a, "n": n})
    e_err = np.abs(pred["mean"][:, 0] / energy - 1)
    q_err = np.abs(pred["mean"][:, 1] / charge - 1)
    # noise-free truth: median relative error well under the 1% label noise, log output
    # spanning 2.5 decades within a few percent
    assert np.median(e_err) < 0.01
    assert np.median(q_err) < 0.05
    assert model.output_names == ["energy_mean", "charge", "noisy"]
    # charge spans 2.5 decades -> log; the zero-crossing-free but narrow `noisy` -> identity
    assert [o.transform for o in model.outputs][1:] == ["log", "identity"]


def test_coverage_is_calibrated_on_held_out_rows(trained) -> None:
    ds, result = trained
    test = ds.table.iloc[result.split.test]
    test = test[test["status"] == "ok"]
    metrics = evaluate(
        result.model, test[ds.input_names].to_numpy(), test[result.model.output_names].to_numpy()
    )
    for name in ("energy_mean", "noisy"):
        assert 0.85 <= metrics["outputs"][name]["coverage95"] <= 1.0, name
    # the heteroscedastic output is modelled as noise, not as signal
    noisy = metrics["outputs"]["noisy"]
    assert noisy["noise_fraction"] > 0.1
    assert metrics["outputs"]["energy_mean"]["r2"] > 0.97


def test_heteroscedastic_std_follows_the_noise(trained) -> None:
    _, result = trained
    pred = result.model.predict({"a": [2.0, 2.0], "n": [1.1e23, 0.95e24]})
    # fixture noise on `noisy` grows from 0.05 to 0.35 with log10(n)
    assert pred["std"][1, 2] > 2.5 * pred["std"][0, 2]


def test_validity_classifier_separates_no_beam(trained) -> None:
    _, result = trained
    p = result.model.predict({"a": [1.05, 2.8], "n": [1.05e23, 8e23]})["p_valid"]
    assert p[0] < 0.2 and p[1] > 0.9


def test_interval_contains_mean_and_is_asymmetric_for_log(trained) -> None:
    _, result = trained
    pred = result.model.predict({"a": [2.0], "n": [3e23]})
    assert np.all(pred["low95"] < pred["mean"]) and np.all(pred["mean"] < pred["high95"])
    lo, mid, hi = pred["low95"][0, 1], pred["mean"][0, 1], pred["high95"][0, 1]
    assert hi / mid == pytest.approx(mid / lo, rel=1e-4)  # symmetric in log space


def test_bad_inputs_raise_clear_errors(trained) -> None:
    _, result = trained
    model = result.model
    with pytest.raises(SurrogateError, match="NaN or inf in \\['a'\\]"):
        model.predict({"a": [np.nan], "n": [2e23]})
    with pytest.raises(SurrogateError, match="missing input columns \\['n'\\]"):
        model.predict({"a": [2.0]})
    with pytest.raises(SurrogateError, match="'n' = 5e\\+24 is outside the trained range"):
        model.predict({"a": [2.0], "n": [5e24]})
    with pytest.raises(SurrogateError, match="shape"):
        model(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="unknown output"):
        SurrogateOutput(model, "nope")
    with pytest.raises(ValueError, match="leaves under 20%"):
        TrainConfig(val_fraction=0.45, test_fraction=0.45)


def test_gradients_flow_to_physical_inputs(trained) -> None:
    _, result = trained
    x = torch.tensor([[2.0, 3e23]], requires_grad=True)
    SurrogateOutput(result.model, "energy_mean")(x).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad[0, 0] != 0


def test_save_load_onnx_parity_and_report(trained, tmp_path) -> None:
    ds, result = trained
    model = result.model
    save_surrogate(model, tmp_path / "m")
    loaded = load_surrogate(tmp_path / "m")
    x = torch.tensor([[1.7, 4e23], [2.9, 9e23]])
    for a, b in zip(model(x), loaded(x), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    path = export_onnx(loaded, tmp_path / "m" / "surrogate.onnx")
    assert onnx_parity(loaded, path) <= 1e-5
    test = ds.table.iloc[result.split.test]
    test = test[test["status"] == "ok"]
    write_report(
        model,
        test[ds.input_names].to_numpy(),
        test[model.output_names].to_numpy(),
        tmp_path / "report",
    )
    for f in ("report.json", "report.md", "parity.png", "uncertainty.png"):
        assert (tmp_path / "report" / f).stat().st_size > 0


def test_training_is_seeded() -> None:
    ds = fixture_dataset(n_rows=120, no_beam=False)
    cfg = FAST.model_copy(update={"max_epochs": 20})
    a = train_surrogate(ds, cfg, progress=False).model
    b = train_surrogate(ds, cfg, progress=False).model
    assert not a.has_classifier
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(va, vb, rtol=0, atol=0, msg=k)


def test_surrogate_rejects_empty_columns() -> None:
    with pytest.raises(ValueError, match="at least one input"):
        Surrogate([], [])


def test_any_leading_batch_shape(trained) -> None:
    """BoTorch evaluates ``[b, q, d]`` batches; results equal the flat batch."""
    _, result = trained
    x = torch.tensor([[[1.5, 2e23]], [[2.5, 7e23]], [[2.0, 4e23]]], dtype=torch.float64)
    mean3, std3, p3 = result.model(x)
    mean2, std2, p2 = result.model(x.reshape(3, 2))
    assert mean3.shape == (3, 1, 3) and p3.shape == (3, 1)
    torch.testing.assert_close(mean3.reshape(3, 3), mean2, rtol=1e-12, atol=0)
    torch.testing.assert_close(std3.reshape(3, 3), std2, rtol=1e-12, atol=0)


def test_compare_with_a_simulated_result(trained) -> None:
    """The re-simulation comparison (the simulator call itself is exercised by the CLI)."""
    from accelrl.surrogates.models.resimulate import compare

    _, result = trained
    model = result.model
    setting = {"a": 2.0, "n": 3e23}
    pred = model.predict({k: [v] for k, v in setting.items()})
    inside = {"energy_mean": float(pred["mean"][0, 0]), "charge": float(pred["high95"][0, 1]) * 2}
    rec = compare(model, setting, "ok", inside)
    assert rec["outputs"]["energy_mean"]["inside95"] is True
    assert rec["outputs"]["charge"]["inside95"] is False
    assert rec["outputs"]["noisy"]["inside95"] is None  # not simulated: not counted
    assert rec["inside_fraction"] == 0.5


def test_fidelity_check_separates_resolved_from_unresolved() -> None:
    """Two synthetic fidelities of the same design: a resolved output (tiny difference) and an
    unresolved one (difference as large as its variation across the design)."""
    from accelrl.surrogates.models.report import fidelity_check

    rng = np.random.default_rng(0)
    n = 200
    trend = rng.uniform(1, 2, n)
    low = pd.DataFrame(
        {
            "sample": np.arange(n),
            "status": "ok",
            "good": trend,
            "bad": 1 + 0.01 * rng.standard_normal(n),
        }
    )
    high = low.copy()
    high["good"] = trend * (1 + 1e-3 * rng.standard_normal(n))
    high["bad"] = 1 + 0.01 * rng.standard_normal(n)
    out = fidelity_check(low, high, ["good", "bad"], {"good": "log", "bad": "log"})
    assert out["n_pairs"] == n
    assert out["outputs"]["good"]["noise_ratio"] < 1e-3
    assert 1.0 < out["outputs"]["bad"]["noise_ratio"] < 3.0  # independent draws: ratio ~2
