"""One IOC process of the virtual accelerator on EPICS 7 (pythonSoftIOC): Channel Access and
PV Access served by EPICS base from one IOC, backed by an
:class:`~accelrl.deploy.virtual.core.AcceleratorCore`.

The process has one *machine thread* (its main thread) that changes the accelerator's state:
it applies the clients' writes (handed over by the records, see
:mod:`accelrl.deploy.virtual.records`), runs the ramps, the camera and the heartbeat at
absolute deadlines (:meth:`AcceleratorCore.tick`), and publishes every change. EPICS base's
server threads only read the state and decide on refusals.

The ``disconnect`` fault ends the process: it hands its state to the supervisor
(:mod:`accelrl.deploy.virtual.supervisor`), which starts the next IOC process; that one waits
until ``faults.disconnect_s`` have passed and then starts serving.

Start it with :func:`accelrl.deploy.virtual.supervisor.run` (``accelrl serve-virtual``).
This module imports pythonSoftIOC, hence EPICS base; the plant it drives imports torch.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import resource
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn

from accelrl.deploy.virtual.config import LoadedConfig, VirtualConfig, common_prefix
from accelrl.deploy.virtual.core import AcceleratorCore, Change

log = logging.getLogger("accelrl.virtual")

#: Exit status of an IOC process that hands its state to its successor (``disconnect``).
HANDOVER_EXIT = 75
#: When ``disconnect`` begins, the IOC goes once the pending writes (the one that switched
#: the fault on) have completed, plus this for the server to send the replies [s] ...
DISCONNECT_GRACE_S = 0.01
#: ... but no later than this after the fault began [s].
DISCONNECT_MAX_WAIT_S = 0.5


def server_environment(config: VirtualConfig) -> dict[str, str]:
    """The EPICS variables of the IOC process: CA and PVA servers on ``config.interface``
    only, at ``port`` and ``pva_port``, beacons to that interface's CA repeater (port
    ``repeater_port``) and PVA clients there; the IOC's own client side searches there
    too. Nothing is broadcast."""
    host = config.interface
    return {
        "EPICS_CA_SERVER_PORT": str(config.port),
        "EPICS_CAS_SERVER_PORT": str(config.port),
        "EPICS_CAS_INTF_ADDR_LIST": host,
        "EPICS_CAS_BEACON_ADDR_LIST": host,
        "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO",
        "EPICS_CA_REPEATER_PORT": str(config.repeater_port),
        "EPICS_CA_ADDR_LIST": host,
        "EPICS_CA_AUTO_ADDR_LIST": "NO",
        "EPICS_PVAS_INTF_ADDR_LIST": host,
        "EPICS_PVAS_SERVER_PORT": str(config.pva_port),
        "EPICS_PVAS_BROADCAST_PORT": str(config.pva_port),
        "EPICS_PVAS_BEACON_ADDR_LIST": host,
        "EPICS_PVAS_AUTO_BEACON_ADDR_LIST": "NO",
        "EPICS_PVA_ADDR_LIST": host,
        "EPICS_PVA_AUTO_ADDR_LIST": "NO",
    }


class _NoDispatcher:
    """pythonSoftIOC's dispatcher of ``on_update`` callbacks; these records have none."""

    def __call__(self, func: Any, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("no on_update callbacks on this IOC")


class SoftIoc:
    """The IOC of one process: its records and its machine thread.

    :param loaded: IOC config with its machine config.
    :param core: The accelerator's state (restored already, after an outage).
    :param handover: Called with the core's snapshot when the ``disconnect`` fault begins;
        it must not return (it ends the process).
    """

    def __init__(
        self,
        loaded: LoadedConfig,
        core: AcceleratorCore,
        handover: Callable[[dict[str, Any]], NoReturn],
    ) -> None:
        from accelrl.deploy.virtual.records import Records

        self.loaded = loaded
        self.core = core
        self._handover = handover
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.records = Records(loaded, core, self._on_write, self._on_deferred)
        self._leave_at: float | None = None
        self._leave_by = 0.0

    # ------------------------------------------------------------------ set-up
    def build(self) -> None:
        """Define and load the records (before :meth:`start`)."""
        from softioc import builder

        self.records.build()
        builder.LoadDatabase()

    def start(self) -> None:
        """Start EPICS (iocInit: the CA and PVA servers begin serving) and guard the writes."""
        from softioc import softioc

        from accelrl.deploy.virtual.guard import install_access_security

        acf = install_access_security()
        try:
            softioc.iocInit(_NoDispatcher(), enable_pva=True)
        finally:
            acf.unlink(missing_ok=True)
        self.records.attach()

    # ------------------------------------------------------------------ events
    def _on_write(self, records: Any, dev: Any, value: Any) -> None:
        """A client's write that passed the guard (EPICS server thread)."""
        self._jobs.put(lambda: self._apply(records.handle_write(dev, value)))

    def _on_deferred(self, changes: set[Change]) -> None:
        """Changes a guard (EPICS server thread) left to the machine thread."""
        self._jobs.put(lambda: self._apply(changes))

    def _apply(self, changes: set[Change] | None) -> None:
        if not changes:
            return
        self.records.publish_writable(changes)
        if "disconnect" in changes and self._leave_at is None:
            self._leave_at = time.time() + DISCONNECT_GRACE_S
            self._leave_by = time.time() + DISCONNECT_MAX_WAIT_S

    # ------------------------------------------------------------------ machine thread
    def run(self) -> NoReturn:
        """The machine thread (this thread, forever): writes, ticks at the core's deadlines,
        publishing, and the hand-over when ``disconnect`` begins."""
        core, records = self.core, self.records
        deadline = 0.0
        while True:
            wait = deadline if self._leave_at is None else min(deadline, self._leave_at)
            try:
                job: Callable[[], None] | None = self._jobs.get(
                    timeout=max(0.0, wait - time.time())
                )
            except queue.Empty:
                job = None
            while job is not None:
                try:
                    job()
                except Exception:  # noqa: BLE001 - one bad write must not stop the machine
                    log.exception("write failed")
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    job = None
            try:
                deadline = core.tick()
                self._apply(records.publish(core.take_changes()))
                records.publish_frames(core.take_frames())
            except Exception:  # noqa: BLE001 - one bad tick must not stop the machine
                log.exception("update failed")
                deadline = time.time() + 0.01
            if self._leave_at is not None and time.time() >= self._leave_at:
                if records.writes_completed() or time.time() >= self._leave_by:
                    self._handover(core.snapshot())
                self._leave_at = time.time() + DISCONNECT_GRACE_S


def send_message(fd: int, message: dict[str, Any]) -> None:
    """Write one message (a JSON line) to the supervisor's pipe."""
    data = (json.dumps(message) + "\n").encode()
    while data:
        data = data[os.write(fd, data) :]


def read_message(reader: Any) -> dict[str, Any] | None:
    """The next message (JSON line) from a pipe opened with ``os.fdopen(fd, "rb")``;
    ``None`` once the writer has closed it."""
    line = reader.readline()
    return json.loads(line) if line else None


def run_ioc(
    loaded: LoadedConfig,
    plant: Any,
    to_supervisor: int | None = None,
    standby_from: int | None = None,
) -> NoReturn:
    """Serve the virtual accelerator from this process until it ends (never returns).

    :param loaded: IOC config with its machine config.
    :param plant: The simulation.
    :param to_supervisor: Pipe for the messages to the supervisor: ``{"ready": true}`` once
        serving, ``{"handover": <snapshot>}`` when ``disconnect`` ends this process (exit
        status :data:`HANDOVER_EXIT`). ``None``: ``disconnect`` ends the process, no more.
    :param standby_from: Make this a standby process: build the records, then wait on this
        pipe for the snapshot of the IOC process it succeeds, continue from that state and
        start serving at its ``offline_until`` time.
    """
    os.environ.update(server_environment(loaded.config))
    # stdout carries only the READY line; EPICS's own messages go to stderr (the log)
    sys.stdout.flush()
    ready_fd = os.dup(1)
    os.dup2(2, 1)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    signal.signal(signal.SIGINT, lambda *_: os._exit(0))

    def handover(state: dict[str, Any]) -> NoReturn:
        from epicscorelibs.ioc import dbCore

        dbCore.iocPause()  # the CA and PVA servers stop answering searches and connections
        drop_connections()
        log.info("IOC process ends for the outage (disconnect)")
        sys.stderr.flush()
        if to_supervisor is not None:
            send_message(to_supervisor, {"handover": state})
        os._exit(HANDOVER_EXIT)

    core = AcceleratorCore(loaded, plant)
    ioc = SoftIoc(loaded, core, handover)
    ioc.build()
    if standby_from is not None:
        log.info("standby IOC process ready")
        with os.fdopen(standby_from, "rb") as reader:
            message = read_message(reader)
        if message is None:
            os._exit(0)  # the supervisor is stopping
        snapshot = message["handover"]
        core.restore(snapshot)
        ioc.records.restore_writable()
        delay = float(snapshot["offline_until"]) - time.time()
        if delay > 0:
            time.sleep(delay)
        core.tick()  # catch up with the time the IOC was away
    ioc.start()
    os.write(ready_fd, f"READY {loaded.config.port} {common_prefix(loaded.machine)}\n".encode())
    os.close(ready_fd)
    log.info(
        "serving on %s: CA port %d, PVA port %d",
        loaded.config.interface,
        loaded.config.port,
        loaded.config.pva_port,
    )
    if to_supervisor is not None:
        send_message(to_supervisor, {"ready": True})
    ioc.run()


def drop_connections() -> None:
    """Shut down every connected TCP socket of this process (the clients' circuits) now:
    clients see their circuits close at once (the operating system would close them only
    after tearing down the process's memory). Listening and UDP sockets are left to the
    process's end: shutting them down makes EPICS's server threads spin."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:  # no /proc: try the usual range
        fds = list(range(3, min(resource.getrlimit(resource.RLIMIT_NOFILE)[0], 4096)))
    for fd in fds:
        if fd < 3:
            continue
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
        except OSError:
            continue
        sock = socket.socket(fileno=fd)
        try:
            if sock.type == socket.SOCK_STREAM:
                sock.getpeername()  # raises if not connected (a listening socket)
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        finally:
            sock.detach()


def exit_with_parent() -> None:
    """End this process as soon as its parent has ended."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()
