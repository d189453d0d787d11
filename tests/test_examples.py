"""Every script in ``examples/`` runs to completion (small settings, outputs in a temporary
folder): the documented examples stay true to the API."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Script -> (extra arguments, modules it needs, a line its output must contain).
EXAMPLES: dict[str, tuple[list[str], tuple[str, ...], str]] = {
    "bo_session.py": (["--steps", "4", "--out", "runs/bo"], ("botorch",), "back at the best"),
    "live_runs.py": (["--out", "runs/live"], ("stable_baselines3",), "accelrl dashboard"),
    "deploy_shadow.py": (["--out", "runs/deploy"], ("onnxruntime",), "auto:"),
    "lpa_surrogate.py": ([], ("onnxruntime",), "environment, 10 shots"),
    "own_lattice.py": (
        ["--iterations", "20", "--trials", "4", "--out", "runs/own"],
        (),
        "nelder-mead: median best MAE",
    ),
    "virtual_accelerator_demo.py": ([], ("caproto",), "setpoints after the rollback"),
    "surrogates_generate.py": ([], ("wake_t",), "energy spread"),
    "robust_evaluation.py": (["--trials", "2", "--steps", "8"], (), "per-class results"),
    "robust_policy.py": (
        ["--iterations", "2", "--steps", "5", "--out", "runs/robust"],
        ("onnxruntime",),
        "bundle: history 4",
    ),
    "averaging.py": (["--trials", "4", "--steps", "30"], ("onnxruntime",), "median final MAE"),
    "device_vector_env.py": (["--num-envs", "256", "--steps", "3"], (), "numpy view"),
}


def test_every_example_is_listed() -> None:
    assert sorted(p.name for p in (ROOT / "examples").glob("*.py")) == sorted(EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_runs(name: str, tmp_path: Path) -> None:
    args, needs, expected = EXAMPLES[name]
    for module in needs:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=480,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert expected in out.stdout, out.stdout[-3000:]
