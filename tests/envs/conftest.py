"""Fixtures for the environment tests; helpers live in ``envs_testlib``."""

from __future__ import annotations

import warnings

import pytest

import accelrl.envs as E


@pytest.fixture(autouse=True)
def _quiet_env_checker_warnings():
    """check_env's style advice (unbounded Box, non-normalised actions) is not under test."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Box.*", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*not equal although similar.*")
        yield


@pytest.fixture(scope="session")
def trials() -> list[E.Trial]:
    return E.load_trials()
