"""Sampling schedules and noise streams (SPEC 4, SPEC 6): the sigma schedules of EDM and of the relay
stages, per-image seeds, and the normals every sampler draws (the device-independent Philox streams,
or the released scripts' one torch.Generator per image). Part of `relaydiff.sampling`, which
re-exports every name here; the conventions are in its docstring.

Noise streams: stage `s` of a cascade draws all of its noise from the per-image Philox streams
starting at counter `s * STAGE_STRIDE`, so stages never share counters.
"""

from __future__ import annotations

import math

import torch

import relay_kernels as rk
from relay_kernels import reference

STAGE_STRIDE = 1 << 40  # counter offset between cascade stages (counters are 64-bit)

# --------------------------------------------------------------------------------------------
# Schedules (SPEC 6). The formulas live once, in relay_kernels.reference.


def net_sigma_range(net, sigma_min, sigma_max):
    """(sigma_min, sigma_max) clamped to the net's supported range, as EDM's sampler does."""
    if net is None:
        return sigma_min, sigma_max
    return max(sigma_min, getattr(net, "sigma_min", 0.0)), min(sigma_max, getattr(net, "sigma_max", math.inf))


def round_sigmas(net, t: torch.Tensor) -> torch.Tensor:
    """net.round_sigma(t) when the net has it (EDM's VP/VE nets round to their discrete steps)."""
    fn = getattr(net, "round_sigma", None) if net is not None else None
    return t if fn is None else torch.as_tensor(fn(t), dtype=t.dtype)


def get_sigmas_karras(num_steps, sigma_min=0.002, sigma_max=80.0, rho=7.0, device="cpu", *, net=None):
    """EDM Eq. 5 steps t_0 > ... > t_{N-1}, then 0 appended (float64); with net, clamped and rounded."""
    sigma_min, sigma_max = net_sigma_range(net, sigma_min, sigma_max)
    t = round_sigmas(net, reference.karras_sigmas(num_steps, sigma_min, sigma_max, rho, dtype=torch.float64))
    return torch.cat([t, t.new_zeros(1)]).to(device)


def get_sigmas_relay(num_steps, sigma_min=0.008, sigma_max=80.0, rho=7.0, truncation_sigma=0.9, device="cpu", *,
                     net=None):
    """Karras steps below truncation_sigma, then 0 appended (SPEC 6), float64. With net, sigma_min and
    sigma_max are clamped to its range and the kept steps rounded, in the released blur_sampler's order."""
    sigma_min, sigma_max = net_sigma_range(net, sigma_min, sigma_max)
    t = reference.relay_sigmas(num_steps, sigma_min, sigma_max, rho, truncation_sigma, dtype=torch.float64)
    if t.numel() < 2:
        raise ValueError(f"no Karras step of {num_steps} lies below truncation_sigma={truncation_sigma}")
    return torch.cat([round_sigmas(net, t[:-1]), t[-1:]]).to(device)


def relay_nfe(num_steps, sigma_min=0.008, sigma_max=80.0, rho=7.0, truncation_sigma=0.9) -> int:
    """Network evaluations of sample_relay: 2 M - 1 for M listed steps."""
    return 2 * (get_sigmas_relay(num_steps, sigma_min, sigma_max, rho, truncation_sigma).numel() - 1) - 1


# --------------------------------------------------------------------------------------------
# Seeds and noise streams.


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


class PerSeedGenerator:
    """One torch.Generator per image, seeded with seed mod 2^32, as the released generate.py's
    StackedRandomGenerator: `randn(shape)` stacks one draw of shape[1:] per generator."""

    def __init__(self, seeds, device="cpu"):
        seeds = torch.as_tensor(seeds, dtype=torch.int64).reshape(-1).tolist()
        self.device = torch.device(device)
        self.generators = [torch.Generator(self.device).manual_seed(s % (1 << 32)) for s in seeds]

    def randn(self, shape, dtype=torch.float32):
        if shape[0] != len(self.generators):
            raise ValueError(f"{len(self.generators)} generators for a batch of {shape[0]}")
        return torch.stack([torch.randn(tuple(shape[1:]), generator=g, dtype=dtype, device=self.device)
                            for g in self.generators])

    def randn_like(self, x):
        return self.randn(x.shape, x.dtype)


def randn_like_sampler(randn_like, like: torch.Tensor):
    """A noise_sampler that calls randn_like(like) for every normal, as the released generate.py
    passes `randn_like=rnd.randn_like` (a StackedRandomGenerator: one torch.Generator per seed)."""
    return lambda sigma, sigma_next: randn_like(like)

