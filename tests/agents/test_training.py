"""SB3 training recipes, training runs, export to the portable policy form, ``accelrl train``."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import typer
import yaml
from typer.testing import CliRunner

from accelrl.agents.export.sb3 import PPO_LATENT_BOUND, sb3_physical_action, to_mlp_policy
from accelrl.agents.policy import MLPPolicy, PolicyOptimiser
from accelrl.agents.training.monitor import evaluate_policy
from accelrl.agents.training.recipes import Recipe, RecipeError
from accelrl.agents.training.sb3 import train
from accelrl.agents.training.wrappers import FlattenObservation, make_training_env
from accelrl.cli.train import train_command
from accelrl.envs import ARES_EA_ID, load_trials, make_vec
from accelrl.envs.sb3 import SB3VecEnv
from accelrl.protocol import Observation, Problem

ROOT = Path(__file__).resolve().parents[2]
ALGORITHMS = ("td3", "sac", "ppo")
NAMES = ["Q1", "Q2", "CV", "Q3", "CH"]

# Tiny runs: a few hundred transitions on 4 environments, evaluated on 6 trials x 20 steps.
TINY_EVAL = {"every": 200, "trials": "0:300:50", "steps": 20}
TINY_HP = {
    "td3": {
        "learning_starts": 100,
        "buffer_size": 5000,
        "batch_size": 32,
        "gradient_steps": 1,
        "net_arch": {"actor": [16, 8], "critic": [16, 8]},
    },
    "sac": {
        "learning_starts": 100,
        "buffer_size": 5000,
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


def tiny_recipe(algorithm: str, **changes) -> Recipe:
    data = {
        "algorithm": algorithm,
        "num_envs": 4,
        "total_timesteps": 400,
        "seed": 3,
        "hyperparameters": TINY_HP[algorithm],
        "evaluation": TINY_EVAL,
        "checkpoint_every": 200,
    }
    data.update(changes)
    return Recipe.from_dict(data)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = {}
    for algo in ALGORITHMS:
        directory = tmp_path_factory.mktemp(f"run_{algo}")
        out[algo] = train(tiny_recipe(algo), directory, progress=False)
    return out


def _load(run) -> tuple:
    from stable_baselines3 import PPO, SAC, TD3

    cls = {"td3": TD3, "sac": SAC, "ppo": PPO}[run.algorithm]
    model = cls.load(run.model_path, device="cpu")
    with open(run.vecnormalize_path, "rb") as fh:
        vecnormalize = pickle.load(fh)
    vecnormalize.training = False
    return model, vecnormalize


def _observations(policy: MLPPolicy, n: int = 1000, seed: int = 0) -> np.ndarray:
    """Random raw observations around the normalisation; 20% far outside (clipped)."""
    rng = np.random.default_rng(seed)
    mean, std = np.array(policy.meta.obs_mean), np.array(policy.meta.obs_std)
    obs = mean + std * rng.normal(0.0, 3.0, size=(n, len(mean)))
    obs[: n // 5] = mean + std * rng.uniform(-1e3, 1e3, size=(n // 5, len(mean)))
    return obs.astype(np.float32).astype(np.float64)  # what the environment can produce


# ---------------------------------------------------------------------- recipes
@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"algorithm": "ddpg"}, "algorithm = 'ddpg': must be one of td3, sac, ppo"),
        ({}, "algorithm is required"),
        (
            {"algorithm": "td3", "hyperparameters": {"gamma": 1.5}},
            "hyperparameters.gamma = 1.5: Input should be less than 1",
        ),
        (
            {"algorithm": "td3", "hyperparameters": {"net_arch": {"actor": [64, 0]}}},
            "hyperparameters.net_arch.actor.1 = 0: Input should be greater than or equal to 1",
        ),
        (
            {"algorithm": "td3", "hyperparameters": {"n_steps": 128}},
            "hyperparameters.n_steps = 128: Extra inputs are not permitted",
        ),
        (
            {"algorithm": "td3", "hyperparameters": {"batch_size": 512, "buffer_size": 100}},
            "batch_size (512) must be <= buffer_size (100)",
        ),
        (
            {"algorithm": "td3", "hyperparameters": {"gradient_steps": 0}},
            "hyperparameters.gradient_steps = 0: gradient_steps must be -1",
        ),
        (
            {"algorithm": "td3", "hyperparameters": {"action_noise": {"sigma": -0.1}}},
            "hyperparameters.action_noise.sigma = -0.1: Input should be greater than or equal to 0",
        ),
        (
            {"algorithm": "sac", "hyperparameters": {"ent_coef": "automatic"}},
            "hyperparameters.ent_coef = 'automatic'",
        ),
        (
            {
                "algorithm": "ppo",
                "num_envs": 2,
                "hyperparameters": {"n_steps": 16, "batch_size": 64},
            },
            "batch_size (64) must be <= n_steps * num_envs (16 * 2 = 32)",
        ),
        (
            {"algorithm": "ppo", "num_envs": 0},
            "num_envs = 0: Input should be greater than or equal to 1",
        ),
        (
            {"algorithm": "td3", "env": {"action_mode": "direct"}},
            "env.action_mode = 'direct': Input should be 'delta'",
        ),
        ({"algorithm": "td3", "evaluation": {"trials": "0:x"}}, "evaluation.trials = '0:x'"),
        (
            {"algorithm": "td3", "evaluation": {"steps": 0}},
            "evaluation.steps = 0: Input should be greater than or equal to 1",
        ),
        ({"algorithm": "td3", "learning_rate": 0.1}, "learning_rate = 0.1: Extra inputs"),
    ],
)
def test_invalid_recipes_name_field_value_and_range(data: dict, expected: str) -> None:
    with pytest.raises(RecipeError) as err:
        Recipe.from_dict(data, source="test.yaml")
    assert "test.yaml: invalid training recipe" in str(err.value)
    assert expected in str(err.value)


def test_recipe_files(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="not found"):
        Recipe.from_yaml(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(RecipeError, match="expected a mapping"):
        Recipe.from_yaml(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("algorithm: [td3\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        Recipe.from_yaml(tmp_path / "bad.yaml")


def test_evaluation_trial_selection() -> None:
    r = tiny_recipe("td3", evaluation={"trials": "10:20:5"})
    assert r.evaluation.select(300) == [10, 15]
    assert tiny_recipe("td3", evaluation={"trials": [3, 7]}).evaluation.select(300) == [3, 7]
    with pytest.raises(RecipeError, match=r"evaluation.trials = \[3, 400\].*allowed 0..299"):
        tiny_recipe("td3", evaluation={"trials": [3, 400]}).evaluation.select(300)


@pytest.mark.parametrize("name", ["td3_icml", "ppo", "sac"])
def test_shipped_recipes_are_valid(name: str) -> None:
    r = Recipe.from_yaml(ROOT / "agents" / f"{name}.yaml")
    assert r.algorithm == name.split("_")[0]
    assert r.env.action_mode == "delta" and r.env.reward == "icml"
    assert r.vecnormalize.obs and r.vecnormalize.reward


def test_td3_icml_recipe_is_the_papers() -> None:
    r = Recipe.from_yaml(ROOT / "agents" / "td3_icml.yaml")
    hp = r.hyperparameters
    assert (hp.gamma, hp.learning_rate, hp.buffer_size, hp.batch_size) == (0.55, 1e-3, 600_000, 100)
    assert hp.net_arch.actor == [64, 32] and hp.net_arch.critic == [64, 32]
    assert (hp.action_noise.type, hp.action_noise.sigma) == ("normal", 0.1)
    assert r.env.max_episode_steps == 50 and r.env.reward == "icml"


def test_recipe_overrides_are_validated() -> None:
    r = tiny_recipe("td3")
    assert r.replace(seed=7, total_timesteps=99).seed == 7
    with pytest.raises(RecipeError, match="seed = -1"):
        r.replace(seed=-1)


# ---------------------------------------------------------------------- environments
def test_flatten_observation_and_terminal_observation() -> None:
    venv = make_vec(ARES_EA_ID, 3, max_episode_steps=2)
    env = FlattenObservation(SB3VecEnv(venv, normalise_actions=True))
    env.seed(5)
    obs = env.reset()
    assert obs.shape == (3, 13) and obs.dtype == np.float32
    assert env.observation_space.shape == (13,)
    np.testing.assert_array_equal(
        obs[:, 4:9], np.tile(venv.core.standard_start, (3, 1)).astype(np.float32)
    )
    for _ in range(2):
        obs, _, done, infos = env.step(np.zeros((3, 5), np.float32))
    assert done.all()
    assert all(info["terminal_observation"].shape == (13,) for info in infos)
    assert all(info["TimeLimit.truncated"] for info in infos)


def test_ppo_environment_squashes_latent_actions() -> None:
    env = make_training_env(tiny_recipe("ppo", num_envs=2))
    assert np.allclose(env.action_space.high, PPO_LATENT_BOUND)
    env.reset()
    core = env.unwrapped.venv.core
    before = core.magnets.copy()
    env.step(np.full((2, 5), 0.5, np.float32))
    np.testing.assert_allclose(
        core.magnets - before, np.tanh(0.5) * np.tile(core.action_high, (2, 1)), rtol=1e-6
    )


def test_held_out_evaluation_is_the_protocol_summary() -> None:
    """The periodic evaluation is the evaluation protocol's summary of the policy."""
    from accelrl.agents.evaluation import evaluate

    policy = MLPPolicy.load(Path(__file__).resolve().parents[2] / "agents" / "apg-ares-ea")
    trials = [load_trials()[i] for i in (0, 40, 80, 120)]
    summary = evaluate_policy(policy, trials, steps=12, seed=2)
    reference = evaluate(
        lambda: PolicyOptimiser(policy), trials, max_steps=12, seed=2, executor="serial",
        progress=False, chunk_size=4, label="p",
    ).summary_json()["p"]  # fmt: skip

    def untimed(d: dict) -> dict:
        return {k: v for k, v in d.items() if k != "median_ask_time_ms"}

    assert untimed({k: summary[k] for k in reference["all"]}) == untimed(reference["all"])
    assert untimed(summary["sigma_pos"]) == untimed(reference["sigma_pos"])
    assert summary["n_trials"] == 4 and summary["steps"] == 12


# ---------------------------------------------------------------------- training runs
@pytest.mark.parametrize("algo", ALGORITHMS)
def test_training_writes_a_complete_run(runs: dict, algo: str) -> None:
    run = runs[algo]
    out = run.out_dir
    for name in (
        "model.zip",
        "vecnormalize.pkl",
        "learning_curve.png",
        "recipe.yaml",
        "evaluations.json",
        "episodes.csv",
        "train_summary.json",
        "logs/progress.csv",
    ):
        assert (out / name).is_file(), name
    assert (out / "learning_curve.png").stat().st_size > 10_000
    assert list((out / "checkpoints").glob("*_steps.zip"))
    assert run.timesteps >= 400 and run.train_wall_s > 0 and run.timesteps_per_s > 0
    evaluations = json.loads((out / "evaluations.json").read_text())
    assert len(evaluations) >= 2 and evaluations[-1]["timesteps"] == run.timesteps
    assert evaluations[-1]["n_trials"] == 6 and evaluations[-1]["steps"] == 20
    assert 0 < run.final_eval["median_best_mae_um"] < 5000
    assert Recipe.from_dict(yaml.safe_load((out / "recipe.yaml").read_text())) == tiny_recipe(algo)

    policy = MLPPolicy.load(run.policy_dir)
    prov = policy.meta.provenance
    assert prov["algorithm"] == algo and prov["seed"] == 3
    assert prov["total_timesteps"] == run.timesteps and prov["train_wall_s"] > 0
    assert prov["recipe"]["hyperparameters"]["net_arch"]["actor"] == [16, 8]
    assert {"stable-baselines3", "torch", "accelrl", "python"} <= set(prov["versions"])
    assert prov["final_eval"]["median_best_mae_um"] == pytest.approx(
        run.final_eval["median_best_mae_um"]
    )
    assert policy.meta.hidden == [16, 8] and policy.meta.actuator_names == NAMES
    assert policy.meta.activation == ("tanh" if algo == "ppo" else "relu")
    # The final evaluation is the stored policy's: re-running it gives the same numbers.
    again = evaluate_policy(policy, [load_trials()[i] for i in range(0, 300, 50)], 20)
    assert again["median_best_mae_um"] == pytest.approx(run.final_eval["median_best_mae_um"])


def _sb3_forward64(model, z: np.ndarray) -> np.ndarray:
    """SB3's own deterministic actor modules, in float64, on normalised observations."""
    from stable_baselines3 import PPO, SAC

    z = torch.as_tensor(z, dtype=torch.float64)
    with torch.no_grad():
        if isinstance(model, PPO):
            p = copy.deepcopy(model.policy).double()
            return torch.tanh(p.action_net(p.mlp_extractor.forward_actor(z))).numpy()
        actor = copy.deepcopy(model.actor).double()
        if isinstance(model, SAC):
            return torch.tanh(actor.mu(actor.latent_pi(z))).numpy()
        return actor.mu(z).numpy()


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_exported_policy_matches_sb3(runs: dict, algo: str) -> None:
    model, vecnormalize = _load(runs[algo])
    policy = MLPPolicy.load(runs[algo].policy_dir)
    high = np.array(policy.meta.action_scale)
    obs = _observations(policy)
    ours = policy.act(obs)
    # End to end against SB3: predict on VecNormalize's observation, rescaled as SB3VecEnv
    # does. SB3 computes in float32: agreement to float32 rounding of the inputs (|z| <= 10).
    theirs = sb3_physical_action(model, vecnormalize, obs, high)
    assert np.max(np.abs(ours - theirs) / (2 * high)) < 1e-5
    # The export itself is exact: SB3's modules in float64 give the same actions to 1e-12.
    z = np.clip(
        (obs - vecnormalize.obs_rms.mean)
        / np.sqrt(vecnormalize.obs_rms.var + vecnormalize.epsilon),
        -vecnormalize.clip_obs,
        vecnormalize.clip_obs,
    )
    np.testing.assert_allclose(ours / high, _sb3_forward64(model, z), rtol=0, atol=1e-12)
    assert np.all(np.abs(ours) <= high)


def test_export_of_dict_observation_model() -> None:
    """A model trained on Dict observations (MultiInputPolicy, per-key VecNormalize)."""
    from stable_baselines3 import TD3
    from stable_baselines3.common.vec_env import VecNormalize

    venv = make_vec(ARES_EA_ID, 4)
    env = VecNormalize(SB3VecEnv(venv, normalise_actions=True), gamma=0.55)
    env.seed(0)
    env.reset()
    rng = np.random.default_rng(0)
    for _ in range(30):
        env.step(rng.uniform(-1, 1, size=(4, 5)).astype(np.float32))
    env.training = False
    model = TD3("MultiInputPolicy", env, policy_kwargs={"net_arch": [32, 16]}, seed=0, device="cpu")
    high = venv.single_action_space.high.astype(np.float64)
    policy = to_mlp_policy(model, env, NAMES, -high, high)
    obs = _observations(policy, 300)
    ours = policy.act(obs)
    theirs = sb3_physical_action(model, env, obs, high)
    assert np.max(np.abs(ours - theirs) / (2 * high)) < 1e-5


def test_export_refuses_what_it_cannot_represent() -> None:
    from stable_baselines3 import PPO, TD3

    venv = make_vec(ARES_EA_ID, 2)
    env = FlattenObservation(SB3VecEnv(venv, normalise_actions=True))
    high = venv.single_action_space.high.astype(np.float64)
    plain_ppo = PPO("MlpPolicy", env, n_steps=8, batch_size=16, device="cpu", seed=0)
    with pytest.raises(ValueError, match="tanh"):
        to_mlp_policy(plain_ppo, None, NAMES, -high, high)
    td3 = TD3("MlpPolicy", env, policy_kwargs={"net_arch": [8]}, device="cpu", seed=0)
    with pytest.raises(ValueError, match="symmetric"):
        to_mlp_policy(td3, None, NAMES, np.zeros(5), high)
    with pytest.raises(ValueError, match="the task has 12 and 4"):
        to_mlp_policy(td3, None, NAMES[:4], -high[:4], high[:4])
    # Without VecNormalize the observation passes unnormalised and unclipped.
    policy = to_mlp_policy(td3, None, NAMES, -high, high)
    obs = _observations(policy, 50) * 1e3
    assert (
        np.max(np.abs(policy.act(obs) - sb3_physical_action(td3, None, obs, high)) / (2 * high))
        < 1e-5
    )


def test_policy_optimiser_runs_exported_policy_on_two_trials(runs: dict) -> None:
    """The exported policy under the optimiser protocol, stepped by hand in a single
    environment, takes the same steps as in the batched evaluation."""
    from accelrl.agents.evaluation import evaluate

    policy = MLPPolicy.load(runs["td3"].policy_dir)
    optimiser = PolicyOptimiser(policy, name="td3")
    trials = load_trials()[40:42]
    steps = 10
    result = evaluate(
        lambda: PolicyOptimiser(policy), trials, max_steps=steps, executor="serial",
        progress=False, chunk_size=2, label="td3",
    )  # fmt: skip
    reference = result.mae_matrix("td3")[1].T
    env = gym.make(
        ARES_EA_ID, action_mode="direct", terminate_on_target=False, max_episode_steps=steps
    )
    spec = env.unwrapped.task
    low = np.array([a.low for a in spec.actuators])
    high = np.array([a.high for a in spec.actuators])
    max_delta = spec.delta_fraction * np.maximum(np.abs(low), np.abs(high))
    for j, trial in enumerate(trials):
        obs, info = env.reset(seed=trial.index, options={"trial": trial})
        optimiser.reset(
            Problem(
                tuple(NAMES),
                low,
                high,
                info["magnets"].copy(),
                trial.target,
                max_delta,
                steps,
                seed=trial.index,
            )
        )
        maes = [info["mae"]]
        for k in range(steps):
            o = Observation(obs["beam"], obs["magnets"], obs["target"], bool(info["on_screen"]), k)
            setting = optimiser.ask(o)
            assert np.all(np.abs(setting - obs["magnets"]) <= max_delta * (1 + 1e-6))
            assert np.all((low <= setting) & (setting <= high))
            obs, _, terminated, truncated, info = env.step(setting)
            maes.append(info["mae"])
        assert truncated and not terminated
        np.testing.assert_allclose(maes, reference[:, j], rtol=1e-4)


def test_training_is_reproducible(tmp_path: Path, runs: dict) -> None:
    again = train(tiny_recipe("ppo"), tmp_path / "again", progress=False)
    first = torch.load(runs["ppo"].policy_dir / "policy.pt", weights_only=True)
    second = torch.load(again.policy_dir / "policy.pt", weights_only=True)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_tensorboard_needs_its_package(tmp_path: Path) -> None:
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match=r"accelrl\[tensorboard\]"):
            train(tiny_recipe("ppo", tensorboard=True), tmp_path, progress=False)
    else:
        run = train(
            tiny_recipe("ppo", tensorboard=True, total_timesteps=128), tmp_path, progress=False
        )
        assert list((tmp_path / "logs").rglob("events.out.tfevents*"))
        assert run.timesteps >= 128


# ---------------------------------------------------------------------- CLI
def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("train")(train_command)

    @app.command("other")
    def other() -> None:  # a second command keeps "train" a subcommand, as in accelrl
        pass

    return app


def test_cli_trains_and_prints_the_summary(tmp_path: Path) -> None:
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe("ppo", checkpoint_every=0).to_dict()))
    out = tmp_path / "run"
    result = CliRunner().invoke(
        _app(),
        [
            "train",
            "--recipe",
            str(recipe),
            "--out",
            str(out),
            "--timesteps",
            "256",
            "--seed",
            "1",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "median best MAE" in result.output and "timesteps/s" in result.output
    policy = MLPPolicy.load(out / "policy")
    assert policy.meta.provenance["seed"] == 1
    assert policy.meta.provenance["recipe"]["total_timesteps"] == 256


def test_cli_reports_invalid_recipes(tmp_path: Path) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("algorithm: td3\nhyperparameters: {gamma: 2}\n")
    result = CliRunner().invoke(_app(), ["train", "--recipe", str(recipe)])
    assert result.exit_code == 2
    assert "hyperparameters.gamma = 2" in result.output
    assert not Path("runs/bad-0").exists()


def test_cli_default_run_directory() -> None:
    from accelrl.cli.train import default_out

    assert default_out(Path("agents/td3_icml.yaml"), 4) == Path("runs/td3_icml-4")


def test_sb3_trains_on_a_task_yaml(tmp_path):
    """A recipe whose ``env.id`` names a task YAML (the shipped FODO task): trained, evaluated
    on trials drawn from that task, and exported with its actuators."""
    task = Path(__file__).resolve().parents[2] / "envs" / "fodo_task.yaml"
    recipe = tiny_recipe("ppo", env={"id": str(task)}, total_timesteps=128)
    run = train(recipe, tmp_path, progress=False)
    policy = MLPPolicy.load(run.policy_dir)
    assert policy.meta.actuator_names == ["QF", "QD", "HCOR", "VCOR"]
    assert policy.meta.env_id == "accelrl/FODOTransverseTuning-v0"
    assert run.final_eval["n_trials"] >= 1
