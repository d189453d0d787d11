"""Rollback and the worst-case rules, one fault at a time: a put that lands and then fails, a
put that may still land, a 3 s outage, another client's write during the run, during the
rollback and racing a put; what each knob may hold; the records of every rollback write."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest
from deploy_testlib import LIMITS, LinearMachine, machine_config
from fault_machine import FakeClock

from accelrl.deploy.holdings import Holdings
from accelrl.deploy.machine import Disconnected, PutRejected, Reading
from accelrl.deploy.safety import AbortReason, SafetyAbort, SafetyLayer

START = {"Q1": 10.0, "Q2": -10.0, "CV": 0.0, "Q3": 10.0, "CH": 0.0}
CV_STEP = LIMITS["CV"][2]


class FlakyMachine(LinearMachine):
    """:class:`LinearMachine` with scripted failures, an outage on a fake clock, puts that
    land and then raise, puts dropped silently, and another client's writes.

    :param clock: The fake clock (outages end on it).
    """

    def __init__(self, clock: FakeClock, **kwargs) -> None:
        super().__init__(**kwargs)
        self.clock = clock
        #: Call name -> number of coming calls that raise ``Disconnected`` before any effect.
        self.fail: dict[str, int] = {}
        #: Puts to come that land and then raise ``Disconnected``.
        self.lost_replies = 0
        #: Puts to come that are dropped silently.
        self.drop = 0
        #: Every call raises ``Disconnected`` until the clock reaches this time [s].
        self.outage_until = -1.0
        #: Start an outage of this many seconds when a reply is lost.
        self.outage_after_lost_reply = 0.0
        #: Applied to the setpoints right after the next put lands (another client racing).
        self.race: dict[str, float] = {}
        #: Armed as :attr:`fail` once a put has landed.
        self.fail_after_put: dict[str, int] = {}
        #: Every call, in order.
        self.calls: list[str] = []

    def _gate(self, name: str) -> None:
        self.calls.append(name)
        self.clock.t += 1e-6
        if self.clock.t < self.outage_until:
            raise Disconnected(f"{name}: outage")
        if self.fail.get(name, 0) > 0:
            self.fail[name] -= 1
            raise Disconnected(f"{name}: failed")

    def connect(self, timeout: float) -> None:
        self._gate("connect")

    def read_knobs(self) -> Reading:
        self._gate("read_knobs")
        return Reading(super().read_knobs().values, self.clock.t)

    def read_setpoints(self) -> Reading:
        self._gate("read_setpoints")
        return Reading(dict(self.setpoints), self.clock.t)

    def read_observation(self) -> Reading:
        self._gate("read_observation")
        return Reading(super().read_observation().values, self.clock.t)

    def health(self):
        self._gate("health")
        return super().health()

    def settle(self, names: Sequence[str], timeout: float) -> None:
        self._gate("settle")

    def put(self, setpoints: Mapping[str, float]) -> None:
        self._gate("put")
        if self.drop > 0:
            self.drop -= 1
            self.puts.append((dict(self.setpoints), dict(setpoints)))
            return
        super().put(setpoints)
        self.fail.update(self.fail_after_put)
        self.fail_after_put = {}
        if self.race:
            self.setpoints.update(self.race)
            self.race = {}
        if self.lost_replies > 0:
            self.lost_replies -= 1
            self.outage_until = self.clock.t + self.outage_after_lost_reply
            raise Disconnected("put: applied, reply lost")

    def landed_steps(self) -> list[float]:
        """Per put, the largest ``|value - setpoint before| / max_step`` of its knobs."""
        return [
            max(abs(v - before[n]) / LIMITS[n][2] for n, v in put.items())
            for before, put in self.puts
        ]


def layer(m: FlakyMachine, **config) -> SafetyLayer:
    clock = m.clock
    return SafetyLayer(
        m, machine_config(**config), clock=clock.time, sleep=clock.sleep, monotonic=clock.monotonic
    )


def climb(s: SafetyLayer, n: int, delta=(0.0, 0.0, CV_STEP, 0.0, 0.0)) -> None:
    for _ in range(n):
        s.read_observation()
        s.read_knobs(health=True)
        s.write(s.propose(list(delta)).setpoints)


# ---------------------------------------------------------------------- holdings
def test_holdings_keep_every_value_a_knob_may_hold() -> None:
    h = Holdings({"CV": 0.0}, {"CV": 1e-7})
    h.before_put({"CV": 6e-4})
    h.before_put({"CV": 1.2e-3})  # the first put raised; the retry goes out too
    assert h.may_hold("CV") == (0.0, 6e-4, 1.2e-3) and h.span("CV") == (0.0, 1.2e-3)
    assert h.observe("CV", 6e-4) == "held"  # the first landed; the second may still land
    assert h.may_hold("CV") == (6e-4, 1.2e-3) and not h.known("CV")
    assert h.observe("CV", 1.2e-3 + 5e-8) == "held" and h.may_hold("CV") == (1.2e-3 + 5e-8,)
    assert h.observe("CV", float("nan")) == "unreadable" and h.known("CV")
    assert h.observe("CV", 3e-3) == "foreign" and h.foreign == {"CV": 3e-3}
    assert h.moved == {"CV"} and h.own(["CV"]) == []


# ---------------------------------------------------------------------- disconnect after a put
def test_a_put_that_lands_then_fails_is_rolled_back_within_max_step() -> None:
    """The put lands, its settle raises Disconnected, and the setpoints cannot be read at
    first: the rollback must not ramp from the last *verified* setting (that stepped CV by
    1.03e-3 rad against max_step 6.18e-4)."""
    m = FlakyMachine(FakeClock())
    s = layer(m)
    s.start()
    climb(s, 3)
    m.fail_after_put = {"settle": 1, "read_setpoints": 3}
    with pytest.raises(SafetyAbort) as info:
        climb(s, 1)
    assert info.value.reason is AbortReason.disconnected
    assert m.setpoints["CV"] == pytest.approx(4 * CV_STEP)  # it landed
    assert s.commanded["CV"] == pytest.approx(4 * CV_STEP)  # recorded before the put
    result = s.rollback()
    assert result.complete and m.setpoints == START
    assert max(m.landed_steps()) <= 1 + 1e-9


def test_a_put_that_may_still_land_pins_the_knob_first() -> None:
    """A put the machine dropped silently may still land as far as the rollback knows: its
    first move is within max_step of both values, i.e. back to the value read."""
    m = FlakyMachine(FakeClock())
    s = layer(m)
    s.start()
    climb(s, 3)
    m.drop = 1
    with pytest.raises(SafetyAbort) as info:
        climb(s, 1)
    assert info.value.reason is AbortReason.put_rejected
    assert s.holdings.may_hold("CV") == pytest.approx((3 * CV_STEP, 4 * CV_STEP))
    records = []
    result = s.rollback(on_write=lambda i, r: records.append(r))
    assert result.complete and m.setpoints == START
    first = records[0]
    assert first["setpoints"]["CV"] == pytest.approx(3 * CV_STEP)  # within step of both
    assert first["may_hold"]["CV"] == pytest.approx([3 * CV_STEP, 4 * CV_STEP])
    for record in records:
        for name, value in record["setpoints"].items():
            assert all(abs(value - v) <= LIMITS[name][2] * (1 + 1e-12)
                       for v in record["may_hold"][name])  # fmt: skip


def test_propose_plans_from_every_value_a_knob_may_hold() -> None:
    m = FlakyMachine(FakeClock())
    s = layer(m)
    s.start()
    s.holdings.before_put({"CV": CV_STEP})  # a put whose fate is unknown
    p = s.propose([0.0, 0.0, -CV_STEP, 0.0, 0.0])
    assert p.setpoints["CV"] == pytest.approx(0.0)  # not -max_step: it may hold +max_step
    with pytest.raises(SafetyAbort) as info:
        s.write({"CV": -CV_STEP / 2})
    assert info.value.reason is AbortReason.unsafe_setpoint and m.puts == []


# ---------------------------------------------------------------------- outages
def test_a_3_s_outage_during_rollback_is_waited_out() -> None:
    m = FlakyMachine(FakeClock())
    s = layer(m, outage_deadline_s=5.0)
    s.start()
    climb(s, 4, (-7.2, 7.2, CV_STEP, 0.0, 0.0))
    m.lost_replies, m.outage_after_lost_reply = 1, 3.0
    with pytest.raises(SafetyAbort):
        climb(s, 1, (-7.2, 7.2, CV_STEP, 0.0, 0.0))
    notes = []
    t0 = m.clock.t
    result = s.rollback(on_note=notes.append)
    assert result.complete and result.verified and m.setpoints == START
    assert 3.0 <= m.clock.t - t0 < 3.5 and result.waited_s >= 3.0
    assert notes[0]["event"] == "waiting" and "outage" in notes[0]["error"]
    assert "connect" in m.calls  # it reconnects while waiting
    assert max(m.landed_steps()) <= 1 + 1e-9


def test_an_outage_beyond_the_deadline_says_what_each_knob_may_hold() -> None:
    m = FlakyMachine(FakeClock())
    s = layer(m, outage_deadline_s=1.0)
    s.start()
    climb(s, 2, (-7.2, 0.0, CV_STEP, 0.0, 0.0))
    m.lost_replies, m.outage_after_lost_reply = 1, 30.0
    with pytest.raises(SafetyAbort):
        climb(s, 1, (-7.2, 0.0, CV_STEP, 0.0, 0.0))
    puts = len(m.puts)
    result = s.rollback()
    assert not result.complete and len(m.puts) == puts  # nothing written blind
    assert result.not_restored == {
        "Q1": pytest.approx([10.0 - 2 * 7.2, 10.0 - 3 * 7.2]),
        "CV": pytest.approx([2 * CV_STEP, 3 * CV_STEP]),
    }
    assert "not restored: Q1 may hold one of" in result.detail and "CV may hold" in result.detail
    assert "outage" in result.detail and 0.99 <= result.waited_s <= 1.0


def test_a_deadline_of_zero_tries_once() -> None:
    m = FlakyMachine(FakeClock())
    s = layer(m, outage_deadline_s=0.0)
    s.start()
    climb(s, 1)
    m.outage_until = m.clock.t + 0.1
    result = s.rollback()
    assert not result.complete and result.waited_s == 0.0
    assert m.calls.count("read_setpoints") - 3 <= 2  # one try (and the final read)


# ---------------------------------------------------------------------- another client
def test_an_operator_write_during_the_run_is_not_undone() -> None:
    m = FlakyMachine(FakeClock())
    s = layer(m)
    s.start()
    climb(s, 3, (-7.2, 7.2, CV_STEP, 0.0, 0.0))
    m.setpoints["Q2"] = 30.0  # the operator sets Q2
    with pytest.raises(SafetyAbort) as info:
        climb(s, 1, (-7.2, 7.2, CV_STEP, 0.0, 0.0))
    assert (
        info.value.reason is AbortReason.setpoint_changed and "Q2 reads 30.0" in info.value.detail
    )
    notes, records = [], []
    result = s.rollback(on_write=lambda i, r: records.append(r), on_note=notes.append)
    assert m.setpoints == {**START, "Q2": 30.0}  # the rest restored, Q2 left
    assert result.complete and result.foreign == {"Q2": 30.0}
    assert "left alone (written by another client): Q2 = 30.0" in result.detail
    detail = "Q2 reads 30.0, written by another client: left alone"
    assert notes == [{"event": "foreign_write", "knob": "Q2", "value": 30.0, "detail": detail}]
    assert all("Q2" not in r["setpoints"] for r in records)


def test_an_operator_write_during_the_rollback_is_not_undone() -> None:
    m = FlakyMachine(FakeClock())
    s = layer(m)
    s.start()
    climb(s, 4, (-7.2, 7.2, CV_STEP, 0.0, 0.0))
    seen = []

    def on_write(index: int, record: Mapping) -> None:
        seen.append(record)
        if index == 1:
            m.setpoints["CV"] = -1e-3  # the operator takes CV over mid-ramp

    result = s.rollback(on_write=on_write)
    assert m.setpoints["CV"] == -1e-3 and result.foreign == {"CV": -1e-3}
    assert {n: m.setpoints[n] for n in ("Q1", "Q2")} == {"Q1": 10.0, "Q2": -10.0}
    assert all("CV" not in r["setpoints"] for r in seen[2:])


def test_knobs_this_run_never_moved_are_never_written() -> None:
    m = FlakyMachine(FakeClock())
    s = layer(m)
    s.start()
    climb(s, 2, (0.0, 0.0, CV_STEP, 0.0, 0.0))
    s.rollback()
    assert {n for _, put in m.puts for n in put} == {"CV"}


def test_a_put_overwritten_by_another_client_is_a_foreign_write_not_a_rejection() -> None:
    m = FlakyMachine(FakeClock())
    s = layer(m)
    s.start()
    climb(s, 2)
    m.race = {"CV": -2e-3}  # applied, then overwritten before it is read back
    with pytest.raises(SafetyAbort) as info:
        climb(s, 1)
    assert info.value.reason is AbortReason.setpoint_changed
    assert "changed by another client after the put" in info.value.detail
    result = s.rollback()
    assert m.setpoints["CV"] == -2e-3 and result.foreign == {"CV": -2e-3}


def test_a_put_not_applied_is_still_a_rejection() -> None:
    m = FlakyMachine(FakeClock())
    s = layer(m)
    s.start()
    m.drop = 1
    with pytest.raises(SafetyAbort) as info:
        climb(s, 1)
    assert info.value.reason is AbortReason.put_rejected and "not applied" in info.value.detail


# ---------------------------------------------------------------------- retries and records
def test_failed_ramp_writes_are_retried_and_every_attempt_is_recorded() -> None:
    m = FlakyMachine(FakeClock())
    rejections = iter([True, True])

    def hook(sp: Mapping[str, float]) -> None:
        if len(m.puts) > 3 and next(rejections, False):
            raise PutRejected("busy")

    m.put_hook = hook
    s = layer(m)
    s.start()
    climb(s, 3, (-7.2, 0.0, 0.0, 0.0, 0.0))
    records = []
    result = s.rollback(on_write=lambda i, r: records.append((i, dict(r))))
    assert result.complete and m.setpoints == START
    assert [i for i, _ in records] == list(range(len(records)))
    attempts = [(r["attempt"], r["ok"]) for _, r in records]
    assert attempts[:3] == [(0, False), (1, False), (2, True)]
    assert "put_rejected" in records[0][1]["error"] and records[2][1]["readbacks"]
    assert all(r["setpoints"] == {"Q1": pytest.approx(10.0 - 2 * 7.2)} for _, r in records[:3])


def test_outage_deadline_must_be_finite() -> None:
    m = FlakyMachine(FakeClock())
    s = layer(m)
    s.start()
    climb(s, 1)
    with pytest.raises(ValueError, match="finite"):
        s.rollback(outage_deadline_s=float("inf"))
