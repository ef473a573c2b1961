"""Plain-PyTorch formulations the fused ops are measured against.

* `released_*`: the released RDM code's formulation: patchify, DCT through an FFT of length k (as
  the torch-dct package computes it), per-call alpha, and block noise as a sum of s^2 rolls.
* `best_*`: the best plain-PyTorch formulation we could write: the whole per-sample blur as one
  k^2 x k^2 operator applied with a batched matmul, block noise as a circular-padded box pool.
  These are also run under torch.compile.

tests/test_baselines.py checks every formulation here against relay_kernels.reference.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from relay_kernels import reference

# ---------------------------------------------------------------------------- released code


def _patchify(x, k):
    b, c, h, w = x.shape
    return x.reshape(b, c, h // k, k, w // k, k).permute(0, 1, 2, 4, 3, 5)  # [..., k(rows), k(cols)]


def _unpatchify(p):
    b, c, hp, wp, k, _ = p.shape
    return p.permute(0, 1, 2, 4, 3, 5).reshape(b, c, hp * k, wp * k)


def _fft_dct_last(x):
    """Orthonormal DCT-II along the last dim through an FFT of the even/odd-reordered sequence."""
    n = x.shape[-1]
    v = torch.cat([x[..., ::2], x[..., 1::2].flip([-1])], dim=-1)
    spec = torch.fft.fft(v, dim=-1)
    ang = -torch.arange(n, device=x.device, dtype=x.dtype) * math.pi / (2 * n)
    out = spec.real * torch.cos(ang) - spec.imag * torch.sin(ang)
    scale = torch.full((n,), math.sqrt(2.0 / n), device=x.device, dtype=x.dtype)
    scale[0] = math.sqrt(1.0 / n)
    return out * scale


def _fft_idct_last(u):
    """Inverse of _fft_dct_last (DCT-III) through an inverse FFT."""
    n = u.shape[-1]
    scale = torch.full((n,), math.sqrt(n / 2.0), device=u.device, dtype=u.dtype)
    scale[0] = math.sqrt(n)
    ang = torch.arange(n, device=u.device, dtype=u.dtype) * math.pi / (2 * n)
    coef = torch.polar(torch.ones_like(ang), ang)
    v = torch.fft.ifft(u.to(coef.dtype) * scale * coef, dim=-1).real * 2
    v = v - (u[..., :1] * scale[0]) / n  # the DC term enters once, not twice
    x = torch.empty_like(u)
    half = n - n // 2
    x[..., ::2] = v[..., :half]
    x[..., 1::2] = v[..., half:].flip([-1])
    return x


def released_dct_2d(p):
    return _fft_dct_last(_fft_dct_last(p).transpose(-1, -2)).transpose(-1, -2)


def released_idct_2d(p):
    return _fft_idct_last(_fft_idct_last(p).transpose(-1, -2)).transpose(-1, -2)


def released_patch_blur(x, blur_sigma, k=4, min_scale=1e-3):
    xf = x.float()
    a = reference.blur_spectrum(blur_sigma.float(), k, min_scale)[:, None, None, None]
    out = _unpatchify(released_idct_2d(released_dct_2d(_patchify(xf, k)) * a))
    return out.to(x.dtype)


def released_block_noise(x, block_size=4):
    e = torch.randn_like(x)
    out = torch.zeros_like(x)
    for px in range(block_size):
        for py in range(block_size):
            out += torch.roll(e, shifts=(px, py), dims=(-2, -1))
    return out / block_size


def released_relay_step(x, den, t_cur, t_next, k=4, s_noise=0.2, s_block=0.15):
    """Euler step in the released sampler's U, D form with FFT DCTs and rolled block noise."""
    a_c = reference.alpha(t_cur.float(), k)[:, None, None, None]
    a_n = reference.alpha(t_next.float(), k)[:, None, None, None]
    g = (math.sqrt(1 - s_noise**2) * t_next.float() / t_cur.float())[:, None, None, None, None, None]
    tc = t_cur.float()[:, None, None, None, None, None]
    u = released_dct_2d(_patchify(x.float(), k))
    d = (u - released_dct_2d(_patchify(den.float(), k))) / tc
    spec = (a_n + g - g * a_c) * u + tc * (g * a_c - a_n) * d
    n = torch.randn_like(x) + s_block * released_block_noise(x, k)
    out = _unpatchify(released_idct_2d(spec)) + s_noise * t_next.float()[:, None, None, None] * n
    return out.to(x.dtype)


def released_relay_correct(x, den, x_next, den_next, t_cur, t_next, k=4, s_noise=0.2, s_block=0.15):
    """Heun correction in the released sampler's U, D, D' form with FFT DCTs and rolled block noise."""
    a_c = reference.alpha(t_cur.float(), k)[:, None, None, None]
    a_n = reference.alpha(t_next.float(), k)[:, None, None, None]
    g = (math.sqrt(1 - s_noise**2) * t_next.float() / t_cur.float())[:, None, None, None, None, None]
    tc = t_cur.float()[:, None, None, None, None, None]
    tn = t_next.float()[:, None, None, None, None, None]
    u = released_dct_2d(_patchify(x.float(), k))
    d = (u - released_dct_2d(_patchify(den.float(), k))) / tc
    d_prime = (released_dct_2d(_patchify(x_next.float(), k)) - released_dct_2d(_patchify(den_next.float(), k))) / tn
    spec = (a_n + g - g * a_c) * u + tc * (g * a_c - a_n) * (d + d_prime) / 2
    n = torch.randn_like(x) + s_block * released_block_noise(x, k)
    out = _unpatchify(released_idct_2d(spec)) + s_noise * t_next.float()[:, None, None, None] * n
    return out.to(x.dtype)


def released_relay_corrupt(x0, sigma, blur_sigma, k=4, block_scale=0.15):
    n = torch.randn_like(x0) + block_scale * released_block_noise(x0, k)
    return released_patch_blur(x0, blur_sigma, k) + sigma[:, None, None, None].to(x0.dtype) * n


# ---------------------------------------------------------------------------- best plain PyTorch


def spectral_operator(spectrum: torch.Tensor) -> torch.Tensor:
    """[B, k, k] DCT-domain weights -> [B, k^2, k^2] pixel-domain operator (C x C)^T diag (C x C)."""
    k = spectrum.shape[-1]
    c = reference.dct_matrix(k, spectrum.dtype, spectrum.device)
    ck = torch.kron(c, c)  # acts on row-major flattened patches
    return ck.T @ (spectrum.reshape(-1, k * k, 1) * ck)


def _apply_operator(x, op, k):
    b, c, h, w = x.shape
    p = _patchify(x, k).reshape(b, -1, k * k)
    out = torch.bmm(p, op.transpose(1, 2).to(p.dtype))
    return _unpatchify(out.reshape(b, c, h // k, w // k, k, k))


def best_patch_blur(x, blur_sigma, k=4, min_scale=1e-3):
    op = spectral_operator(reference.blur_spectrum(blur_sigma.float(), k, min_scale))
    return _apply_operator(x.float(), op, k).to(x.dtype)


def best_block_filter(e, block_size=4):
    s = block_size
    padded = F.pad(e, (s - 1, 0, s - 1, 0), mode="circular")
    return F.avg_pool2d(padded, s, stride=1) * s


def best_block_noise(x, block_size=4):
    return best_block_filter(torch.randn_like(x), block_size)


def best_relay_step(x, den, t_cur, t_next, k=4, s_noise=0.2, s_block=0.15):
    w, scale = reference.relay_step_weights(t_cur.float(), t_next.float(), k, s_noise, 3.0, 0.93, 1e-3)
    g = w[:, 0, 0, 0][:, None, None, None]
    n = torch.randn_like(x) + s_block * best_block_noise(x, k)
    out = g * x.float() + _apply_operator(den.float(), spectral_operator(w[:, 1]), k)
    return (out + scale[:, None, None, None] * n).to(x.dtype)


def best_relay_corrupt(x0, sigma, blur_sigma, k=4, block_scale=0.15):
    n = torch.randn_like(x0) + block_scale * best_block_noise(x0, k)
    return best_patch_blur(x0, blur_sigma, k) + sigma[:, None, None, None].to(x0.dtype) * n


def best_relay_correct(x, den, x_next, den_next, t_cur, t_next, k=4, s_noise=0.2, s_block=0.15):
    """Heun correction as one [B, 4 k^2, k^2] operator on the four stacked inputs' patches."""
    w, scale = reference.relay_correct_weights(t_cur.float(), t_next.float(), k, s_noise, 3.0, 0.93, 1e-3)
    ops = torch.cat([spectral_operator(w[:, j]) for j in range(4)], dim=2)  # [B, k^2, 4 k^2]
    b, c, h, wd = x.shape
    patches = torch.cat([_patchify(t.float(), k).reshape(b, -1, k * k) for t in (x, den, x_next, den_next)], dim=2)
    out = _unpatchify(torch.bmm(patches, ops.transpose(1, 2)).reshape(b, c, h // k, wd // k, k, k))
    n = torch.randn_like(x) + s_block * best_block_noise(x, k)
    return (out + scale[:, None, None, None] * n).to(x.dtype)
