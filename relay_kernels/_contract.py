"""The kernel contract: what every backend's kernel ops accept, and the constants it is made of.

A leaf module (it imports torch only), so every layer of the package, the Triton backend
included, takes these from here without importing upward.

The check_* functions are the contract of the four kernel ops (torch.ops.relay_kernels.<op><variant>,
schemas in _ops.py) for the kernels written in Python: the Triton ops and the reference backend.
The compiled kernels (cpu, cuda, cuda_emu) apply the same rules from csrc/include/checks.h, with
the same RuntimeError and the same message, rule for rule in the same order; each function names
its checks.h counterpart, and tests/test_contract.py calls every backend with each bad input and
requires one error. The public ops (functional.py) check their own, friendlier arguments first
(_validate.py), so a bad input to rk.* is refused there, identically on every backend.
"""

from __future__ import annotations

import math

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# The patch sizes of the fused kernels (csrc/include/patch_switch.h, the Triton constexpr K).
FUSED_PATCH_SIZES = (2, 4, 8, 16)
FLOAT32_MAX, FLOAT32_TINY = torch.finfo(torch.float32).max, torch.finfo(torch.float32).tiny
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half types are computed in float32, float32 and float64 in themselves."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def stream_capturing(device: torch.device) -> bool:
    """Whether the current stream of a CUDA device is capturing a CUDA graph. Asked only for CUDA
    devices, so CPU calls and import never touch CUDA."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


# ---------------------------------------------------------------------------- kernel-op checks
# Messages are spelled as c10 prints its values (sizes "[2, 3]", dtypes "Float", devices "cpu"),
# so a Python kernel's error reads exactly as a compiled kernel's TORCH_CHECK.

_C10_NAMES = {
    torch.float16: "Half", torch.bfloat16: "BFloat16", torch.float32: "Float", torch.float64: "Double",
    torch.int64: "Long", torch.int32: "Int", torch.int16: "Short", torch.int8: "Char", torch.uint8: "Byte",
    torch.bool: "Bool", torch.complex64: "ComplexFloat", torch.complex128: "ComplexDouble",
}


def _dt(dtype: torch.dtype) -> str:
    return _C10_NAMES.get(dtype, str(dtype).replace("torch.", ""))


def _sz(sizes) -> str:
    return "[" + ", ".join(str(int(s)) for s in sizes) + "]"


def _require(ok: bool, *parts) -> None:
    if not ok:
        raise RuntimeError("relay_kernels: " + "".join(str(p) for p in parts))


def check_patch_size(k: int, sizes=FUSED_PATCH_SIZES) -> None:
    """checks.h check_patch_size; sizes=None for the reference backend, which takes any k >= 1."""
    if sizes is None:
        _require(k >= 1, "patch size k must be >= 1, got ", k)
    else:
        _require(k in sizes, "patch size k must be ", ", ".join(map(str, sizes[:-1])), " or ", sizes[-1], ", got ", k)


def _float_dtype(dtype: torch.dtype, what: str) -> None:
    _require(dtype in FLOAT_DTYPES, what, " must be float16, bfloat16, float32 or float64, got ", _dt(dtype))


def _image(x: torch.Tensor, what: str, k: int) -> None:
    """checks.h check_image: [B, C, H, W] floating, H and W multiples of k when k > 0."""
    _require(x.dim() == 4, what, " must be a 4-D [B, C, H, W] tensor, got shape ", _sz(x.shape))
    _float_dtype(x.dtype, what)
    if k > 0:
        _require(x.shape[2] % k == 0 and x.shape[3] % k == 0, what,
                 " height and width must be multiples of the patch size k = ", k, ", got shape ", _sz(x.shape))


def _block_size(s: int, h: int, w: int) -> None:
    _require(1 <= s <= min(h, w), "block_size must be in [1, min(H, W)] = [1, ", min(h, w), "], got ", s)


def _seed(seed: torch.Tensor, batch: int, device: torch.device) -> None:
    _require(seed.dtype == torch.int64, "seed must be an int64 tensor, got ", _dt(seed.dtype))
    _require(seed.dim() == 1 and seed.numel() == batch, "seed must have shape [B] = [", batch, "], got ",
             _sz(seed.shape))
    _require(seed.device == device, "seed is on ", seed.device, " but the op runs on ", device)


def _offset(offset: int, n: int, draws: int) -> None:
    """checks.h check_offset: counters offset .. offset + draws * n - 1 inside int64 (SPEC 4)."""
    top = -1 if n > INT64_MAX // draws else INT64_MAX - draws * n
    _require(0 <= offset <= top, "offset must be in [0, ", top, "] so that the counters offset + ", draws,
             " * N (N = ", n, " elements per sample) fit in int64, got ", offset)


def check_patch_dct(x: torch.Tensor, k: int, patch_sizes=FUSED_PATCH_SIZES) -> None:
    check_patch_size(k, patch_sizes)
    _image(x, "x", k)


def check_block_filter(e: torch.Tensor, block_size: int) -> None:
    _image(e, "e", 0)
    if e.numel() > 0:
        _block_size(block_size, e.shape[2], e.shape[3])


def check_noise(seed: torch.Tensor, shape, offset: int, block_size: int, dtype: torch.dtype) -> None:
    _require(len(shape) > 0, "noise shape must have at least one dimension [B, ...]")
    _require(all(d >= 0 for d in shape), "noise shape must be non-negative, got ", _sz(shape))
    _float_dtype(dtype, "noise dtype")
    _seed(seed, shape[0], seed.device)
    _require(block_size >= 0, "block_size must be >= 0 (0 = plain normals), got ", block_size)
    if block_size > 0:
        _require(len(shape) == 4, "block noise (block_size > 0) needs a 4-D shape [B, C, H, W], got ", _sz(shape))
        if math.prod(shape) > 0:
            _block_size(block_size, shape[2], shape[3])
    _offset(offset, math.prod(shape[1:]), 1)


def check_relay_fused(inputs, weights, noise_scale, block_size, seed, offset, noise, noise_block,
                      patch_sizes=FUSED_PATCH_SIZES) -> int:
    """checks.h check_relay_fused; returns k."""
    _require(1 <= len(inputs) <= 4, "relay_fused takes 1 to 4 inputs, got ", len(inputs))
    x0 = inputs[0]
    _require(weights.dim() == 4 and weights.shape[2] == weights.shape[3],
             "weights must have shape [B, n_inputs, k, k], got ", _sz(weights.shape))
    k = weights.shape[3]
    check_patch_size(k, patch_sizes)
    _image(x0, "inputs[0]", k)
    for j, x in enumerate(inputs[1:], 1):
        _require(x.shape == x0.shape, "inputs[", j, "] has shape ", _sz(x.shape), " but inputs[0] has shape ",
                 _sz(x0.shape))
        _require(x.dtype == x0.dtype, "inputs[", j, "] is ", _dt(x.dtype), " but inputs[0] is ", _dt(x0.dtype))
        _require(x.device == x0.device, "inputs[", j, "] is on ", x.device, " but inputs[0] is on ", x0.device)
    batch, n, wdt = x0.shape[0], len(inputs), compute_dtype(x0.dtype)
    _require(weights.shape[0] == batch and weights.shape[1] == n,
             "weights must have shape [B, n_inputs, k, k] = [", batch, ", ", n, ", k, k], got ", _sz(weights.shape))
    _require(weights.dtype == wdt, "weights must be ", _dt(wdt), " for ", _dt(x0.dtype), " inputs, got ",
             _dt(weights.dtype))
    _require(weights.device == x0.device, "weights are on ", weights.device, " but inputs on ", x0.device)
    if noise_scale is None:
        return k
    _require(noise_scale.dim() == 1 and noise_scale.numel() == batch, "noise_scale must have shape [B] = [", batch,
             "], got ", _sz(noise_scale.shape))
    _require(noise_scale.dtype == wdt, "noise_scale must be ", _dt(wdt), ", got ", _dt(noise_scale.dtype))
    _require(noise_scale.device == x0.device, "noise_scale is on ", noise_scale.device, " but inputs on ", x0.device)
    _require((noise is None) == (noise_block is None), "give both noise and noise_block, or neither (and a seed)")
    if noise is not None:
        for what, t in (("noise", noise), ("noise_block", noise_block)):
            _require(t.shape == x0.shape, what, " must have the inputs' shape ", _sz(x0.shape), ", got ",
                     _sz(t.shape))
            _float_dtype(t.dtype, what)
            _require(t.device == x0.device, what, " is on ", t.device, " but inputs on ", x0.device)
    else:
        _require(seed is not None, "relay_fused with noise_scale needs a seed or the noise tensors")
        _seed(seed, batch, x0.device)
        _offset(offset, math.prod(x0.shape[1:]), 2)
    if x0.numel() > 0:
        _block_size(block_size, x0.shape[2], x0.shape[3])
    return k
