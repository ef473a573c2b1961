"""Networks of the method comparison (relaydiff.compare): the one U-Net factory, EDM preconditioning
with an optional low-resolution conditioning image, and a wrapper that binds that conditioning.

Every U-Net of the comparison is built by `make_unet`: NVlabs/edm's SongUNet with the DDPM++ settings
(`networks.ARCH_PRESETS["ddpmpp"]`, relaydiff.train's default architecture), so every method runs the
same backbone; switching it (e.g. to DhariwalUNet) changes this one function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..networks import ARCH_PRESETS, SongUNet, edm_coefficients


def make_unet(img_resolution, in_channels, out_channels, label_dim=0, model_channels=16, channel_mult=(1, 2, 2),
              num_blocks=1, attn_resolutions=(8,), dropout=0.0) -> nn.Module:
    """The comparison's only U-Net constructor: F(x, noise_labels, class_labels) -> [B, out_channels, H, W]."""
    arch = {key: value for key, value in ARCH_PRESETS["ddpmpp"].items() if key != "model_type"}
    return SongUNet(img_resolution, in_channels, out_channels, label_dim=label_dim, model_channels=model_channels,
                    channel_mult=list(channel_mult), num_blocks=num_blocks, attn_resolutions=list(attn_resolutions),
                    dropout=dropout, **arch)


def upsample(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """Nearest upsampling to resolution (the same operator the relay sampler starts from)."""
    if x.shape[-1] == resolution:
        return x
    if resolution % x.shape[-1]:
        raise ValueError(f"cannot upsample {x.shape[-1]}px to {resolution}px by an integer factor")
    return F.interpolate(x, scale_factor=resolution // x.shape[-1], mode="nearest")


def sigma_rows(sigma, x: torch.Tensor) -> torch.Tensor:
    """A scalar or [B] noise level as a float32 [B, 1, 1, 1] tensor on x's device."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1, 1, 1, 1)
    return sigma.expand(x.shape[0], 1, 1, 1)


class Precond(nn.Module):
    """D(x; sigma, cond) = c_skip x + c_out F([c_in x, c_cond up(cond)]; c_noise, cond_sigma) (EDM Table 1).

    cond_channels = 0: a plain EDM denoiser (single stage, relay stages). cond_channels > 0: a
    super-resolution denoiser (CDM, Ho et al. 2022): the conditioning image is upsampled to the net's
    resolution and concatenated to its input, scaled by c_cond = 1 / sqrt(sd^2 + cond_sigma^2) like
    c_in, and its augmentation level cond_sigma is the U-Net's one label (Ho et al. condition on it).
    """

    def __init__(self, img_resolution, img_channels=3, cond_channels=0, sigma_data=0.5, **unet_kwargs):
        super().__init__()
        self.img_resolution, self.img_channels, self.cond_channels = img_resolution, img_channels, cond_channels
        self.label_dim, self.sigma_data = 0, sigma_data
        self.model = make_unet(img_resolution, img_channels + cond_channels, img_channels,
                               label_dim=1 if cond_channels else 0, **unet_kwargs)

    def forward(self, x, sigma, class_labels=None, cond=None, cond_sigma=None):
        x = x.to(torch.float32)
        sigma = sigma_rows(sigma, x)
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, self.sigma_data)
        inp, labels = c_in * x, None
        if self.cond_channels:
            if cond is None or cond_sigma is None:
                raise ValueError("this denoiser is conditional: give cond (the low-res image) and cond_sigma")
            cs = sigma_rows(cond_sigma, x)
            cond = upsample(cond.to(torch.float32), self.img_resolution) / (self.sigma_data**2 + cs**2).sqrt()
            inp, labels = torch.cat([inp, cond], dim=1), cs.reshape(-1, 1)
        elif cond is not None:
            raise ValueError("this denoiser is unconditional: it takes no cond")
        return c_skip * x + c_out * self.model(inp, c_noise.flatten(), labels).to(torch.float32)


class Bound:
    """net with keyword arguments bound: Bound(net, cond=c)(x, sigma, labels) = net(x, sigma, labels, cond=c).

    Lets a sampler that calls net(x, sigma, class_labels) drive a conditional denoiser; attributes
    (img_resolution, ...) pass through unless given in `attrs`.
    """

    def __init__(self, net, attrs=None, **kwargs):
        self.net, self.kwargs, self.attrs = net, kwargs, dict(attrs or {})

    def __call__(self, x, sigma, class_labels=None):
        return self.net(x, sigma, class_labels, **self.kwargs)

    def __getattr__(self, name):
        attrs = self.__dict__["attrs"]
        return attrs[name] if name in attrs else getattr(self.__dict__["net"], name)


def num_params(*nets) -> int:
    return sum(p.numel() for net in nets for p in net.parameters())
