"""Export of policies to ONNX bundles: parity with the source policy, manifest, format."""

from __future__ import annotations

import base64
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import typer
from deploy_testlib import BUNDLE, ROOT
from typer.testing import CliRunner

from accelrl.agents.export.sb3 import sb3_physical_action
from accelrl.agents.export.writer import (
    ExportError,
    delta_bounds,
    export,
    export_policy,
    load_sb3,
    observation_quantities,
    sample_observations,
)
from accelrl.agents.policy import MLPPolicy
from accelrl.agents.training.recipes import Recipe
from accelrl.agents.training.sb3 import train
from accelrl.bundle import METADATA_KEY, read_manifest, sha256_file
from accelrl.deploy.runtime import OnnxPolicy
from accelrl.envs import TASKS

ENV_ID = "accelrl/AresEATransverseTuning-v0"
#: Parity requirement: |onnx - source| <= PARITY of the action range, per component.
PARITY = 1e-5
N_PARITY = 10_000


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def parity_observations(n: int = N_PARITY, seed: int = 7) -> np.ndarray:
    """10k raw observations: a fifth far outside the ranges, plus extreme values."""
    obs = sample_observations(observation_quantities(TASKS[ENV_ID]()), n, seed=seed)
    rng = np.random.default_rng(seed)
    rows = rng.choice(n, size=50, replace=False)
    obs[rows, rng.integers(0, obs.shape[1], size=50)] = rng.choice([-1e6, 1e6, 0.0], size=50)
    return obs


def action_range(policy: OnnxPolicy) -> np.ndarray:
    return np.array([q.high - q.low for q in policy.manifest.action])


@pytest.fixture(scope="module")
def shipped_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export(ROOT / "agents" / "apg-ares-ea", tmp_path_factory.mktemp("b") / "bundle")


def test_mlp_policy_parity_on_10k_observations(shipped_export: Path) -> None:
    source = MLPPolicy.load(ROOT / "agents" / "apg-ares-ea")
    policy = OnnxPolicy(shipped_export)
    obs = parity_observations()
    outside = np.zeros(len(obs), bool)
    for j, q in enumerate(policy.manifest.observation):
        outside |= (obs[:, j] < q.low) | (obs[:, j] > q.high)
    assert outside.sum() >= 0.15 * len(obs)  # out-of-range observations are part of the set
    err = np.abs(policy.act(obs) - source.act(obs)) / action_range(policy)
    assert err.max() <= PARITY
    # The batch-1 fast path gives the batch path's numbers.
    for i in range(0, N_PARITY, 997):
        np.testing.assert_array_equal(policy.act_single(obs[i]), policy.act(obs[i : i + 1])[0])


def test_bundle_is_one_onnx_file_with_dynamic_batch_and_embedded_manifest(
    shipped_export: Path,
) -> None:
    assert sorted(p.name for p in shipped_export.iterdir()) == [
        "manifest.json",
        "policy.onnx",
        "selftest.npz",
    ]
    model = onnx.load(shipped_export / "policy.onnx", load_external_data=False)
    onnx.checker.check_model(model, full_check=True)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == "observation" and out.name == "action"
    assert inp.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    manifest = read_manifest(shipped_export)
    embedded = {p.key: p.value for p in model.metadata_props}[METADATA_KEY]
    assert json.loads(embedded) == manifest.embedded()
    policy = OnnxPolicy(shipped_export)
    for n in (1, 7, 1000):
        assert policy.act(np.zeros((n, 13)) + 1e-4).shape == (n, 5)


def test_manifest_describes_the_policy(shipped_export: Path) -> None:
    m = read_manifest(shipped_export)
    spec = TASKS[ENV_ID]()
    assert m.env_id == ENV_ID and m.env_version == "v0"
    assert m.action_mode == "delta" and m.source == "mlp-policy"
    assert [q.name for q in m.observation] == [
        "mu_x", "sigma_x", "mu_y", "sigma_y", "Q1", "Q2", "CV", "Q3", "CH",
        "mu_x", "sigma_x", "mu_y", "sigma_y",
    ]  # fmt: skip
    assert [q.unit for q in m.observation[4:9]] == [a.unit for a in spec.actuators]
    assert {q.unit for q in m.observation[:4] + m.observation[9:]} == {"m"}
    for q, a in zip(m.knobs, spec.actuators, strict=True):
        assert (q.name, q.low, q.high, q.unit) == (a.name, a.low, a.high, a.unit)
    np.testing.assert_allclose([q.high for q in m.action], delta_bounds(spec), rtol=1e-7)
    np.testing.assert_allclose([q.low for q in m.action], -delta_bounds(spec), rtol=1e-7)
    assert m.target_thresholds == tuple(spec.termination.thresholds)
    p = m.provenance
    assert p["recipe"]["algorithm"] == "apg" and p["seed"] == 0
    assert "commit" in p and p["export"]["commit"]  # the export's checkout
    assert p["export"]["versions"]["onnxruntime"] and p["training_versions"]["torch"]
    assert p["export"]["parity_max_error_over_range"] <= PARITY
    for name, digest in m.files.items():
        assert sha256_file(shipped_export / name) == digest


def test_shipped_bundle_is_the_shipped_policy() -> None:
    policy = OnnxPolicy(BUNDLE)  # verifies hashes and the self-test
    source = MLPPolicy.load(ROOT / "agents" / "apg-ares-ea")
    obs = parity_observations(2000, seed=11)
    assert np.max(np.abs(policy.act(obs) - source.act(obs)) / action_range(policy)) <= PARITY


def test_export_refuses_what_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(ExportError, match="not a Stable-Baselines3 model zip"):
        export(tmp_path / "junk.zip", tmp_path / "out")
    with pytest.raises(ExportError, match="not a policy directory"):
        export(tmp_path, tmp_path / "out")
    with pytest.raises(ExportError, match="MLPPolicy directory"):
        export(tmp_path / "missing.pt", tmp_path / "out")


class _Payload:
    """Unpickling this creates ``marker``: proof that reading a file ran code from it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (self.marker,))


def _hostile_sb3(folder: Path, marker: Path) -> Path:
    """An SB3-looking TD3 zip whose cloudpickled policy class and vecnormalize.pkl would run
    code (create ``marker``) when unpickled."""
    payload = base64.b64encode(pickle.dumps(_Payload(marker))).decode()
    data = {"policy_class": {":type:": "<class 'abc.ABCMeta'>", ":serialized:": payload},
            "policy_delay": 2}  # fmt: skip
    folder.mkdir()
    with zipfile.ZipFile(folder / "model.zip", "w") as z:
        z.writestr("data", json.dumps(data))
        z.writestr("policy.pth", b"\0" * 64)
    (folder / "vecnormalize.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    return folder / "model.zip"


def test_sb3_export_needs_trust_pickle(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    model = _hostile_sb3(tmp_path / "run", marker)
    with pytest.raises(ExportError, match=r"pickled Python objects and .*vecnormalize.pkl is a "
                       r"pickle; .*--trust-pickle"):  # fmt: skip
        export(model, tmp_path / "bundle")
    with pytest.raises(ExportError, match="trust_pickle=True"):
        load_sb3(model)
    result = CliRunner().invoke(_export_app(), ["export", str(model), "--out",
                                                str(tmp_path / "cli")])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "--trust-pickle" in " ".join(result.output.split())
    assert not marker.exists() and not (tmp_path / "bundle").exists()


def test_a_truncated_or_damaged_zip_is_refused_clearly(tmp_path: Path) -> None:
    model = _hostile_sb3(tmp_path / "run", tmp_path / "marker")
    data = model.read_bytes()
    model.write_bytes(data[: len(data) // 2])
    for trust in (False, True):
        with pytest.raises(ExportError, match=r"model.zip: not a Stable-Baselines3 model zip "
                           r"\(truncated, damaged or not a zip"):  # fmt: skip
            export(model, tmp_path / "bundle", trust_pickle=trust)
    with zipfile.ZipFile(model, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("data", json.dumps({"policy_delay": 2}))
        z.writestr("policy.pth", b"x" * 256)
    raw = bytearray(model.read_bytes())
    at = raw.index(b"x" * 256)
    raw[at + 100] ^= 0xFF  # one flipped byte inside an entry
    model.write_bytes(bytes(raw))
    with pytest.raises(ExportError, match=r"damaged zip \(entry 'policy.pth' fails"):
        export(model, tmp_path / "bundle", trust_pickle=True)


def _export_app() -> typer.Typer:
    from accelrl.cli.export import export_command

    app = typer.Typer()
    app.command("export")(export_command)
    app.command("noop")(lambda: None)  # two commands: typer keeps the sub-command name
    return app


def test_export_refuses_a_policy_for_other_actuators(tmp_path: Path) -> None:
    policy = MLPPolicy.load(ROOT / "agents" / "apg-ares-ea")
    policy.meta.actuator_names = ["Q1", "Q2", "CH", "Q3", "CV"]
    with pytest.raises(ExportError, match="differ"):
        export_policy(policy, tmp_path / "b")


# ---------------------------------------------------------------------- Stable-Baselines3
TINY = {
    "td3": {
        "learning_starts": 100,
        "buffer_size": 2000,
        "batch_size": 32,
        "gradient_steps": 1,
        "net_arch": {"actor": [16, 8], "critic": [16, 8]},
    },
    "ppo": {
        "n_steps": 32,
        "batch_size": 64,
        "n_epochs": 2,
        "net_arch": {"actor": [16, 8], "critic": [16, 8]},
    },
}


@pytest.fixture(scope="module", params=["td3", "ppo"])
def sb3_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """A few hundred transitions of real training, with VecNormalize (model.zip + pkl)."""
    algo = request.param
    recipe = Recipe.from_dict(
        {
            "algorithm": algo,
            "num_envs": 4,
            "total_timesteps": 384,
            "seed": 5,
            "hyperparameters": TINY[algo],
            "evaluation": {"every": 100_000, "trials": "0:300:100", "steps": 5},
            "checkpoint_every": 0,
        }
    )
    return train(recipe, tmp_path_factory.mktemp(f"run_{algo}"), progress=False)


def test_sb3_parity_with_predict_on_10k_observations(sb3_run, tmp_path: Path) -> None:
    # finds vecnormalize.pkl; both files are this test's own training output
    bundle = export(sb3_run.model_path, tmp_path / "bundle", trust_pickle=True)
    policy = OnnxPolicy(bundle)
    m = policy.manifest
    assert m.source == f"sb3-{sb3_run.algorithm}"
    assert m.provenance["recipe"]["algorithm"] == sb3_run.algorithm
    assert m.provenance["seed"] == 5
    _, model, vecnormalize = load_sb3(sb3_run.model_path, trust_pickle=True)
    # What the environment can produce: float32 observations (SB3 acts in float32).
    obs = parity_observations().astype(np.float32).astype(np.float64)
    high = delta_bounds(TASKS[ENV_ID]())
    reference = sb3_physical_action(model, vecnormalize, obs, high)
    err = np.abs(policy.act(obs) - reference) / action_range(policy)
    assert err.max() <= PARITY


def test_sb3_zip_names_its_algorithm(sb3_run) -> None:
    with zipfile.ZipFile(sb3_run.model_path) as z:
        data = json.loads(z.read("data"))
    key = {"td3": "policy_delay", "ppo": "clip_range"}[sb3_run.algorithm]
    assert key in data  # what the export recognises the algorithm by
