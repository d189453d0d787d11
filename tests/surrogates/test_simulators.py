"""Real simulator runs: a tiny Wake-T stage and a tiny FBPIC stage, checked for physics.

The first Wake-T run in a fresh environment compiles its numba kernels (about a minute);
later runs load them from numba's cache.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.constants as ct

from accelrl.execution import limit_threads
from accelrl.surrogates.dataset import load_dataset
from accelrl.surrogates.generate import generate
from accelrl.surrogates.simulators import Simulator, make_simulator
from accelrl.surrogates.simulators.lpa import (
    MC2_EV,
    current_profile,
    plasma_wavenumber,
    resolve_parameters,
    witness_bunch,
)
from accelrl.surrogates.spec import DatasetSpec

FIXED = {
    "laser_energy": 10.0,
    "beam_current_tail": 5e3,
    "beam_length": 10e-6,
    "beam_delay": 50e-6,
}
SETTING = {"plasma_density": 2e23, "beam_current_head": 5e3}


def _spec(simulator: str, fidelity: dict[str, Any], n: int = 2) -> DatasetSpec:
    return DatasetSpec.from_dict(
        {
            "name": f"tiny-{simulator}",
            "simulator": simulator,
            "inputs": [
                {"name": "plasma_density", "unit": "m^-3", "low": 1.8e23, "high": 2.2e23},
                {"name": "beam_current_head", "unit": "A", "low": 4e3, "high": 6e3},
            ],
            "outputs": [{"name": n, "unit": ""} for n in _OUTPUTS],
            "fixed": FIXED,
            "fidelity": fidelity,
            "design": {"n_samples": n, "seed": 3},
        }
    )


_OUTPUTS = [
    "charge",
    "charge_fraction",
    "beam_intact",
    "energy_mean",
    "energy_median",
    "energy_spread_rms",
    "emittance_x",
    "emittance_y",
    "emittance_x_core",
    "size_x",
    "bunch_length",
    "charge_in_acceptance",
]


def _initial_charge(setting: dict[str, float]) -> float:
    p = resolve_parameters(FIXED, setting)
    z = np.linspace(-100e-6, 0.0, 200001)
    return float(np.trapezoid(current_profile(z, p), z) / ct.c)


def test_witness_bunch_matches_its_parameters() -> None:
    p = resolve_parameters(FIXED, SETTING)
    b = witness_bunch(p, 200_000, seed=0)
    assert b.charge == pytest.approx(_initial_charge(SETTING), rel=1e-3)
    gamma = np.sqrt(1 + b.ux**2 + b.uy**2 + b.uz**2)
    assert np.mean((gamma - 1) * MC2_EV) == pytest.approx(200e6, rel=1e-3)
    eps_x = math.sqrt(np.var(b.x) * np.var(b.ux) - np.cov(b.x, b.ux)[0, 1] ** 2)
    assert eps_x == pytest.approx(3e-6, rel=0.01)
    head, tail = -50e-6, -60e-6
    assert np.mean((b.z > tail) & (b.z < head)) > 0.75


def test_waket_tiny_stage_is_physical(tmp_path: Path) -> None:
    pytest.importorskip("wake_t")
    limit_threads(1)
    spec = _spec("wake-t", {"stage_length": 2e-3, "resolution": 0.5, "n_particles": 4000})
    sim = make_simulator(spec)
    assert isinstance(sim, Simulator) and sim.name == "wake-t" and sim.version
    report = generate(spec, tmp_path, executor="serial", progress=False)
    ds = load_dataset(report.table_path)
    assert ds.status_counts()["ok"] == 2, ds.table[["status", "message"]]
    for _, row in ds.table.iterrows():
        setting = {k: row[k] for k in ds.input_names}
        # an intact beam keeps all its charge
        assert row["charge_fraction"] == pytest.approx(1.0, abs=1e-12)
        assert row["beam_intact"] == 1.0
        assert row["charge"] == pytest.approx(_initial_charge(setting), rel=0.02)
        # energy gain: positive, below the cold wave-breaking field E0 = m c omega_p / e
        gain = row["energy_mean"] - 200e6
        e0 = ct.m_e * ct.c**2 * plasma_wavenumber(row["plasma_density"]) / ct.e
        assert 0.1 * e0 * 2e-3 < gain < 1.0 * e0 * 2e-3
        assert abs(row["energy_median"] - row["energy_mean"]) < 0.05 * row["energy_mean"]
        assert 1e-4 < row["energy_spread_rms"] < 0.2
        # matched beam over 2 mm: emittances and length are preserved
        assert row["emittance_x"] == pytest.approx(3e-6, rel=0.15)
        assert row["emittance_y"] == pytest.approx(0.5e-6, rel=0.15)
        assert row["emittance_x_core"] <= row["emittance_x"]
        assert row["bunch_length"] == pytest.approx(3.69e-6, rel=0.05)
        assert 0 < row["charge_in_acceptance"] <= row["charge"]
        assert row["wall_time_s"] > 0
    # a run over its time limit is a labelled failure, not an exception
    slow = make_simulator(spec, timeout_s=0.05).run(SETTING)
    assert slow.status == "failed" and "timeout" in slow.message
    assert slow.outputs == {}


def test_fbpic_tiny_stage_is_physical() -> None:
    pytest.importorskip("fbpic")
    pytest.importorskip("pyfftw")
    limit_threads(1)
    # a short witness close behind the laser keeps the box (and the run) small
    fixed = {**FIXED, "beam_length": 4e-6, "beam_delay": 20e-6}
    fidelity = {
        "stage_length": 10e-6,
        "cells_per_wavelength": 6.0,
        "cells_per_skin_depth": 3.0,
        "ppc_z": 1,
        "ppc_r": 1,
        "ppc_theta": 2,
        "n_particles": 2000,
        "box_behind": 32e-6,
        "use_cuda": False,
    }
    spec = _spec("fbpic", fidelity).model_dump()
    spec["fixed"] = fixed
    sim = make_simulator(spec)
    assert sim.name == "fbpic" and sim.version
    result = sim.run(SETTING)
    assert result.status == "ok", result.message
    out = result.outputs
    assert all(math.isfinite(out[k]) for k in _OUTPUTS)
    p = resolve_parameters(fixed, SETTING)
    initial = witness_bunch(p, 2000, seed=0)
    assert out["charge_fraction"] == pytest.approx(1.0, abs=1e-12)
    assert out["charge"] == pytest.approx(initial.charge, rel=1e-9)
    # 10 um of plasma: the witness energy changes by much less than E0 * 10 um (~0.4 MeV)
    assert abs(out["energy_mean"] - 200e6) < 2e6
    assert out["emittance_x"] == pytest.approx(3e-6, rel=0.15)
    assert out["emittance_y"] == pytest.approx(0.5e-6, rel=0.15)
    assert out["bunch_length"] == pytest.approx(np.std(initial.z), rel=0.05)


_PRANGE = """
import threading

import numba, numpy as np
from numba.np.ufunc import parallel

from accelrl.execution import limit_threads

@numba.njit(parallel=True)
def total(x):
    s = 0.0
    for i in numba.prange(x.size):
        s += x[i]
    return s

@numba.njit
def plus_one(x):
    return x + 1
"""

_AFTER_NUMBA_LAUNCH = (
    _PRANGE
    + """
total(np.ones(8))  # launches numba's pool with NUMBA_NUM_THREADS=2
limit_threads(1)
assert plus_one(1) == 2  # a compilation after the limit re-reads numba's configuration
assert numba.get_num_threads() == 1, numba.get_num_threads()
seen = []
def work():  # numba's limit is per thread: a worker thread sets its own
    limit_threads(1)
    seen.append(numba.get_num_threads())
t = threading.Thread(target=work)
t.start(); t.join()
assert seen == [1], seen
print("ok")
"""
)

_BEFORE_NUMBA_LAUNCH = (
    _PRANGE
    + """
limit_threads(1)  # numba imported, its pool not started (e.g. before a process pool forks)
assert not parallel._is_initialized, "limit_threads started numba's pool"
total(np.ones(8))
assert plus_one(1) == 2
assert numba.get_num_threads() == 1 and numba.config.NUMBA_NUM_THREADS == 1
print("ok")
"""
)


@pytest.mark.parametrize("script", [_AFTER_NUMBA_LAUNCH, _BEFORE_NUMBA_LAUNCH])
def test_limit_threads_with_numba_loaded(script: str) -> None:
    """A process whose numba pool is already running (an earlier run, another library),
    or imported but not started, gets one thread per run; later compilations still work
    and the pool is never started by the limit itself (fork safety)."""
    import os
    import subprocess
    import sys

    pytest.importorskip("numba")
    env = {**os.environ, "NUMBA_NUM_THREADS": "2"}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_limit_threads_rejects_zero() -> None:
    with pytest.raises(ValueError, match="thread count must be >= 1"):
        limit_threads(0)
