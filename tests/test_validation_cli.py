"""Numbers given on the command line: NaN and +-inf (which click parses as floats and lets
through its range checks) are refused naming the option and the allowed range."""

from __future__ import annotations

import math

import pytest
import typer
from hypothesis import given
from hypothesis import strategies as st
from validation_testlib import PROPERTY

from accelrl.cli.options import finite


@PROPERTY
@given(st.sampled_from([math.nan, math.inf, -math.inf]), st.sampled_from([None, 0.0, -5.0]))
def test_non_finite_numbers_are_refused(value: float, low: float | None) -> None:
    with pytest.raises(typer.BadParameter) as info:
        finite("--limit", low=low)(value)
    message = info.value.format_message()
    assert "'--limit'" in message and "finite number" in message and str(value) in message


@PROPERTY
@given(st.floats(allow_nan=False, allow_infinity=False), st.floats(-10, 10), st.floats(0, 10))
def test_finite_numbers_are_checked_against_the_range(
    value: float, low: float, span: float
) -> None:
    check = finite("--x", low=low, high=low + span, low_open=True, unit="s")
    if low < value <= low + span:
        assert check(value) == value
    else:
        with pytest.raises(typer.BadParameter, match=r"finite number of s > "):
            check(value)


def test_none_passes() -> None:
    assert finite("--x", low=0.0)(None) is None


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "NaN", "0", "-1"])
def test_train_time_limit(tmp_path, text: str) -> None:
    from typer.testing import CliRunner

    from accelrl import cli

    recipe = tmp_path / "r.yaml"
    recipe.write_text("algorithm: td3\ntotal_timesteps: 10\n")
    result = CliRunner().invoke(
        cli.app,
        ["train", "--recipe", str(recipe), "--out", str(tmp_path / "o"), "--time-limit", text],
    )
    assert result.exit_code == 2, result.output
    assert "--time-limit" in result.output and "finite number of minutes > 0" in " ".join(
        result.output.split()
    )
    assert not (tmp_path / "o").exists()
