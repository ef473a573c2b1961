"""Samplers for Relay Diffusion: EDM Heun for the first stage, Algorithm 1 for the relay stages.

Written after NVlabs/edm `generate.py` and crowsonkb/k-diffusion `sampling.py`: one signature per
sampler (`sample_x(net, x, *, ..., callback=None, disable=None)`), schedules as small functions,
per-image seeds so a sample depends only on its seed, never on the batch it shares or the rank that
drew it. Every schedule is computed on the host once, before the loop, and moved to the device in a
single copy, so the loop makes no host syncs (no `.item()`, no comparisons of device scalars).

Noise streams: stage `s` of a cascade draws all of its noise from the per-image Philox streams of
SPEC 4 starting at counter `s * STAGE_STRIDE`, so stages never share counters.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import tqdm.auto as tqdm_auto

import relay_kernels as rk
from relay_kernels import reference

STAGE_STRIDE = 1 << 40  # counter offset between cascade stages (counters are 64-bit)

# --------------------------------------------------------------------------------------------
# Schedules (SPEC 6). The formulas live once, in relay_kernels.reference.


def get_sigmas_karras(num_steps, sigma_min=0.002, sigma_max=80.0, rho=7.0, device="cpu"):
    """EDM Eq. 5 steps t_0 > ... > t_{N-1}, then 0 appended (float64)."""
    t = reference.karras_sigmas(num_steps, sigma_min, sigma_max, rho, dtype=torch.float64)
    return torch.cat([t, t.new_zeros(1)]).to(device)


def get_sigmas_relay(num_steps, sigma_min=0.008, sigma_max=80.0, rho=7.0, truncation_sigma=0.9, device="cpu"):
    """Karras steps below truncation_sigma, then 0 appended (SPEC 6), float64."""
    t = reference.relay_sigmas(num_steps, sigma_min, sigma_max, rho, truncation_sigma, dtype=torch.float64)
    return t.to(device)


# --------------------------------------------------------------------------------------------
# Helpers.


def as_seeds(seeds, batch_size: int | None = None, device="cpu") -> torch.Tensor:
    """Per-image seeds as an int64 [B] tensor. An int s means s, s+1, ... (SPEC 4)."""
    if isinstance(seeds, int):
        if batch_size is None:
            raise ValueError("an int seed needs the batch size: pass one seed per image")
        return torch.arange(seeds, seeds + batch_size, dtype=torch.int64, device=device)
    seeds = torch.as_tensor(seeds, dtype=torch.int64).to(device).reshape(-1)
    if batch_size is not None and seeds.numel() != batch_size:
        raise ValueError(f"got {seeds.numel()} seeds for a batch of {batch_size}")
    return seeds


def latents_from_seeds(seeds, shape, offset=0, device="cpu", dtype=torch.float32):
    """Standard normal latents [B, *shape], image b drawn from its own stream seeds[b]."""
    seeds = as_seeds(seeds, device=device)
    return rk.randn((seeds.numel(), *shape), seeds, offset).to(dtype)


def relay_noise(seeds, shape, block_size, s_block, offset=0, device="cpu", dtype=torch.float32):
    """n = e + s_block Block_k(e') with e at counters offset + i and e' at offset + N + i."""
    seeds = as_seeds(seeds, device=device)
    full = (seeds.numel(), *shape)
    e = rk.randn(full, seeds, offset)
    e_block = rk.block_noise(full, block_size, seed=seeds, offset=offset + math.prod(shape))
    return (e + s_block * e_block).to(dtype)


def one_hot_labels(net, class_labels):
    """Integer class indices -> one-hot rows of net.label_dim (float); one-hot input passes through."""
    if class_labels is None or class_labels.is_floating_point():
        return class_labels
    return F.one_hot(class_labels.long(), net.label_dim).to(torch.float32)


def uncond_labels(class_labels: torch.Tensor) -> torch.Tensor:
    """The unconditional label of EDM-style label dropout: the all-zero one-hot vector."""
    return torch.zeros_like(class_labels)


def denoise(net, x, sigma, class_labels=None, cfg_scale=1.0):
    """net(x, sigma, labels); with guidance den = uncond + cfg_scale (cond - uncond), one batched call.

    sigma is a [B] tensor. Conditional and unconditional halves go through the net together, so
    guidance costs one network evaluation per step (at twice the batch).
    """
    class_labels = one_hot_labels(net, class_labels)
    if class_labels is None or cfg_scale == 1.0:
        return net(x, sigma, class_labels).to(x.dtype)
    labels = torch.cat([class_labels, uncond_labels(class_labels)])
    both = net(torch.cat([x, x]), torch.cat([sigma, sigma]), labels).to(x.dtype)
    cond, uncond = both.chunk(2)
    return uncond + cfg_scale * (cond - uncond)


def _progress(n, disable, desc):
    return tqdm_auto.trange(n, disable=disable, desc=desc, leave=False)


# --------------------------------------------------------------------------------------------
# Stage 1: EDM Heun sampler (EDM Algorithm 2).


@torch.no_grad()
def sample_edm(
    net,
    latents,
    *,
    num_steps=18,
    sigma_min=0.002,
    sigma_max=80.0,
    rho=7.0,
    S_churn=0.0,
    S_min=0.0,
    S_max=float("inf"),
    S_noise=1.0,
    seeds=None,
    offset=0,
    class_labels=None,
    cfg_scale=1.0,
    callback=None,
    disable=None,
):
    """EDM's stochastic Heun sampler; latents are standard normal (scaled by t_0 here).

    Churn noise comes from the per-image streams `seeds` (counters from offset + N on, the latents
    being counters offset .. offset + N - 1 when drawn with latents_from_seeds), or from
    torch.randn_like when seeds is None. Returns the sample in the latents' dtype.
    """
    sigma_min = max(sigma_min, getattr(net, "sigma_min", 0.0))
    sigma_max = min(sigma_max, getattr(net, "sigma_max", float("inf")))
    round_sigma = getattr(net, "round_sigma", lambda t: t)
    batch, device = latents.shape[0], latents.device
    n_elem = math.prod(latents.shape[1:])
    if seeds is not None:
        seeds = as_seeds(seeds, batch, device)

    # Time steps and churn on the host, once (EDM Eq. 5 and Algorithm 2 lines 4-5).
    t_steps = torch.cat(
        [
            round_sigma(reference.karras_sigmas(num_steps, sigma_min, sigma_max, rho)),
            torch.zeros(1, dtype=torch.float64),
        ]
    )
    gamma = [
        min(S_churn / num_steps, math.sqrt(2) - 1) if S_min <= t <= S_max else 0.0
        for t in t_steps[:-1].tolist()
    ]
    t_hat = round_sigma(t_steps[:-1] * (1 + torch.tensor(gamma, dtype=torch.float64)))
    t_cur_l, t_hat_l, t_next_l = t_steps[:-1].tolist(), t_hat.tolist(), t_steps[1:].tolist()
    # Per-step sigma rows for the net, moved to the device in one copy.
    sig_dev = torch.stack([t_hat, t_steps[1:]], 1)[:, :, None].expand(-1, -1, batch).to(device)

    x_next = latents.to(torch.float64) * t_steps[0].item()
    for i in _progress(num_steps, disable, "edm"):
        x_cur = x_next
        # Increase noise temporarily (churn).
        x_hat = x_cur
        if gamma[i] > 0:
            if seeds is None:
                eps = torch.randn_like(x_cur)
            else:
                eps = rk.randn(tuple(x_cur.shape), seeds, offset + (i + 1) * n_elem).to(x_cur.dtype)
            x_hat = x_cur + math.sqrt(t_hat_l[i] ** 2 - t_cur_l[i] ** 2) * S_noise * eps
        # Euler step.
        denoised = denoise(net, x_hat, sig_dev[i, 0], class_labels, cfg_scale)
        d_cur = (x_hat - denoised) / t_hat_l[i]
        x_next = x_hat + (t_next_l[i] - t_hat_l[i]) * d_cur
        if callback is not None:
            callback(dict(i=i, sigma=sig_dev[i, 0], sigma_hat=sig_dev[i, 0], x=x_cur, denoised=denoised))
        # Second-order correction.
        if i < num_steps - 1:
            denoised = denoise(net, x_next, sig_dev[i, 1], class_labels, cfg_scale)
            d_prime = (x_next - denoised) / t_next_l[i]
            x_next = x_hat + (t_next_l[i] - t_hat_l[i]) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next.to(latents.dtype)


# --------------------------------------------------------------------------------------------
# Relay stages: Algorithm 1 of RDM (SPEC 6) on the fused ops.


@torch.no_grad()
def sample_relay(
    net,
    x_low,
    *,
    num_steps=40,
    up_scale=None,
    k=4,
    s_noise=0.2,
    s_block=0.15,
    blur_sigma_max=3.0,
    prob_length=0.93,
    min_scale=1e-3,
    truncation_sigma=0.9,
    sigma_min=0.008,
    sigma_max=80.0,
    rho=7.0,
    seeds=0,
    offset=0,
    class_labels=None,
    cfg_scale=1.0,
    callback=None,
    disable=None,
):
    """Relay sampler: blurring diffusion from the nearest-upsampled low-res image.

    x = upsample_nearest(x_low) + t_0 n, then Euler steps (rk.relay_step) with a Heun correction
    (rk.relay_correct) on every step but the last; returns den at the last listed step. The output
    resolution is net.img_resolution when the net has it (up_scale = ratio), else up_scale * the
    input's; up_scale must be an integer >= 2. Noise for image b comes from its stream seeds[b]: the
    start at counters [offset, offset + 2N), each op call the next 2N. Network evaluations: 2 M - 1
    for M listed steps.
    """
    if x_low.dim() != 4:
        raise ValueError(f"x_low must be a [B, C, H, W] batch, not shape {tuple(x_low.shape)}")
    batch, device, dtype = x_low.shape[0], x_low.device, x_low.dtype
    res = getattr(net, "img_resolution", None)
    if up_scale is None:
        if res is None:
            raise ValueError("give up_scale, or a net with img_resolution")
        if res % x_low.shape[-1]:
            raise ValueError(f"net resolution {res} is not a multiple of the input's {x_low.shape[-1]}")
        up_scale = res // x_low.shape[-1]
    # The relay starts from an upsampled image: up_scale 1 (an input already at the net's
    # resolution) or a fractional one is a caller's mistake, not something to run silently.
    if isinstance(up_scale, bool) or not float(up_scale).is_integer() or up_scale < 2:
        raise ValueError(f"up_scale must be an integer >= 2 (input {x_low.shape[-1]}px), got {up_scale}")
    up_scale = int(up_scale)
    if res is not None and x_low.shape[-1] * up_scale != res:
        raise ValueError(f"{x_low.shape[-1]}px input x up_scale {up_scale} is not the net's resolution {res}")
    seeds = as_seeds(seeds, batch, device)

    # Schedule on the host once.
    t_host = get_sigmas_relay(num_steps, sigma_min, sigma_max, rho, truncation_sigma)
    n_listed = t_host.numel() - 1
    if n_listed < 1:
        raise ValueError(f"no Karras step of {num_steps} lies below truncation_sigma={truncation_sigma}")
    # Row i is t_i for every image, filled on the device from host floats: a fill takes its value
    # as a kernel argument, where a host-to-device copy would break CUDA-graph capture of the loop.
    t_dev = torch.empty(n_listed + 1, batch, device=device, dtype=dtype)
    for i, t in enumerate(t_host.tolist()):
        t_dev[i].fill_(t)
    op_kw = dict(
        k=k,
        s_noise=s_noise,
        s_block=s_block,
        blur_sigma_max=blur_sigma_max,
        prob_length=prob_length,
        min_scale=min_scale,
        seed=seeds,
    )

    # Start (Algorithm 1 line 1): nearest upsampling plus block-noise mix at t_0.
    x = F.interpolate(x_low, scale_factor=up_scale, mode="nearest")
    chw = tuple(x.shape[1:])
    two_n = 2 * math.prod(chw)
    x = x + t_host[0].item() * relay_noise(seeds, chw, k, s_block, offset, device, dtype)
    off = offset + two_n

    den = x
    for i in _progress(n_listed, disable, "relay"):
        t_cur, t_next = t_dev[i], t_dev[i + 1]
        den = denoise(net, x, t_cur, class_labels, cfg_scale)
        if callback is not None:
            callback(dict(i=i, sigma=t_cur, x=x, denoised=den))
        if i == n_listed - 1:
            break  # the last listed step returns den (t_next = 0)
        # Euler step (Eq. 11), then Heun correction with fresh noise n''.
        x_next = rk.relay_step(x, den, t_cur, t_next, offset=off, **op_kw)
        den_next = denoise(net, x_next, t_next, class_labels, cfg_scale)
        x = rk.relay_correct(x, den, x_next, den_next, t_cur, t_next, offset=off + two_n, **op_kw)
        off += 2 * two_n
    return den


def relay_nfe(num_steps, sigma_min=0.008, sigma_max=80.0, rho=7.0, truncation_sigma=0.9) -> int:
    """Network evaluations of sample_relay: 2 M - 1 for M listed steps."""
    return 2 * (get_sigmas_relay(num_steps, sigma_min, sigma_max, rho, truncation_sigma).numel() - 1) - 1


# --------------------------------------------------------------------------------------------
# Cascades.


class CountCalls:
    """Wraps a net and counts its calls (network function evaluations); attributes pass through."""

    def __init__(self, net):
        self.net, self.nfe = net, 0

    def __call__(self, *args, **kwargs):
        self.nfe += 1
        return self.net(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.__dict__["net"], name)


@torch.no_grad()
def sample_cascade(
    stage1_net,
    relay_nets,
    *,
    seeds,
    class_labels=None,
    cfg_scale=1.0,
    x_low=None,
    stage1_kwargs=None,
    relay_kwargs=None,
    device="cpu",
    callback=None,
    disable=None,
):
    """Stage 1 (EDM) then each relay net in turn (e.g. 64 -> 256 -> 1024).

    stage1_net may be None when x_low (the low-resolution images) is given. relay_kwargs is one dict
    for every relay stage or a list with one per stage. cfg_scale is one number or one per stage
    (stage 1 first). Returns (outputs, nfe): the images after each stage run and the network
    evaluations each stage used. callback receives the sampler's dict plus `stage` (1 = the first
    relay stage, 0 = stage 1). Relay stage j draws from counters (j + 1) * STAGE_STRIDE on.
    """
    relay_nets = list(relay_nets)
    n_stages = len(relay_nets) + (stage1_net is not None)
    if (stage1_net is None) == (x_low is None):
        raise ValueError("give exactly one of stage1_net and x_low")
    if isinstance(relay_kwargs, (list, tuple)):
        if len(relay_kwargs) != len(relay_nets):
            raise ValueError(f"{len(relay_kwargs)} relay_kwargs for {len(relay_nets)} relay nets")
        relay_kwargs = list(relay_kwargs)
    else:
        relay_kwargs = [dict(relay_kwargs or {})] * len(relay_nets)
    cfgs = list(cfg_scale) if isinstance(cfg_scale, (list, tuple)) else [cfg_scale] * n_stages
    if len(cfgs) != n_stages:
        raise ValueError(f"{len(cfgs)} cfg scales for {n_stages} stages")
    seeds = as_seeds(seeds, None if x_low is None else x_low.shape[0], device)

    def stage_cb(stage):
        return None if callback is None else (lambda d: callback(dict(d, stage=stage)))

    # Stage numbering (and so the noise streams) is the same whether or not stage 1 runs here, so
    # refining saved stage-1 images reproduces the cascade's relay noise.
    outputs, nfe, stage = [], [], 1
    if stage1_net is not None:
        net = CountCalls(stage1_net)
        shape = (net.img_channels, net.img_resolution, net.img_resolution)
        latents = latents_from_seeds(seeds, shape, 0, device)
        x_low = sample_edm(
            net,
            latents,
            seeds=seeds,
            offset=0,
            class_labels=class_labels,
            cfg_scale=cfgs[0],
            callback=stage_cb(0),
            disable=disable,
            **(stage1_kwargs or {}),
        )
        outputs.append(x_low)
        nfe.append(net.nfe)
    x = x_low
    for j, relay_net in enumerate(relay_nets):
        net = CountCalls(relay_net)
        x = sample_relay(
            net,
            x,
            seeds=seeds,
            offset=stage * STAGE_STRIDE,
            class_labels=class_labels,
            cfg_scale=cfgs[len(outputs)],
            callback=stage_cb(stage),
            disable=disable,
            **relay_kwargs[j],
        )
        outputs.append(x)
        nfe.append(net.nfe)
        stage += 1
    return outputs, nfe
