"""Fixtures of the surrogate tests: a small dataset spec and a surrogate trained on a
synthetic table with the Wake-T dataset's column names (smooth functions, not simulation
data)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from accelrl.surrogates.dataset import Dataset
from accelrl.surrogates.models import Architecture, Surrogate, TrainConfig, train_surrogate
from accelrl.surrogates.spec import DatasetSpec

SPEC: dict[str, Any] = {
    "name": "tiny",
    "description": "test spec",
    "simulator": "wake-t",
    "inputs": [
        {"name": "plasma_density", "unit": "m^-3", "low": 1.5e23, "high": 2.5e23},
        {"name": "beam_current_head", "unit": "A", "low": 1e3, "high": 1e4, "scale": "log"},
    ],
    "outputs": [
        {"name": "charge", "unit": "C"},
        {"name": "energy_median", "unit": "eV"},
    ],
    "fixed": {
        "laser_energy": 10.0,
        "beam_current_tail": 5e3,
        "beam_length": 10e-6,
        "beam_delay": 50e-6,
    },
    "fidelity": {"stage_length": 1e-3, "resolution": 0.5},
    "design": {"method": "sobol", "n_samples": 8, "seed": 1},
}


@pytest.fixture
def spec_dict() -> dict[str, Any]:
    """A fresh copy of a small valid spec mapping."""
    return copy.deepcopy(SPEC)


@pytest.fixture
def spec_file(tmp_path: Path, spec_dict: dict[str, Any]) -> Path:
    """The small spec written to ``tmp_path/surrogates/tiny.yaml``."""
    path = tmp_path / "surrogates" / "tiny.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(spec_dict))
    return path


def lpa_fixture_dataset(n_rows: int = 400, seed: int = 0) -> Dataset:
    """Synthetic test fixture with the Wake-T dataset's names: energy grows with laser energy
    and falls with density, spread is smallest at a delay that depends on density, charge
    falls with delay; no beam at low laser energy and long delay."""
    spec = DatasetSpec.from_dict(
        {
            "name": "fixture_lpa",
            "simulator": "wake-t",
            "inputs": [
                {"name": "laser_energy", "unit": "J", "low": 7.0, "high": 13.0},
                {"name": "plasma_density", "unit": "m^-3", "low": 1.5e23, "high": 2.5e23},
                {"name": "beam_delay", "unit": "m", "low": 4e-5, "high": 6e-5},
            ],
            "outputs": [
                {"name": "energy_median", "unit": "eV"},
                {"name": "energy_spread_core", "unit": ""},
                {"name": "charge_in_acceptance", "unit": "C"},
            ],
            "design": {"n_samples": 64, "seed": 0},
        }
    )
    rng = np.random.default_rng(seed)
    le = rng.uniform(7, 13, n_rows)
    n = rng.uniform(1.5e23, 2.5e23, n_rows)
    d = rng.uniform(4e-5, 6e-5, n_rows)
    u_l, u_n, u_d = (le - 7) / 6, (n - 1.5e23) / 1e23, (d - 4e-5) / 2e-5
    energy = 2e8 + 8e8 * (0.4 + 0.6 * u_l) * (1.2 - 0.4 * u_n)
    spread = 0.005 + 0.05 * (u_d - 0.3 - 0.4 * u_n) ** 2
    charge = 30e-12 * (1.2 - u_d) * (0.8 + 0.4 * u_l)
    status = np.where((u_l < 0.15) & (u_d > 0.8), "no_beam", "ok")
    bad = status != "ok"
    noise = 1 + 0.005 * rng.standard_normal((3, n_rows))
    table = pd.DataFrame(
        {
            "sample": np.arange(n_rows),
            "laser_energy": le,
            "plasma_density": n,
            "beam_delay": d,
            "energy_median": np.where(bad, np.nan, energy * noise[0]),
            "energy_spread_core": np.where(bad, np.nan, spread * noise[1]),
            "charge_in_acceptance": np.where(bad, np.nan, charge * noise[2]),
            "status": status,
            "message": "",
            "fidelity": "fixture",
            "simulator": "fixture",
            "wall_time_s": 5.0,
        }
    )
    return Dataset(spec=spec, table=table)


def fit_fixture_surrogate(
    dataset: Dataset,
    members: int = 4,
    hidden: Sequence[int] = (48, 48),
    classifier_hidden: Sequence[int] = (16,),
    max_epochs: int = 250,
    patience: int = 50,
    seed: int = 1,
) -> Surrogate:
    """A small ensemble fitted to a fixture table (learning rate 3e-3, no progress bar)."""
    cfg = TrainConfig(
        architecture=Architecture(
            members=members, hidden=list(hidden), classifier_hidden=list(classifier_hidden)
        ),
        max_epochs=max_epochs,
        patience=patience,
        learning_rate=3e-3,
        seed=seed,
    )
    return train_surrogate(dataset, cfg, progress=False).model


@pytest.fixture(scope="session")
def fit_surrogate() -> Callable[..., Surrogate]:
    """:func:`fit_fixture_surrogate`, for test modules that fit their own fixture."""
    return fit_fixture_surrogate


@pytest.fixture(scope="module")
def surrogate() -> Surrogate:
    """A surrogate of :func:`lpa_fixture_dataset` (one per test module)."""
    return fit_fixture_surrogate(lpa_fixture_dataset())
