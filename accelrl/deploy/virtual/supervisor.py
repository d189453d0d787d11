"""The process that runs the virtual accelerator's EPICS 7 IOC (``server: softioc``).

The supervisor builds the simulation once (importing torch takes seconds), makes sure a
Channel Access repeater runs on the IOC's interface (:mod:`accelrl.deploy.virtual.repeater`),
and then forks the IOC process (:func:`accelrl.deploy.virtual.softioc_ioc.run_ioc`), which
imports EPICS base, builds the records and serves.

**The outage fault.** ``disconnect`` makes the IOC unreachable the way a crashed or rebooted
IOC is: the IOC process shuts its sockets, hands its state to the supervisor and exits, so
every client circuit closes at once and nothing answers searches or connections. A standby
IOC process, forked once the serving one is up (and again whenever a standby takes over), has
imported EPICS and built its records already; it takes the handed-over state (setpoints,
readbacks, ramps, faults, counters: what an IOC with autosave restores) and starts serving
once ``faults.disconnect_s`` have passed since the fault began, plus EPICS's own start-up
(iocInit, about 0.7 s, of which 0.5 s is a fixed wait of EPICS base). On start, EPICS base
sends beacons at short intervals to the CA repeater.

SIGTERM or SIGINT stop the IOC and the repeater; so does the end of the parent process
(``--parent-pid``). POSIX only (``os.fork``).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from accelrl.deploy.virtual.config import LoadedConfig, VirtualConfig

log = logging.getLogger("accelrl.virtual")


def _udp_port_taken(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def start_repeater(config: VirtualConfig, timeout: float = 10.0) -> subprocess.Popen | None:
    """Start a CA repeater on ``config.interface``:``config.repeater_port`` unless that port
    is taken already (a repeater runs there); the process, or ``None``.

    :raises RuntimeError: If the repeater does not bind its port within ``timeout`` [s].
    """
    host, port = config.interface, config.repeater_port
    if _udp_port_taken(host, port):
        log.info("CA repeater port %s:%d in use: a repeater runs there", host, port)
        return None
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "accelrl.deploy.virtual.repeater",
            "--interface",
            host,
            "--port",
            str(port),
            "--parent-pid",
            str(os.getpid()),
        ],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    while not _udp_port_taken(host, port):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the CA repeater did not start on {host}:{port}")
        time.sleep(0.02)
    return process


class _IocProcess:
    """One forked IOC process and its pipes (see
    :func:`~accelrl.deploy.virtual.softioc_ioc.run_ioc`)."""

    def __init__(self, pid: int, messages: Any, standby_to: int | None) -> None:
        self.pid = pid
        self.messages = messages  # reader of the process's messages
        self.standby_to = standby_to  # write end of a standby's snapshot pipe

    def start(self, snapshot: dict[str, Any]) -> None:
        """Hand a standby process the state it continues from."""
        from accelrl.deploy.virtual.softioc_ioc import send_message

        assert self.standby_to is not None
        send_message(self.standby_to, {"handover": snapshot})
        os.close(self.standby_to)
        self.standby_to = None

    def close(self) -> None:
        self.messages.close()
        if self.standby_to is not None:
            os.close(self.standby_to)
            self.standby_to = None


class Supervisor:
    """Runs the IOC processes one after the other (see the module docstring).

    :param loaded: IOC config with its machine config.
    :param plant: The simulation (default: :func:`~accelrl.deploy.virtual.core.build_plant`).
    """

    def __init__(self, loaded: LoadedConfig, plant: Any | None = None) -> None:
        if not hasattr(os, "fork"):
            raise RuntimeError("the softioc server of the virtual accelerator needs os.fork")
        from accelrl.deploy.virtual.core import build_plant

        self.loaded = loaded
        self.plant = plant if plant is not None else build_plant(loaded)
        self.repeater: subprocess.Popen | None = None
        self.processes: list[_IocProcess] = []
        self._stopping = False

    def _stop(self, *_: Any) -> None:
        self._stopping = True
        for process in list(self.processes):
            try:
                os.kill(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def cleanup(self) -> None:
        """Stop the IOC processes and the repeater (idempotent)."""
        self._stop()
        if self.repeater is not None and self.repeater.poll() is None:
            self.repeater.terminate()
            try:
                self.repeater.wait(5.0)
            except subprocess.TimeoutExpired:
                self.repeater.kill()

    def run(self) -> int:
        """Serve until stopped; the exit status (0 when stopped by a signal)."""
        from accelrl.deploy.virtual.softioc_ioc import HANDOVER_EXIT, read_message

        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        self.repeater = start_repeater(self.loaded.config)
        active = self._fork(standby=False)
        # a standby builds its records while the first process serves (forked once that one
        # is up, not to slow its start): an outage then costs EPICS's start-up only
        standby: _IocProcess | None = None
        try:
            while not self._stopping:
                message = read_message(active.messages)
                if message is None:  # the serving process ended without a hand-over
                    code = self._reap(active)
                    if self._stopping:
                        return 0
                    log.error("IOC process ended with status %s", code)
                    return code if code else 1
                if "ready" in message and standby is None:
                    standby = self._fork(standby=True)
                elif "handover" in message:
                    snapshot = message["handover"]
                    log.info(
                        "IOC silent until %.3f (in %.3f s)",
                        snapshot["offline_until"],
                        snapshot["offline_until"] - time.time(),
                    )
                    previous = active
                    active = self._start_standby(standby, snapshot)
                    standby = self._fork(standby=True)  # the next outage's successor
                    code = self._reap(previous)
                    if code != HANDOVER_EXIT:
                        log.error("IOC process ended with status %s", code)
            return 0
        finally:
            self.cleanup()
            for process in list(self.processes):
                self._reap(process)

    def _start_standby(self, standby: _IocProcess | None, snapshot: dict[str, Any]) -> _IocProcess:
        """Hand ``snapshot`` to the standby process (a new one if there is none or it has
        died); the process that serves next."""
        for _ in range(2):
            if standby is None:
                standby = self._fork(standby=True)
            try:
                standby.start(snapshot)
                return standby
            except OSError:  # the standby died
                log.error("standby IOC process %d is gone; starting another", standby.pid)
                self._reap(standby)
                standby = None
        raise RuntimeError("no standby IOC process could take over")

    def _reap(self, process: _IocProcess) -> int:
        """Wait for ``process`` to end; its exit status."""
        _, status = os.waitpid(process.pid, 0)
        process.close()
        self.processes.remove(process)
        return os.waitstatus_to_exitcode(status)

    def _fork(self, standby: bool) -> _IocProcess:
        """Fork an IOC process (a standby one waits for the state it continues from)."""
        messages_read, messages_write = os.pipe()
        standby_read, standby_write = os.pipe() if standby else (None, None)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the IOC process
            code = 1
            try:
                os.close(messages_read)
                if standby_write is not None:
                    os.close(standby_write)
                for process in self.processes:  # the other processes' pipes
                    process.close()
                if self.repeater is not None:
                    self.repeater = None
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                from accelrl.deploy.virtual.softioc_ioc import exit_with_parent, run_ioc

                exit_with_parent()
                run_ioc(self.loaded, self.plant, messages_write, standby_read)
            except BaseException:  # noqa: BLE001 - report, then leave without cleanup
                log.exception("IOC process failed")
            finally:
                os._exit(code)
        os.close(messages_write)
        if standby_read is not None:
            os.close(standby_read)
        process = _IocProcess(pid, os.fdopen(messages_read, "rb"), standby_write)
        self.processes.append(process)
        return process


def _exit_with_parent(parent: int, supervisor: Supervisor) -> None:
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        supervisor.cleanup()
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def run(loaded: LoadedConfig, parent_pid: int | None = None) -> int:
    """Serve the virtual accelerator on an EPICS 7 IOC until stopped; the exit status.

    :param loaded: IOC config with its machine config.
    :param parent_pid: End everything when this process has ended.
    """
    supervisor = Supervisor(loaded)
    if parent_pid is not None:
        _exit_with_parent(parent_pid, supervisor)
    return supervisor.run()
