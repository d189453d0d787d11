"""The torch-free runtime: bundle verification (hashes, embedded manifest, self-test) and a
controller run in a process where torch cannot be imported."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from deploy_testlib import BUNDLE, ROOT
from onnx import numpy_helper

from accelrl.bundle import BundleError, read_manifest, sha256_file
from accelrl.deploy.runtime import OnnxPolicy


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    out = tmp_path / "bundle"
    shutil.copytree(BUNDLE, out)
    return out


def _rehash(bundle: Path) -> None:
    """Update the manifest's sha256 entries to the files' current contents."""
    data = json.loads((bundle / "manifest.json").read_text())
    data["files"] = {n: sha256_file(bundle / n) for n in data["files"]}
    (bundle / "manifest.json").write_text(json.dumps(data, indent=2))


def test_shipped_bundle_verifies() -> None:
    policy = OnnxPolicy(BUNDLE)
    assert policy.selftest_max_error is not None
    atol = np.array(policy.manifest.selftest.atol)
    assert np.all(policy.selftest_max_error <= atol)
    assert policy.manifest.knob_names == ("Q1", "Q2", "CV", "Q3", "CH")


def test_modified_graph_fails_the_hash_check(bundle: Path) -> None:
    data = bytearray((bundle / "policy.onnx").read_bytes())
    data[-100] ^= 0xFF
    (bundle / "policy.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"policy\.onnx: sha256 .* differs"):
        OnnxPolicy(bundle)


def test_modified_selftest_data_fails_the_hash_check(bundle: Path) -> None:
    with np.load(bundle / "selftest.npz") as d:
        obs, act = d["observation"], d["action"]
    np.savez(bundle / "selftest.npz", observation=obs, action=act + 1.0)
    with pytest.raises(BundleError, match=r"selftest\.npz: sha256"):
        OnnxPolicy(bundle)


def test_missing_file_is_named(bundle: Path) -> None:
    (bundle / "selftest.npz").unlink()
    with pytest.raises(BundleError, match=r"selftest\.npz: missing"):
        OnnxPolicy(bundle)
    with pytest.raises(BundleError, match="not a policy bundle"):
        OnnxPolicy(bundle.parent / "nowhere")


def test_edited_manifest_differs_from_the_embedded_one(bundle: Path) -> None:
    """Widening a knob limit in manifest.json (hashes intact) is caught."""
    data = json.loads((bundle / "manifest.json").read_text())
    data["knobs"][0]["high"] = 1000.0
    (bundle / "manifest.json").write_text(json.dumps(data, indent=2))
    with pytest.raises(BundleError, match=r"differs from the manifest embedded .*knobs"):
        OnnxPolicy(bundle)


def test_changed_weights_fail_the_selftest_even_with_updated_hashes(bundle: Path) -> None:
    model = onnx.load(bundle / "policy.onnx")
    for init in model.graph.initializer:
        if init.name == "b0":
            b = numpy_helper.to_array(init).copy()
            b[0] += 0.5
            init.CopyFrom(numpy_helper.from_array(b, "b0"))
    onnx.save_model(model, bundle / "policy.onnx")
    _rehash(bundle)
    with pytest.raises(BundleError, match="failed its self-test: .* worst: sample"):
        OnnxPolicy(bundle)


def test_selftest_reference_mismatch_fails_loudly(bundle: Path) -> None:
    with np.load(bundle / "selftest.npz") as d:
        obs, act = d["observation"], d["action"].copy()
    act[17, 2] += 1e-3  # CV, far beyond 1e-6 of its range
    np.savez(bundle / "selftest.npz", observation=obs, action=act)
    _rehash(bundle)
    with pytest.raises(BundleError, match=r"1 of \d+ action values .* sample 17, CV"):
        OnnxPolicy(bundle)


def test_manifest_schema_errors_name_the_field(bundle: Path) -> None:
    data = json.loads((bundle / "manifest.json").read_text())
    data["action_mode"] = "sideways"
    (bundle / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="action_mode"):
        read_manifest(bundle)


def test_act_checks_the_observation_size() -> None:
    policy = OnnxPolicy(BUNDLE)
    with pytest.raises(ValueError, match="13 values"):
        policy.act_single(np.zeros(12))
    with pytest.raises(ValueError, match=r"\[N, 13\]"):
        policy.act(np.zeros((3, 12)))


TORCH_FREE = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"torch is not available here ({name})")
            return None

    sys.meta_path.insert(0, NoTorch())
    sys.path.insert(0, TESTLIB)

    from deploy_testlib import BUNDLE, LinearMachine, machine_config
    from accelrl.deploy.controller import Controller
    from accelrl.deploy.runtime import OnnxPolicy
    from accelrl.deploy.safety import SafetyLayer
    import accelrl.deploy.runlog, accelrl.bundle, accelrl.deploy.config
    import accelrl.deploy.machine, accelrl.cli.deploy

    try:
        import accelrl.deploy.sim  # needs the simulation, hence torch
        blocked = False
    except ImportError:
        blocked = True

    policy = OnnxPolicy(BUNDLE)
    config = machine_config()
    results = {}
    for mode in ("shadow", "auto"):
        machine = LinearMachine()
        safety = SafetyLayer.for_bundle(machine, config, policy.manifest)
        target = [2e-4, 1e-4, -1e-4, 1e-4]
        result = Controller(policy, machine, safety, mode, target=target, max_steps=8,
                            log_dir=LOG + "/" + mode, plot=False).run()
        results[mode] = {"reason": result.reason.value, "steps": result.steps,
                         "writes": result.writes, "puts": len(machine.puts)}
    print(json.dumps({"torch_loaded": any(m == "torch" or m.startswith("torch.")
                                           for m in sys.modules),
                      "sim_blocked": blocked, "results": results}))
    """
)


def test_runtime_imports_and_runs_without_torch(tmp_path: Path) -> None:
    script = TORCH_FREE.replace("TESTLIB", repr(str(Path(__file__).parent))).replace(
        "LOG", repr(str(tmp_path))
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["torch_loaded"] is False
    assert out["sim_blocked"] is True  # the blocker works: the simulation needs torch
    assert out["results"]["shadow"] == {
        "reason": "step_budget",
        "steps": 8,
        "writes": 0,
        "puts": 0,
    }
    auto = out["results"]["auto"]
    assert auto["writes"] >= 1 and auto["puts"] == auto["writes"]
    assert (tmp_path / "auto" / "run.jsonl").is_file()
