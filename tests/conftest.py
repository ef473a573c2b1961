"""Shared fixtures: which backends run here, tolerances tied to dtype, awkward inputs.

Without a GPU, Triton runs under its CPU interpreter (TRITON_INTERPRET=1, set here before Triton
is imported); GPU-only tests are marked `gpu` and reported as skipped.
"""

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import relay_kernels as rk  # noqa: E402
from relay_kernels import _backend, reference  # noqa: E402

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# Absolute slack on top of the "at most 2x PyTorch's own error" rule, per dtype.
ATOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def cpu_backends():
    """Backends that run on CPU tensors here: (name, skip reason or None)."""
    out = [("reference", None)]
    out.append(("cpu", _backend._unavailable("cpu", torch.device("cpu"))))
    # The CUDA kernels in the CPU emulator (built with RELAY_KERNELS_CUDA_EMU=1).
    out.append(("cuda_emu", _backend._unavailable("cuda_emu", torch.device("cpu"))))
    if _backend.triton_interpreted():
        out.append(("triton", _backend._unavailable("triton", torch.device("cpu"))))
    else:
        out.append(("triton", "TRITON_INTERPRET is not 1 (Triton is tested on the GPU instead)"))
    return out


# RELAY_KERNELS_TEST_BACKENDS=reference,cpu limits the run to those backends (for development).
_ONLY = [b for b in os.environ.get("RELAY_KERNELS_TEST_BACKENDS", "").split(",") if b]


def backend_params(include_reference=True):
    params = []
    for name, reason in cpu_backends():
        if (name == "reference" and not include_reference) or (_ONLY and name not in _ONLY):
            continue
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        if name == "triton":
            marks.append(pytest.mark.triton)
        params.append(pytest.param(name, marks=marks, id=name))
    return params


@pytest.fixture(params=backend_params())
def backend(request):
    return request.param


@pytest.fixture(params=backend_params(include_reference=False))
def fused_backend(request):
    return request.param


def assert_close_to_truth(out, truth64, torch_lowp, dtype, what=""):
    """Kernel error vs a float64 truth is at most 2x PyTorch's own error in that dtype (+ slack).

    torch_lowp is the plain-PyTorch reference computed from the same inputs in `dtype`.
    """
    assert out.dtype == dtype, f"{what}: dtype {out.dtype} != {dtype}"
    assert out.shape == truth64.shape, f"{what}: shape {tuple(out.shape)} != {tuple(truth64.shape)}"
    err = (out.double() - truth64).abs().max().item()
    err_torch = (torch_lowp.double() - truth64).abs().max().item()
    bound = 2 * err_torch + ATOL[dtype] * max(1.0, truth64.abs().max().item())
    assert err <= bound, f"{what}: max error {err:.3g} > bound {bound:.3g} (PyTorch's own {err_torch:.3g})"


def layouts(x):
    """The same values as contiguous, channels_last and non-contiguous (strided view) tensors."""
    wide = torch.cat([x, torch.zeros_like(x)], dim=-1)[..., : x.shape[-1]]
    return {
        "contiguous": x.contiguous(),
        "channels_last": x.contiguous(memory_format=torch.channels_last),
        "strided": wide,
    }


SHAPES = [(1, 1, 8, 8), (2, 3, 16, 24), (1, 5, 8, 32), (3, 2, 32, 16)]


def rand_image(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


__all__ = ["rk", "reference"]


@pytest.fixture
def one_thread():
    """One intra-op thread for tests of tiny networks: on a shared 2-core machine several threads per
    tiny convolution cost about 10x more. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
