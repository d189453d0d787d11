"""Float options refuse NaN and infinities (naming the option), and ``surrogates generate
--dask`` without the ``[cluster]`` extra fails with one line naming it."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from accelrl import cli

runner = CliRunner(env={"COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb"})


@pytest.mark.parametrize(
    "args",
    [
        ["deploy", "run", "--settle-delay"],
        ["deploy", "run", "--reading-noise"],
        ["tune", "--budget"],
        ["tune", "--max-step"],
        ["surrogates", "generate", "surrogates/lpa_beamloading.yaml", "--timeout"],
        ["surrogates", "resimulate", "--timeout-s"],
        ["train", "--recipe", "agents/apg.yaml", "--time-limit"],
    ],
    ids=lambda a: a[-1],
)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_float_options_refuse_non_finite_values(args, value):
    result = runner.invoke(cli.app, [*args, value])
    assert result.exit_code == 2, result.output
    assert args[-1] in result.output
    assert "Traceback" not in result.output


def test_surrogates_generate_dask_without_the_cluster_extra(monkeypatch, tmp_path):
    import accelrl.cli.surrogates as surrogates_cli

    monkeypatch.setattr(surrogates_cli, "dask_available", lambda: False)
    out = tmp_path / "table.parquet"
    result = runner.invoke(
        cli.app,
        [
            "surrogates",
            "generate",
            "surrogates/lpa_beamloading.yaml",
            "--dask",
            "local",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "--dask" in lines[0] and "accelrl[cluster]" in lines[0]
    assert not out.exists()
