"""Fixtures: the virtual accelerator (an IOC subprocess on 127.0.0.1) for the EPICS,
virtual-accelerator and end-to-end tests.

The IOC is the config's server (``softioc``: EPICS 7 via pythonSoftIOC) unless the
environment variable ``ACCELRL_VIRTUAL_SERVER`` names another (``caproto``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
VIRTUAL_CONFIG = ROOT / "deploy" / "virtual_ares_ea.yaml"
MACHINE_CONFIG = ROOT / "deploy" / "virtual_ares_ea_machine.yaml"

#: The server the tests run against (``None``: the config's).
SERVER: str | None = os.environ.get("ACCELRL_VIRTUAL_SERVER") or None

#: Fast dynamics for tests: short ramps, frequent frames and heartbeats; setpoint writes
#: outside the limits are refused (the client's PutRejected path).
FAST: dict[str, Any] = {
    "magnets": {"settle_time_s": 0.1, "update_rate_hz": 100.0},
    "screen": {"frame_rate_hz": 20.0, "reading_noise": 2.0e-6, "seed": 0, "image": True},
    "heartbeat_period_s": 0.1,
    "faults": {"stuck_knob": "Q1", "beam_loss_level": 1.0, "disconnect_s": 1.0},
    "records": {"refusal": "reject"},
}


def start_ioc(**overrides: Any) -> Any:
    """A fresh IOC (free ports, unique prefix) with :data:`FAST` dynamics and ``overrides``
    (``server=...`` chooses the server; default :data:`SERVER`)."""
    from accelrl.deploy.virtual import serve_in_subprocess, unique_prefix

    settings = {**FAST, **overrides}
    settings.setdefault("server", SERVER)
    return serve_in_subprocess(VIRTUAL_CONFIG, prefix=unique_prefix(), **settings)


@pytest.fixture(name="start_ioc", scope="session")
def start_ioc_fixture() -> Any:
    """:func:`start_ioc`, for tests that need an IOC of their own (use it as a context
    manager)."""
    return start_ioc


@pytest.fixture(scope="session")
def shared_ioc() -> Iterator[Any]:
    """One IOC for the tests of a worker; reset by :func:`ioc` before each test."""
    handle = start_ioc()
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def ioc(shared_ioc: Any) -> Any:
    """The shared IOC, reset: no faults, counters zero, initial knob settings (waiting for it
    to come back if a test left it in the ``disconnect`` fault)."""
    shared_ioc.reset(timeout=30.0)
    return shared_ioc


@pytest.fixture
def machine(ioc: Any) -> Iterator[Any]:
    """A connected :class:`~accelrl.deploy.epics.EpicsMachine` on the shared IOC."""
    m = ioc.machine()
    m.connect(timeout=5.0)
    try:
        yield m
    finally:
        m.close()
