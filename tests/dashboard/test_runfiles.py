"""Live run files: the writers flush (and fsync by policy) and the tail readers return only
what was appended, survive torn, corrupt, truncated, replaced and rewritten files."""

from __future__ import annotations

import json
import math
import os
import zlib
from pathlib import Path

import numpy as np
import pytest

from accelrl.runfiles import (
    PROGRESS_FILE,
    CsvTail,
    CsvWriter,
    FileSnapshot,
    JsonlTail,
    JsonlWriter,
    ProgressLog,
    first_record,
    jsonable,
    number,
    parse_json,
    read_jsonl,
    save_screen_frame,
    tuning_step_record,
)


def test_jsonl_writer_flushes_every_record_and_fsyncs_by_policy(tmp_path: Path, monkeypatch):
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    path = tmp_path / "a.jsonl"
    writer = JsonlWriter(path, fsync="never")
    writer.write({"x": 1.0, "bad": float("nan"), "arr": np.array([1.5, np.inf])})
    # flushed: another reader sees it before close
    assert json.loads(path.read_text()) == {"x": 1.0, "bad": "nan", "arr": [1.5, "inf"]}
    assert synced == []
    writer.close()
    assert synced == []  # "never" means never
    always = JsonlWriter(tmp_path / "b.jsonl", fsync="always")
    always.write({"a": 1})
    always.write({"a": 2})
    assert len(synced) == 2
    always.close()
    with pytest.raises(FileExistsError, match="never appended"):
        JsonlWriter(path)
    with pytest.raises(ValueError, match="fsync"):
        JsonlWriter(tmp_path / "c.jsonl", fsync=-1.0)
    with pytest.raises(TypeError, match="mapping"):
        JsonlWriter(tmp_path / "d.jsonl").write([1, 2])  # type: ignore[arg-type]


def test_interval_fsync(tmp_path: Path, monkeypatch):
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd))
    clock = [100.0]
    monkeypatch.setattr("accelrl.runfiles.time.monotonic", lambda: clock[0])
    writer = JsonlWriter(tmp_path / "a.jsonl", fsync=2.0)
    writer.write({"i": 0})
    assert synced == []
    clock[0] += 2.5
    writer.write({"i": 1})
    assert len(synced) == 1
    writer.write({"i": 2})
    assert len(synced) == 1
    writer.close()  # the end is always synced
    assert len(synced) == 2


def test_jsonl_tail_reads_only_new_complete_lines(tmp_path: Path):
    path = tmp_path / "run.jsonl"
    tail = JsonlTail(path)
    assert tail.read().missing
    with path.open("w") as f:
        f.write('{"a": 1}\n{"a": 2}\n{"a": ')
        f.flush()
        chunk = tail.read()
        assert [r["a"] for r in chunk.items] == [1, 2] and not chunk.errors
        assert tail.pending_bytes == len('{"a": ')
        assert tail.read().items == []  # nothing new: the torn line waits
        f.write('3}\nnot json\n[1, 2]\n{"a": 4}\n')
        f.flush()
        chunk = tail.read()
    assert [r["a"] for r in chunk.items] == [3, 4]
    assert chunk.errors == [
        "run.jsonl line 4: not JSON (Expecting value)",
        "run.jsonl line 5: a list, not an object",
    ]
    assert tail.offset == path.stat().st_size and tail.pending_bytes == 0


def test_jsonl_tail_starts_over_after_truncation_replacement_or_rewrite(tmp_path: Path):
    path = tmp_path / "run.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n')
    tail = JsonlTail(path)
    assert len(tail.read().items) == 2
    path.write_text('{"b": 1}\n')  # truncated and rewritten
    chunk = tail.read()
    assert chunk.reset and chunk.items == [{"b": 1}]
    other = tmp_path / "new.jsonl"
    other.write_text('{"c": 1}\n{"c": 2}\n{"c": 3}\n')
    other.replace(path)  # replaced by a longer file (new inode)
    chunk = tail.read()
    assert chunk.reset and [r["c"] for r in chunk.items] == [1, 2, 3]
    # same inode, rewritten longer with a different start
    with path.open("r+") as f:
        f.write('{"d": 1}\n{"d": 2}\n{"d": 3}\n{"d": 4}\n')
    chunk = tail.read()
    assert chunk.reset and len(chunk.items) == 4
    path.unlink()
    assert tail.read().missing


def test_jsonl_tail_reads_big_files_in_bounded_chunks(tmp_path: Path):
    path = tmp_path / "big.jsonl"
    path.write_text("".join(json.dumps({"i": i, "pad": "x" * 100}) + "\n" for i in range(200)))
    tail = JsonlTail(path, max_bytes=4096)
    got = []
    for _ in range(20):
        got += [r["i"] for r in tail.read().items]
    assert got == list(range(200))
    items, errors = read_jsonl(path)
    assert len(items) == 200 and errors == []


def test_csv_writer_and_tail_follow_sb3_style_header_rewrite(tmp_path: Path):
    path = tmp_path / "episodes.csv"
    with CsvWriter(path, ["timesteps", "return", "length"], fsync="never") as w:
        w.write([100, -3.5, 50])
        w.write({"timesteps": 200, "return": 0.1 + 0.2})
        tail = CsvTail(path)
        rows = tail.read().items
        assert rows[0] == {"timesteps": 100.0, "return": -3.5, "length": 50.0}
        assert rows[1]["return"] == 0.1 + 0.2 and rows[1]["length"] is None
        with pytest.raises(ValueError, match="unknown columns"):
            w.write({"nope": 1})
    # Stable-Baselines3's CSV logger rewrites the file with a wider header (same inode).
    from stable_baselines3.common.logger import configure

    logs = tmp_path / "logs"
    logger = configure(str(logs), ["csv"])
    logger.record("time/total_timesteps", 10)
    logger.record("rollout/ep_rew_mean", -5.0)
    logger.dump(10)
    sb3 = CsvTail(logs / "progress.csv")
    first = sb3.read()
    assert [r["rollout/ep_rew_mean"] for r in first.items] == [-5.0]
    logger.record("time/total_timesteps", 20)
    logger.record("rollout/ep_rew_mean", -4.0)
    logger.record("eval/median_best_mae_um", 80.0)  # a new key: SB3 rewrites the file
    logger.dump(20)
    chunk = sb3.read()
    assert chunk.reset
    assert [r["time/total_timesteps"] for r in chunk.items] == [10.0, 20.0]
    assert chunk.items[1]["eval/median_best_mae_um"] == 80.0
    logger.record("time/total_timesteps", 30)
    logger.record("rollout/ep_rew_mean", -3.0)
    logger.dump(30)
    chunk = sb3.read()
    assert not chunk.reset and [r["time/total_timesteps"] for r in chunk.items] == [30.0]
    logger.close()
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n1,2,3\n")
    assert CsvTail(bad).read().errors == ["bad.csv line 3: 3 cells, header has 2"]


def test_progress_log_records_and_end_status(tmp_path: Path, monkeypatch):
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    with ProgressLog(tmp_path / "apg", "apg", iterations=3, batch_size=8) as log:
        n = len(synced)
        log.iteration(iteration=0, loss=-1.0, learning_rate=1e-3)
        log.evaluation({"median_best_mae_um": 12.0}, iteration=0)
        assert len(synced) > n  # an evaluation is synced at once
    items, errors = read_jsonl(tmp_path / "apg" / PROGRESS_FILE)
    assert errors == []
    assert [r["type"] for r in items] == ["start", "iteration", "evaluation", "end"]
    assert items[0]["kind"] == "apg" and items[0]["iterations"] == 3
    assert items[0]["format_version"] == 1 and all("time" in r for r in items)
    assert items[-1]["status"] == "completed"
    assert first_record(tmp_path / "apg" / PROGRESS_FILE)["kind"] == "apg"
    with pytest.raises(RuntimeError, match="boom"), ProgressLog(tmp_path / "f", "sb3"):
        raise RuntimeError("boom")
    end = read_jsonl(tmp_path / "f" / PROGRESS_FILE)[0][-1]
    assert end["status"] == "failed" and end["error"] == "RuntimeError: boom"
    with pytest.raises(KeyboardInterrupt), ProgressLog(tmp_path / "i", "sb3"):
        raise KeyboardInterrupt
    assert read_jsonl(tmp_path / "i" / PROGRESS_FILE)[0][-1]["status"] == "interrupted"
    with pytest.raises(ValueError, match="kind"):
        ProgressLog(tmp_path / "x", "ppo")
    with pytest.raises(FileExistsError):
        ProgressLog(tmp_path / "apg", "apg")


def test_tuning_step_record_from_a_real_session():
    torch = pytest.importorskip("torch")
    from accelrl.agents.bo import TuningSession, ares_ea_problem

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        problem = ares_ea_problem()
        session = TuningSession(problem, None, {"budget_s": 0.02, "seed": 0})
        setting = problem.named(problem.initial_vector)
        for mae in (3e-4, 2e-4):
            session.ingest(setting, {"mae": mae, "on_screen": 1.0})
            setting = session.suggest()
        record = tuning_step_record(session.table()[-1], session.diagnostics())
    finally:
        torch.set_num_threads(threads)
    assert record["step"] == 1
    assert set(record["setting"]) == set(problem.names)
    assert record["result"]["mae"] == 2e-4 and record["safe"] is True
    assert record["best"]["objective"] == 2e-4
    assert {"mode", "uses_prior", "prior_fallback", "trust_length"} <= set(record["diagnostics"])
    assert json.loads(json.dumps(jsonable(record)))["result"]["mae"] == 2e-4


def _png_pixels(data: bytes) -> tuple[int, int, int, bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        tag = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if tag == b"IHDR":
            header = body
        elif tag == b"IDAT":
            idat += body
        pos += 12 + length
    width, height = int.from_bytes(header[:4], "big"), int.from_bytes(header[4:8], "big")
    channels = {0: 1, 2: 3}[header[9]]
    return width, height, channels, zlib.decompress(idat)


def test_screen_frame_is_a_valid_png_written_atomically(tmp_path: Path):
    image = np.zeros((4, 6, 3), np.uint8)
    image[1, 2] = (255, 10, 20)
    field = save_screen_frame(tmp_path, 12, image, [-4e-3, 4e-3, -3e-3, 3e-3])
    assert field == {"file": "screens/step_000012.png", "extent_m": [-4e-3, 4e-3, -3e-3, 3e-3]}
    width, height, channels, raw = _png_pixels((tmp_path / field["file"]).read_bytes())
    assert (width, height, channels) == (6, 4, 3)
    stride = 1 + 6 * 3
    assert raw[1 * stride + 1 + 2 * 3 : 1 * stride + 1 + 3 * 3] == bytes([255, 10, 20])
    assert not list(tmp_path.glob("screens/*.tmp"))
    grey = save_screen_frame(tmp_path, 13, [[0, 128], [255, 7]], [0, 1, 0, 1])
    assert _png_pixels((tmp_path / grey["file"]).read_bytes())[:3] == (2, 2, 1)
    with pytest.raises(ValueError, match="0..255"):
        save_screen_frame(tmp_path, 1, [[300]], [0, 1, 0, 1])
    with pytest.raises(ValueError, match="extent"):
        save_screen_frame(tmp_path, 1, [[3]], [1, 0, 0, 1])


def test_file_snapshot_parses_again_only_on_change(tmp_path: Path):
    path = tmp_path / "summary.json"
    calls = []

    def parse(data: bytes):
        calls.append(1)
        return parse_json(data)

    snap = FileSnapshot(path, parse)
    assert snap.read().missing
    path.write_text('{"a": 1}')
    first = snap.read()
    assert first.changed and first.value == {"a": 1}
    again = snap.read()
    assert not again.changed and again.value == {"a": 1} and len(calls) == 1
    path.write_text('{"a": ')  # half written
    broken = snap.read()
    assert broken.changed and broken.value is None and "JSONDecodeError" in broken.error
    path.unlink()
    gone = snap.read()
    assert gone.changed and gone.missing


def test_number_and_jsonable():
    assert math.isnan(number("text")) and number("-inf") == -math.inf and number(3) == 3.0
    assert jsonable({"p": Path("a/b"), "t": (np.float32(1.5), np.int64(2))}) == {
        "p": "a/b",
        "t": [1.5, 2],
    }
