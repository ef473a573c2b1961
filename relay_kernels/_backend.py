"""Backend choice: explicit names, `auto` as the only chooser, clear errors for the unavailable.

`import relay_kernels` stays cheap: the compiled module is imported on first use, Triton only
when the triton backend is asked for, and nothing here initialises CUDA or probes devices.
"""

from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from . import _contract, _ops, reference
from ._contract import FUSED_PATCH_SIZES

BACKENDS = ("auto", "reference", "cpu", "cuda", "triton", "cuda_emu")
# Suffix of each compiled backend's op names (torch.ops.relay_kernels.<op><suffix>).
OP_VARIANTS = {"cpu": "", "cuda": "", "triton": "_triton", "cuda_emu": _ops.CUDA_EMU_VARIANT}


class BackendUnavailableError(RuntimeError):
    """The requested backend is not built or cannot run on these tensors."""


def _check_name(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown relay_kernels backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return name


_selected = os.environ.get("RELAY_KERNELS_BACKEND", "auto")


def set_backend(name: str) -> None:
    """Choose the backend for all ops: auto | reference | cpu | cuda | triton | cuda_emu."""
    global _selected
    _selected = _check_name(name)


def get_backend() -> str:
    return _check_name(_selected)


@functools.lru_cache(maxsize=None)
def compiled_error() -> str | None:
    """None when relay_kernels._C imported, else why not."""
    try:
        from . import _C  # noqa: F401  (registers the CPU/CUDA kernels)
    except ImportError as exc:
        return (f"the compiled extension relay_kernels._C is not built ({exc}); "
                "install with `pip install --no-build-isolation -e .`")
    return None


@functools.lru_cache(maxsize=None)  # kernels are registered when _C is imported, never removed
def has_compiled_kernel(device_type: str) -> bool:
    if compiled_error() is not None:
        return False
    key = "CUDA" if device_type == "cuda" else "CPU"
    return torch._C._dispatch_has_kernel_for_dispatch_key("relay_kernels::relay_fused", key)


@functools.lru_cache(maxsize=None)
def cuda_emu_error() -> str | None:
    """None when the CUDA emulator relay_kernels._cuda_emu imported, else why not."""
    try:
        from . import _cuda_emu  # noqa: F401  (registers the <op>_cuda_emu CPU kernels)
    except ImportError as exc:
        return (f"the CUDA emulator relay_kernels._cuda_emu is not built ({exc}); build it with "
                "`RELAY_KERNELS_CUDA_EMU=1 pip install --no-build-isolation -e .`")
    if not torch._C._dispatch_has_kernel_for_dispatch_key("relay_kernels::relay_fused_cuda_emu", "CPU"):
        return "relay_kernels._cuda_emu imported but registered no kernels"
    return None


@functools.lru_cache(maxsize=None)
def triton_error() -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed (pip install triton)"
    try:
        from . import triton as _rk_triton  # noqa: F401  (defines the *_triton ops)
    except Exception as exc:  # a broken Triton install must say so, not fall back silently
        return f"the Triton kernels failed to load: {exc!r}"
    return None


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@dataclass(frozen=True)
class Kernels:
    """The four kernel ops of one backend (see docs/KERNELS.md)."""

    name: str
    patch_dct: Callable
    block_filter: Callable
    noise: Callable
    relay_fused: Callable


def _reference_kernels() -> Kernels:
    """The reference math under the kernel contract (_contract), as the compiled and Triton ops
    apply it, except that the reference takes any patch size k >= 1."""

    def patch_dct(x, k, inverse):
        _contract.check_patch_dct(x, k, patch_sizes=None)
        return reference.patch_dct(x, k, inverse)

    def block_filter(e, block_size, transpose):
        _contract.check_block_filter(e, block_size)
        return reference.block_filter(e, block_size, transpose)

    def noise(seed, shape, offset, block_size, dtype):
        _contract.check_noise(seed, shape, offset, block_size, dtype)
        return reference.noise(seed, shape, offset, block_size, dtype)

    def relay_fused(inputs, weights, noise_scale, block_scale, block_size, seed, offset, noise, noise_block):
        _contract.check_relay_fused(inputs, weights, noise_scale, block_size, seed, offset, noise, noise_block,
                                    patch_sizes=None)
        return reference.relay_fused(inputs, weights, noise_scale, block_scale, block_size, seed, offset, noise,
                                     noise_block)

    return Kernels("reference", patch_dct, block_filter, noise, relay_fused)


REFERENCE = _reference_kernels()


def _make_op_kernels(name: str, variant: str) -> Kernels:
    return Kernels(name, *(_ops.op(n, variant) for n in ("patch_dct", "block_filter", "noise", "relay_fused")))


_cached_op_kernels = functools.lru_cache(maxsize=None)(_make_op_kernels)


def _op_kernels(name: str, variant: str) -> Kernels:
    # Cached in eager mode (the op lookups cost microseconds on every call); traced as it is
    # under torch.compile, which would otherwise warn about the cache wrapper.
    if torch.compiler.is_compiling():
        return _make_op_kernels(name, variant)
    return _cached_op_kernels(name, variant)


def _unavailable(name: str, device: torch.device) -> str | None:
    """None when backend `name` can run on tensors of `device`, else why not."""
    return unavailable_reason(name, device.type) or None


def _constant_under_compile(fn):
    """torch.compiler.assume_constant_result without importing torch._dynamo at our import time
    (that import takes seconds and pulls in Triton); this marker is all that decorator sets."""
    fn._dynamo_marked_constant = True
    return fn


@functools.lru_cache(maxsize=None)  # asked only once a fused backend is wanted on CUDA tensors
def cuda_device_error() -> str | None:
    """None when torch sees a CUDA device, else why not (a CPU-only torch, or no GPU or driver)."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    if not torch.cuda.is_available():
        return f"no CUDA device is visible (torch {torch.__version__} is a CUDA build, but finds no GPU or driver)"
    return None


# These two probe the dispatcher, imports and the environment; under torch.compile their result
# is a constant of the traced graph (the backend cannot change inside one compiled function).
@_constant_under_compile
def unavailable_reason(name: str, device_type: str) -> str:
    """'' when backend `name` can run on `device_type` tensors, else why not."""
    if name == "reference":
        return ""
    if name == "cpu":
        if device_type != "cpu":
            return f"backend 'cpu' runs on CPU tensors, got {device_type} tensors"
        return "" if has_compiled_kernel("cpu") else (compiled_error() or "no CPU kernels registered")
    if name == "cuda_emu":
        if device_type != "cpu":
            return f"backend 'cuda_emu' (the CUDA kernels emulated on the CPU) runs on CPU tensors, got {device_type}"
        return cuda_emu_error() or ""
    if device_type == "cuda" and cuda_device_error():  # e.g. block_noise(device="cuda") on a machine without one
        return cuda_device_error()
    if name == "cuda":
        if device_type != "cuda":
            no_device = f"; {cuda_device_error()}" if cuda_device_error() else ""
            return f"backend 'cuda' runs on CUDA tensors, got {device_type} tensors{no_device}"
        if not has_compiled_kernel("cuda"):
            return compiled_error() or "relay_kernels._C was built without CUDA kernels (CPU-only torch or no toolkit)"
        return ""
    if name == "triton":
        if device_type == "cpu" and not triton_interpreted():
            return "backend 'triton' runs on GPU tensors (set TRITON_INTERPRET=1 to run it on the CPU)"
        return triton_error() or ""
    raise AssertionError(name)


@functools.lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=5)


@_constant_under_compile
def auto_choice(device_type: str) -> str:
    """auto: cuda, then triton on CUDA tensors; cpu on CPU tensors; reference (warned) otherwise."""
    if device_type == "cuda":
        for name in ("cuda", "triton"):
            if not unavailable_reason(name, device_type):
                return name
    elif device_type == "cpu" and not unavailable_reason("cpu", device_type):
        return "cpu"
    fast = "cuda" if device_type == "cuda" else "cpu"
    _warn_once(f"relay_kernels: no fused backend for {device_type} tensors "
               f"({unavailable_reason(fast, device_type)}); using the slow reference backend")
    return "reference"


def resolve(device: torch.device, name: str | None = None, k: int | None = None) -> Kernels:
    """The kernels of backend `name` (default: the selected one) for tensors on `device`."""
    name = _check_name(name or get_backend())
    if name == "auto":
        name = auto_choice(device.type)
    reason = unavailable_reason(name, device.type)
    if reason:
        raise BackendUnavailableError(f"relay_kernels backend {name!r} is unavailable: {reason}")
    if name != "reference" and k is not None and k not in FUSED_PATCH_SIZES:
        raise ValueError(f"patch size k={k} is not supported by the fused '{name}' kernels "
                         f"(they take k in {FUSED_PATCH_SIZES}); use set_backend('reference') for other k")
    if name == "reference":
        return REFERENCE
    return _op_kernels(name, OP_VARIANTS[name])
