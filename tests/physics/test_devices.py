"""Devices of the compiled map: branch-free program, device checks, CPU/GPU agreement.

The ``torch.compile`` test uses Dynamo with the ``"eager"`` backend and ``fullgraph=True``:
Dynamo captures the whole forward pass or raises at the first graph break (a host sync
such as ``bool(tensor.any())`` is one), without spending minutes in Inductor's C++
code generation on CPU. GPU tests run only where CUDA is present.
"""

from __future__ import annotations

import pytest
import torch

from accelrl.physics import (
    ARES_EA_KNOBS,
    ARES_EA_SCREEN,
    DeviceError,
    ares_ea_segment,
    compile,
    resolve_device,
)
from accelrl.physics.numerics import NUMPY, TORCH

F64 = torch.float64
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _inputs(n: int, device: str = "cpu", k1_zero: bool = True):
    gen = torch.Generator().manual_seed(0)
    knobs = (torch.rand(n, 5, generator=gen, dtype=F64) - 0.5) * torch.tensor(
        [144.0, 144.0, 0.012, 144.0, 0.012], dtype=F64
    )
    if k1_zero:
        knobs[0, 0] = 0.0  # the Taylor branch of focus_pair (kappa L^2 = 0)
        knobs[1, 1] = 1e-12
    incoming = torch.tensor(
        [107e6, 1e-4, 1e-5, -1e-4, 1e-5, 175e-6, 4e-6, 175e-6, 4e-6, 8e-6, 2e-4], dtype=F64
    ).expand(n, 11)
    mis = (torch.rand(n, 8, generator=gen, dtype=F64) - 0.5) * 8e-4
    return knobs.to(device), incoming.to(device), mis.to(device)


@pytest.fixture(scope="module")
def beamline():
    return compile(ares_ea_segment(), knobs=ARES_EA_KNOBS, observe=ARES_EA_SCREEN)


def test_torch_backend_is_branch_free_and_numpy_keeps_its_shortcut() -> None:
    assert TORCH.branch_free and not NUMPY.branch_free


def test_branch_free_focus_pair_matches_the_branching_one() -> None:
    """Selecting the Taylor values with ``where`` everywhere gives the numbers of the
    branching evaluation (bit for bit) at and away from ``k1 = 0``."""
    k1 = torch.tensor([0.0, 1e-12, -1e-12, 3.0, -7.5, 72.0], dtype=F64, requires_grad=True)
    length = torch.full_like(k1, 0.12)
    branch_free = TORCH.focus_pair(k1, length)
    numpy = NUMPY.focus_pair(k1.detach().numpy(), length.numpy())
    for a, b in zip(branch_free, numpy, strict=True):
        torch.testing.assert_close(a.detach(), torch.from_numpy(b), rtol=1e-15, atol=0.0)
    sum(branch_free).sum().backward()
    assert torch.isfinite(k1.grad).all()


def test_compiled_map_traces_without_graph_breaks(beamline) -> None:
    knobs, incoming, mis = _inputs(8)
    compiled = torch.compile(beamline, fullgraph=True, backend="eager", dynamic=False)
    torch.testing.assert_close(compiled(knobs, incoming, mis), beamline(knobs, incoming, mis))
    torch.testing.assert_close(compiled(knobs, incoming), beamline(knobs, incoming))


def test_mixed_devices_name_the_devices(beamline) -> None:
    knobs, incoming, mis = _inputs(2)
    meta = mis.to("meta")
    with pytest.raises(DeviceError, match=r"misalignments on meta.*\.to\(device\)"):
        beamline(knobs, incoming, meta)
    with pytest.raises(DeviceError, match=r"default misalignments are on cpu.*\.to\('meta'\)"):
        beamline(knobs.to("meta"), incoming.to("meta"))


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("gpu", r"device='gpu' is not a device torch knows"),
        ("tpu:0", r"not a device torch knows|'tpu' is not supported"),
        (3.0, r"is not a device"),
    ],
)
def test_unknown_device_is_refused(device, message: str) -> None:
    with pytest.raises(DeviceError, match=message):
        resolve_device(device)
    with pytest.raises(DeviceError):
        compile(ares_ea_segment(), knobs=ARES_EA_KNOBS, observe=ARES_EA_SCREEN, device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
def test_cuda_without_gpu_says_so_and_how_to_fix_it() -> None:
    with pytest.raises(DeviceError, match=r"device='cuda'.*or give device='cpu'"):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match=r"--device='cuda:1'"):
        resolve_device("cuda:1", where="--device")


def test_compile_places_the_buffer(beamline) -> None:
    cpu = compile(ares_ea_segment(), knobs=ARES_EA_KNOBS, observe=ARES_EA_SCREEN, device="cpu")
    assert cpu.default_misalignments.device == torch.device("cpu")


@CUDA
def test_cuda_agrees_with_cpu(beamline) -> None:
    gpu = compile(ares_ea_segment(), knobs=ARES_EA_KNOBS, observe=ARES_EA_SCREEN, device="cuda")
    knobs, incoming, mis = _inputs(1024)
    expected = beamline(knobs, incoming, mis)
    got = gpu(*(t.cuda() for t in (knobs, incoming, mis)))
    assert got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-12, atol=0.0)
    torch.testing.assert_close(gpu(knobs.cuda(), incoming.cuda()).cpu(), beamline(knobs, incoming))
