"""Dataset generation: Sobol design, resumability, checkpoints, labelled failures."""

from __future__ import annotations

import concurrent.futures as cf
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from proc_testlib import children, default_signals, kill, left_alive
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


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in ``tmp_path``: the default output folder ``runs/surrogates`` is created there."""
    monkeypatch.chdir(tmp_path)


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
    # the default output is runs/surrogates/ in the working folder, never beside the spec
    assert report.table_path == spec_file.parents[1] / "runs" / "surrogates" / "tiny.parquet"
    assert (report.table_path.parent / "tiny.meta.json").exists()
    assert not spec_file.with_suffix(".meta.json").exists()


def test_interrupted_generation_resumes_without_rerunning(
    spec_file: Path, fake: type[FakeSimulator]
) -> None:
    fake.interrupt_after = 5
    with pytest.raises(KeyboardInterrupt):
        gen.generate(spec_file, executor="serial", progress=False, checkpoint_every=2)
    partial = load_dataset(Path("runs/surrogates/tiny.parquet"))
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
    table = gen.generate(spec_file, executor="serial", progress=False, limit=2).table_path
    spec_dict["inputs"][0]["high"] = 3e23
    with pytest.raises(DatasetError, match=r"different spec \(inputs differ"):
        gen.generate(DatasetSpec.from_dict(spec_dict), table, executor="serial", progress=False)


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


# ---------------------------------------------------------------------------- nothing lost
def test_resume_with_fewer_outputs_is_refused(
    spec_file: Path, fake: type[FakeSimulator], spec_dict: dict[str, Any], tmp_path: Path
) -> None:
    """The audit's case: a spec listing fewer outputs rewrote the table without the other
    columns (30 -> 13) and reported the rows as kept."""
    table = tmp_path / "data" / "tiny.parquet"
    gen.generate(spec_file, table, executor="serial", progress=False, limit=4)
    before = table.read_bytes(), table.with_name("tiny.meta.json").read_bytes()
    spec_dict["outputs"] = spec_dict["outputs"][:1]
    fewer = tmp_path / "fewer.yaml"
    fewer.write_text(yaml.safe_dump(spec_dict))
    with pytest.raises(DatasetError, match=r"different spec \(outputs differ"):
        gen.generate(fewer, table, executor="serial", progress=False)
    result = CliRunner().invoke(
        surrogates_app, ["generate", str(fewer), "--out", str(table), "--resume", "--no-progress"]
    )
    assert result.exit_code == 1 and "outputs differ" in " ".join(result.output.split())
    assert "rows kept" not in result.output
    assert (table.read_bytes(), table.with_name("tiny.meta.json").read_bytes()) == before
    for change in ({"fidelity": {"stage_length": 2e-3, "resolution": 0.5}},
                   {"design": {"method": "sobol", "n_samples": 8, "seed": 9}},
                   {"fixed": {**spec_dict["fixed"], "laser_energy": 11.0}}):  # fmt: skip
        other = DatasetSpec.from_dict({**spec_dict, "outputs": SPEC_OUTPUTS, **change})
        with pytest.raises(DatasetError, match=f"{next(iter(change))} differ"):
            gen.generate(other, table, executor="serial", progress=False)
    assert len(load_dataset(table).table.columns) == 2 + 2 + 5 + 1


SPEC_OUTPUTS = [{"name": "charge", "unit": "C"}, {"name": "energy_median", "unit": "eV"}]


def test_a_table_without_its_sidecar_or_off_the_design_is_refused(
    spec_file: Path, fake: type[FakeSimulator], spec_dict: dict[str, Any], tmp_path: Path
) -> None:
    table = tmp_path / "a" / "tiny.parquet"
    gen.generate(spec_file, table, executor="serial", progress=False, limit=3)
    meta = table.with_name("tiny.meta.json")
    sidecar = meta.read_bytes()
    meta.unlink()
    data = table.read_bytes()
    with pytest.raises(DatasetError, match=r"tiny.parquet has no sidecar tiny.meta.json"):
        gen.generate(spec_file, table, executor="serial", progress=False)
    assert table.read_bytes() == data and not meta.exists()
    # a table of another design under this spec's sidecar: not merged
    spec_dict["design"]["seed"] = 2
    other = gen.generate(DatasetSpec.from_dict(spec_dict), tmp_path / "b", executor="serial",
                         progress=False, limit=3).table_path  # fmt: skip
    table.write_bytes(other.read_bytes())
    meta.write_bytes(sidecar)
    with pytest.raises(DatasetError, match=r"not this spec's design \(sample 0 has inputs"):
        gen.generate(spec_file, table, executor="serial", progress=False)
    meta.write_text("{ truncated")
    with pytest.raises(DatasetError, match=r"tiny.meta.json: cannot be read"):
        gen.generate(spec_file, table, executor="serial", progress=False)
    report = gen.generate(spec_file, table, executor="serial", progress=False, force=True)
    assert report.n_existing == 0 and report.n_run == 8


def test_cli_refuses_an_existing_dataset_without_resume_or_force(
    spec_file: Path, fake: type[FakeSimulator], tmp_path: Path
) -> None:
    runner = CliRunner()
    args = ["generate", str(spec_file), "--workers", "1", "--no-progress"]
    assert gen.generate(spec_file, executor="serial", progress=False, limit=2).n_run == 2
    result = runner.invoke(surrogates_app, [*args, "--limit", "1"])
    assert result.exit_code == 1
    assert "already there" in result.output and "--resume" in result.output
    result = runner.invoke(surrogates_app, [*args, "--limit", "1", "--resume"])
    assert result.exit_code == 0, result.output
    assert "(2 rows kept)" in " ".join(result.output.split())
    result = runner.invoke(surrogates_app, [*args, "--limit", "1", "--force"])
    assert result.exit_code == 0, result.output
    assert "(0 rows kept)" in " ".join(result.output.split())
    assert len(load_dataset(Path("runs/surrogates/tiny.parquet")).table) == 1


#: ``accelrl surrogates`` with a simulator whose runs sleep for ten minutes (each marks
#: its start with a file named after its process id in the folder argv[1]).
_SLEEPY_CLI = """
import os, sys, time
from pathlib import Path
import accelrl.surrogates.generate as gen

class Sleeper:
    name, version = "wake-t", "test"
    def __init__(self, spec):
        pass
    def run(self, inputs):
        (Path(sys.argv[1]) / str(os.getpid())).touch()
        time.sleep(600)

gen.make_simulator = lambda spec, timeout_s=None: Sleeper(spec)
from accelrl.cli.surrogates import surrogates_app
surrogates_app(sys.argv[2:], prog_name="accelrl surrogates")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_killed_generation_leaves_no_process(
    spec_file: Path, tmp_path: Path, signum: signal.Signals
) -> None:
    script, marks = tmp_path / "sleepy.py", tmp_path / "marks"
    script.write_text(_SLEEPY_CLI)
    marks.mkdir()
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(marks), "generate", str(spec_file), "--workers", "2",
         "--out", str(out), "--no-progress"],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=default_signals,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while len(list(marks.iterdir())) < 2:  # both workers inside a run
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "the workers never started a run"
        time.sleep(0.05)
    workers = children(proc.pid)
    try:
        assert {int(p.name) for p in marks.iterdir()} <= set(workers)
        proc.send_signal(signum)
        output = proc.communicate(timeout=120)[0]
        assert proc.returncode == 128 + signum, output
        assert "interrupted" in output and "--resume" in output
        assert left_alive(workers) == [], "worker processes left behind"
    finally:
        kill(workers)  # whatever a failure left
    assert load_dataset(out / "tiny.parquet").meta["generation"]["sessions"][0]["finished"]
