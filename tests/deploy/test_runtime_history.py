"""Bundles of policies with an observation history: the graph takes the past, the runtime
keeps it per episode, and both agree with the torch policy along whole episodes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from deploy_testlib import machine_config

from accelrl.agents.evaluation.loop import run_trials
from accelrl.agents.export.writer import export_policy
from accelrl.agents.policy import MLPPolicy, PolicyOptimiser
from accelrl.agents.training.apg import initialise_from
from accelrl.bundle import BundleError, Manifest, read_manifest
from accelrl.deploy.controller import Controller
from accelrl.deploy.plant import Plant
from accelrl.deploy.runtime import OnnxPolicy
from accelrl.deploy.safety import SafetyLayer
from accelrl.deploy.sim import SimMachine
from accelrl.envs import TransverseTuningVectorEnv
from accelrl.envs.ares_ea import ares_ea_spec
from accelrl.envs.trials import load_trials

ROOT = Path(__file__).resolve().parents[2]
HISTORY = 3


@pytest.fixture(scope="module")
def history_policy() -> MLPPolicy:
    """The shipped policy with a history whose weights matter (small random weights on the
    past features), without its target-size floor (a history alone: format version 2)."""
    shipped = MLPPolicy.load(ROOT / "agents" / "apg-ares-ea")
    meta = dataclasses.replace(shipped.meta, history=HISTORY, target_size_floor=None, provenance={})
    policy = MLPPolicy(meta)
    initialise_from(policy, ROOT / "agents" / "apg-ares-ea")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        w = policy.net[0].weight
        w[:, 17:] = 0.05 * torch.randn(w.shape[0], w.shape[1] - 17, generator=g, dtype=w.dtype)
    return policy.eval()


@pytest.fixture(scope="module")
def bundle(history_policy: MLPPolicy, tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return export_policy(history_policy, tmp_path_factory.mktemp("b") / "bundle")


def test_manifest_and_graph_carry_the_history(bundle: Path) -> None:
    m = read_manifest(bundle)
    assert m.history == HISTORY and m.format_version == 2
    assert m.n_obs == 13 and m.n_input == 13 + HISTORY * 9
    policy = OnnxPolicy(bundle)
    assert policy.session.get_inputs()[0].shape[-1] == m.n_input
    assert policy.selftest_max_error is not None  # replayed history inputs at load
    with pytest.raises(ValueError, match=str(m.n_input)):
        policy.act(np.zeros((2, 13)))


def test_history_needs_format_version_2(bundle: Path) -> None:
    data = json.loads((bundle / "manifest.json").read_text())
    data["format_version"] = 1
    with pytest.raises(Exception, match="format_version"):
        Manifest.model_validate(data)
    data["format_version"], data["history"] = 2, -1
    with pytest.raises(Exception, match="history"):
        Manifest.model_validate(data)


def test_shipped_bundle_without_history_reads_as_before() -> None:
    text = (ROOT / "agents" / "apg-ares-ea" / "bundle" / "manifest.json").read_text()
    assert "history" not in json.loads(text)
    assert read_manifest(ROOT / "agents" / "apg-ares-ea" / "bundle").history == 0
    with pytest.raises(BundleError):
        read_manifest(ROOT / "no-such-bundle")


@pytest.mark.parametrize("world", [None, "ares-realistic"])
def test_onnx_and_torch_agree_along_episodes(history_policy, bundle, world) -> None:
    """Same settings at every step of 6 trials x 12 steps (batched), twice in a row (the
    reset clears the history)."""
    trials = load_trials()[25:31]
    runs = {}
    for name, optimiser in (
        ("torch", PolicyOptimiser(history_policy)),
        ("onnx", OnnxPolicy(bundle)),
    ):
        out = []
        for _ in range(2):
            env = TransverseTuningVectorEnv(
                ares_ea_spec(), len(trials), max_episode_steps=12, action_mode="direct",
                terminate_on_target=False, world=world,
            )  # fmt: skip
            out.append(np.stack([r["settings"] for r in run_trials(env, optimiser, trials, 12, 0)]))
        runs[name] = out
    span = np.array([144, 144, 12.3564e-3, 144, 12.3564e-3])
    for a, b in zip(runs["torch"], runs["onnx"], strict=True):
        assert np.max(np.abs(a - b) / span) < 1e-9
    np.testing.assert_array_equal(runs["onnx"][0], runs["onnx"][1])


def test_single_path_matches_the_batch_path(bundle) -> None:
    from accelrl.protocol import Observation

    policy = OnnxPolicy(bundle)
    twin = OnnxPolicy(bundle)
    spec = ares_ea_spec()
    trial = load_trials()[30]
    env = TransverseTuningVectorEnv(
        spec, 1, max_episode_steps=8, action_mode="direct", terminate_on_target=False
    )
    records = run_trials(env, twin, [trial], 8, 0)[0]
    from accelrl.agents.evaluation.loop import trial_problem

    _, info = env.reset(seed=[0], options={"trial": [trial]})
    policy.reset(trial_problem(env, info, 0, 8, 0))
    for s in range(8):
        obs = Observation(
            beam=records["reading"][s], magnets=records["settings"][s],
            target=np.asarray(records["target"]), on_screen=True, step=s,
        )  # fmt: skip
        np.testing.assert_allclose(policy.ask(obs), records["settings"][s + 1], atol=1e-12)


def test_controller_runs_a_history_bundle(bundle) -> None:
    policy = OnnxPolicy(bundle)
    plant = Plant.from_trial(30)
    config = machine_config(settle_timeout_s=0.05, reading_timeout_s=0.05)
    machine = SimMachine(plant, config)
    safety = SafetyLayer.for_bundle(machine, config, policy.manifest)
    controller = Controller(
        policy, machine, safety, "auto", target=plant.target, plot=False, max_steps=6
    )
    result = controller.run()
    assert result.steps >= 1 and result.writes >= 1
    first = result.final_setpoints
    # a second run starts a fresh episode: the same start gives the same first writes
    plant2 = Plant.from_trial(30)
    machine2 = SimMachine(plant2, config)
    controller2 = Controller(
        policy, machine2, SafetyLayer.for_bundle(machine2, config, policy.manifest), "auto",
        target=plant2.target, plot=False, max_steps=6,
    )  # fmt: skip
    assert controller2.run().final_setpoints == pytest.approx(first, rel=1e-12)


def test_shipped_robust_bundle_is_the_shipped_robust_policy() -> None:
    """``agents/apg-ares-ea-robust/bundle`` verifies and acts as the torch policy on history
    inputs (1e-6 of the action range)."""
    from accelrl.agents.export.writer import observation_quantities, sample_observations

    directory = ROOT / "agents" / "apg-ares-ea-robust"
    policy = OnnxPolicy(directory / "bundle")  # hashes, embedded manifest, self-test
    source = MLPPolicy.load(directory)
    assert policy.manifest.history == source.meta.history > 0
    obs = sample_observations(
        observation_quantities(ares_ea_spec()), 2000, seed=11, history=source.meta.history
    )
    span = 2 * np.asarray(source.meta.action_scale)
    assert np.max(np.abs(policy.act(obs) - source.act(obs)) / span) <= 1e-6
