"""The native vector env (:func:`accelrl.envs.make_vec`) and the SB3 adapter.

Environment ``i`` of a vector env reset with ``seed=s`` must follow the trajectory of a
single env reset with ``seed=s + i``, through Gymnasium's autoresets. The single env
evaluates one beamline on Python floats and the vector env a numpy batch, so readings agree
to float64 rounding: beams to 1e-12 relative (observed ~1e-14), rewards (log-ratios of
readings, |r| ~ 0.1..10) to 1e-12 absolute; terminations, truncations and the random
streams exactly.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from envs_testlib import BEAM_ATOL, BEAM_RTOL, ENV_ID, START, compare_with_singles, make_spec

import accelrl.envs as E


def test_make_vec_spaces():
    venv = E.make_vec(ENV_ID, num_envs=3)
    single = gym.make(ENV_ID)
    assert venv.num_envs == 3
    assert venv.single_observation_space == single.observation_space
    assert venv.single_action_space == single.action_space
    assert venv.max_episode_steps == 50
    obs, info = venv.reset(seed=0)
    assert obs["beam"].shape == (3, 4) and obs["magnets"].shape == (3, 5)
    assert obs["beam"].dtype == np.float32
    assert obs in venv.observation_space
    np.testing.assert_array_equal(info["magnets"], np.tile(START, (3, 1)))


def test_gym_make_vec_uses_native_env():
    venv = gym.make_vec(ENV_ID, num_envs=2, vectorization_mode="vector_entry_point")
    assert isinstance(venv.unwrapped, E.TransverseTuningVectorEnv)


def test_unknown_env_id():
    with pytest.raises(ValueError, match="unknown environment"):
        E.make_vec("accelrl/Nope-v0", num_envs=2)


def test_matches_single_envs_default_time_limit():
    """Default TimeLimit (50) and the shipped termination: 110 steps, two truncations each."""
    n = 4
    venv = E.make_vec(ENV_ID, num_envs=n)
    singles = [gym.make(ENV_ID) for _ in range(n)]
    ends = compare_with_singles(venv, singles, 123, 110, np.random.default_rng(0))
    assert ends[1] >= n  # every env truncated at least once


def test_matches_single_envs_short_episodes():
    n = 6
    venv = E.make_vec(ENV_ID, num_envs=n, max_episode_steps=7)
    singles = [gym.make(ENV_ID, max_episode_steps=7) for _ in range(n)]
    ends = compare_with_singles(venv, singles, 10, 40, np.random.default_rng(1))
    assert ends[1] >= 4 * n


#: Loose thresholds [m] with which random actions terminate ~5-10% of the steps.
LOOSE = {"delta": 1.5e-3, "direct": 3e-3}


@pytest.mark.parametrize("action_mode", ["delta", "direct"])
@pytest.mark.parametrize("same_step", [False, True], ids=["next_step", "same_step"])
def test_matches_single_envs_with_terminations(same_step, action_mode):
    spec = make_spec(termination_thresholds=[LOOSE[action_mode]] * 4)
    n = 8
    venv = E.TransverseTuningVectorEnv(
        spec,
        num_envs=n,
        max_episode_steps=7,
        action_mode=action_mode,
        autoreset_mode="same_step" if same_step else "next_step",
    )
    singles = [
        gym.wrappers.TimeLimit(E.TransverseTuningEnv(spec, action_mode=action_mode), 7)
        for _ in range(n)
    ]
    ends = compare_with_singles(venv, singles, 1000, 40, np.random.default_rng(2), same_step)
    assert ends[0] >= 5 and ends[1] >= 5, ends


@pytest.mark.parametrize("same_step", [False, True], ids=["next_step", "same_step"])
def test_matches_single_envs_with_noise_drift_failures(same_step):
    """Every per-step random stream in use (reading noise, drift, failures, gain errors)."""
    spec = make_spec(
        screen_reading_noise=5e-6,
        drift={"mu": 1e-6, "mu_p": 1e-7},
        failure={"probability": 0.5, "step": [1, 4]},
        gain_error=0.05,
        termination_thresholds=[LOOSE["delta"]] * 4,
    )
    n = 6
    venv = E.TransverseTuningVectorEnv(
        spec,
        num_envs=n,
        max_episode_steps=6,
        autoreset_mode="same_step" if same_step else "next_step",
    )
    singles = [gym.wrappers.TimeLimit(E.TransverseTuningEnv(spec), 6) for _ in range(n)]
    ends = compare_with_singles(venv, singles, 77, 30, np.random.default_rng(3), same_step)
    assert ends.sum() >= 2 * n


def test_termination_on_last_step_truncates():
    """As Gymnasium's TimeLimit: terminating on the last step is also a truncation."""
    spec = make_spec(termination_hold=3)
    venv = E.TransverseTuningVectorEnv(spec, num_envs=1, max_episode_steps=3)
    single = gym.wrappers.TimeLimit(E.TransverseTuningEnv(spec), 3)
    _, info = single.reset(seed=5)
    options = {"target": info["reading"]}  # zero error: terminates after hold = 3 steps
    single.reset(seed=5, options=options)
    venv.reset(seed=5, options=options)
    zero = np.zeros(5, dtype=np.float32)
    for _ in range(3):
        _, _, te, tr, _ = single.step(zero)
        _, _, vte, vtr, _ = venv.step(zero[None])
    assert te and tr  # Gymnasium's TimeLimit
    assert vte[0] and vtr[0] == tr


def test_matches_single_envs_particle_backend():
    n = 3
    kwargs = {"backend": "cheetah-particles", "num_particles": 64, "max_episode_steps": 3}
    venv = E.make_vec(ENV_ID, num_envs=n, **kwargs)
    singles = [gym.make(ENV_ID, **kwargs) for _ in range(n)]
    compare_with_singles(venv, singles, 10, 8, np.random.default_rng(5))


def test_next_step_autoreset_semantics():
    venv = E.make_vec(ENV_ID, num_envs=2, max_episode_steps=3, terminate_on_target=False)
    _, first = venv.reset(seed=0)
    zero = np.zeros((2, 5), dtype=np.float32)
    for _ in range(2):
        _, _, te, tr, _ = venv.step(zero)
        assert not te.any() and not tr.any()
    _, _, te, tr, _ = venv.step(zero)
    assert tr.all() and not te.any()
    obs, reward, te, tr, info = venv.step(zero + 1.0)  # ignored: this step is the reset
    np.testing.assert_array_equal(reward, 0.0)
    assert not te.any() and not tr.any()
    np.testing.assert_array_equal(info["step"], 0)
    np.testing.assert_array_equal(info["magnets"], np.tile(START, (2, 1)))
    # a new episode: freshly drawn hidden state
    assert not np.array_equal(info["incoming"], first["incoming"])
    np.testing.assert_array_equal(obs["magnets"], np.float32(np.tile(START, (2, 1))))


def test_same_step_autoreset_semantics():
    venv = E.make_vec(
        ENV_ID,
        num_envs=3,
        max_episode_steps=2,
        autoreset_mode="same_step",
        terminate_on_target=False,
    )
    venv.reset(seed=0)
    step = np.float32([[1, 0, 0, 0, 0]] * 3)
    _, _, _, tr, info = venv.step(step)
    assert not tr.any() and "final_obs" not in info
    obs, reward, te, tr, info = venv.step(step)
    assert tr.all() and not te.any()
    assert np.all(reward != 0)
    np.testing.assert_array_equal(info["_final_obs"], [True] * 3)
    # final observation: after two +1 steps on Q1; returned observation: the reset one
    np.testing.assert_allclose(info["final_obs"]["magnets"][:, 0], START[0] + 2, rtol=1e-7)
    np.testing.assert_array_equal(info["final_info"]["step"], [2, 2, 2])
    np.testing.assert_array_equal(obs["magnets"], np.float32(np.tile(START, (3, 1))))
    np.testing.assert_array_equal(info["step"], [0, 0, 0])


def test_vector_reset_seed_list_and_options(trials):
    venv = E.make_vec(ENV_ID, num_envs=3)
    _, a = venv.reset(seed=[5, 6, 7])
    _, b = venv.reset(seed=5)
    np.testing.assert_array_equal(a["incoming"], b["incoming"])
    with pytest.raises(ValueError, match="3 seeds"):
        venv.reset(seed=[1, 2])
    _, info = venv.reset(options={"trial": trials[17]})
    np.testing.assert_array_equal(info["incoming"], np.tile(trials[17].incoming, (3, 1)))
    np.testing.assert_array_equal(info["target"], np.tile(trials[17].target, (3, 1)))


def test_vector_reset_one_trial_per_env(trials):
    venv = E.make_vec(ENV_ID, num_envs=3)
    chosen = [trials[3], trials[100], trials[299]]
    _, info = venv.reset(seed=0, options={"trial": chosen})
    single = gym.make(ENV_ID)
    for i, trial in enumerate(chosen):
        np.testing.assert_array_equal(info["incoming"][i], trial.incoming)
        np.testing.assert_array_equal(info["target"][i], trial.target)
        _, ref = single.reset(options={"trial": trial})
        np.testing.assert_array_equal(info["misalignments"][i], ref["misalignments"])
        np.testing.assert_allclose(info["beam"][i], ref["beam"], rtol=BEAM_RTOL, atol=BEAM_ATOL)
    _, info = venv.reset(options={"trial": chosen, "magnets": "trial"})
    for i, trial in enumerate(chosen):
        np.testing.assert_array_equal(
            info["magnets"][i], [trial.initial[k] for k in ("Q1", "Q2", "CV", "Q3", "CH")]
        )
    with pytest.raises(ValueError, match="2 trials for 3 environments"):
        venv.reset(options={"trial": chosen[:2]})


def test_vector_bad_actions():
    venv = E.make_vec(ENV_ID, num_envs=3)
    venv.reset(seed=0)
    with pytest.raises(ValueError, match="shape") as info:
        venv.step(np.zeros((2, 5), dtype=np.float32))
    assert "(3, 5)" in str(info.value) and "(2, 5)" in str(info.value)
    bad = np.zeros((3, 5), dtype=np.float32)
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match="NaN") as info:
        venv.step(bad)
    assert "Q3" in str(info.value)
    bad[1, 3] = np.inf
    with pytest.raises(ValueError, match="NaN"):
        venv.step(bad)
    _, _, _, _, info = venv.step(np.full((3, 5), 100.0, dtype=np.float32))
    np.testing.assert_allclose(
        info["magnets"] - START, np.tile([7.2, 7.2, 6.1782e-4, 7.2, 6.1782e-4], (3, 1)), rtol=1e-6
    )


def test_bad_vector_arguments():
    with pytest.raises(ValueError, match="autoreset_mode"):
        E.make_vec(ENV_ID, num_envs=2, autoreset_mode="disabled")
    with pytest.raises(ValueError, match="num_envs"):
        E.make_vec(ENV_ID, num_envs=0)


def test_info_snapshots_not_modified_by_later_steps():
    venv = E.make_vec(ENV_ID, num_envs=2)
    _, info = venv.reset(seed=0)
    saved = {k: np.array(v, copy=True) for k, v in info.items() if not k.startswith("_")}
    venv.step(np.full((2, 5), 1.0, dtype=np.float32))
    for key, value in saved.items():
        np.testing.assert_array_equal(info[key], value, err_msg=key)


def test_vector_render():
    venv = E.make_vec(ENV_ID, num_envs=2, render_mode="rgb_array")
    venv.reset(seed=0)
    images = venv.render()
    assert len(images) == 2
    for image in images:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


# ------------------------------------------------------------------ Stable-Baselines3


def test_sb3_adapter_terminal_observation_and_truncation():
    spec = make_spec(termination_thresholds=[LOOSE["delta"]] * 4)
    n = 8
    venv = E.TransverseTuningVectorEnv(spec, num_envs=n, max_episode_steps=5)
    sb3 = E.SB3VecEnv(venv, info_keys=("mae",))
    sb3.seed(3)
    obs = sb3.reset()
    assert obs["beam"].shape == (n, 4)
    singles = [gym.wrappers.TimeLimit(E.TransverseTuningEnv(spec), 5) for _ in range(n)]
    for i, env in enumerate(singles):
        env.reset(seed=3 + i)
    rng = np.random.default_rng(4)
    seen = {"terminated": 0, "truncated": 0}
    for _ in range(20):
        actions = rng.uniform(venv.single_action_space.low, venv.single_action_space.high, (n, 5))
        actions = actions.astype(np.float32)
        obs, reward, dones, infos = sb3.step(actions)
        assert reward.dtype == np.float32 and dones.dtype == bool
        assert isinstance(infos, list) and len(infos) == n
        for i, env in enumerate(singles):
            o, r, te, tr, inf = env.step(actions[i])
            assert dones[i] == (te or tr)
            assert reward[i] == pytest.approx(r, rel=1e-6, abs=1e-6)
            assert "mae" in infos[i]
            if dones[i]:
                terminal = infos[i]["terminal_observation"]
                for key in o:
                    np.testing.assert_allclose(terminal[key], o[key], rtol=2e-7)
                assert infos[i]["TimeLimit.truncated"] is (tr and not te)
                seen["truncated" if tr else "terminated"] += 1
                o, inf = env.reset()
            else:
                assert "terminal_observation" not in infos[i]
            for key in o:  # returned observation: the reset one for finished envs
                np.testing.assert_allclose(obs[key][i], o[key], rtol=2e-7)
    assert seen["terminated"] >= 3 and seen["truncated"] >= 3, seen


def test_sb3_adapter_info_of_finished_env_is_terminal_step():
    """As SB3's DummyVecEnv: a finished env's info is that of its terminal step."""
    venv = E.make_vec(ENV_ID, num_envs=2, max_episode_steps=2, terminate_on_target=False)
    sb3 = E.SB3VecEnv(venv, info_keys=("mae", "step"))
    sb3.seed(0)
    sb3.reset()
    zero = np.zeros((2, 5), dtype=np.float32)
    _, _, _, infos_1 = sb3.step(zero)
    _, _, dones, infos_2 = sb3.step(zero)
    assert dones.all()
    assert [i["step"] for i in infos_2] == [2, 2]
    assert [i["mae"] for i in infos_2] == [i["mae"] for i in infos_1]


def test_sb3_vec_env_methods():
    venv = E.make_vec(ENV_ID, num_envs=3)
    sb3 = E.SB3VecEnv(venv)
    assert sb3.get_attr("max_episode_steps") == [50, 50, 50]
    assert sb3.env_is_wrapped(gym.Wrapper) == [False] * 3
    assert sb3.num_envs == 3
    assert sb3.observation_space == venv.single_observation_space
    sb3.close()


def test_sb3_ppo_smoke_train():
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecNormalize

    venv = E.SB3VecEnv(E.make_vec(ENV_ID, num_envs=4, max_episode_steps=10))
    model = PPO(
        "MultiInputPolicy", venv, n_steps=16, batch_size=32, n_epochs=2, seed=0, device="cpu"
    )
    model.learn(total_timesteps=256)
    assert model.num_timesteps >= 256
    action, _ = model.predict(venv.reset(), deterministic=True)
    assert action.shape == (4, 5)

    norm = VecNormalize(E.SB3VecEnv(E.make_vec(ENV_ID, num_envs=4, max_episode_steps=10)))
    model = PPO(
        "MultiInputPolicy", norm, n_steps=16, batch_size=32, n_epochs=2, seed=0, device="cpu"
    )
    model.learn(total_timesteps=256)
    assert model.num_timesteps >= 256
    assert norm.obs_rms["beam"].count > 256
    obs = norm.reset()
    # normalised observations: finite and clipped to +-10 (VecNormalize's default)
    for value in obs.values():
        assert np.all(np.isfinite(value)) and np.all(np.abs(value) <= 10.0)
