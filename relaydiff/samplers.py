"""The samplers: EDM's stochastic Heun sampler for the first stage, Algorithm 1 for the relay stages,
in crowsonkb/k-diffusion's conventions (`k_diffusion/sampling.py`), with the model wrappers they are
called through (`CFGDenoiser`, `CountCalls`) and their argument checks. Part of `relaydiff.sampling`,
which re-exports every public name here; the calling conventions are in its docstring.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import tqdm.auto as tqdm_auto

import relay_kernels as rk
from relay_kernels import reference

from .schedules import as_seeds, relay_noise

# --------------------------------------------------------------------------------------------
# Model wrappers.


def one_hot_labels(net, class_labels):
    """Integer class indices -> one-hot rows of net.label_dim (float); one-hot input passes through."""
    if class_labels is None or class_labels.is_floating_point():
        return class_labels
    return F.one_hot(class_labels.long(), net.label_dim).to(torch.float32)


class CFGDenoiser:
    """model(x, sigma, class_labels=None) with classifier-free guidance as in the released
    THUDM/RelayDiffusion generate.py (both samplers): guided only when cfg_scale > 1,
    den = uncond + cfg_scale (cond - uncond), the unconditional label being the all-zero one-hot
    vector (EDM's label dropout). Both halves go through the net in one batched call and are combined
    in x's dtype. Integer labels are turned into one-hot rows. Other attributes (sigma_min,
    img_resolution, ...) pass through.
    """

    def __init__(self, net, cfg_scale: float = 1.0):
        self.net, self.cfg_scale = net, float(cfg_scale)

    def __call__(self, x, sigma, class_labels=None):
        labels = one_hot_labels(self.net, class_labels)
        if labels is None or not self.cfg_scale > 1:
            return self.net(x, sigma, labels)
        both = self.net(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([labels, torch.zeros_like(labels)]))
        cond, uncond = both.to(x.dtype).chunk(2)  # combined in x's dtype (float64 in EDM's stage 1)
        return uncond + self.cfg_scale * (cond - uncond)

    def __getattr__(self, name):
        return getattr(self.__dict__["net"], name)


class CountCalls:
    """Wraps a net and counts its calls (network function evaluations); attributes pass through."""

    def __init__(self, net):
        self.net, self.nfe = net, 0

    def __call__(self, *args, **kwargs):
        self.nfe += 1
        return self.net(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.__dict__["net"], name)


# --------------------------------------------------------------------------------------------
# Argument checks.


def _progress(n, disable, desc):
    # A plain range under torch.compile: tqdm is Python-side state dynamo cannot trace.
    if disable is True or torch.compiler.is_compiling():
        return range(n)
    return tqdm_auto.trange(n, disable=disable, desc=desc, leave=False)


def _check_sigmas(sigmas, x: torch.Tensor) -> int:
    """M (listed steps) of a k-diffusion sigmas tensor; values checked only when readable for free."""
    if not isinstance(sigmas, torch.Tensor) or sigmas.dim() != 1 or not sigmas.is_floating_point():
        raise TypeError("sigmas must be a 1-D floating tensor t_0 > ... > t_{M-1} > 0 followed by 0")
    if sigmas.numel() < 2:
        raise ValueError(f"sigmas must hold at least one step and the final 0, got {sigmas.numel()} values")
    if x.dim() != 4:
        raise ValueError(f"x must be a [B, C, H, W] batch, not shape {tuple(x.shape)}")
    if sigmas.device.type == "cpu" and not torch.compiler.is_compiling():
        t = sigmas.tolist()
        if not all(math.isfinite(v) and v > 0 for v in t[:-1]) or not (math.isfinite(t[-1]) and t[-1] >= 0):
            raise ValueError(f"sigmas must be finite, positive, then a final value >= 0, got {t}")
    return sigmas.numel() - 1


def check_sampler_args(sigmas, s_churn: float = 0.0, **options) -> None:
    """ValueError for a schedule that is not strictly decreasing (a final 0 allowed; checked where the
    values are readable for free, as _check_sigmas), s_churn < 0, or a non-finite option (s_tmax may
    be +inf, EDM's default)."""
    if isinstance(sigmas, torch.Tensor) and sigmas.device.type == "cpu" and not torch.compiler.is_compiling():
        t = sigmas.tolist()
        if any(not b < a for a, b in zip(t, t[1:], strict=False)):
            raise ValueError(f"sigmas must be strictly decreasing (a final 0 allowed), got {t}")
    for name, value in {"s_churn": s_churn, **options}.items():
        if isinstance(value, (int, float)) and not (math.isfinite(value) or (name == "s_tmax" and value == math.inf)):
            raise ValueError(f"{name} must be finite, got {value}")
    if not s_churn >= 0:
        raise ValueError(f"s_churn must be >= 0, got {s_churn}")


# --------------------------------------------------------------------------------------------
# Stage 1: EDM's stochastic Heun sampler (EDM Algorithm 2; k-diffusion sample_heun).


@torch.no_grad()
def sample_edm(model, x, sigmas, extra_args=None, callback=None, disable=None, *, s_churn=0.0, s_tmin=0.0,
               s_tmax=float("inf"), s_noise=1.0, sde_scale=0.0, noise_sampler=None, seeds=0, offset=0):
    """EDM's stochastic Heun sampler. x is the noise-scaled latent, as in k-diffusion
    (x = latents * sigmas[0]); computed in float64 as EDM's generate.py does, returned in x's dtype.

    Churn: gamma_i = min(s_churn / M, sqrt(2) - 1) where s_tmin <= t_i <= s_tmax, t_hat = t_i (1 + gamma_i)
    (rounded by model.round_sigma when it has one), x_hat = x + sqrt(t_hat^2 - t_i^2) s_noise eps.
    eps: noise_sampler(t_i, t_{i+1}), called at every step even where gamma_i = 0, as the released
    edm_sampler calls randn_like (so a torch.Generator stream stays in step); by default image b's
    Philox stream seeds[b] at counters offset + (i + 1) N (latents_from_seeds(seeds, ..., offset)
    takes counters offset .. offset + N - 1), drawn only where gamma_i > 0.

    sde_scale > 0 is the released CelebA-HQ stage-1 sampler (THUDM/RelayDiffusion generate_celebahq.py
    edm_sampler, --sde_scale_first 0.05): with g = sde_scale t_{i+1}, the Euler update and its Heun
    correction move x_hat by (sqrt(t_{i+1}^2 - g^2) - t_hat) times the slope and add g eps, with fresh
    eps each (noise_sampler called twice more per step, as the released randn_like order: the
    correction's draw only where there is a correction); by default from counters
    offset + (M + 1 + 2 i) N and offset + (M + 2 + 2 i) N. At sde_scale = 0 this is Algorithm 2.

    k-diffusion 0.1.1 `sample_heun` conventions: a Heun correction on every step whose t_{i+1} > 0
    (network evaluations 2 M - 1 for a schedule ending in 0, 2 M for one stopping above 0), and the
    callback's `x` is x_hat, the churned x the model saw. Its eps = randn_like(x) is drawn at every
    step too, so `noise_sampler=lambda s, s_next: torch.randn_like(x)` replays sample_heun's stream.
    Deliberate difference: the Philox default draws the churn only where gamma_i > 0 (counters,
    not a stream, so nothing shifts); the released scripts' orders are in docs/SAMPLING.md.
    """
    extra_args = {} if extra_args is None else extra_args
    n_steps = _check_sigmas(sigmas, x)
    check_sampler_args(sigmas, s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise, sde_scale=sde_scale)
    if not 0.0 <= sde_scale < 1.0:  # g < t_next keeps sqrt(t_next^2 - g^2) real and the step forward
        raise ValueError(f"sde_scale must be in [0, 1), got {sde_scale}")
    batch, device, out_dtype = x.shape[0], x.device, x.dtype
    n_elem = math.prod(x.shape[1:])

    def sde_noise(i, j):  # the released sampler's j-th extra draw of step i (j = 0 Euler, 1 Heun)
        if noise_sampler is not None:
            return noise_sampler(sigmas[i], sigmas[i + 1]).to(torch.float64)
        counter = offset + (n_steps + 1 + 2 * i + j) * n_elem
        return rk.randn(tuple(x.shape), seeds, counter).to(torch.float64)

    if noise_sampler is None:
        seeds = as_seeds(seeds, batch, device)
    round_sigma = getattr(model, "round_sigma", None)
    # Churn on the host, once (EDM Algorithm 2 lines 4-5).
    t_host = sigmas.detach().to("cpu", torch.float64)
    t_list = t_host.tolist()
    gamma = [min(s_churn / n_steps, math.sqrt(2) - 1) if s_tmin <= t <= s_tmax else 0.0 for t in t_list[:-1]]
    t_hat = t_host[:-1] * (1 + torch.tensor(gamma, dtype=torch.float64))
    t_hat = t_hat if round_sigma is None else torch.as_tensor(round_sigma(t_hat), dtype=torch.float64)
    t_hat_l = t_hat.tolist()
    # Per-step sigma rows for the net, moved to the device in one copy.
    sig_dev = torch.stack([t_hat, t_host[1:]], 1)[:, :, None].expand(-1, -1, batch).to(device)
    sig_scalar = torch.stack([t_host[:-1], t_hat], 1).to(device)

    x_next = x.to(torch.float64)
    for i in _progress(n_steps, disable, "edm"):
        x_cur = x_next
        t_cur, t_next = t_list[i], t_list[i + 1]
        # Increase noise temporarily (churn).
        x_hat = x_cur
        if noise_sampler is not None:
            eps = noise_sampler(sigmas[i], sigmas[i + 1]).to(x_cur.dtype)
            x_hat = x_cur + math.sqrt(t_hat_l[i] ** 2 - t_cur**2) * s_noise * eps
        elif gamma[i] > 0:
            eps = rk.randn(tuple(x_cur.shape), seeds, offset + (i + 1) * n_elem).to(x_cur.dtype)
            x_hat = x_cur + math.sqrt(t_hat_l[i] ** 2 - t_cur**2) * s_noise * eps
        # Euler step.
        denoised = model(x_hat, sig_dev[i, 0], **extra_args).to(x_cur.dtype)
        d_cur = (x_hat - denoised) / t_hat_l[i]
        # The step along the slope: t_next - t_hat (sqrt(t_next^2) = t_next exactly at sde_scale 0).
        g = sde_scale * t_next
        h = math.sqrt(t_next**2 - g**2) - t_hat_l[i]
        x_next = x_hat + h * d_cur
        if g > 0 or (sde_scale > 0 and noise_sampler is not None):
            x_next = x_next + g * sde_noise(i, 0)
        if callback is not None:  # k-diffusion's x: the (churned) x_hat the model was called on
            callback(dict(x=x_hat, i=i, sigma=sig_scalar[i, 0], sigma_hat=sig_scalar[i, 1], denoised=denoised))
        # Second-order correction wherever t_next > 0 (k-diffusion's sample_heun rule; a schedule that
        # stops above 0, the first half of a split one, corrects its last step too).
        if t_next != 0:
            denoised = model(x_next, sig_dev[i, 1], **extra_args).to(x_cur.dtype)
            d_prime = (x_next - denoised) / t_next
            x_next = x_hat + h * (0.5 * d_cur + 0.5 * d_prime)
            if g > 0:
                x_next = x_next + g * sde_noise(i, 1)
    return x_next.to(out_dtype)


# --------------------------------------------------------------------------------------------
# Relay stages: Algorithm 1 of RDM (SPEC 6) on the fused ops.


def relay_schedule_weights(t: torch.Tensor, batch: int, k=4, s_noise=0.2, blur_sigma_max=3.0, prob_length=0.93,
                           min_scale=1e-3):
    """Every fused-op weight of a relay sampling call, computed once: for the M - 1 steps with a
    Heun correction (t = t_0 .. t_{M-1}, the listed steps; the last one is denoise only) returns
    (step [M-1, B, 2, k, k], correct [M-1, B, 4, k, k], noise_scale [M-1, B]), so that
    `rk.relay_step(..., weights=(step[i], noise_scale[i]))` and
    `rk.relay_correct(..., weights=(correct[i], noise_scale[i]))` launch only the fused kernel.

    The formulas are reference.relay_step_weights / relay_correct_weights, the same functions the
    ops call per step when given t_cur and t_next; t is in the ops' compute dtype.
    """
    # The checks the ops make when they build the weights themselves.
    s_noise = rk.check_sampler_scalars(s_noise, blur_sigma_max, prob_length, min_scale)
    t_cur, t_next = t[:-1, None].expand(-1, batch).reshape(-1), t[1:, None].expand(-1, batch).reshape(-1)
    args = (k, s_noise, blur_sigma_max, prob_length, min_scale)
    step, scale = reference.relay_step_weights(t_cur, t_next, *args)
    correct, _ = reference.relay_correct_weights(t_cur, t_next, *args)
    n = t.numel() - 1
    return step.reshape(n, batch, 2, k, k), correct.reshape(n, batch, 4, k, k), scale.reshape(n, batch)


def relay_up_scale(model, x, up_scale) -> int:
    """The relay's integer upsampling factor: up_scale, or model.img_resolution over x's width."""
    res = getattr(model, "img_resolution", None)
    if up_scale is None:
        if res is None:
            raise ValueError("give up_scale, or a model with img_resolution")
        if res % x.shape[-1]:
            raise ValueError(f"net resolution {res} is not a multiple of the input's {x.shape[-1]}")
        up_scale = res // x.shape[-1]
    # The relay starts from an upsampled image: up_scale 1 (an input already at the net's
    # resolution) or a fractional one is a caller's mistake, not something to run silently.
    if isinstance(up_scale, bool) or not float(up_scale).is_integer() or up_scale < 2:
        raise ValueError(f"up_scale must be an integer >= 2 (input {x.shape[-1]}px), got {up_scale}")
    up_scale = int(up_scale)
    if res is not None and x.shape[-1] * up_scale != res:
        raise ValueError(f"{x.shape[-1]}px input x up_scale {up_scale} is not the net's resolution {res}")
    return up_scale


def _relay_draw(noise_sampler, sigma, sigma_next, like, s_block):
    """(e, e') from the caller's noise sampler in the released blur_sampler's order: e, then the
    normals of block_noise (drawn only when there is block noise, as there)."""
    e = noise_sampler(sigma, sigma_next).to(like.dtype)
    e_block = noise_sampler(sigma, sigma_next).to(like.dtype) if s_block != 0 else torch.zeros_like(e)
    return e, e_block


@torch.no_grad()
def sample_relay(model, x, sigmas, extra_args=None, callback=None, disable=None, *, up_scale=None, k=4,
                 s_noise=0.2, s_block=0.15, blur_sigma_max=3.0, prob_length=0.93, min_scale=1e-3, seeds=0, offset=0,
                 noise_sampler=None, churn_draw=False):
    """Relay sampler (RDM Algorithm 1): blurring diffusion from the nearest-upsampled low-res image.

    x: the low-resolution images [B, C, h, w]; sigmas: t_0 > ... > t_{M-1} > 0 and a final 0
    (get_sigmas_relay). The output resolution is model.img_resolution when the model has it
    (up_scale = ratio), else up_scale * the input's; up_scale must be an integer >= 2. k is the DCT
    patch size and block-noise size (the released code's `up_scale`, 4 for 64 -> 256).

    x_0 = upsample_nearest(x) + t_0 n, then per listed step den = model(x_i, t_i); Euler steps
    (rk.relay_step) with a Heun correction (rk.relay_correct) on every step but the last, which
    returns den. n = e + s_block Block_k(e'). Network evaluations: 2 M - 1.

    Noise: by default image b's Philox stream seeds[b]: the start at counters [offset, offset + 2N),
    each op call the next 2N (N = C H W at the output resolution). With noise_sampler, each n takes
    e = noise_sampler(t_i, t_{i+1}) and then (when s_block != 0) e' = noise_sampler(t_i, t_{i+1}),
    shaped like the upsampled x: the order of the released blur_sampler's randn_like calls.
    churn_draw=True (with noise_sampler) adds generate_celebahq.py's blur_sampler draw: one more
    normal per listed step, the last included, taken before the step's network call and weighted by
    0 there (its churn line at S_churn = 0), so each seed's generator stays in that script's order.
    The Philox default has no such draw (its counters do not shift); docs/SAMPLING.md lists each order.

    Every op weight is computed once per call (relay_schedule_weights), so each step launches the
    network and the fused kernels only; nothing reads a device value, so the loop compiles with
    torch.compile(fullgraph=True) and, with sigmas and seeds already on the GPU, captures in a CUDA
    graph. Returns den at the last listed step, in x's dtype.
    """
    extra_args = {} if extra_args is None else extra_args
    n_listed = _check_sigmas(sigmas, x)
    check_sampler_args(sigmas, s_noise=s_noise, s_block=s_block, blur_sigma_max=blur_sigma_max, prob_length=prob_length)
    batch, device, dtype = x.shape[0], x.device, x.dtype
    up_scale = relay_up_scale(model, x, up_scale)
    if not isinstance(churn_draw, bool):
        raise TypeError(f"churn_draw must be True or False, not {churn_draw!r}")
    if noise_sampler is None:
        seeds = as_seeds(seeds, batch, device)

    # The schedule in x's dtype (the net's sigma rows) and in the ops' compute dtype, once.
    t_x = sigmas.to(device=device, dtype=dtype)
    t_rows = t_x[:, None].expand(-1, batch)
    if n_listed > 1:
        step_w, correct_w, scale = relay_schedule_weights(
            t_x[:-1].to(reference.compute_dtype(dtype)), batch, k, s_noise, blur_sigma_max, prob_length, min_scale)
    op_kw = dict(k=k, s_block=s_block)

    # Start (Algorithm 1 line 1): nearest upsampling plus block-noise mix at t_0.
    x = F.interpolate(x, scale_factor=up_scale, mode="nearest")
    chw = tuple(x.shape[1:])
    two_n = 2 * math.prod(chw)
    if noise_sampler is None:
        n = relay_noise(seeds, chw, k, s_block, offset, device, dtype)
    else:
        e, e_block = _relay_draw(noise_sampler, sigmas[0], sigmas[1], x, s_block)
        n = e + s_block * rk.block_filter(e_block, k)
    x = x + t_x[0] * n
    off = offset + two_n

    den = x
    for i in _progress(n_listed, disable, "relay"):
        if churn_draw and noise_sampler is not None:
            # x_hat = x + sqrt(t_hat^2 - t^2) S_noise eps with t_hat = t: x itself, eps only advances the stream.
            noise_sampler(sigmas[i], sigmas[i + 1])
        den = model(x, t_rows[i], **extra_args).to(dtype)
        if callback is not None:
            callback(dict(x=x, i=i, sigma=t_x[i], sigma_hat=t_x[i], denoised=den))
        if i == n_listed - 1:
            break  # the last listed step returns den (t_next = 0)
        # Euler step (Eq. 11), then Heun correction with fresh noise n''.
        if noise_sampler is None:
            noise_a, noise_b = dict(seed=seeds, offset=off), dict(seed=seeds, offset=off + two_n)
        else:
            noise_a = dict(noise=_relay_draw(noise_sampler, sigmas[i], sigmas[i + 1], x, s_block))
            noise_b = None
        x_next = rk.relay_step(x, den, weights=(step_w[i], scale[i]), **op_kw, **noise_a)
        den_next = model(x_next, t_rows[i + 1], **extra_args).to(dtype)
        if noise_b is None:
            noise_b = dict(noise=_relay_draw(noise_sampler, sigmas[i], sigmas[i + 1], x, s_block))
        x = rk.relay_correct(x, den, x_next, den_next, weights=(correct_w[i], scale[i]), **op_kw, **noise_b)
        off += 2 * two_n
    return den

