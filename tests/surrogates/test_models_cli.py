"""``train`` command (typer) on a synthetic test-fixture dataset written to disk."""

from __future__ import annotations

import json

import torch
import typer
import yaml
from test_models import fixture_dataset
from typer.testing import CliRunner

from accelrl.cli.surrogates import resimulate_command as resimulate
from accelrl.cli.surrogates import train_command as train
from accelrl.surrogates.dataset import frame_to_table, write_meta, write_table
from accelrl.surrogates.models import load_surrogate

torch.set_num_threads(1)


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("train")(train)
    app.command("resimulate")(resimulate)
    return app


def test_train_command_writes_model_onnx_and_report(tmp_path) -> None:
    ds = fixture_dataset(n_rows=200)
    write_table(frame_to_table(ds.spec, ds.table), tmp_path / "fixture_smooth.parquet")
    write_meta({"spec": ds.spec.to_dict()}, tmp_path / "fixture_smooth.meta.json")
    (tmp_path / "fixture_smooth.yaml").write_text(yaml.safe_dump(ds.spec.to_dict()))
    cfg = tmp_path / "train.yaml"
    cfg.write_text("architecture: {members: 3, hidden: [32, 32], classifier_hidden: [8]}\n")
    out = tmp_path / "model"
    result = CliRunner().invoke(
        _app(),
        [
            "train",
            str(tmp_path / "fixture_smooth.yaml"),
            "--out",
            str(out),
            "--config",
            str(cfg),
            "--max-epochs",
            "60",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "ONNX parity" in result.output
    for f in (
        "surrogate.json",
        "surrogate.pt",
        "surrogate.onnx",
        "report/report.md",
        "report/parity.png",
        "report/uncertainty.png",
    ):
        assert (out / f).stat().st_size > 0, f
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["onnx_parity_max_rel"] <= 1e-5
    model = load_surrogate(out)
    assert model.members == 3 and "test_metrics" in model.provenance


def test_train_command_rejects_bad_config(tmp_path) -> None:
    ds = fixture_dataset(n_rows=60)
    write_table(frame_to_table(ds.spec, ds.table), tmp_path / "fixture_smooth.parquet")
    write_meta({"spec": ds.spec.to_dict()}, tmp_path / "fixture_smooth.meta.json")
    cfg = tmp_path / "train.yaml"
    cfg.write_text("learning_rate: -1\n")
    result = CliRunner().invoke(
        _app(), ["train", str(tmp_path / "fixture_smooth.parquet"), "--config", str(cfg)]
    )
    assert result.exit_code != 0
    assert "learning_rate" in result.output


def test_resimulate_command_needs_settings(tmp_path) -> None:
    result = CliRunner().invoke(_app(), ["resimulate", str(tmp_path / "missing")])
    assert result.exit_code == 2  # usage error naming the places tried
    assert "no surrogate" in result.output
