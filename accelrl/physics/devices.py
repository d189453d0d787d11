"""Devices: one check for every ``device=`` argument of the package.

A device is given like ``torch.nn`` takes it: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``
or a :class:`torch.device`. :func:`resolve_device` turns it into a :class:`torch.device`
and fails with one clear error when the device cannot be used; nothing ever falls back
silently to another device. :func:`same_device` checks that tensors share one device.

>>> resolve_device("cpu")
device(type='cpu')
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

#: Device types the package accepts.
DEVICE_TYPES = ("cpu", "cuda", "mps")

DeviceLike = str | torch.device


class DeviceError(ValueError):
    """A device that cannot be used here, or tensors on different devices."""


def resolve_device(device: DeviceLike | None, where: str = "device") -> torch.device:
    """The :class:`torch.device` of ``device`` (``None``: CPU), checked to be usable.

    :param device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or a ``torch.device``.
    :param where: What the value was given as, for the message (e.g. ``"--device"``).
    :raises DeviceError: For an unknown device string, or a CUDA/MPS device this machine
        does not have; the message names the device and the fix.
    """
    if device is None:
        return torch.device("cpu")
    if not isinstance(device, (str, torch.device)):
        raise DeviceError(
            f"{where}={device!r} is not a device; give 'cpu', 'cuda', 'cuda:N' or a torch.device"
        )
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise DeviceError(
            f"{where}={str(device)!r} is not a device torch knows ({err}); "
            f"give one of {', '.join(DEVICE_TYPES)} (e.g. 'cpu' or 'cuda:0')"
        ) from None
    if dev.type not in DEVICE_TYPES:
        raise DeviceError(
            f"{where}={str(device)!r}: device type {dev.type!r} is not supported; "
            f"give one of {', '.join(DEVICE_TYPES)}"
        )
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = torch.version.cuda
            why = (
                "this torch build has no CUDA support (a CPU wheel); install a CUDA build, e.g. "
                "TORCH_INDEX=https://download.pytorch.org/whl/cu128 make venv"
                if build is None
                else f"torch (CUDA {build}) finds no GPU on this machine"
            )
            raise DeviceError(f"{where}={str(device)!r}: {why}; or give device='cpu'")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise DeviceError(
                f"{where}={str(device)!r}: this machine has {count} GPU(s) "
                f"(cuda:0..cuda:{count - 1}); give one of those or device='cpu'"
            )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"{where}={str(device)!r}: MPS is not available here; give device='cpu'")
    return dev


def same_device(tensors: Mapping[str, Any], expected: torch.device | None = None) -> None:
    """Check that every tensor of ``tensors`` (name -> value) lies on one device.

    Values that are not tensors are skipped. With ``expected``, that device is required.

    :raises DeviceError: Naming each tensor's device and the fix (``.to(device)``).
    """
    devices = {n: t.device for n, t in tensors.items() if isinstance(t, torch.Tensor)}
    if expected is not None:
        wrong = {n: d for n, d in devices.items() if not _same(d, expected)}
        if wrong:
            listed = ", ".join(f"{n} on {d}" for n, d in wrong.items())
            raise DeviceError(
                f"tensors on the wrong device: {listed}; expected {expected}: "
                f"move them with .to({str(expected)!r})"
            )
        return
    if len({(d.type, d.index) for d in devices.values()}) > 1:
        listed = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise DeviceError(
            f"tensors on different devices: {listed}; move them to one device with .to(device)"
        )


def _same(a: torch.device, b: torch.device) -> bool:
    """``cuda`` and ``cuda:0`` (the current device) count as the same device."""
    if a.type != b.type:
        return False
    if a.index is None or b.index is None:
        return True
    return a.index == b.index
