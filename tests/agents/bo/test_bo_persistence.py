"""A saved session's files: no code runs when they are read, every file is verified, and the
bounds are checked against the limits of the machine the session will drive."""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from bo_testlib import FAST, bowl_value

from accelrl.agents.bo.persistence import FILES, SessionFileError
from accelrl.agents.bo.problem import TuningProblem, ares_ea_problem
from accelrl.agents.bo.session import TuningSession

ROOT = Path(__file__).resolve().parents[3]


def _saved(problem: TuningProblem, folder: Path, steps: int = 3) -> TuningSession:
    """A session with ``steps`` results (settings towards the lower bounds) and one fit,
    saved in ``folder``."""
    session = TuningSession(problem, None, {**FAST, "seed": 2})
    for i in range(steps):
        x = problem.initial_vector + 0.1 * i * (problem.low - problem.initial_vector)
        session.ingest(
            problem.named(x), {problem.objective.name: 1.0 + i, "ok": 1.0, "on_screen": 1.0}
        )
    session.suggest()
    session.save(folder)
    return session


def _rehash(folder: Path) -> None:
    """Rewrite the manifest to match the files (what someone editing them by hand could do)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    for name in FILES:
        manifest["files"][name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))


class _Payload:
    """Unpickling this creates ``marker``: proof that loading ran code from the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (self.marker,))


def test_load_runs_no_code_from_a_pickle(toy_problem: TuningProblem, tmp_path: Path) -> None:
    folder, marker = tmp_path / "s", tmp_path / "code-ran"
    _saved(toy_problem, folder)
    # an old-format session: model.pt is a pickle (and there is no manifest)
    old = tmp_path / "old"
    old.mkdir()
    for name in ("problem.json", "session.json", "data.csv"):
        (old / name).write_bytes((folder / name).read_bytes())
    (old / "model.pt").write_bytes(pickle.dumps({"states": _Payload(marker)}))
    with pytest.raises(SessionFileError, match=r"manifest.json: missing; .*format 1"):
        TuningSession.load(old)
    # a pickle in place of the arrays, with a manifest that matches it
    (folder / "model.npz").write_bytes(pickle.dumps(_Payload(marker)))
    _rehash(folder)
    with pytest.raises(SessionFileError, match=r"model.npz: not a readable array archive"):
        TuningSession.load(folder)
    # an array archive holding a pickled object array
    index = np.array([["states", "constant", "x"]])
    np.savez(folder / "model.npz", index=index, t0=np.array([_Payload(marker)], dtype=object))
    _rehash(folder)
    with pytest.raises(SessionFileError, match=r"model.npz: not a readable array archive"):
        TuningSession.load(folder)
    assert not marker.exists()


def test_a_tampered_or_truncated_file_is_refused_by_name(
    toy_problem: TuningProblem, tmp_path: Path
) -> None:
    _saved(toy_problem, tmp_path / "ok")
    TuningSession.load(tmp_path / "ok")  # as saved: loads
    for name in FILES:
        folder = tmp_path / name
        shutil.copytree(tmp_path / "ok", folder)
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])
        with pytest.raises(SessionFileError, match=rf"{name}: sha256 .* differs from manifest"):
            TuningSession.load(folder)
        (folder / name).unlink()
        with pytest.raises(SessionFileError, match=rf"{name}: missing"):
            TuningSession.load(folder)
    folder = tmp_path / "manifest"
    shutil.copytree(tmp_path / "ok", folder)
    text = (folder / "manifest.json").read_text()
    (folder / "manifest.json").write_text(text[: len(text) // 2])
    with pytest.raises(SessionFileError, match=r"manifest.json: not valid JSON \(line"):
        TuningSession.load(folder)


def test_garbled_json_and_csv_name_the_file(toy_problem: TuningProblem, tmp_path: Path) -> None:
    folder = tmp_path / "s"
    _saved(toy_problem, folder)
    text = (folder / "session.json").read_text()
    (folder / "session.json").write_text(text[:-40])
    _rehash(folder)
    with pytest.raises(SessionFileError, match=r"session.json: not valid JSON \(line \d+"):
        TuningSession.load(folder)
    (folder / "session.json").write_text(text)
    lines = (folder / "data.csv").read_text().splitlines()
    lines[2] = lines[2].replace("True", "maybe", 1)
    (folder / "data.csv").write_text("\n".join(lines) + "\n")
    _rehash(folder)
    with pytest.raises(SessionFileError, match=r"data.csv: line 3, column safe = 'maybe'"):
        TuningSession.load(folder)


def _widen(folder: Path, name: str, low: float, high: float) -> None:
    problem = json.loads((folder / "problem.json").read_text())
    for v in problem["variables"]:
        if v["name"] == name:
            v["low"], v["high"] = low, high
    (folder / "problem.json").write_text(json.dumps(problem))


def test_widened_bounds_are_refused_against_the_limits(tmp_path: Path) -> None:
    """The audit's case: Q1 bounds widened in problem.json gave suggestions of 740.9 1/m^2
    against a limit of 72."""
    from accelrl.deploy.config import load_machine_config

    task = ares_ea_problem()
    folder = tmp_path / "s"
    session = _saved(task, folder, steps=2)
    _widen(folder, "Q1", -1000.0, 1000.0)
    with pytest.raises(SessionFileError, match=r"problem.json: sha256 .* differs"):
        TuningSession.load(folder, limits=task)
    _rehash(folder)  # an edit that also fixes the manifest: the limits still refuse it
    with pytest.raises(
        SessionFileError, match=r"variables.Q1.low = -1000.0 is below the limit -72.0"
    ):
        TuningSession.load(folder, limits=task)
    machine = load_machine_config(ROOT / "deploy" / "sim_ares_ea.yaml")
    with pytest.raises(SessionFileError, match=r"variables.Q1.low = -1000.0 is below the limit"):
        TuningSession.load(folder, limits=machine)
    wide_low = {n: (-1e9, hi) for n, hi in zip(task.names, task.high, strict=True)}
    with pytest.raises(SessionFileError, match=r"variables.Q1.high = 1000.0 is above the limit"):
        TuningSession.load(folder, limits=wide_low)
    # the session as saved fits the task and the machine; narrower limits refuse it
    _saved(task, folder, steps=2)
    restored = TuningSession.load(folder, limits=machine)
    assert restored.suggest() == pytest.approx(session.suggest(), rel=1e-9, abs=1e-15)
    narrow = {
        n: (lo / 2, hi / 2) for n, lo, hi in zip(task.names, task.low, task.high, strict=True)
    }
    with pytest.raises(SessionFileError, match=r"variables.Q1.low = -72.0 is below the limit"):
        TuningSession.load(folder, limits=narrow)
    steps = {n: (lo, hi, 1e-3) for n, lo, hi in zip(task.names, task.low, task.high, strict=True)}
    with pytest.raises(SessionFileError, match=r"variables.Q1.max_step = 7.2\d* is above"):
        TuningSession.load(folder, limits=steps)
    with pytest.raises(SessionFileError, match=r"variable 'Q1' is not among the limits' knobs"):
        TuningSession.load(folder, limits={"Q9": (-1.0, 1.0)})


@pytest.mark.parametrize(
    ("low", "high", "message"),
    [
        (5.0, -5.0, r"high \(-5.0\) must be > low \(5.0\)"),
        (-math.inf, 5.0, r"low must be a finite number"),
    ],
)
def test_bounds_are_checked_on_their_own(
    toy_problem: TuningProblem, tmp_path: Path, low: float, high: float, message: str
) -> None:
    folder = tmp_path / "s"
    _saved(toy_problem, folder)
    _widen(folder, "b", low, high)
    _rehash(folder)
    with pytest.raises(SessionFileError, match=rf"(?s)problem.json: .*{message}"):
        TuningSession.load(folder)


def test_saved_settings_outside_the_bounds_are_refused(
    toy_problem: TuningProblem, tmp_path: Path
) -> None:
    folder = tmp_path / "s"
    _saved(toy_problem, folder)
    meta = json.loads((folder / "session.json").read_text())
    meta["pending"] = [[0.5, 80.0]]
    (folder / "session.json").write_text(json.dumps(meta))
    _rehash(folder)
    with pytest.raises(
        SessionFileError, match=r"session.json: pending\[0\].b = 80.0 is outside the bounds"
    ):
        TuningSession.load(folder)


def test_a_resaved_session_verifies(toy_problem: TuningProblem, tmp_path: Path) -> None:
    """Saving again into the same folder replaces every file and the manifest."""
    folder = tmp_path / "s"
    session = _saved(toy_problem, folder)
    x = toy_problem.vector(session.suggest())
    session.ingest(toy_problem.named(x), {"f": bowl_value(*x), "ok": 1.0})
    session.save(folder)
    assert len(TuningSession.load(folder).table()) == 4
