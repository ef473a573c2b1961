"""The released RDM code's call signatures on top of the fast ops: switch with one import.

    from relay_kernels.compat import dct_2d, idct_2d, block_noise, get_alpha_t, DCTBlur
"""

from __future__ import annotations

import math

import torch

from . import functional as F
from . import reference
from ._contract import FUSED_PATCH_SIZES


def _unnormalized_scale(size: int, dtype, device) -> torch.Tensor:
    """scipy.fftpack's unnormalized DCT-II equals the orthonormal one times (2/c_u)(2/c_v)."""
    c = torch.full((size,), math.sqrt(2.0 / size), dtype=torch.float64)
    c[0] = math.sqrt(1.0 / size)
    s = 2.0 / c
    return (s[:, None] * s[None, :]).to(dtype=dtype, device=device).repeat(1, 1)


def _tile(spectrum: torch.Tensor, h: int, w: int) -> torch.Tensor:
    k = spectrum.shape[-1]
    return spectrum.repeat(h // k, w // k)


def _dct(x, size, inverse):
    if size in FUSED_PATCH_SIZES:
        return F.patch_idct(x, size) if inverse else F.patch_dct(x, size)
    # The fused kernels cover k <= 16; whole-image DCTs of other sizes use the reference math.
    return reference.patch_dct(x, size, inverse)


def dct_2d(x: torch.Tensor, size: int, norm: str | None = None) -> torch.Tensor:
    """2-D DCT-II of each size x size patch (the whole image when it is size x size)."""
    if norm not in (None, "ortho"):
        raise ValueError(f"norm must be None or 'ortho', got {norm!r}")
    u = _dct(x, size, inverse=False)
    if norm is None:
        u = u * _tile(_unnormalized_scale(size, u.dtype, u.device), *u.shape[-2:])
    return u


def idct_2d(X: torch.Tensor, size: int, norm: str | None = None) -> torch.Tensor:
    """Inverse of dct_2d with the same norm."""
    if norm not in (None, "ortho"):
        raise ValueError(f"norm must be None or 'ortho', got {norm!r}")
    if norm is None:
        X = X / _tile(_unnormalized_scale(size, X.dtype, X.device), *X.shape[-2:])
    return _dct(X, size, inverse=True)


def block_noise(ref_x, randn_like=torch.randn_like, block_size: int = 1, device=None) -> torch.Tensor:
    """Block_s(randn_like(ref_x)), as the released code's block_noise (rolled sum / s)."""
    e = randn_like(ref_x)
    if device is not None:
        e = e.to(device)
    if block_size == 1:
        return e
    return F.block_filter(e, block_size)


def get_alpha_t(t, patch_size, device=None, repeat_dims=64, prob_length=0.93, blur_sigma_max=3,
                min_scale=0.001) -> torch.Tensor:
    """alpha(t) of SPEC 2 tiled to [k*repeat_dims, k*repeat_dims] ([B, 1, ...] for a tensor t)."""
    per_sample = isinstance(t, torch.Tensor) and t.numel() > 1
    t = torch.as_tensor(t, dtype=torch.float64, device=device).reshape(-1)
    a = reference.alpha(t, patch_size, blur_sigma_max, prob_length, min_scale)
    tiled = a.repeat(1, repeat_dims, repeat_dims).to(torch.float32)
    return tiled[:, None] if per_sample else tiled[0]


def DCTBlur(x, patch_size, blur_sigmas, min_scale, device=None) -> torch.Tensor:  # noqa: N802 (released name)
    """patch_blur with blur_sigmas of shape [B, 1, 1, 1] (or [B])."""
    if device is not None:
        x = x.to(device)
    b = torch.as_tensor(blur_sigmas, device=x.device).reshape(-1)
    return F.patch_blur(x, b, patch_size, min_scale)
