"""The public ops of SPEC section 7.

Each function checks its arguments once, turns per-sample scalars into [B] tensors, builds the
per-sample spectra with the formulas in reference.py (a few [B, k, k] tensor ops, no host sync),
and calls the selected backend's kernel ops (docs/KERNELS.md).
"""

from __future__ import annotations

import math

import torch

from . import _validate as check
from . import reference
from ._backend import resolve
from ._contract import FLOAT32_TINY, FLOAT_DTYPES, compute_dtype, stream_capturing


def _kernels(x: torch.Tensor, k: int | None = None, backend: str | None = None):
    return resolve(x.device, backend, k)


def _launch(op, differentiable, *args):
    """op(*args), below the autograd layer when no tensor in `differentiable` needs a gradient.

    torch.library's Python autograd wrapper costs about 30 µs per call even when nothing needs a
    gradient, and then only redispatches under this same guard. Under torch.compile the op is
    called as it is (the graph has no such overhead).
    """
    if torch.compiler.is_compiling() or (
            torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in differentiable)):
        return op(*args)
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


def patch_dct(x: torch.Tensor, k: int = 4, *, backend: str | None = None) -> torch.Tensor:
    """Orthonormal DCT-II of every non-overlapping k x k patch: C P C^T."""
    check.image(x, "x")
    k = check.size_param(k, "k", x)
    check.image(x, "x", k)
    return _launch(_kernels(x, k, backend).patch_dct, (x,), x, k, False)


def patch_idct(u: torch.Tensor, k: int = 4, *, backend: str | None = None) -> torch.Tensor:
    """Inverse of patch_dct: C^T U C per patch."""
    check.image(u, "u")
    k = check.size_param(k, "k", u)
    check.image(u, "u", k)
    return _launch(_kernels(u, k, backend).patch_dct, (u,), u, k, True)


def _weight_dtype(x: torch.Tensor) -> torch.dtype:
    return compute_dtype(x.dtype)


_FREQUENCY_SQUARES: dict = {}


def _cached_frequency_squares(k: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
    """lambda[u, v] kept per (k, dtype, device); None (blur_spectrum then builds it) where it must
    not be cached: a tensor first made inside a CUDA-graph capture holds its values only after the
    graph's first replay, so a cache filled there would hand garbage to later eager calls."""
    key = (k, dtype, device)
    lam = _FREQUENCY_SQUARES.get(key)
    if lam is None and not stream_capturing(device):
        lam = _FREQUENCY_SQUARES[key] = reference.frequency_squares(k, dtype, device)
    return lam


def _blur_weights(b: torch.Tensor, k: int, min_scale) -> torch.Tensor:
    """blur_spectrum as the [B, 1, k, k] weights of one input; its constant part is kept between
    calls in eager mode (a few small tensor ops fewer per call)."""
    m = check.real(min_scale, "min_scale", 0.0, 1.0)
    lam = None if torch.compiler.is_compiling() else _cached_frequency_squares(k, b.dtype, b.device)
    return reference.blur_spectrum(b, k, m, lam)[:, None]


def patch_blur(x, blur_sigma, k: int = 4, min_scale: float = 1e-3, *, backend: str | None = None):
    """patch_idct(a_b * patch_dct(x)) with a_b of SPEC section 2, one blur sigma per sample."""
    check.image(x, "x")
    k = check.size_param(k, "k", x)
    check.image(x, "x", k)
    b = check.per_sample(blur_sigma, "blur_sigma", x, _weight_dtype(x), nonnegative=True)
    weights = _blur_weights(b, k, min_scale)
    return _launch(_kernels(x, k, backend).relay_fused, (x,), [x], weights, None, 0.0, 1, None, 0, None, None)


def block_filter(e: torch.Tensor, block_size: int = 4, *, backend: str | None = None) -> torch.Tensor:
    """Block_s(e): circular s x s box sum divided by s (unit variance for white e)."""
    check.image(e, "e")
    s = check.size_param(block_size, "block_size", e)
    return _launch(_kernels(e, backend=backend).block_filter, (e,), e, s, False)


def _device(device, seed) -> torch.device:
    if device is not None:
        return torch.device(device)
    if isinstance(seed, torch.Tensor):
        return seed.device
    return torch.device("cpu")


def _noise_dtype(dtype) -> torch.dtype:
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float16, bfloat16, float32 or float64, got {dtype}")
    return dtype


def randn(shape, seed, offset: int = 0, *, dtype=torch.float32, device=None, backend: str | None = None):
    """Standard normals of `shape` (first dim = batch) from the generator of SPEC section 4.

    Sample b's element i uses counter offset + i with key seed[b]; the same seed gives the same
    values on every backend and batch composition.
    """
    shape = check.shape(shape)
    device = _device(device, seed)
    kernels = resolve(device, backend)  # first: on a machine without that device, says why
    seeds = check.seeds(seed, shape[0], device)
    off = check.offset(offset, math.prod(shape[1:]), 1)
    return _launch(kernels.noise, (), seeds, list(shape), off, 0, _noise_dtype(dtype))


def block_noise(shape, block_size: int = 4, seed=None, offset: int = 0, *, dtype=torch.float32, device=None,
                backend: str | None = None):
    """Block_s(randn(shape, seed, offset)) for a 4-D shape, fused."""
    shape = check.shape(shape)
    if len(shape) != 4:
        raise ValueError(f"block_noise needs a 4-D shape [B, C, H, W], got {shape}")
    s = check.size_param(block_size, "block_size")
    if s > min(shape[-2:]):
        raise ValueError(f"block_size={s} is larger than the image ({shape[-2]}x{shape[-1]})")
    device = _device(device, seed)
    kernels = resolve(device, backend)  # first: on a machine without that device, says why
    seeds = check.seeds(seed, shape[0], device)
    off = check.offset(offset, math.prod(shape[1:]), 1)
    return _launch(kernels.noise, (), seeds, list(shape), off, s, _noise_dtype(dtype))


def _noise_args(x, seed, offset, noise, like_name):
    """(seed tensor or None, offset, e or None, e_block or None), exactly one source given."""
    if noise is not None:
        if seed is not None:
            raise ValueError("pass either seed= or noise=, not both")
        e, e_block = check.noise_pair(noise, x, like_name)
        return None, 0, e.contiguous(), e_block.contiguous()
    return check.seeds(seed, x.shape[0], x.device), check.offset(offset, math.prod(x.shape[1:]), 2), None, None


def _block_size(block_size, k, x):
    return check.size_param(k if block_size is None else block_size, "block_size", x)


def _noise_scale(scale: torch.Tensor, block_scale: float, normalize: bool) -> torch.Tensor:
    return scale / math.sqrt(1 + block_scale**2) if normalize else scale


def relay_corrupt(x0, sigma, blur_sigma, k: int = 4, block_scale: float = 0.15, seed=None, offset: int = 0, *,
                  noise=None, block_size: int | None = None, normalize: bool = False, min_scale: float = 1e-3,
                  backend: str | None = None):
    """The relay forward process (SPEC 5): patch_blur(x0, b) + sigma (e + beta Block_k(e')).

    Draws e at counters offset + i and e' at offset + N + i (N = C*H*W): the next call on the
    same seeds should use offset + 2N.
    """
    check.image(x0, "x0")
    k = check.size_param(k, "k", x0)
    check.image(x0, "x0", k)
    wdt = _weight_dtype(x0)
    sig = check.per_sample(sigma, "sigma", x0, wdt, nonnegative=True)
    b = check.per_sample(blur_sigma, "blur_sigma", x0, wdt, nonnegative=True)
    beta = check.real(block_scale, "block_scale")
    s = _block_size(block_size, k, x0)
    seeds, off, e, e_block = _noise_args(x0, seed, offset, noise, "x0")
    weights = _blur_weights(b, k, min_scale)
    scale = _noise_scale(sig, beta, normalize)
    return _launch(_kernels(x0, k, backend).relay_fused, (x0, e, e_block),
                   [x0], weights, scale, beta, s, seeds, off, e, e_block)


def _sampler_args(x_cur, t_cur, t_next, k, s_noise, s_block, prob_length, blur_sigma_max, min_scale, correct):
    check.image(x_cur, "x_cur")
    k = check.size_param(k, "k", x_cur)
    check.image(x_cur, "x_cur", k)
    wdt = _weight_dtype(x_cur)
    tc = check.per_sample(t_cur, "t_cur", x_cur, wdt, positive=True)
    # The Heun correction divides by t_next (D'); the sampler's last step (t_next = 0) is Euler only.
    tn = check.per_sample(t_next, "t_next", x_cur, wdt, positive=correct, nonnegative=not correct)
    check.time_ratios(t_cur, t_next, wdt, both=correct)
    check.real(s_block, "s_block")
    s_noise = check_sampler_scalars(s_noise, blur_sigma_max, prob_length, min_scale)
    return k, tc, tn, s_noise


def check_sampler_scalars(s_noise: float = 0.2, blur_sigma_max: float = 3.0, prob_length: float = 0.93,
                          min_scale: float = 1e-3) -> float:
    """The checks relay_step and relay_correct make on the op-wide floats of their weights (for a
    caller that builds the weights itself with reference.relay_step_weights / relay_correct_weights):
    s_noise in [0, 1), blur_sigma_max in [0, float32 max], prob_length in [float32 tiny, float32
    max] (b(sigma) divides Phi <= 1 by it), min_scale in [0, 1]. Returns s_noise as a float."""
    s_noise = check.unit_interval(s_noise, "s_noise")
    check.real(prob_length, "prob_length", FLOAT32_TINY)
    check.real(blur_sigma_max, "blur_sigma_max", 0.0)
    check.real(min_scale, "min_scale", 0.0, 1.0)
    return s_noise


def _precomputed(weights, x_cur, n_inputs: int, k: int, t_cur, t_next):
    """(w, noise_scale) given as weights=, checked by shape, dtype and device only (no value read)."""
    if t_cur is not None or t_next is not None:
        raise ValueError("pass either t_cur and t_next or weights=, not both")
    if not (isinstance(weights, (tuple, list)) and len(weights) == 2
            and all(isinstance(t, torch.Tensor) for t in weights)):
        raise TypeError(f"weights must be a pair (w [B, {n_inputs}, k, k], noise_scale [B]) of tensors")
    w, scale = weights
    b, wdt = x_cur.shape[0], _weight_dtype(x_cur)
    if tuple(w.shape) != (b, n_inputs, k, k) or tuple(scale.shape) != (b,):
        raise ValueError(f"weights must be (w [{b}, {n_inputs}, {k}, {k}], noise_scale [{b}]) for x_cur "
                         f"{tuple(x_cur.shape)} and k={k}, got {tuple(w.shape)} and {tuple(scale.shape)}")
    for t, name in ((w, "weights"), (scale, "noise_scale")):
        if t.dtype != wdt:
            raise TypeError(f"{name} must be {wdt} (the compute dtype of {x_cur.dtype} images), got {t.dtype}")
        if t.device != x_cur.device:
            raise ValueError(f"{name} is on {t.device} but x_cur is on {x_cur.device}")
    return w.contiguous(), scale


def _step_setup(x_cur, t_cur, t_next, k, s_noise, s_block, prob_length, blur_sigma_max, min_scale, weights,
                correct):
    """(k, w, noise_scale): from t_cur and t_next with the reference formulas, or precomputed."""
    n_inputs = 4 if correct else 2
    if weights is not None:
        check.image(x_cur, "x_cur")
        k = check.size_param(k, "k", x_cur)
        check.image(x_cur, "x_cur", k)
        check.real(s_block, "s_block")
        w, scale = _precomputed(weights, x_cur, n_inputs, k, t_cur, t_next)
        return k, w, scale
    if t_cur is None or t_next is None:
        raise ValueError("give t_cur and t_next (or precomputed weights=)")
    k, tc, tn, s_noise = _sampler_args(x_cur, t_cur, t_next, k, s_noise, s_block, prob_length, blur_sigma_max,
                                       min_scale, correct)
    fn = reference.relay_correct_weights if correct else reference.relay_step_weights
    w, scale = fn(tc, tn, k, s_noise, blur_sigma_max, prob_length, min_scale)
    return k, w.contiguous(), scale


def relay_step(x_cur, den, t_cur=None, t_next=None, k: int = 4, s_noise: float = 0.2, s_block: float = 0.15,
               blur_sigma_max: float = 3.0, prob_length: float = 0.93, min_scale: float = 1e-3, seed=None,
               offset: int = 0, *, noise=None, block_size: int | None = None, normalize: bool = False,
               weights=None, backend: str | None = None):
    """Euler step of the relay sampler (SPEC 6, Algorithm 1), one fused pass.

    x_next = g x_cur + patch_idct((a_n - g a_c) patch_dct(den)) + s_noise t_next n.

    weights: instead of t_cur and t_next (and s_noise, blur_sigma_max, prob_length, min_scale, which
    it then supersedes), the pair (w [B, 2, k, k], noise_scale [B]) that
    reference.relay_step_weights(t_cur, t_next, k, s_noise, blur_sigma_max, prob_length, min_scale)
    returns, in the compute dtype of x_cur (float64 for float64, else float32) and on its device:
    a sampler computes them for its whole schedule once, and each call then launches only the kernel.
    """
    k, w, scale = _step_setup(x_cur, t_cur, t_next, k, s_noise, s_block, prob_length, blur_sigma_max, min_scale,
                              weights, False)
    check.same_as(den, x_cur, "den", "x_cur")
    s = _block_size(block_size, k, x_cur)
    seeds, off, e, e_block = _noise_args(x_cur, seed, offset, noise, "x_cur")
    scale = _noise_scale(scale, s_block, normalize)
    return _launch(_kernels(x_cur, k, backend).relay_fused, (x_cur, den, e, e_block),
                   [x_cur, den], w, scale, float(s_block), s, seeds, off, e, e_block)


def relay_correct(x_cur, den, x_next, den_next, t_cur=None, t_next=None, k: int = 4, s_noise: float = 0.2,
                  s_block: float = 0.15, blur_sigma_max: float = 3.0, prob_length: float = 0.93,
                  min_scale: float = 1e-3, seed=None, offset: int = 0, *, noise=None,
                  block_size: int | None = None, normalize: bool = False, weights=None, backend: str | None = None):
    """Heun correction of the relay sampler (SPEC 6) with fresh noise, one fused pass.

    weights: as in relay_step, the pair (w [B, 4, k, k], noise_scale [B]) of
    reference.relay_correct_weights, in place of t_cur and t_next.
    """
    k, w, scale = _step_setup(x_cur, t_cur, t_next, k, s_noise, s_block, prob_length, blur_sigma_max, min_scale,
                              weights, True)
    for t, name in ((den, "den"), (x_next, "x_next"), (den_next, "den_next")):
        check.same_as(t, x_cur, name, "x_cur")
    s = _block_size(block_size, k, x_cur)
    seeds, off, e, e_block = _noise_args(x_cur, seed, offset, noise, "x_cur")
    scale = _noise_scale(scale, s_block, normalize)
    return _launch(_kernels(x_cur, k, backend).relay_fused, (x_cur, den, x_next, den_next, e, e_block),
                   [x_cur, den, x_next, den_next], w, scale, float(s_block), s, seeds, off, e, e_block)
