"""The server: files only from inside the roots (no path traversal by ``..``, encodings,
absolute paths or links), nothing written, pages for every kind of folder, and the command's
argument checks."""

from __future__ import annotations

import http.client
import json
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest
from dashboard_testlib import Dashboard, controller_run, tree_state
from typer.testing import CliRunner

from accelrl.dashboard.server import resolve_inside
from accelrl.runfiles import save_screen_frame

PNG = bytes.fromhex("89504e470d0a1a0a")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Dashboard, Path, Path]]:
    """A dashboard over ``root`` (a finished controller run with a screen frame, links out)
    next to an ``outside`` folder holding secrets."""
    base = tmp_path_factory.mktemp("site")
    root, outside = base / "root", base / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(PNG + b"secret")
    (outside / "run.jsonl").write_text('{"type": "start"}\n')
    controller, _ = controller_run(root / "ok", max_steps=3)
    controller.run()
    save_screen_frame(root / "ok", 0, [[0, 255]], [0.0, 1e-3, 0.0, 1e-3])
    (root / "ok" / ".hidden.png").write_bytes(PNG)
    (root / "ok" / "code.py").write_text("print('no')")
    os.symlink(outside / "secret.png", root / "ok" / "escape.png")
    os.symlink(outside, root / "linked")
    (root / "ok" / "inside.png").symlink_to(root / "ok" / "screens" / "step_000000.png")
    server = Dashboard([root])
    try:
        yield server, root, outside
    finally:
        server.stop()


def get(url: str, path: str) -> tuple[int, bytes]:
    """GET ``path`` exactly as written (no client-side normalisation)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_files_inside_the_roots_are_served(site):
    server, root, _ = site
    status, body = get(server.url, "/files/0/ok/screens/step_000000.png")
    assert status == 200 and body == (root / "ok" / "screens" / "step_000000.png").read_bytes()
    status, body = get(server.url, "/files/0/ok/summary.json")
    assert status == 200 and json.loads(body)["reason"] == "step_budget"
    assert get(server.url, "/files/0/ok/inside.png")[0] == 200  # a link that stays inside


@pytest.mark.parametrize(
    "path",
    [
        "/files/0/../outside/secret.png",
        "/files/0/ok/../../outside/secret.png",
        "/files/0/%2e%2e/outside/secret.png",
        "/files/0/ok/%2E%2E/%2E%2E/outside/secret.png",
        "/files/0/..%2foutside%2fsecret.png",
        "/files/0//etc/passwd",
        "/files/0/%2fetc%2fpasswd",
        "/files/0/ok/escape.png",  # a link pointing outside
        "/files/0/linked/secret.png",  # a linked folder pointing outside
        "/files/0/linked/run.jsonl",
        "/files/0/ok/.hidden.png",
        "/files/0/ok/code.py",  # not a served type
        "/files/0/ok",  # a folder
        "/files/1/ok/summary.json",  # no such root
        "/files/-1/ok/summary.json",
        "/files/x/ok/summary.json",
        "/files/0/ok/screens/step_000000.png%00.json",
        "/files/0/ok\\..\\..\\outside\\secret.png",
    ],
)
def test_no_path_traversal(site, path: str):
    server, _, _ = site
    status, body = get(server.url, path)
    assert status == 404
    assert b"secret" not in body


def test_resolve_inside_checks_the_real_path(tmp_path: Path):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "a" / "f.png").write_bytes(PNG)
    (tmp_path / "out.png").write_bytes(PNG)
    os.symlink(tmp_path / "out.png", root / "a" / "l.png")
    assert resolve_inside(root, "a/f.png") == (root / "a" / "f.png").resolve()
    for bad in ("a/l.png", "../out.png", "/a/f.png", "a//f.png", "a/./f.png", "", "a/f.exe"):
        assert resolve_inside(root, bad) is None, bad


def test_pages_render_and_nothing_is_written(site):
    server, root, outside = site
    before = tree_state(root.parent)
    for path in ("/", "/?run=0/ok", "/?run=0/missing", "/?run=0/../outside",
                 "/?run=0/ok&run=0/ok"):  # fmt: skip
        status, body = get(server.url, path)
        assert status == 200, path
        assert b"bokeh" in body.lower()
    assert tree_state(root.parent) == before
    process = psutil.Process(server.pid)
    for f in process.open_files():
        assert f.mode == "r", f  # the server holds no file open for writing
    assert not list(outside.glob("*.tmp"))


def test_command_rejects_missing_folders(tmp_path: Path):
    import typer

    from accelrl.cli.dashboard import dashboard_command

    app = typer.Typer()
    app.command()(dashboard_command)
    result = CliRunner().invoke(app, [str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "is not a folder" in result.output
    result = CliRunner().invoke(app, [str(tmp_path), "--poll-ms", "10"])
    assert result.exit_code == 2  # below the minimum refresh period


def test_server_binds_loopback_by_default(tmp_path: Path):
    import inspect

    from accelrl.cli.dashboard import dashboard_command
    from accelrl.dashboard.server import make_server, origins

    assert inspect.signature(dashboard_command).parameters["host"].default == "127.0.0.1"
    server = make_server([tmp_path], port=0)
    try:
        assert server.address == "127.0.0.1" and server.port > 0
    finally:
        server.stop()
    assert origins("127.0.0.1", 8000) == ["127.0.0.1:8000", "localhost:8000"]
    assert origins("10.1.2.3", 8000) == ["10.1.2.3:8000"]
