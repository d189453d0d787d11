"""A Channel Access repeater bound to one interface, for the virtual accelerator's beacons.

A CA client library learns that an IOC is (back) up from its *beacons*; on a host, beacons
reach the clients through the CA repeater (UDP port ``EPICS_CA_REPEATER_PORT``), with which
every client registers. EPICS base's ``caRepeater`` program is not part of the Python wheels
of EPICS, so the virtual accelerator starts this one: caproto's implementation of the
repeater protocol, bound to the given interface (127.0.0.1) instead of all interfaces.

Run: ``python -m accelrl.deploy.virtual.repeater --interface 127.0.0.1 --port 5065``. If the
port is taken, a repeater runs there already and this one exits at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time


def main(argv: list[str] | None = None) -> None:
    """Entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description="Channel Access repeater on one interface")
    parser.add_argument("--interface", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5065)
    parser.add_argument("--parent-pid", type=int, default=None, help="exit with this process")
    args = parser.parse_args(argv)
    os.environ["EPICS_CA_REPEATER_PORT"] = str(args.port)
    if args.parent_pid is not None:
        parent = args.parent_pid

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(0.5)
            os._exit(0)

        threading.Thread(target=watch, daemon=True, name="parent-watch").start()
    logging.basicConfig(level=logging.WARNING)
    from caproto.sync.repeater import run

    run(host=args.interface)


if __name__ == "__main__":
    main()
