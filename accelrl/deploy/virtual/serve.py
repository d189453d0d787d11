"""Run the virtual accelerator in a subprocess: for tests, benchmarks and demos.

:func:`serve_in_subprocess` starts the IOC (the config's ``server``, or ``server=``) on
127.0.0.1 with free ports (or the CA port given), waits until its PVs answer over Channel
Access and stops it on exit::

    >>> from accelrl.deploy.virtual import serve_in_subprocess
    >>> config = "deploy/virtual_ares_ea.yaml"
    >>> with serve_in_subprocess(config, prefix="VA7:") as ioc:    # doctest: +SKIP
    ...     machine = ioc.machine()          # an EpicsMachine searching only this IOC
    ...     machine.connect()
    ...     ioc.set_faults("stale")          # inject a fault at run time
    ...     print(ioc.put_count())           # setpoint writes the IOC received

Clients in other processes use ``ioc.env`` (``EPICS_CA_ADDR_LIST=127.0.0.1``,
``EPICS_CA_AUTO_ADDR_LIST=NO``, ``EPICS_CA_SERVER_PORT=<port>``, the CA repeater port and,
for the ``softioc`` server, the PV Access variables) and ``ioc.machine_config`` (the PV names
with ``prefix`` applied). The test-only PVs are ``ioc.sim_pv("FAULT")`` (``<P>SIM:FAULT``).

The parent process needs caproto only (no torch); the IOC process imports the simulation.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from accelrl.deploy.config import MachineConfig
from accelrl.deploy.machine import Disconnected
from accelrl.deploy.virtual.config import (
    LoadedConfig,
    VirtualConfig,
    common_prefix,
    load_virtual_config,
)


class ServeError(RuntimeError):
    """The IOC subprocess did not start (the message includes the end of its log)."""


def free_port(host: str = "127.0.0.1", exclude: tuple[int, ...] = ()) -> int:
    """A port that is free for both TCP and UDP on ``host`` right now (and not in
    ``exclude``)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
        if port in exclude:
            continue
        return int(port)
    raise ServeError(f"no free TCP+UDP port found on {host}")


def unique_prefix(stem: str = "VA") -> str:
    """A PV prefix unlikely to clash with another IOC on this host (e.g. ``"VA3f9c2a:"``)."""
    return f"{stem}{uuid.uuid4().hex[:6]}:"


class VirtualHandle:
    """A running virtual accelerator subprocess.

    :param process: The IOC process.
    :param loaded: Its effective configuration (port and prefix applied).
    :param log_path: File receiving the IOC's log (stderr).
    """

    def __init__(self, process: subprocess.Popen, loaded: LoadedConfig, log_path: Path) -> None:
        self.process = process
        self.loaded = loaded
        self.log_path = log_path
        self.port: int = loaded.config.port
        self.host: str = loaded.config.interface
        #: ``"softioc"`` or ``"caproto"``.
        self.server: str = loaded.config.server
        #: PV Access port (``softioc`` server).
        self.pva_port: int = loaded.config.pva_port
        #: Port of the CA repeater that receives the IOC's beacons.
        self.repeater_port: int = loaded.config.repeater_port
        self.machine_config: MachineConfig = loaded.machine
        #: The common prefix of the served PVs (e.g. ``"VA:"``).
        self.prefix: str = common_prefix(self.machine_config)
        #: The prefix of the test-only PVs (e.g. ``"VA:SIM:"``).
        self.sim_prefix: str = loaded.sim_prefix
        self._client: Any = None
        self._paused = False
        #: Keep the log file after :meth:`stop` (default: it is removed).
        self.keep_log = False

    @property
    def address(self) -> str:
        """``host:port`` clients search."""
        return f"{self.host}:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """Environment for Channel Access (and, ``softioc``, PV Access) clients in other
        processes: they search only this IOC and register with its CA repeater."""
        env = {
            "EPICS_CA_ADDR_LIST": self.host,
            "EPICS_CA_AUTO_ADDR_LIST": "NO",
            "EPICS_CA_SERVER_PORT": str(self.port),
            "EPICS_CA_REPEATER_PORT": str(self.repeater_port),
        }
        if self.server == "softioc":
            env.update(
                {
                    "EPICS_PVA_ADDR_LIST": f"{self.host}:{self.pva_port}",
                    "EPICS_PVA_AUTO_ADDR_LIST": "NO",
                    "EPICS_PVA_BROADCAST_PORT": str(self.pva_port),
                }
            )
        return env

    def pv(self, suffix: str) -> str:
        """Full name of one of the IOC's PVs (``"AREABSCR1:IMAGE"`` ->
        ``"VA7:AREABSCR1:IMAGE"``)."""
        return f"{self.prefix}{suffix}"

    def sim_pv(self, suffix: str) -> str:
        """Full name of a test-only PV (``"FAULT"`` -> ``"VA7:SIM:FAULT"``)."""
        return f"{self.sim_prefix}{suffix}"

    def machine(self, **kwargs: Any) -> Any:
        """An unconnected :class:`~accelrl.deploy.epics.EpicsMachine` that searches only this
        IOC (keyword arguments go to it)."""
        from accelrl.deploy.epics import EpicsMachine

        kwargs.setdefault("addresses", [self.address])
        return EpicsMachine(self.machine_config, **kwargs)

    # ------------------------------------------------------------- Channel Access helpers
    def _channels(self) -> Any:
        from accelrl.deploy.epics import CaChannels

        if self._client is None:
            self._client = CaChannels([self.address])
        return self._client

    def _call(self, name: str, timeout: float, fn: Any) -> Any:
        """Run ``fn(channels)`` on a connected client, with a fresh client after a failure
        (e.g. after the ``disconnect`` fault) until ``timeout`` [s]."""
        deadline = time.monotonic() + timeout
        while True:
            left = max(0.05, deadline - time.monotonic())
            channels = self._channels()
            try:
                if channels.connect([name], min(left, 1.0)):
                    raise Disconnected(f"{name}: not connected within {timeout} s")
                return fn(channels, min(left, 1.0))
            except Disconnected:
                if time.monotonic() >= deadline:
                    raise
                self._client = None
                channels.close()

    def caget(self, name: str, timeout: float = 5.0) -> Any:
        """Value of PV ``name`` (full name) over Channel Access."""
        return self._call(name, timeout, lambda ch, t: ch.read([name], t)[name].value)

    def caput(self, name: str, value: Any, timeout: float = 5.0) -> None:
        """Write PV ``name`` (full name) with put-callback over Channel Access.

        :raises PutRejected: If the IOC refuses the value.
        """
        self._call(name, timeout, lambda ch, t: ch.write({name: value}, t))

    def set_faults(self, *faults: str) -> None:
        """Switch the active faults (none: clear them), through the ``FAULT`` PV."""
        self.caput(self.sim_pv("FAULT"), ",".join(faults) or "none")

    def faults(self) -> set[str]:
        """The active faults, read from the ``FAULT`` PV."""
        text = str(self.caget(self.sim_pv("FAULT")))
        return set() if text == "none" else set(text.split(","))

    def put_count(self) -> int:
        """Setpoint writes the IOC has received since start or reset."""
        return int(self.caget(self.sim_pv("PUT_COUNT")))

    def reset(self, timeout: float = 5.0) -> None:
        """Clear faults and counters and restore the initial knob settings.

        :param timeout: Seconds to wait for the IOC to answer [s] (it may be coming back
            from the ``disconnect`` fault).
        """
        self.caput(self.sim_pv("RESET"), 1, timeout=timeout)

    def true_mae(self) -> float:
        """True mean absolute error of the beam to the trial's target [m]."""
        return float(self.caget(self.sim_pv("TRUE:MAE")))

    # ------------------------------------------------------------- process control
    def _signal_group(self, sig: int) -> None:
        """Send ``sig`` to the IOC's processes (its own process group)."""
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass

    def pause(self) -> None:
        """Freeze the IOC's processes (SIGSTOP): it stops answering but keeps its sockets,
        the nastiest kind of disconnection."""
        self._signal_group(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """Continue a paused IOC (SIGCONT)."""
        self._signal_group(signal.SIGCONT)
        self._paused = False

    def log(self) -> str:
        """The IOC's log so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the IOC (SIGTERM, then SIGKILL after ``timeout`` [s]) and remove its log file
        (unless :attr:`keep_log`); idempotent."""
        if self._client is not None:
            client, self._client = self._client, None
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing a client of a dead IOC may fail
                pass
        if self.process.poll() is None:
            if self._paused:
                self.resume()
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.process.wait(timeout)
        self._signal_group(signal.SIGKILL)  # nothing of this IOC outlives it
        if self.process.stdout is not None:
            self.process.stdout.close()
        if not self.keep_log:
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> VirtualHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.process.poll() is None else f"exited {self.process.returncode}"
        return f"VirtualHandle({self.server}, {self.address}, prefix={self.prefix!r}, {state})"


def serve_in_subprocess(
    config: str | Path | LoadedConfig,
    port: int | None = None,
    *,
    prefix: str | None = None,
    server: str | None = None,
    startup_timeout: float = 90.0,
    **overrides: Any,
) -> VirtualHandle:
    """Start the virtual accelerator in a subprocess and wait until its PVs answer.

    Use it as a context manager (the IOC stops on exit) or call ``stop()``. The IOC runs in
    a process group of its own (its supervisor, IOC process and CA repeater).

    :param config: IOC config YAML or a loaded config.
    :param port: Channel Access server port (default: a free one; the PV Access and CA
        repeater ports are free ones too).
    :param prefix: PV prefix replacing the machine config's (default: the config's).
    :param server: ``"softioc"`` or ``"caproto"`` (default: the config's).
    :param startup_timeout: Seconds to wait for the PVs to answer [s].
    :param overrides: Further top-level IOC config fields (e.g. ``trial=57``,
        ``magnets={"settle_time_s": 0.05}``), validated.
    :raises ServeError: If the IOC does not answer in time (with the end of its log).
    """
    loaded = config if isinstance(config, LoadedConfig) else load_virtual_config(config)
    changes: dict[str, Any] = dict(overrides)
    host = loaded.config.interface
    changes["port"] = free_port(host) if port is None else int(port)
    changes["pva_port"] = free_port(host, exclude=(changes["port"],))
    changes["repeater_port"] = free_port(host, exclude=(changes["port"], changes["pva_port"]))
    if prefix is not None:
        changes["prefix"] = prefix
    if server is not None:
        changes["server"] = server
    loaded = loaded.replace(**changes)
    payload = json.dumps({"config": loaded.config.model_dump(mode="json"), "source": loaded.source})
    fd, log_name = tempfile.mkstemp(prefix="accelrl-virtual-", suffix=".log")
    os.close(fd)
    log_path = Path(log_name)
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "accelrl.deploy.virtual",
                "--config-json",
                payload,
                "--parent-pid",
                str(os.getpid()),
            ],
            stdout=subprocess.PIPE,
            stderr=log_file,
            env=env,
            text=True,
            start_new_session=True,
        )
    handle = VirtualHandle(process, loaded, log_path)
    try:
        _wait_ready(handle, startup_timeout)
    except BaseException:
        handle.stop()
        raise
    return handle


def _wait_ready(handle: VirtualHandle, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    line: list[str] = []

    def read_line() -> None:
        assert handle.process.stdout is not None
        for text in handle.process.stdout:
            if text.startswith("READY"):
                line.append(text)
                return

    reader = threading.Thread(target=read_line, daemon=True)
    reader.start()
    reader.join(timeout)
    if not line:
        try:
            code = handle.process.wait(2.0)
        except subprocess.TimeoutExpired:
            code = None
        state = f"exited with {code}" if code is not None else f"silent after {timeout:.0f} s"
        raise ServeError(f"virtual accelerator {state}; log:\n{handle.log()[-3000:]}")
    left = max(1.0, deadline - time.monotonic())
    heartbeat = handle.machine_config.heartbeat.pv or handle.sim_pv("FAULT")
    try:
        handle.caget(heartbeat, timeout=min(left, 10.0))
    except Exception as err:
        raise ServeError(
            f"virtual accelerator on {handle.address} started but {heartbeat} does not "
            f"answer: {err}; log:\n{handle.log()[-3000:]}"
        ) from err


def _exit_with_parent(parent: int) -> None:
    """End this process as soon as ``parent`` has ended (no IOC outlives its test)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the IOC subprocess (``python -m accelrl.deploy.virtual``)."""
    import argparse
    import logging

    parser = argparse.ArgumentParser(description="virtual accelerator IOC")
    parser.add_argument("--config", type=Path, help="IOC config YAML")
    parser.add_argument("--config-json", help="IOC config as JSON (from serve_in_subprocess)")
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--prefix", default=None)
    parser.add_argument("--server", choices=["softioc", "caproto"], default=None)
    parser.add_argument(
        "--parent-pid", type=int, default=None, help="exit when this process is gone"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("caproto").setLevel(logging.WARNING)
    if args.parent_pid is not None:
        _exit_with_parent(args.parent_pid)
    if args.config_json:
        data = json.loads(args.config_json)
        from accelrl.deploy.config import load_machine_config

        config = VirtualConfig.model_validate(data["config"])
        loaded = LoadedConfig(config, load_machine_config(config.machine), data["source"])
    elif args.config is not None:
        loaded = load_virtual_config(
            args.config, port=args.port, prefix=args.prefix, server=args.server
        )
    else:
        parser.error("give --config or --config-json")
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover - the plant needs torch anyway
        pass
    if loaded.config.server == "softioc":
        from accelrl.deploy.virtual import supervisor

        sys.exit(supervisor.run(loaded))
    from accelrl.deploy.virtual.ioc import run

    run(loaded)
