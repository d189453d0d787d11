"""Dataset generation: Sobol design, resumability, checkpoints, labelled failures."""

from __future__ import annotations

import concurrent.futures as cf
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import accelrl.surrogates.generate as gen
from accelrl.cli.surrogates import surrogates_app
from accelrl.surrogates.dataset import DatasetError, load_dataset
from accelrl.surrogates.design import physical_to_unit, sobol_design
from accelrl.surrogates.simulators import RunResult
from accelrl.surrogates.spec import DatasetSpec, load_spec


def test_design_is_reproducible_and_in_bounds(spec_dict: dict[str, Any]) -> None:
    spec = DatasetSpec.from_dict(spec_dict)
    a, b = sobol_design(spec), sobol_design(spec)
    assert a.equals(b)
    assert a["sample"].tolist() == list(range(8))
    assert str(a["sample"].dtype) == "int64"
    x = a[spec.input_names].to_numpy()
    assert np.all(x >= spec.bounds[:, 0]) and np.all(x <= spec.bounds[:, 1])
    u = physical_to_unit(x, spec)  # log input is uniform in its logarithm
    assert np.all((u >= 0) & (u <= 1))
    np.testing.assert_allclose(np.sort(u[:, 1]).mean(), 0.5, atol=0.1)
    spec_dict["design"]["seed"] = 2
    assert not sobol_design(DatasetSpec.from_dict(spec_dict)).equals(a)
    spec_dict["design"].update(seed=1, n_samples=16)  # a longer design extends the shorter one
    longer = sobol_design(DatasetSpec.from_dict(spec_dict))
    np.testing.assert_array_equal(longer.iloc[:8].to_numpy(), a.to_numpy())


class FakeSimulator:
    """Counts runs; fails, loses the beam or interrupts on chosen samples."""

    name = "wake-t"
    version = "test"
    calls: list[float] = []
    interrupt_after: int | None = None

    def __init__(self, spec: DatasetSpec) -> None:
        self.spec = spec

    def run(self, inputs: Mapping[str, float]) -> RunResult:
        FakeSimulator.calls.append(inputs["plasma_density"])
        if self.interrupt_after is not None and len(self.calls) > self.interrupt_after:
            raise KeyboardInterrupt
        head = inputs["beam_current_head"]
        if head > 8e3:
            raise RuntimeError("solver diverged")
        if head < 1.5e3:
            return RunResult("no_beam", {"charge": 0.0}, "witness lost", 0.01)
        return RunResult("ok", {"charge": head * 1e-14, "energy_median": 1e9}, "", 0.01)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> type[FakeSimulator]:
    FakeSimulator.calls = []
    FakeSimulator.interrupt_after = None
    monkeypatch.setattr(gen, "make_simulator", lambda spec, timeout_s=None: FakeSimulator(spec))
    gen._SIMULATORS.clear()
    return FakeSimulator


def test_failed_and_beamless_runs_are_labelled_rows(
    spec_file: Path, fake: type[FakeSimulator]
) -> None:
    report = gen.generate(spec_file, executor="serial", progress=False, command="test")
    ds = load_dataset(report.table_path)
    assert len(ds.table) == 8 and report.n_run == 8
    heads = ds.table["beam_current_head"]
    failed = ds.table[ds.table["status"] == "failed"]
    assert set(failed["sample"]) == set(ds.table.loc[heads > 8e3, "sample"])
    assert failed["message"].str.contains("RuntimeError: solver diverged").all()
    assert failed["charge"].isna().all() and failed["energy_median"].isna().all()
    no_beam = ds.table[ds.table["status"] == "no_beam"]
    assert set(no_beam["sample"]) == set(ds.table.loc[heads < 1.5e3, "sample"])
    assert (no_beam["charge"] == 0).all()
    assert sum(ds.status_counts().values()) == 8
    meta = ds.meta
    assert meta["status_counts"] == ds.status_counts()
    assert meta["simulator"]["name"] == "wake-t"
    assert meta["design"] == {"method": "sobol", "n_samples": 8, "seed": 1}
    assert meta["generation"]["sessions"][0]["command"] == "test"
    assert meta["generation"]["sessions"][0]["cpu_count"] >= 1
    assert meta["inputs"][1]["scale"] == "log" and meta["outputs"][0]["unit"] == "C"
    assert {"mean", "median", "max"} <= set(meta["wall_time_s"])
    assert (ds.table["fidelity"] == "resolution=0.5;stage_length=0.001").all()
    assert spec_file.with_suffix(".meta.json").exists()


def test_interrupted_generation_resumes_without_rerunning(
    spec_file: Path, fake: type[FakeSimulator]
) -> None:
    fake.interrupt_after = 5
    with pytest.raises(KeyboardInterrupt):
        gen.generate(spec_file, executor="serial", progress=False, checkpoint_every=2)
    partial = load_dataset(spec_file.with_suffix(".parquet"))
    assert partial.table["sample"].tolist() == [0, 1, 2, 3, 4]
    done = set(partial.table["plasma_density"])
    fake.calls.clear()
    fake.interrupt_after = None
    report = gen.generate(spec_file, executor="serial", progress=False, limit=2)
    assert report.n_existing == 5 and report.n_run == 2
    assert not done & set(fake.calls)  # finished samples are not rerun
    report = gen.generate(spec_file, executor="serial", progress=False)
    assert report.n_run == 1 and len(fake.calls) == 3
    full = load_dataset(report.table_path)
    assert full.table["sample"].tolist() == list(range(8))
    assert len(full.meta["generation"]["sessions"]) == 3
    # nothing left: a further call runs nothing; --retry-failed reruns the failed rows only
    assert gen.generate(spec_file, executor="serial", progress=False).n_run == 0
    n_failed = full.status_counts()["failed"]
    report = gen.generate(spec_file, executor="serial", progress=False, retry_failed=True)
    assert report.n_run == n_failed > 0


def test_checkpoints_are_written_during_generation(
    spec_file: Path, fake: type[FakeSimulator], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    write = gen.write_table

    def spy(table: Any, path: Path) -> None:
        seen.append(table.num_rows)
        write(table, path)

    monkeypatch.setattr(gen, "write_table", spy)
    gen.generate(spec_file, executor="serial", progress=False, checkpoint_every=3)
    assert seen == [0, 3, 6, 8]


def test_resume_refuses_a_different_design(
    spec_file: Path, fake: type[FakeSimulator], spec_dict: dict[str, Any]
) -> None:
    gen.generate(spec_file, executor="serial", progress=False, limit=2)
    spec_dict["inputs"][0]["high"] = 3e23
    with pytest.raises(DatasetError, match="different spec"):
        gen.generate(DatasetSpec.from_dict(spec_dict), spec_file.with_suffix(".parquet"),
                     executor="serial", progress=False)  # fmt: skip


def test_worker_errors_become_failed_rows(spec_file: Path, fake: type[FakeSimulator]) -> None:
    class ExplodingExecutor(cf.ThreadPoolExecutor):
        def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> cf.Future:
            if args[1] == 3:  # sample index
                return super().submit(_explode)
            return super().submit(fn, *args, **kwargs)

    with ExplodingExecutor(max_workers=2) as pool:
        report = gen.generate(spec_file, executor=pool, progress=False)
    table = load_dataset(report.table_path).table.set_index("sample")
    assert table.loc[3, "status"] == "failed"
    assert "worker error: MemoryError" in table.loc[3, "message"]
    assert math.isnan(table.loc[3, "wall_time_s"])


def _explode() -> None:
    raise MemoryError("worker died")


def test_cli_generate(spec_file: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "out"
    result = runner.invoke(
        surrogates_app,
        ["generate", str(spec_file), "--workers", "1", "--limit", "0", "--out", str(out),
         "--no-progress"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "0 runs in" in " ".join(result.output.split())
    ds = load_dataset(out / "tiny.parquet")
    assert len(ds.table) == 0 and ds.meta["generation"]["sessions"][0]["workers"] == 1
    assert (out / "tiny.yaml").exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text(spec_file.read_text().replace("n_samples: 8", "n_samples: -1"))
    result = runner.invoke(surrogates_app, ["generate", str(bad), "--no-progress"])
    assert result.exit_code == 1
    assert "design.n_samples" in result.output


def test_shipped_design_size() -> None:
    spec = load_spec(Path(__file__).resolve().parents[2] / "surrogates" / "lpa_beamloading.yaml")
    assert spec.design.n_samples >= 1000
