"""Plain-PyTorch reference of every formula in docs/SPEC.md: the single source of truth.

Tests and benchmarks import their baselines from here, and the public API builds the per-sample
spectra it hands to the fused kernels with the functions below, so each formula exists once.

Two layers live here:

* The *kernel contract* (`patch_dct`, `block_filter`, `noise`, `relay_fused`): what every backend
  (this module, CPU C++, CUDA C++, Triton) implements. `relay_fused` is the one fused kernel behind
  patch_blur, relay_corrupt, relay_step and relay_correct:

      out = patch_idct( sum_j weights[:, j] * patch_dct(inputs[j]) )
            + noise_scale[b] * (e + block_scale * Block_s(e'))

* The *SPEC formulas written literally* (`patch_blur`, `relay_corrupt`, `relay_step`,
  `relay_correct`, schedules): tests check the fused path against these, so the algebra that turns
  a sampler step into `relay_fused` weights is itself tested.

Everything works in float64 when given float64; half types compute in float32.
"""

from __future__ import annotations

import math

import torch

from ._contract import compute_dtype  # (also public as reference.compute_dtype)

# --------------------------------------------------------------------------------------------
# Section 1: patch DCT.


def dct_matrix(k: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """Orthonormal DCT-II matrix C[u, n] = c_u cos(pi (2n+1) u / (2k))."""
    n = torch.arange(k, dtype=torch.float64, device=device)
    u = n[:, None]
    c = torch.cos(math.pi * (2 * n[None, :] + 1) * u / (2 * k)) * math.sqrt(2.0 / k)
    c[0] = math.sqrt(1.0 / k)
    return c.to(dtype)


def _to_patches(x: torch.Tensor, k: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.reshape(b, c, h // k, k, w // k, k)


def _from_patches(p: torch.Tensor) -> torch.Tensor:
    b, c, hp, k, wp, _ = p.shape
    return p.reshape(b, c, hp * k, wp * k)


def patch_dct(x: torch.Tensor, k: int, inverse: bool = False) -> torch.Tensor:
    """C P C^T on every k x k patch (C^T U C when inverse)."""
    cdt = compute_dtype(x.dtype)
    c = dct_matrix(k, cdt, x.device)
    p = _to_patches(x.to(cdt), k)
    if inverse:
        out = torch.einsum("un,bchuwv,vm->bchnwm", c, p, c)
    else:
        out = torch.einsum("un,bchnwm,vm->bchuwv", c, p, c)
    return _from_patches(out).to(x.dtype)


def patch_idct(u: torch.Tensor, k: int) -> torch.Tensor:
    return patch_dct(u, k, inverse=True)


# --------------------------------------------------------------------------------------------
# Section 2: blurring spectrum and schedule.


def frequency_squares(k: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """lambda[u, v] = (pi u / k)^2 + (pi v / k)^2, shape [k, k]."""
    freqs = math.pi * torch.arange(k, dtype=dtype, device=device) / k
    return freqs[:, None] ** 2 + freqs[None, :] ** 2


def blur_spectrum(blur_sigma: torch.Tensor, k: int, min_scale: float = 1e-3, lam: torch.Tensor | None = None):
    """a_b[u, v] = exp(-lambda[u, v] b^2 / 2) (1 - m) + m, shape [B, k, k].

    For a b so large that b^2 overflows the dtype this is the b -> inf limit: 1 at [0, 0], m elsewhere.

    lam: frequency_squares(k) in blur_sigma's dtype and device, if the caller keeps it at hand.
    """
    if lam is None:
        lam = frequency_squares(k, blur_sigma.dtype, blur_sigma.device)
    neg_tau = (blur_sigma * blur_sigma * -0.5)[:, None, None]  # -b^2/2, exactly
    # A finite b whose b^2 overflows gives -inf, and lambda[0, 0] * -inf = NaN; clamped to the most
    # negative finite value the product is -0 (DC weight 1) or -inf (weight m), the b -> inf limit.
    # Finite -b^2/2 is unchanged, and a NaN b stays NaN.
    neg_tau = neg_tau.clamp(min=torch.finfo(neg_tau.dtype).min)
    return torch.exp(lam * neg_tau) * (1 - min_scale) + min_scale


P_MEAN, P_STD = -1.2, 1.2


def blur_schedule(sigma: torch.Tensor, blur_sigma_max: float = 3.0, prob_length: float = 0.93):
    """b(sigma) = b_max sin^2((pi/2) Phi((ln sigma - P_mean)/P_std) / L)."""
    phi = torch.special.ndtr((torch.log(sigma) - P_MEAN) / P_STD)
    return blur_sigma_max * torch.sin(math.pi / 2 * phi / prob_length) ** 2


def alpha(sigma, k, blur_sigma_max=3.0, prob_length=0.93, min_scale=1e-3) -> torch.Tensor:
    """alpha(sigma) = a_{b(sigma)}, shape [B, k, k]."""
    return blur_spectrum(blur_schedule(sigma, blur_sigma_max, prob_length), k, min_scale)


def patch_blur(x: torch.Tensor, blur_sigma: torch.Tensor, k: int = 4, min_scale: float = 1e-3):
    cdt = compute_dtype(x.dtype)
    a = blur_spectrum(blur_sigma.to(cdt), k, min_scale)
    u = patch_dct(x.to(cdt), k)
    scaled = _to_patches(u, k) * a[:, None, None, :, None, :]
    return patch_idct(_from_patches(scaled), k).to(x.dtype)


# --------------------------------------------------------------------------------------------
# Section 3: block noise.


def block_filter(e: torch.Tensor, block_size: int, transpose: bool = False) -> torch.Tensor:
    """Block_s(e)[y,x] = (1/s) sum_{i,j<s} e[(y-i) mod H, (x-j) mod W] (circular).

    The transpose (adjoint) is the mirrored window e[(y+i), (x+j)]. The box is separable, so this
    takes 2s rolls rather than s^2.
    """
    cdt = compute_dtype(e.dtype)
    x = e.to(cdt)
    sign = -1 if transpose else 1
    rows = sum(torch.roll(x, sign * i, dims=2) for i in range(block_size))
    box = sum(torch.roll(rows, sign * j, dims=3) for j in range(block_size))
    return (box / block_size).to(e.dtype)


# --------------------------------------------------------------------------------------------
# Section 4: the counter-based generator, with integer tensor ops (int64 holding uint32 words).

_MASK32 = 0xFFFFFFFF
PHILOX_ROUND_A, PHILOX_ROUND_B = 0xD2511F53, 0xCD9E8D57
PHILOX_KEY_A, PHILOX_KEY_B = 0x9E3779B9, 0xBB67AE85
UNIFORM_SCALE = 4.6566127342e-10
TWO_PI = 6.283185307179586


def _mulhilo32(a: int, b: torch.Tensor):
    """(hi, lo) 32-bit words of the 64-bit product of constant a and uint32 words b.

    Split b in 16-bit halves so every partial product fits in int64.
    """
    b0, b1 = b & 0xFFFF, b >> 16
    p0, p1 = a * b0, a * b1  # each < 2^48
    mid = ((p1 & 0xFFFF) << 16) + p0
    lo = mid & _MASK32
    hi = (p1 >> 16) + (mid >> 32)
    return hi & _MASK32, lo


def philox4x32(key: torch.Tensor, counter: torch.Tensor, rounds: int = 10):
    """Philox4x32-10 of key (int64) and counter words (lo32, hi32, 0, 0); broadcastable tensors."""
    k0, k1 = key & _MASK32, (key >> 32) & _MASK32
    c0, c1 = counter & _MASK32, (counter >> 32) & _MASK32
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    for _ in range(rounds):
        hi_b, lo_b = _mulhilo32(PHILOX_ROUND_B, c2)
        hi_a, lo_a = _mulhilo32(PHILOX_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + PHILOX_KEY_A) & _MASK32
        k1 = (k1 + PHILOX_KEY_B) & _MASK32
    return c0, c1, c2, c3


def uniform_from_bits(r: torch.Tensor) -> torch.Tensor:
    """uint32 word -> float32 in [0, 1), as triton's uint_to_uniform_float."""
    signed = torch.where(r >= 2**31, r - 2**32, r)  # reinterpret as int32
    folded = torch.where(signed < 0, -signed - 1, signed)  # ~r
    return folded.to(torch.float32) * torch.tensor(UNIFORM_SCALE, dtype=torch.float32)


def normal_from_bits(r0: torch.Tensor, r1: torch.Tensor) -> torch.Tensor:
    """Box-Muller on the first two Philox words, in float32 as tl.randn computes it."""
    u0 = torch.clamp(uniform_from_bits(r0), min=1e-7)
    u1 = uniform_from_bits(r1)
    return torch.sqrt(-2.0 * torch.log(u0)) * torch.cos(u1 * torch.tensor(TWO_PI, dtype=torch.float32))


def randn(seed: torch.Tensor, shape, offset: int = 0, dtype=torch.float32) -> torch.Tensor:
    """Normals of shape [B, ...] (B = len(seed)): sample b's flat element i uses key seed[b] and
    counter offset + i."""
    n = math.prod(shape[1:])
    counter = offset + torch.arange(n, dtype=torch.int64, device=seed.device)
    r0, r1, _, _ = philox4x32(seed.to(torch.int64)[:, None], counter[None, :])
    return normal_from_bits(r0, r1).reshape(tuple(shape)).to(dtype)


def noise(seed: torch.Tensor, shape, offset: int = 0, block_size: int = 0, dtype=torch.float32):
    """randn, followed by Block_s when block_size > 0 (the kernel contract's noise op)."""
    e = randn(seed, shape, offset, torch.float64 if dtype == torch.float64 else torch.float32)
    if block_size > 0:
        e = block_filter(e, block_size)
    return e.to(dtype)


# --------------------------------------------------------------------------------------------
# The fused kernel contract.


def relay_fused(
    inputs,
    weights: torch.Tensor,
    noise_scale: torch.Tensor | None = None,
    block_scale: float = 0.0,
    block_size: int = 4,
    seed: torch.Tensor | None = None,
    offset: int = 0,
    noise: torch.Tensor | None = None,
    noise_block: torch.Tensor | None = None,
) -> torch.Tensor:
    """idct(sum_j weights[:, j] * dct(inputs[j])) + noise_scale * (e + block_scale Block_s(e')).

    weights: [B, n_inputs, k, k]. The noise is drawn from seed (e at counters offset + i, e' at
    offset + N + i) unless given as tensors; noise_scale None means no noise term.
    """
    x0 = inputs[0]
    cdt = compute_dtype(x0.dtype)
    k = weights.shape[-1]
    acc = 0
    for j, x in enumerate(inputs):
        w = weights[:, j].to(cdt)[:, None, None, :, None, :]
        acc = acc + _to_patches(patch_dct(x.to(cdt), k), k) * w
    out = patch_idct(_from_patches(acc), k)
    if noise_scale is not None:
        if noise is None:
            n = math.prod(x0.shape[1:])
            noise = randn(seed, x0.shape, offset, cdt)
            noise_block = randn(seed, x0.shape, offset + n, cdt)
        mix = noise.to(cdt) + block_scale * block_filter(noise_block.to(cdt), block_size)
        out = out + noise_scale.to(cdt)[:, None, None, None] * mix
    return out.to(x0.dtype)


# --------------------------------------------------------------------------------------------
# Sections 5 and 6 written literally (the fused path is tested against these).


def noise_mix(e, e_block, block_scale, block_size, normalize=False):
    """n = e + beta Block_s(e'), divided by sqrt(1 + beta^2) when normalize (paper Eq. 8)."""
    n = e + block_scale * block_filter(e_block, block_size)
    return n / math.sqrt(1 + block_scale**2) if normalize else n


def relay_corrupt(x0, sigma, blur_sigma, noise, k=4, block_scale=0.15, block_size=None, normalize=False):
    """x_t = patch_blur(x0, b) + sigma (e + beta Block_k(e')), noise = (e, e')."""
    cdt = compute_dtype(x0.dtype)
    n = noise_mix(noise[0].to(cdt), noise[1].to(cdt), block_scale, block_size or k, normalize)
    x = patch_blur(x0.to(cdt), blur_sigma.to(cdt), k) + sigma.to(cdt)[:, None, None, None] * n
    return x.to(x0.dtype)


def _sampler_terms(x_cur, den, t_cur, t_next, k, s_noise, blur_sigma_max, prob_length, min_scale):
    cdt = compute_dtype(x_cur.dtype)
    t_cur, t_next = t_cur.to(cdt), t_next.to(cdt)
    a_c = alpha(t_cur, k, blur_sigma_max, prob_length, min_scale)
    a_n = alpha(t_next, k, blur_sigma_max, prob_length, min_scale)
    g = (math.sqrt(1 - s_noise**2) * t_next / t_cur)[:, None, None]
    u = _to_patches(patch_dct(x_cur.to(cdt), k), k)
    d = (u - _to_patches(patch_dct(den.to(cdt), k), k)) / t_cur[:, None, None, None, None, None]
    bc = lambda s: s[:, None, None, :, None, :]  # noqa: E731  [B,k,k] -> patch layout
    return cdt, bc(a_c), bc(a_n), bc(g), u, d


def relay_step(x_cur, den, t_cur, t_next, noise, k=4, s_noise=0.2, s_block=0.15, blur_sigma_max=3.0,
               prob_length=0.93, min_scale=1e-3, block_size=None, normalize=False):
    """Euler step of Algorithm 1 (SPEC 6), in the U, D form."""
    cdt, a_c, a_n, g, u, d = _sampler_terms(x_cur, den, t_cur, t_next, k, s_noise, blur_sigma_max,
                                            prob_length, min_scale)
    tc = t_cur.to(cdt)[:, None, None, None, None, None]
    spec = (a_n + g - g * a_c) * u + tc * (g * a_c - a_n) * d
    n = noise_mix(noise[0].to(cdt), noise[1].to(cdt), s_block, block_size or k, normalize)
    out = patch_idct(_from_patches(spec), k) + s_noise * t_next.to(cdt)[:, None, None, None] * n
    return out.to(x_cur.dtype)


def relay_correct(x_cur, den, x_next, den_next, t_cur, t_next, noise, k=4, s_noise=0.2, s_block=0.15,
                  blur_sigma_max=3.0, prob_length=0.93, min_scale=1e-3, block_size=None, normalize=False):
    """Heun correction of Algorithm 1 (SPEC 6), with fresh noise n''."""
    cdt, a_c, a_n, g, u, d = _sampler_terms(x_cur, den, t_cur, t_next, k, s_noise, blur_sigma_max,
                                            prob_length, min_scale)
    tn = t_next.to(cdt)[:, None, None, None, None, None]
    tc = t_cur.to(cdt)[:, None, None, None, None, None]
    u_next = _to_patches(patch_dct(x_next.to(cdt), k), k)
    d_prime = (u_next - _to_patches(patch_dct(den_next.to(cdt), k), k)) / tn
    spec = (a_n + g - g * a_c) * u + tc * (g * a_c - a_n) * (d + d_prime) / 2
    n = noise_mix(noise[0].to(cdt), noise[1].to(cdt), s_block, block_size or k, normalize)
    out = patch_idct(_from_patches(spec), k) + s_noise * t_next.to(cdt)[:, None, None, None] * n
    return out.to(x_cur.dtype)


# --------------------------------------------------------------------------------------------
# relay_fused weights for each sampler op (derived from the U, D forms above; tests check both).


def _alphas(t_cur, t_next, k, blur_sigma_max, prob_length, min_scale):
    """alpha(t_cur), alpha(t_next) in one pass over both (half the small tensor ops)."""
    both = alpha(torch.cat([t_cur, t_next]), k, blur_sigma_max, prob_length, min_scale)
    return both[: t_cur.shape[0]], both[t_cur.shape[0] :]


def relay_step_weights(t_cur, t_next, k, s_noise, blur_sigma_max, prob_length, min_scale):
    """Euler: x_next = idct(g dct(x_cur) + (a_n - g a_c) dct(den)) + s_noise t_next n.

    Returns weights [B, 2, k, k] for (x_cur, den) and the noise scale [B].
    """
    a_c, a_n = _alphas(t_cur, t_next, k, blur_sigma_max, prob_length, min_scale)
    g = (math.sqrt(1 - s_noise**2) * t_next / t_cur)[:, None, None]
    w = a_n - g * a_c
    return torch.stack([g.expand_as(w), w], dim=1), s_noise * t_next


def relay_correct_weights(t_cur, t_next, k, s_noise, blur_sigma_max, prob_length, min_scale):
    """Heun: with w = a_n - g a_c and r = t_cur / t_next the spectrum is
    (g + w/2) U + (w/2) dct(den) - (w r/2) dct(x_next) + (w r/2) dct(den').

    Returns weights [B, 4, k, k] for (x_cur, den, x_next, den_next) and the noise scale [B].
    """
    a_c, a_n = _alphas(t_cur, t_next, k, blur_sigma_max, prob_length, min_scale)
    g = (math.sqrt(1 - s_noise**2) * t_next / t_cur)[:, None, None]
    r = (t_cur / t_next)[:, None, None]
    w = a_n - g * a_c
    return torch.stack([g + w / 2, w / 2, -w * r / 2, w * r / 2], dim=1), s_noise * t_next


# --------------------------------------------------------------------------------------------
# Schedules (SPEC 5 and 6).


def karras_sigmas(num_steps, sigma_min=0.008, sigma_max=80.0, rho=7.0, dtype=torch.float64, device=None):
    """t_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho, i < N."""
    i = torch.arange(num_steps, dtype=dtype, device=device)
    frac = i / max(num_steps - 1, 1)
    return (sigma_max ** (1 / rho) + frac * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def relay_sigmas(num_steps, sigma_min=0.008, sigma_max=80.0, rho=7.0, truncation_sigma=0.9,
                 dtype=torch.float64, device=None):
    """Karras steps with t_i < truncation_sigma, then 0 appended."""
    t = karras_sigmas(num_steps, sigma_min, sigma_max, rho, dtype, device)
    t = t[t < truncation_sigma]
    return torch.cat([t, t.new_zeros(1)])


def relay_training_sigmas(u, blur_sigma_max=3.0, prob_length=0.93):
    """The released trainer's draw from u ~ U(0,1): returns (sigma, blur_sigma, loss weight)."""
    u_min = float(torch.special.ndtr(torch.tensor((math.log(0.0075) - P_MEAN) / P_STD))) * prob_length
    u = torch.clamp(u, min=u_min)
    blur_sigma = blur_sigma_max * torch.sin(math.pi * u / 2) ** 2
    sigma = torch.exp(torch.special.ndtri(u * prob_length) * P_STD + P_MEAN)
    sd = 0.5
    weight = torch.clamp((sigma**2 + sd**2) / (sigma * sd) ** 2, max=1e5)
    return sigma, blur_sigma, weight
