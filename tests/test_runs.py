"""Output folders and atomic files (:mod:`accelrl.runs`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from accelrl.runs import OutputFolderError, atomic_write, atomic_write_text, prepare_output


def test_an_existing_folder_needs_resume_or_force(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert prepare_output(out) == "new" and out.is_dir()
    assert prepare_output(out) == "new"  # empty: still new
    (out / "result.json").write_text("{}")
    (out / "figure.png").write_text("png")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputFolderError, match=r"already holds files \(figure.png, notes.txt"):
        prepare_output(out, owned=("*.json", "*.png"))
    assert prepare_output(out, resume=True) == "resume" and (out / "result.json").exists()
    with pytest.raises(OutputFolderError, match="not both"):
        prepare_output(out, resume=True, force=True)
    assert prepare_output(out, force=True, owned=("*.json", "*.png")) == "replace"
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # not ours: kept
    with pytest.raises(OutputFolderError, match="nothing to resume"):
        prepare_output(tmp_path / "missing", resume=True)
    with pytest.raises(OutputFolderError, match="is a file"):
        prepare_output(out / "notes.txt")


def test_an_atomic_write_leaves_the_old_file_or_the_new_one(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    atomic_write_text(path, "old")

    def fails(tmp: Path) -> None:
        tmp.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, fails)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary file left
    atomic_write_text(path, "new")
    assert path.read_text() == "new"
