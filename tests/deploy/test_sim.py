"""The plant (the simulation with a fixed hidden state) and SimMachine with its faults."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from deploy_testlib import BEAM, KNOBS, machine_config

from accelrl.deploy.machine import Disconnected, Machine, PutRejected, SettleTimeout
from accelrl.deploy.plant import Plant
from accelrl.deploy.sim import Fault, SimMachine
from accelrl.envs import TASKS, TransverseTuningEnv, load_trials

ENV_ID = "accelrl/AresEATransverseTuning-v0"


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_plant_is_the_environment_with_the_trials_hidden_state() -> None:
    trial = load_trials()[30]
    plant = Plant(trial)
    env = TransverseTuningEnv(TASKS[ENV_ID](), action_mode="direct", terminate_on_target=False)
    _, info = env.reset(seed=0, options={"trial": trial})
    np.testing.assert_array_equal([plant.observe()[n] for n in BEAM], info["reading"])
    np.testing.assert_array_equal([plant.target[n] for n in BEAM], trial.target)
    settings = np.array([12.0, -8.0, 1e-4, 15.0, -2e-4])
    plant.set_knobs(dict(zip(KNOBS, settings.tolist(), strict=True)))
    _, _, _, _, info = env.step(settings)
    np.testing.assert_array_equal([plant.beam()[n] for n in BEAM], info["beam"])
    assert plant.mae() == pytest.approx(info["mae"], rel=1e-12)
    hidden = plant.hidden()
    for name, value in trial.misalignments.items():
        assert hidden["misalignments"][name] == value
    assert hidden["incoming"]["energy"] == trial.incoming[0] and hidden["step"] == 1


def test_plant_knobs_partial_updates_clipping_and_errors() -> None:
    plant = Plant.from_trial(0)
    assert plant.knobs() == {"Q1": 10.0, "Q2": -10.0, "CV": 0.0, "Q3": 10.0, "CH": 0.0}
    after = plant.set_knobs({"Q2": 5.0, "CH": 1.0})  # CH beyond its limit: clipped
    assert after["Q2"] == 5.0 and after["Q1"] == 10.0 and after["CH"] == pytest.approx(6.1782e-3)
    with pytest.raises(ValueError, match="unknown knobs"):
        plant.set_knobs({"Q9": 1.0})
    with pytest.raises(ValueError, match="finite"):
        plant.set_knobs({"Q1": float("nan")})
    with pytest.raises(IndexError, match="out of range"):
        Plant.from_trial(300)
    trial_start = Plant.from_trial(3, initial_knobs="trial")
    assert trial_start.knobs() == {n: load_trials()[3].initial[n] for n in KNOBS}


def test_plant_reading_noise_is_fresh_and_seeded() -> None:
    a = Plant.from_trial(30, reading_noise=2e-6, seed=4)
    b = Plant.from_trial(30, reading_noise=2e-6, seed=4)
    first = [a.observe() for _ in range(200)]
    assert first == [b.observe() for _ in range(200)]
    mu_x = np.array([r["mu_x"] for r in first])
    assert np.std(mu_x) == pytest.approx(2e-6, rel=0.2)
    assert abs(np.mean(mu_x) - a.beam()["mu_x"]) < 1e-6


def test_plant_random_hidden_state_is_seeded() -> None:
    assert Plant(seed=3).hidden() == Plant(seed=3).hidden()
    assert Plant(seed=3).hidden() != Plant(seed=4).hidden()


def test_sim_machine_implements_the_protocol_with_settling() -> None:
    plant = Plant.from_trial(30)
    m = SimMachine(plant, machine_config(), settle_delay_s=0.05)
    assert isinstance(m, Machine)
    m.connect(1.0)
    t0 = time.time()
    m.put({"Q1": 11.0})
    assert m.read_setpoints().values["Q1"] == 11.0
    assert m.read_knobs().values["Q1"] == 10.0  # still moving
    m.settle(["Q1"], timeout=1.0)
    assert m.read_knobs().values["Q1"] == 11.0 and plant.knobs()["Q1"] == 11.0
    obs = m.read_observation()
    assert obs.timestamp >= t0 and set(obs.values) == set(BEAM)
    assert obs.values == plant.observe()
    with pytest.raises(PutRejected, match="unknown knobs"):
        m.put({"Q7": 1.0})
    h = m.health()
    assert h.connected and not h.interlock and not h.beam_loss and h.heartbeat_age_s == 0.0


def test_sim_machine_faults() -> None:
    faults = [
        Fault("interlock", after_puts=1, times=1),
        Fault("reject_put", after_puts=2, times=1),
        Fault("readback_offset", after_puts=2, times=1, knob="Q3", value=0.5),
        Fault("disconnect", after_puts=3, times=2),
        Fault("stale_reading", after_puts=3),
    ]
    m = SimMachine(Plant.from_trial(30), machine_config(), faults=faults)
    assert not m.health().interlock
    m.put({"Q1": 11.0})
    assert m.health().interlock and not m.health().interlock  # one call, then gone
    m.put({"Q1": 12.0})
    with pytest.raises(PutRejected, match="injected"):
        m.put({"Q1": 13.0})
    assert m.read_setpoints().values["Q1"] == 12.0
    assert m.read_knobs().values["Q3"] == 10.5 and m.read_knobs().values["Q3"] == 10.0
    frame = m.read_observation()
    m.put({"Q1": 13.0})
    with pytest.raises(Disconnected):
        m.read_knobs()
    assert not m.health().connected
    assert m.health().connected
    assert m.read_observation() is frame  # stale from the third put on
    assert m.puts_applied == 3 and len(m.put_log) == 4


def test_sim_machine_settle_timeout_and_ignored_put() -> None:
    m = SimMachine(
        Plant.from_trial(30),
        machine_config(),
        faults=[Fault("settle_timeout", times=1), Fault("ignore_put", after_puts=1, times=1)],
    )
    m.put({"Q2": -11.0})
    with pytest.raises(SettleTimeout, match="Q2"):
        m.settle(["Q2"], timeout=0.02)
    m.settle(["Q2"], timeout=0.02)  # the fault lasted one settle call
    assert m.read_knobs().values["Q2"] == -11.0
    m.put({"Q2": -12.0})  # ignored without an error
    assert m.read_setpoints().values["Q2"] == -11.0
    with pytest.raises(ValueError, match="unknown fault kind"):
        Fault("gremlins")  # type: ignore[arg-type]


def test_sim_machine_lost_reply_and_another_clients_write() -> None:
    m = SimMachine(
        Plant.from_trial(30), machine_config(), faults=[Fault("lost_reply", after_puts=1, times=1)]
    )
    m.put({"Q1": 11.0})
    with pytest.raises(Disconnected, match="applied, reply lost"):
        m.put({"Q1": 12.0})
    assert m.read_setpoints().values["Q1"] == 12.0 and m.read_knobs().values["Q1"] == 12.0
    m.external_put({"Q2": -5.0})  # an operator: applied, not counted as this client's
    assert m.read_setpoints().values["Q2"] == -5.0 and m.plant.knobs()["Q2"] == -5.0
    assert m.puts_applied == 2 and len(m.put_log) == 2
    with pytest.raises(PutRejected):
        m.external_put({"Q9": 1.0})


def test_sim_machine_honours_protection_opt_outs() -> None:
    config = machine_config(
        protections={
            "interlock": {"none": "no interlock on this stand"},
            "heartbeat": {"none": "no heartbeat on this stand"},
        }
    )
    with pytest.raises(ValueError, match="has no interlock"):
        SimMachine(Plant.from_trial(30), config, faults=[Fault("interlock")])
    m = SimMachine(Plant.from_trial(30), config)
    with pytest.raises(ValueError, match="has no heartbeat"):
        m.inject(Fault("stale_heartbeat"))
    m.inject(Fault("beam_loss"))  # not opted out: simulated
    h = m.health()
    assert h.beam_loss and not h.interlock and h.heartbeat_age_s is None
