"""The device vector environment against the numpy one: same streams, same trajectories.

On the CPU everywhere; the CUDA test runs where a GPU is present and checks that CPU and
GPU environments give the same trajectories to float tolerance.
"""

from __future__ import annotations

import cheetah
import numpy as np
import pytest
import torch
from envs_testlib import make_spec

import accelrl.envs as E
from accelrl.envs import device_rng, rng
from accelrl.envs.device import DeviceTuningVectorEnv, NumpyView
from accelrl.physics import DeviceError

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
#: Beams agree to rounding (numpy vs torch evaluation of the same program, ~1e-14).
RTOL = 1e-9
#: Rewards: logarithms of ratios of those beams (absolute).
ATOL_REWARD = 1e-7


def test_device_streams_are_the_numpy_streams() -> None:
    keys = np.array([rng.key_from_seed(s) for s in range(64)], dtype=np.uint64)
    counters = np.arange(64, dtype=np.uint64) * 13
    kt, ct = (torch.tensor(a.astype(np.int64)) for a in (keys, counters))
    assert np.array_equal(device_rng.uniform(kt, ct, 37).numpy(), rng.uniform(keys, counters, 37))
    np.testing.assert_allclose(
        device_rng.normal(kt, ct, 4).numpy(), rng.normal(keys, counters, 4), rtol=1e-14
    )


def _run(venv, device_env, steps: int, seed: int, same_step: bool = False) -> None:
    gen = np.random.default_rng(seed)
    obs_n, info_n = venv.reset(seed=seed)
    obs_d, info_d = device_env.reset(seed=seed)
    for key in obs_n:
        np.testing.assert_allclose(obs_d[key].cpu().numpy(), obs_n[key], rtol=1e-6)
    low, high = venv.single_action_space.low, venv.single_action_space.high
    for t in range(steps):
        a = gen.uniform(low, high, (venv.num_envs, len(low)))
        obs_n, r_n, term_n, trunc_n, info_n = venv.step(a)
        out = device_env.step(torch.as_tensor(a, device=device_env.device))
        obs_d, r_d, term_d, trunc_d, info_d = (
            {k: v.cpu().numpy() for k, v in x.items()} if isinstance(x, dict) and k == 0 else x
            for k, x in enumerate(out)
        )
        assert np.array_equal(term_d.cpu().numpy(), term_n), t
        assert np.array_equal(trunc_d.cpu().numpy(), trunc_n), t
        np.testing.assert_allclose(r_d.cpu().numpy(), r_n, atol=ATOL_REWARD, err_msg=f"step {t}")
        for key in ("beam", "reading", "incoming", "misalignments", "target", "magnets"):
            np.testing.assert_allclose(
                info_d[key].cpu().numpy(), info_n[key], rtol=RTOL, atol=1e-15, err_msg=key
            )
        assert np.array_equal(info_d["step"].cpu().numpy(), info_n["step"])
        for key in obs_n:
            np.testing.assert_allclose(obs_d[key], obs_n[key], rtol=1e-6)
        if same_step:
            done = term_n | trunc_n
            assert np.array_equal(
                info_d["_final_obs"].cpu().numpy(), info_n.get("_final_obs", done)
            )


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"gain_error": 0.05, "drift": {"mu": 2e-6, "mu_p": 1e-7}},
        {
            "failure": {"probability": 0.5, "step": [1, 4]},
            "screen_reading_noise": 5e-6,
            "screen_quantise": True,
        },
    ],
    ids=["ares-ea", "gain-drift", "failure-noise-quantise"],
)
def test_device_env_follows_the_numpy_vector_env(changes: dict) -> None:
    spec = make_spec(max_episode_steps=6, **changes)
    venv = E.TransverseTuningVectorEnv(spec, 16, start="random", reward="icml")
    denv = DeviceTuningVectorEnv(spec, 16, device="cpu", start="random", reward="icml")
    _run(venv, denv, steps=14, seed=3)  # episodes end (truncation at 6) and autoreset


def test_same_step_autoreset_and_shaped_rewards() -> None:
    spec = make_spec(max_episode_steps=4, termination_thresholds=[4e-4, 4e-4, 4e-4, 4e-4])
    reward = [
        {"term": "differential", "norm": "l2", "log": True},
        {"term": "feedback", "weight": 0.5},
        {"term": "on_screen", "weight": 0.1},
        {"term": "magnet_change", "weight": 0.2},
    ]
    kw = dict(autoreset_mode="same_step", reward=reward)
    _run(
        E.TransverseTuningVectorEnv(spec, 8, **kw),
        DeviceTuningVectorEnv(spec, 8, device="cpu", **kw),
        steps=10,
        seed=11,
        same_step=True,
    )


def test_make_vec_device_for_ares_ea_and_a_custom_task(trials) -> None:
    venv = E.make_vec(E.ARES_EA_ID, 4, device="cpu")
    assert isinstance(venv, DeviceTuningVectorEnv) and venv.max_episode_steps == 50
    obs, info = venv.reset(seed=0, options={"trial": trials[:4], "magnets": "trial"})
    assert obs["beam"].dtype == torch.float32 and obs["beam"].device.type == "cpu"
    np.testing.assert_allclose(info["target"].numpy(), np.stack([t.target for t in trials[:4]]))
    # a make_tuning_env task runs on the device too
    segment = cheetah.Segment(
        [
            cheetah.Drift(length=torch.tensor(0.5), name="D0"),
            cheetah.Quadrupole(length=torch.tensor(0.2), name="Q1"),
            cheetah.Drift(length=torch.tensor(1.0), name="D1"),
            cheetah.Screen(name="SCR", is_active=True),
        ],
        name="line",
    )
    task = E.make_tuning_env(
        segment, knobs=[("Q1", "k1", -30.0, 30.0)], screen="SCR"
    ).unwrapped.task
    denv = DeviceTuningVectorEnv(task, 3, device="cpu", segment=segment)
    numpy_env = E.TransverseTuningVectorEnv(task, 3, segment=segment)
    _run(numpy_env, denv, steps=5, seed=2)


def test_compiled_beamline_gives_the_same_steps() -> None:
    """``compile_backend``: Dynamo captures the map in one graph (the ``"eager"`` backend
    keeps the test short; ``"inductor"`` is the one for speed)."""
    spec = make_spec(max_episode_steps=3)
    eager = DeviceTuningVectorEnv(spec, 8, device="cpu")
    compiled = DeviceTuningVectorEnv(spec, 8, device="cpu", compile_backend="eager")
    a = torch.full((8, 5), 0.01, dtype=torch.float64)
    for env in (eager, compiled):
        env.reset(seed=4)
    for _ in range(4):
        out_e, out_c = eager.step(a), compiled.step(a)
        torch.testing.assert_close(out_c[0]["beam"], out_e[0]["beam"], rtol=0, atol=0)
        torch.testing.assert_close(out_c[1], out_e[1], rtol=0, atol=0)


def test_numpy_view_serves_stable_baselines3() -> None:
    from accelrl.envs.sb3 import SB3VecEnv

    spec = make_spec(max_episode_steps=3)
    sb3 = SB3VecEnv(NumpyView(DeviceTuningVectorEnv(spec, 4, device="cpu")), info_keys=("mae",))
    reference = E.SB3VecEnv(E.TransverseTuningVectorEnv(spec, 4), info_keys=("mae",))
    for env in (sb3, reference):
        env.seed(5)
    np.testing.assert_allclose(sb3.reset()["beam"], reference.reset()["beam"], rtol=1e-6)
    a = np.full((4, 5), 0.01, dtype=np.float32)
    for _ in range(4):
        obs, reward, done, infos = sb3.step(a)
        obs_r, reward_r, done_r, infos_r = reference.step(a)
        assert isinstance(obs["beam"], np.ndarray) and np.array_equal(done, done_r)
        np.testing.assert_allclose(reward, reward_r, atol=1e-6)
        assert [sorted(i) for i in infos] == [sorted(i) for i in infos_r]


def test_bad_input_names_the_device_and_the_fix() -> None:
    spec = make_spec()
    with pytest.raises(DeviceError, match="'gpu' is not a device torch knows"):
        E.make_vec(E.ARES_EA_ID, 2, device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match=r"device='cuda'.*give device='cpu'"):
            E.make_vec(E.ARES_EA_ID, 2, device="cuda")
    with pytest.raises(ValueError, match="has no device version"):
        E.make_vec("accelrl/LPATuning-v0", 2, device="cpu")
    with pytest.raises(ValueError, match="ideal world only"):
        DeviceTuningVectorEnv(spec, 2, device="cpu", world="ares-realistic")
    env = DeviceTuningVectorEnv(spec, 2, device="cpu")
    with pytest.raises(DeviceError, match=r"actions are on meta.*\.to\('cpu'\)"):
        env.step(torch.zeros(2, 5, device="meta"))
    with pytest.raises(TypeError, match="NumpyView"):
        env.step(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="NaN or inf.*env 1"):
        env.step(torch.tensor([[0.0] * 5, [0.0, float("nan"), 0, 0, 0]]))
    with pytest.raises(ValueError, match="not supported on a device"):
        env.reset(options={"target": [0, 1e-4, 0, 1e-4]})


@CUDA
def test_cuda_env_agrees_with_the_cpu_env() -> None:
    spec = make_spec(max_episode_steps=5, gain_error=0.05, screen_reading_noise=5e-6)
    cpu = DeviceTuningVectorEnv(spec, 256, device="cpu", start="random")
    gpu = DeviceTuningVectorEnv(spec, 256, device="cuda", start="random")
    obs_c, _ = cpu.reset(seed=0)
    obs_g, _ = gpu.reset(seed=0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(12):
        a = (torch.rand(256, 5, generator=gen, dtype=torch.float64) - 0.5) * 2 * cpu.action_high
        obs_c, r_c, te_c, tr_c, info_c = cpu.step(a)
        obs_g, r_g, te_g, tr_g, info_g = gpu.step(a.cuda())
        assert obs_g["beam"].device.type == "cuda"
        torch.testing.assert_close(info_g["beam"].cpu(), info_c["beam"], rtol=1e-9, atol=1e-15)
        torch.testing.assert_close(r_g.cpu(), r_c, rtol=0, atol=ATOL_REWARD)
        assert torch.equal(te_g.cpu(), te_c) and torch.equal(tr_g.cpu(), tr_c)
