"""Conditioning cascade (CDM, Ho et al. 2022, as the RDM paper describes it in Sections 2 and 3.2):
a low-resolution EDM model, then a super-resolution EDM model that generates the full-resolution
image from pure noise conditioned on the upsampled low-resolution image (concatenated channels).

Gaussian conditioning augmentation: at training the low-res condition is avg_pool_k(x0) + s e_c with
s ~ U(0, aug_max) drawn per image and given to the net (nets.Precond); at sampling s is a fixed
cond_sigma. Non-truncated: the low-res stage runs to 0 and fresh noise of level cond_sigma is added.
Truncated (Ho et al.'s truncated conditioning augmentation): the low-res stage stops at cond_sigma
and its noisy image is the condition. Both use the same trained nets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import relay_kernels as rk

from .. import sampling
from ..loss import EDMLoss
from .nets import Bound
from .single_stage import heun


def augment_counters(images: torch.Tensor, low_res: int) -> tuple[int, int]:
    """(offset of e_c, counter of the level draw) after EDMLoss's counters [0, 2N] of a full-res image."""
    n = images[0].numel()
    n_low = images.shape[1] * low_res * low_res
    return 2 * n + 1, 2 * n + 1 + n_low


def augment_condition(images, seeds, k, aug_max):
    """(cond, s): cond = avg_pool_k(images) + s e_c with s ~ U(0, aug_max), both from the image's stream."""
    low = F.avg_pool2d(images, k)
    off_noise, off_level = augment_counters(images, low.shape[-1])
    u = torch.special.ndtr(rk.randn((images.shape[0], 1), seeds, offset=off_level).reshape(-1).double())
    s = (u * aug_max).to(images.device, torch.float32)
    e_c = rk.randn(tuple(low.shape), seeds, offset=off_noise).to(images.device, images.dtype)
    return low + s[:, None, None, None] * e_c, s


class CDMLoss:
    """EDMLoss on the full-resolution image for a denoiser conditioned on the augmented low-res image."""

    def __init__(self, k=4, aug_max=1.0, P_mean=-1.2, P_std=1.2, sigma_data=0.5):
        self.k, self.aug_max = k, aug_max
        self.edm = EDMLoss(P_mean=P_mean, P_std=P_std, sigma_data=sigma_data)

    def __call__(self, net, images, seeds, labels=None):
        cond, s = augment_condition(images, seeds, self.k, self.aug_max)
        return self.edm(Bound(net, cond=cond, cond_sigma=s), images, seeds, labels)


@torch.no_grad()
def sample_cdm(low_net, sr_net, seeds, *, low_steps, high_steps, cond_sigma=0.2, truncate=False, device="cpu",
               disable=True):
    """(images [B, C, R, R], low-res condition [B, C, r, r]); stage s draws from counters s * STAGE_STRIDE on."""
    if cond_sigma <= 0 and truncate:
        raise ValueError("truncated conditioning needs cond_sigma > 0 (the level the low-res stage stops at)")
    seeds = sampling.as_seeds(seeds, device=device)
    shape = (low_net.img_channels, low_net.img_resolution, low_net.img_resolution)
    noise = sampling.latents_from_seeds(seeds, shape, 0, device)
    if truncate:
        cond = heun(low_net, noise, num_steps=low_steps, sigma_min=cond_sigma, truncate=True, disable=disable)
    else:
        x_low = heun(low_net, noise, num_steps=low_steps, disable=disable).clamp(-1, 1)
        cond = x_low + cond_sigma * sampling.latents_from_seeds(seeds, shape, 2 * sampling.STAGE_STRIDE, device)
    s = torch.full((seeds.numel(),), float(cond_sigma), device=device)
    hi_shape = (sr_net.img_channels, sr_net.img_resolution, sr_net.img_resolution)
    hi_noise = sampling.latents_from_seeds(seeds, hi_shape, sampling.STAGE_STRIDE, device)
    x = heun(Bound(sr_net, cond=cond, cond_sigma=s), hi_noise, num_steps=high_steps, disable=disable)
    return x, cond
