"""Truncated or garbled bundle files raise :class:`~accelrl.bundle.BundleError` naming the
file, never ``JSONDecodeError``, ``UnicodeDecodeError`` or ``BadZipFile``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from validation_testlib import PROPERTY

from accelrl.bundle import MANIFEST_FILE, BundleError, read_manifest, read_selftest


@pytest.fixture(scope="module")
def selftest_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("selftest") / "selftest.npz"
    np.savez(path, observation=np.zeros((3, 13)), action=np.ones((3, 5)))
    return path.read_bytes()


@PROPERTY
@given(st.data())
def test_truncated_selftest_is_a_bundle_error(tmp_path, selftest_bytes, data) -> None:
    cut = data.draw(st.integers(0, len(selftest_bytes) - 1))
    path = tmp_path / "selftest.npz"
    path.write_bytes(selftest_bytes[:cut])
    with pytest.raises(BundleError, match="selftest.npz"):
        read_selftest(path)


def test_complete_selftest_reads(tmp_path, selftest_bytes) -> None:
    path = tmp_path / "selftest.npz"
    path.write_bytes(selftest_bytes)
    obs, act = read_selftest(path)
    assert obs.shape == (3, 13) and act.shape == (3, 5)
    np.savez(path, observation=np.zeros((3, 13)))
    with pytest.raises(BundleError, match=r"lacks the arrays \['action'\]"):
        read_selftest(path)


@PROPERTY
@given(st.binary(max_size=64))
def test_garbled_manifest_is_a_bundle_error(tmp_path, content: bytes) -> None:
    (tmp_path / MANIFEST_FILE).write_bytes(b'{"format": "accelrl-policy-bundle", ' + content)
    with pytest.raises(BundleError, match=MANIFEST_FILE):
        read_manifest(tmp_path)


def test_manifest_that_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_FILE).mkdir()
    with pytest.raises(BundleError, match="cannot be read"):
        read_manifest(tmp_path)
