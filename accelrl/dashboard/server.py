"""The dashboard's web server: the Bokeh application plus a read-only route for files inside
run folders (camera frames, the plots a run wrote).

``GET /files/<root index>/<path>`` answers a regular file only when its real path (every
symbolic link resolved) lies inside the real path of that root, has one of the suffixes of
:data:`SERVED_TYPES`, and the request path has no ``..``, empty or hidden component;
everything else is ``404``. Nothing is ever written: there is no route that accepts data.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tornado.web
from bokeh.application import Application
from bokeh.application.handlers.function import FunctionHandler
from bokeh.server.server import Server

from accelrl.dashboard.app import make_document_factory
from accelrl.dashboard.data.store import RunStore
from accelrl.dashboard.links import FILES_PREFIX

#: Suffixes served from run folders, with their content types.
SERVED_TYPES: dict[str, str] = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".json": "text/plain; charset=utf-8",
    ".jsonl": "text/plain; charset=utf-8",
    ".csv": "text/plain; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".yaml": "text/plain; charset=utf-8",
}
#: Largest file served [bytes].
MAX_SERVED_BYTES = 64 << 20


def resolve_inside(root: Path, relative: str) -> Path | None:
    """The file ``relative`` names under ``root``, or ``None`` when it is not a regular file
    whose real path lies inside the root's real path, or the request names a ``..``, empty,
    hidden or absolute component, or a suffix not in :data:`SERVED_TYPES`.

    >>> resolve_inside(Path("/runs"), "../etc/passwd") is None
    True
    """
    if not relative or "\\" in relative or "\x00" in relative or relative.startswith("/"):
        return None
    parts = relative.split("/")
    if any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        return None
    if Path(parts[-1]).suffix.lower() not in SERVED_TYPES:
        return None
    base = os.path.realpath(root)
    real = os.path.realpath(os.path.join(base, *parts))
    if os.path.commonpath([base, real]) != base or real == base:
        return None
    if not os.path.isfile(real):
        return None
    return Path(real)


class RunFileHandler(tornado.web.RequestHandler):
    """Serves files from run folders, read-only (see the module documentation)."""

    def initialize(self, roots: Sequence[Path]) -> None:
        self.roots = [Path(r) for r in roots]

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-store")
        self.set_header("Content-Security-Policy", "default-src 'none'; img-src 'self'")

    def get(self, root: str, relative: str) -> None:
        try:
            index = int(root)
        except ValueError:
            raise tornado.web.HTTPError(404) from None
        if not 0 <= index < len(self.roots):
            raise tornado.web.HTTPError(404)
        path = resolve_inside(self.roots[index], relative)
        if path is None:
            raise tornado.web.HTTPError(404)
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_SERVED_BYTES + 1)
        except OSError:
            raise tornado.web.HTTPError(404) from None
        if len(data) > MAX_SERVED_BYTES:
            raise tornado.web.HTTPError(404)
        self.set_header("Content-Type", SERVED_TYPES[path.suffix.lower()])
        self.write(data)

    def head(self, root: str, relative: str) -> None:
        raise tornado.web.HTTPError(405)


def free_port(host: str) -> int:
    """A port that is free on ``host`` now."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def origins(host: str, port: int) -> list[str]:
    """Browser origins allowed to open the session websocket."""
    names = {host, "localhost", "127.0.0.1"} if host in ("127.0.0.1", "localhost") else {host}
    return sorted(f"{n}:{port}" for n in names)


def make_server(
    roots: Sequence[Path],
    host: str = "127.0.0.1",
    port: int = 5006,
    poll_ms: int = 250,
    allow_origins: Sequence[str] = (),
) -> Server:
    """The dashboard server, not started (``server.start()``, then run ``server.io_loop``).

    :param roots: Folders whose runs it shows (and the only place it reads from).
    :param host: Address to listen on (default loopback only).
    :param port: Port (0: any free port; ``server.port`` tells which).
    :param poll_ms: Refresh period of every page [ms].
    :param allow_origins: More ``host:port`` origins allowed to connect (behind a proxy).
    """
    if poll_ms < 50:
        raise ValueError(f"poll_ms must be >= 50 ms, got {poll_ms}")
    roots = [Path(r).absolute() for r in roots]
    store = RunStore(roots)
    app = Application(FunctionHandler(make_document_factory(store, poll_ms)))
    logging.getLogger("bokeh").setLevel(logging.WARNING)
    logging.getLogger("tornado.access").setLevel(logging.WARNING)
    kwargs: dict[str, Any] = dict(
        address=host,
        port=port,
        extra_patterns=[(rf"{FILES_PREFIX}/([^/]+)/(.*)", RunFileHandler, {"roots": roots})],
        keep_alive_milliseconds=10_000,
        check_unused_sessions_milliseconds=10_000,
        unused_session_lifetime_milliseconds=30_000,
    )
    if port == 0:
        port = free_port(host)
    server = Server(
        {"/": app}, **kwargs, allow_websocket_origin=origins(host, port) + list(allow_origins)
    )
    server.store = store  # type: ignore[attr-defined]
    return server
