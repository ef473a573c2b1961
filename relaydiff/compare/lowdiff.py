"""LowDiff (Xu et al., "LowDiff: Efficient Diffusion Sampling with Low-Resolution Condition") from the
paper's description: one network for every resolution whose low-resolution blocks (i) generate the
low-res image unconditionally and (ii) are reused as the inner sub-network of the high-res pathway,
which is conditioned on the upsampled noisy low-res image (independent Gaussian noise injected);
generation is bottom-up, the low-res stage truncated. No public code exists: every choice made here
is listed in docs/COMPARE.md.

Structure: `core` is one U-Net from nets.make_unet at the low resolution r = R / k with
3 + F input and output channels and a 2-entry label (mode, cond_sigma).
* low pass: core([c_in x_low, 0_F]; c_noise, (0, 0))[:3] under EDM preconditioning;
* high pass: an outer encoder (residual blocks, k = 2^L so L average-pool levels) takes
  [c_in x, c_cond up(cond)] at R down to r, a 1x1 conv makes F feature channels, core runs on
  [c_cond cond, features] with label (1, cond_sigma), and an outer decoder (nearest upsampling, skip
  connections from the encoder, as a U-Net) returns to R.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import sampling
from ..loss import EDMLoss
from ..networks import edm_coefficients
from .cdm import augment_condition
from .nets import Bound, make_unet, sigma_rows, upsample
from .single_stage import heun


def _gn(c):
    return nn.GroupNorm(math.gcd(c, 8), c)


class _Block(nn.Module):
    """GN-SiLU-conv, (scale, shift) from the noise embedding, GN-SiLU-conv, residual (as the U-Net's)."""

    def __init__(self, cin, cout, emb):
        super().__init__()
        self.norm0, self.conv0 = _gn(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.affine, self.norm1 = nn.Linear(emb, 2 * cout), _gn(cout)
        self.conv1 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
        h = self.conv0(F.silu(self.norm0(x)))
        scale, shift = self.affine(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.conv1(F.silu(torch.addcmul(shift, self.norm1(h), scale + 1)))
        return (h + self.skip(x)) / math.sqrt(2)


class LowDiffNet(nn.Module):
    """The unified denoiser: forward(x, sigma, class_labels=None, cond=None, cond_sigma=None) is the
    low-res pass when cond is None (x at low_resolution) and the high-res pass otherwise."""

    def __init__(self, img_resolution, k=4, img_channels=3, sigma_data=0.5, feature_channels=16,
                 outer_channels=16, **core_kwargs):
        super().__init__()
        levels = int(math.log2(k)) if k >= 2 else 0
        if 2**levels != k or img_resolution % k:
            raise ValueError(f"k={k} must be a power of two >= 2 dividing the resolution {img_resolution}")
        self.img_resolution, self.low_resolution, self.k = img_resolution, img_resolution // k, k
        self.img_channels, self.label_dim, self.sigma_data = img_channels, 0, sigma_data
        self.feature_channels = feature_channels
        c, ch = img_channels, outer_channels
        self.core = make_unet(self.low_resolution, c + feature_channels, c + feature_channels, label_dim=2,
                              **core_kwargs)
        # The outer pathway's own noise embedding: sinusoidal features of c_noise, then an MLP.
        self.emb_freqs = 16
        self.map_noise = nn.Sequential(nn.Linear(2 * self.emb_freqs, 4 * ch), nn.SiLU(), nn.Linear(4 * ch, 4 * ch))
        self.conv_in = nn.Conv2d(2 * c, ch, 3, padding=1)
        self.enc = nn.ModuleList([_Block(ch, ch, 4 * ch) for _ in range(levels)])
        self.to_core = nn.Conv2d(ch, feature_channels, 1)
        self.from_core = nn.Conv2d(c + feature_channels, ch, 1)
        self.dec = nn.ModuleList([_Block(2 * ch, ch, 4 * ch) for _ in range(levels)])
        self.norm_out, self.conv_out = _gn(ch), nn.Conv2d(ch, c, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # the high pass starts as D = c_skip x, as the U-Net's output
        nn.init.zeros_(self.conv_out.bias)

    def _embed(self, c_noise):
        freqs = (1 / 10000) ** (torch.arange(self.emb_freqs, device=c_noise.device) / self.emb_freqs)
        arg = c_noise.reshape(-1, 1) * freqs
        return F.silu(self.map_noise(torch.cat([arg.cos(), arg.sin()], dim=1)))

    def forward(self, x, sigma, class_labels=None, cond=None, cond_sigma=None):
        x = x.to(torch.float32)
        sigma = sigma_rows(sigma, x)
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, self.sigma_data)
        b, c = x.shape[0], self.img_channels
        if cond is None:  # low pass: the core alone, unconditional, feature channels zero
            if x.shape[-1] != self.low_resolution:
                raise ValueError(f"the low pass takes {self.low_resolution}px images, not {x.shape[-1]}px")
            zeros = x.new_zeros(b, self.feature_channels, *x.shape[-2:])
            f_x = self.core(torch.cat([c_in * x, zeros], 1), c_noise.flatten(), x.new_zeros(b, 2))[:, :c]
            return c_skip * x + c_out * f_x
        if x.shape[-1] != self.img_resolution or cond.shape[-1] != self.low_resolution:
            raise ValueError(f"the high pass takes {self.img_resolution}px images and {self.low_resolution}px "
                             f"conditions, not {x.shape[-1]}px and {cond.shape[-1]}px")
        cs = sigma_rows(cond_sigma, x)
        cond = cond.to(torch.float32) / (self.sigma_data**2 + cs**2).sqrt()
        emb = self._embed(c_noise.flatten())
        h = self.conv_in(torch.cat([c_in * x, upsample(cond, self.img_resolution)], 1))
        skips = []
        for blk in self.enc:  # R -> r
            h = blk(h, emb)
            skips.append(h)
            h = F.avg_pool2d(h, 2)
        labels = torch.cat([x.new_ones(b, 1), cs.reshape(-1, 1)], 1)
        h = self.core(torch.cat([cond, self.to_core(h)], 1), c_noise.flatten(), labels)
        h = self.from_core(h)
        for blk in self.dec:  # r -> R, U-Net skips from the encoder
            h = blk(torch.cat([F.interpolate(h, scale_factor=2, mode="nearest"), skips.pop()], 1), emb)
        f_x = self.conv_out(F.silu(self.norm_out(h)))
        return c_skip * x + c_out * f_x


class LowDiffLoss:
    """EDM loss of one pass: 'low' on avg_pool_k(x0) (unconditional), 'high' on x0 conditioned on
    avg_pool_k(x0) + s e_c, s ~ U(0, aug_max) (the independent Gaussian noise of LowDiff's Figure 2)."""

    def __init__(self, k=4, aug_max=1.0, P_mean=-1.2, P_std=1.2, sigma_data=0.5):
        self.k, self.aug_max = k, aug_max
        self.edm = EDMLoss(P_mean=P_mean, P_std=P_std, sigma_data=sigma_data)

    def __call__(self, net, images, seeds, labels=None, stage="high"):
        if stage == "low":
            return self.edm(net, F.avg_pool2d(images, self.k), seeds, labels)
        if stage != "high":
            raise ValueError(f"stage must be 'low' or 'high', not {stage!r}")
        cond, s = augment_condition(images, seeds, self.k, self.aug_max)
        return self.edm(Bound(net, cond=cond, cond_sigma=s), images, seeds, labels)


@torch.no_grad()
def sample_lowdiff(net, seeds, *, low_steps, high_steps, cond_sigma=0.2, device="cpu", disable=True):
    """Bottom-up generation: the low pass from noise stopped at cond_sigma (truncation), then the high
    pass from noise conditioned on that noisy low-res image. Returns (images, noisy low-res images)."""
    if cond_sigma <= 0:
        raise ValueError("LowDiff's truncation needs cond_sigma > 0")
    seeds = sampling.as_seeds(seeds, device=device)
    c, r, big = net.img_channels, net.low_resolution, net.img_resolution
    low = Bound(net, attrs=dict(img_resolution=r))
    noise = sampling.latents_from_seeds(seeds, (c, r, r), 0, device)
    cond = heun(low, noise, num_steps=low_steps, sigma_min=cond_sigma, truncate=True, disable=disable)
    s = torch.full((seeds.numel(),), float(cond_sigma), device=device)
    hi_noise = sampling.latents_from_seeds(seeds, (c, big, big), sampling.STAGE_STRIDE, device)
    x = heun(Bound(net, cond=cond, cond_sigma=s), hi_noise, num_steps=high_steps, disable=disable)
    return x, cond
