"""Denoiser networks in the structure of NVlabs/edm `training/networks.py`.

`UNet` is a compact ADM/DDPM++-style U-Net (channel multipliers, attention resolutions, dropout,
class conditioning, positional or Fourier noise embedding). `EDMPrecond` wraps it with the EDM
preconditioning (Karras et al. 2022, Table 1) and is the denoiser of both RDM stages:
`net(x, sigma, class_labels=None) -> D(x; sigma)`.

Networks are rebuilt from JSON-able kwargs (`build_network`), so checkpoints never pickle code.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _groups(channels: int) -> int:
    g = min(32, max(channels // 4, 1))
    while channels % g:
        g -= 1
    return g


class PositionalEmbedding(nn.Module):
    """Transformer sinusoidal embedding of the noise level (DDPM++ / ADM)."""

    def __init__(self, num_channels, max_positions=10000):
        super().__init__()
        self.num_channels, self.max_positions = num_channels, max_positions

    def forward(self, x):
        half = self.num_channels // 2
        freqs = torch.arange(half, dtype=torch.float32, device=x.device) / half
        freqs = (1 / self.max_positions) ** freqs
        x = x.float().ger(freqs)
        return torch.cat([x.cos(), x.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features of the noise level (NCSN++); the frequencies are a saved buffer."""

    def __init__(self, num_channels, scale=16):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x):
        x = x.float().ger(2 * np.pi * self.freqs)
        return torch.cat([x.cos(), x.sin()], dim=1)


class UNetBlock(nn.Module):
    """Residual block: GN-SiLU-conv, adaptive (scale, shift) from the embedding, GN-SiLU-dropout-conv,
    optional 2x down/up resampling and self-attention."""

    def __init__(self, in_channels, out_channels, emb_channels, up=False, down=False, attention=False,
                 num_heads=1, dropout=0.0):
        super().__init__()
        self.up, self.down, self.num_heads = up, down, num_heads
        self.norm0 = nn.GroupNorm(_groups(in_channels), in_channels)
        self.conv0 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.affine = nn.Linear(emb_channels, out_channels * 2)
        self.norm1 = nn.GroupNorm(_groups(out_channels), out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv1.weight)  # each block starts as the identity (EDM init_zero)
        nn.init.zeros_(self.conv1.bias)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        self.attn = None
        if attention:
            self.norm2 = nn.GroupNorm(_groups(out_channels), out_channels)
            self.qkv = nn.Conv2d(out_channels, out_channels * 3, 1)
            self.proj = nn.Conv2d(out_channels, out_channels, 1)
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)
            self.attn = True

    def _resample(self, x):
        if self.up:
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.down:
            return F.avg_pool2d(x, 2)
        return x

    def forward(self, x, emb):
        orig = x
        x = self._resample(F.silu(self.norm0(x)))
        x = self.conv0(x)
        scale, shift = self.affine(emb)[:, :, None, None].chunk(2, dim=1)
        x = F.silu(torch.addcmul(shift, self.norm1(x), scale + 1))
        x = self.conv1(self.dropout(x))
        skip = self._resample(orig)
        x = (x + (self.skip(skip) if self.skip is not None else skip)) / math.sqrt(2)
        if self.attn:
            b, c, h, w = x.shape
            qkv = self.qkv(self.norm2(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w)
            q, k, v = qkv.unbind(1)
            a = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
            x = (x + self.proj(a.transpose(-1, -2).reshape(b, c, h, w))) / math.sqrt(2)
        return x


class UNet(nn.Module):
    """ADM-style U-Net (EDM's DhariwalUNet, reduced): F(x, c_noise, class_labels)."""

    def __init__(self, img_resolution, in_channels, out_channels, label_dim=0, model_channels=32,
                 channel_mult=(1, 2, 2), num_blocks=1, attn_resolutions=(8,), dropout=0.0,
                 label_dropout=0.0, embedding_type="positional", num_heads=1):
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = model_channels * 4
        if embedding_type == "positional":
            self.map_noise = PositionalEmbedding(model_channels)
        elif embedding_type == "fourier":
            self.map_noise = FourierEmbedding(model_channels)
        else:
            raise ValueError(f"embedding_type must be 'positional' or 'fourier', not {embedding_type!r}")
        self.map_label = nn.Linear(label_dim, emb_channels, bias=False) if label_dim else None
        self.map_layer0 = nn.Linear(model_channels, emb_channels)
        self.map_layer1 = nn.Linear(emb_channels, emb_channels)
        block = dict(emb_channels=emb_channels, num_heads=num_heads, dropout=dropout)

        self.conv_in = nn.Conv2d(in_channels, model_channels, 3, padding=1)
        self.enc = nn.ModuleList()
        skips = [model_channels]
        cout = model_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level > 0:
                self.enc.append(UNetBlock(cout, cout, down=True, **block))
                skips.append(cout)
            for _ in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc.append(UNetBlock(cin, cout, attention=res in attn_resolutions, **block))
                skips.append(cout)
        self.mid = nn.ModuleList([UNetBlock(cout, cout, attention=True, **block),
                                  UNetBlock(cout, cout, **block)])
        self.dec = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level < len(channel_mult) - 1:
                self.dec.append(UNetBlock(cout, cout, up=True, **block))
            for _ in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                self.dec.append(UNetBlock(cin, cout, attention=res in attn_resolutions, **block))
        self.norm_out = nn.GroupNorm(_groups(cout), cout)
        self.conv_out = nn.Conv2d(cout, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x, noise_labels, class_labels=None):
        emb = self.map_layer1(F.silu(self.map_layer0(self.map_noise(noise_labels))))
        if self.map_label is not None and class_labels is not None:
            if self.training and self.label_dropout:
                # Label dropout trains the unconditional model used by classifier-free guidance.
                keep = torch.rand([x.shape[0], 1], device=x.device) >= self.label_dropout
                class_labels = class_labels * keep.to(class_labels.dtype)
            emb = emb + self.map_label(class_labels.to(emb.dtype))
        emb = F.silu(emb)

        x = self.conv_in(x)
        skips = [x]
        for blk in self.enc:
            x = blk(x, emb)
            skips.append(x)
        for blk in self.mid:
            x = blk(x, emb)
        for blk in self.dec:
            if not blk.up:
                x = torch.cat([x, skips.pop()], dim=1)
            x = blk(x, emb)
        return self.conv_out(F.silu(self.norm_out(x)))


class EDMPrecond(nn.Module):
    """D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) (EDM Table 1, sigma_data = 0.5)."""

    def __init__(self, img_resolution, img_channels=3, label_dim=0, sigma_data=0.5, **model_kwargs):
        super().__init__()
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.label_dim, self.sigma_data = label_dim, sigma_data
        self.model = UNet(img_resolution, img_channels, img_channels, label_dim=label_dim, **model_kwargs)

    def forward(self, x, sigma, class_labels=None):
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1, 1, 1, 1)
        sigma = sigma.expand(x.shape[0], 1, 1, 1)
        if self.label_dim == 0:
            class_labels = None
        elif class_labels is None:
            class_labels = torch.zeros(x.shape[0], self.label_dim, device=x.device)
        elif class_labels.dtype in (torch.int32, torch.int64):
            class_labels = F.one_hot(class_labels, self.label_dim).to(torch.float32)
        sd = self.sigma_data
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
        c_in = 1 / (sd**2 + sigma**2).sqrt()
        c_noise = sigma.log() / 4
        f_x = self.model(c_in * x, c_noise.flatten(), class_labels)
        return c_skip * x + c_out * f_x.to(torch.float32)


def build_network(spec: dict) -> EDMPrecond:
    """Rebuild a network from its JSON config {'class_name': 'EDMPrecond', 'kwargs': {...}}."""
    if spec.get("class_name", "EDMPrecond") != "EDMPrecond":
        raise ValueError(f"unknown network class {spec['class_name']!r}")
    kwargs = dict(spec["kwargs"])
    for key in ("channel_mult", "attn_resolutions"):
        if key in kwargs:
            kwargs[key] = tuple(kwargs[key])
    return EDMPrecond(**kwargs)
