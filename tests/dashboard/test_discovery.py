"""Run discovery: kinds by marker files, no link followed out of a root, depth and skips."""

from __future__ import annotations

import os
from pathlib import Path

from accelrl.dashboard.data.store import RunStore
from accelrl.dashboard.discovery import RunKind, discover
from accelrl.runfiles import PROGRESS_FILE, ProgressLog


def _touch(path: Path, text: str = "{}") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_kinds_are_told_by_their_files(tmp_path: Path):
    _touch(tmp_path / "deploy" / "run.jsonl", "")
    _touch(tmp_path / "tune" / "session.json")
    _touch(tmp_path / "tune" / "run" / "run.jsonl", "")  # a BO session on a machine
    ProgressLog(tmp_path / "live-tune", "tuning").close()
    ProgressLog(tmp_path / "apg", "apg").close()
    _touch(tmp_path / "sb3" / "logs" / "progress.csv", "a\n")
    _touch(tmp_path / "sb3-done" / "train_summary.json")
    _touch(tmp_path / "eval" / "records.parquet", "")
    _touch(tmp_path / "eval2" / "trial_metrics.csv", "")
    _touch(tmp_path / "eval2" / "config.json")
    _touch(tmp_path / "starting" / PROGRESS_FILE, '{"type": "start", "kind"')  # torn
    _touch(tmp_path / "nothing" / "notes.txt", "")
    runs = {r.label: (r.kind, r.detail) for r in discover([tmp_path])}
    assert runs == {
        "deploy": (RunKind.deploy, ""),
        "tune": (RunKind.tuning, ""),
        "tune/run": (RunKind.deploy, ""),
        "live-tune": (RunKind.tuning, ""),
        "apg": (RunKind.training, "apg"),
        "sb3": (RunKind.training, "sb3"),
        "sb3-done": (RunKind.training, "sb3"),
        "eval": (RunKind.evaluation, ""),
        "eval2": (RunKind.evaluation, ""),
        "starting": (RunKind.training, ""),
    }


def test_root_index_names_runs_and_a_root_can_be_a_run(tmp_path: Path):
    a, b = tmp_path / "a", tmp_path / "b"
    _touch(a / "run.jsonl", "")
    _touch(b / "x" / "run.jsonl", "")
    assert [r.id for r in discover([a, b, tmp_path / "missing"])] == ["0/.", "1/x"]


def test_links_hidden_and_skipped_folders_and_depth(tmp_path: Path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    _touch(outside / "secret" / "run.jsonl", "")
    root.mkdir()
    os.symlink(outside, root / "link")  # never followed
    _touch(root / ".hidden" / "run.jsonl", "")
    _touch(root / "__pycache__" / "run.jsonl", "")
    _touch(root / "r" / "checkpoints" / "run.jsonl", "")
    deep = root / "1" / "2" / "3"
    _touch(deep / "run.jsonl", "")
    assert discover([root]) and [r.label for r in discover([root])] == ["1/2/3"]
    assert discover([root], max_depth=2) == []


def test_store_rescans_and_shares_followers(tmp_path: Path):
    store = RunStore([tmp_path], rescan_s=3600)
    assert store.runs() == []
    _touch(tmp_path / "new" / "run.jsonl", "")
    assert store.runs() == []  # cached
    assert store.lookup("0/new") is None
    info = store.lookup("0/new", force=True)
    assert info is not None and info.kind is RunKind.deploy
    assert store.follower(info) is store.follower(info)
    assert store.lookup("0/../outside", force=True) is None
