"""EDM's network building blocks: layers with EDM's parameters, buffers, initialisation and numerics.

Class names, constructor arguments and defaults, attribute and state_dict names, and the order of
operations follow NVlabs/edm `training/networks.py` (Karras et al. 2022), so weights saved by EDM
or by the RDM release (THUDM/RelayDiffusion, a fork of that file) load into these modules and give
the same outputs to float rounding. Differences from EDM's file are listed in docs/NETWORKS.md.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.functional import silu


def weight_init(shape, mode: str, fan_in: int, fan_out: int) -> torch.Tensor:
    """A freshly drawn float32 tensor of the given shape (EDM's four init modes)."""
    if mode not in _INIT_MODES:
        raise ValueError(f"weight_init: unknown init mode {mode!r} (one of {', '.join(_INIT_MODES)})")
    if torch.get_default_device().type == "meta":
        # Built for its shapes only (checkpoint.build_checked): meta tensors have no values to draw, and
        # the arithmetic below would cost milliseconds per op there (a 300 M-parameter ADM: 20 s instead of 3).
        return torch.empty(*shape)
    if mode == "xavier_uniform":
        return np.sqrt(6 / (fan_in + fan_out)) * (torch.rand(*shape) * 2 - 1)
    if mode == "xavier_normal":
        return np.sqrt(2 / (fan_in + fan_out)) * torch.randn(*shape)
    if mode == "kaiming_uniform":
        return np.sqrt(3 / fan_in) * (torch.rand(*shape) * 2 - 1)
    return np.sqrt(1 / fan_in) * torch.randn(*shape)


_INIT_MODES = ("xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal")


class Linear(nn.Module):
    """y = x W^T + b with W [out_features, in_features]; weights cast to the input's dtype (fp16 path)."""

    def __init__(self, in_features, out_features, bias=True, init_mode="kaiming_normal", init_weight=1, init_bias=0):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        fans = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
        self.weight = nn.Parameter(weight_init([out_features, in_features], **fans) * init_weight)
        self.bias = nn.Parameter(weight_init([out_features], **fans) * init_bias) if bias else None

    def forward(self, x):
        x = x @ self.weight.to(x.dtype).t()
        if self.bias is not None:
            x = x + self.bias.to(x.dtype)
        return x


class Conv2d(nn.Module):
    """Square convolution (kernel 0: none, only the resampling) with optional 2x up/down resampling by
    the separable FIR filter `resample_filter` (saved as a [1, 1, f, f] buffer when up or down)."""

    def __init__(self, in_channels, out_channels, kernel, bias=True, up=False, down=False, resample_filter=(1, 1),
                 fused_resample=False, init_mode="kaiming_normal", init_weight=1, init_bias=0):
        if up and down:
            raise ValueError("Conv2d: up and down cannot both be set")
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.up, self.down, self.fused_resample = up, down, fused_resample
        fans = dict(mode=init_mode, fan_in=in_channels * kernel * kernel, fan_out=out_channels * kernel * kernel)
        self.weight = nn.Parameter(
            weight_init([out_channels, in_channels, kernel, kernel], **fans) * init_weight) if kernel else None
        self.bias = nn.Parameter(weight_init([out_channels], **fans) * init_bias) if kernel and bias else None
        f = torch.as_tensor(resample_filter, dtype=torch.float32)
        f = f.ger(f).unsqueeze(0).unsqueeze(1) / f.sum().square()  # outer product, normalised to sum 1
        self.register_buffer("resample_filter", f if up or down else None)

    def forward(self, x):
        w = self.weight.to(x.dtype) if self.weight is not None else None
        b = self.bias.to(x.dtype) if self.bias is not None else None
        f = self.resample_filter.to(x.dtype) if self.resample_filter is not None else None
        w_pad = w.shape[-1] // 2 if w is not None else 0
        f_pad = (f.shape[-1] - 1) // 2 if f is not None else 0
        # Upsampling filters are scaled by 4 so a transposed conv with stride 2 keeps the mean.
        if self.fused_resample and self.up and w is not None:
            # RDM's padding (EDM's w_pad + f_pad shrinks the output to 2H - 4; no U-Net uses this path).
            x = F.conv_transpose2d(x, f.mul(4).tile([self.in_channels, 1, 1, 1]), groups=self.in_channels,
                                   stride=2, padding=max(f_pad - w_pad, 0))
            x = F.conv2d(x, w, padding=max(w_pad - f_pad, 0))
        elif self.fused_resample and self.down and w is not None:
            x = F.conv2d(x, w, padding=w_pad + f_pad)
            x = F.conv2d(x, f.tile([self.out_channels, 1, 1, 1]), groups=self.out_channels, stride=2)
        else:
            if self.up:
                x = F.conv_transpose2d(x, f.mul(4).tile([self.in_channels, 1, 1, 1]), groups=self.in_channels,
                                       stride=2, padding=f_pad)
            if self.down:
                x = F.conv2d(x, f.tile([self.in_channels, 1, 1, 1]), groups=self.in_channels, stride=2,
                             padding=f_pad)
            if w is not None:
                x = F.conv2d(x, w, padding=w_pad)
        if b is not None:
            x = x + b.reshape(1, -1, 1, 1)
        return x


class GroupNorm(nn.Module):
    """Group normalisation with EDM's group count min(num_groups, num_channels // min_channels_per_group)."""

    def __init__(self, num_channels, num_groups=32, min_channels_per_group=4, eps=1e-5):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        if self.num_groups < 1 or num_channels % self.num_groups:
            # EDM fails only in forward; say it at construction, naming EDM's rule.
            raise ValueError(f"GroupNorm: {num_channels} channels cannot be split into min({num_groups}, "
                             f"{num_channels} // {min_channels_per_group}) = {self.num_groups} equal groups "
                             f"(EDM's rule); choose channel counts that are multiples of 4")
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x):
        return F.group_norm(x, num_groups=self.num_groups, weight=self.weight.to(x.dtype),
                            bias=self.bias.to(x.dtype), eps=self.eps)


class AttentionOp(torch.autograd.Function):
    """softmax over keys of q^T k / sqrt(c) for q, k [n, c, tokens], computed in float32 and returned
    in q's dtype (EDM keeps fp16 activations but an fp32 softmax)."""

    @staticmethod
    def forward(ctx, q, k):
        w = torch.einsum("ncq,nck->nqk", q.to(torch.float32), (k / np.sqrt(k.shape[1])).to(torch.float32))
        w = w.softmax(dim=2).to(q.dtype)
        ctx.save_for_backward(q, k, w)
        return w

    @staticmethod
    def backward(ctx, dw):
        q, k, w = ctx.saved_tensors
        w32, dw32 = w.to(torch.float32), dw.to(torch.float32)
        dlogits = w32 * (dw32 - (dw32 * w32).sum(dim=2, keepdim=True))  # softmax backward
        dq = torch.einsum("nck,nqk->ncq", k.to(torch.float32), dlogits).to(q.dtype) / np.sqrt(k.shape[1])
        dk = torch.einsum("ncq,nqk->nck", q.to(torch.float32), dlogits).to(k.dtype) / np.sqrt(k.shape[1])
        return dq, dk


class UNetBlock(nn.Module):
    """EDM's residual block, the union of the DDPM++, NCSN++ and ADM blocks: GN-SiLU-conv0 (with
    optional up/down), the embedding as a shift (adaptive_scale=False) or a scale and shift, GN-SiLU-
    dropout-conv1, a skip (1x1 conv when the channels change or resample_proj), times skip_scale;
    then optional multi-head self-attention, its residual times skip_scale again.

    num_heads (or out_channels // channels_per_head when None; 0 heads: no attention) splits the qkv
    conv's output as [batch * heads, channels / heads, 3, tokens]. eff_attn (RDM's option) computes
    the same attention with torch's fused scaled_dot_product_attention instead of AttentionOp."""

    def __init__(self, in_channels, out_channels, emb_channels, up=False, down=False, attention=False,
                 num_heads=None, channels_per_head=64, dropout=0, skip_scale=1, eps=1e-5, resample_filter=(1, 1),
                 resample_proj=False, adaptive_scale=True, init=None, init_zero=None, init_attn=None,
                 eff_attn=False):
        super().__init__()
        init = {} if init is None else init
        init_zero = dict(init_weight=0) if init_zero is None else init_zero
        self.in_channels, self.out_channels, self.emb_channels = in_channels, out_channels, emb_channels
        heads = num_heads if num_heads is not None else out_channels // channels_per_head
        self.num_heads = heads if attention else 0
        self.dropout, self.skip_scale, self.adaptive_scale = dropout, skip_scale, adaptive_scale
        self.eff_attn = eff_attn

        self.norm0 = GroupNorm(num_channels=in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, kernel=3, up=up, down=down, resample_filter=resample_filter,
                            **init)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1), **init)
        self.norm1 = GroupNorm(num_channels=out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, kernel=3, **init_zero)
        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(in_channels, out_channels, kernel=kernel, up=up, down=down,
                               resample_filter=resample_filter, **init)
        if self.num_heads:
            if out_channels % self.num_heads:
                raise ValueError(f"UNetBlock: {out_channels} channels cannot be split into {self.num_heads} heads")
            self.norm2 = GroupNorm(num_channels=out_channels, eps=eps)
            init_qkv = init_attn if init_attn is not None else init
            self.qkv = Conv2d(out_channels, out_channels * 3, kernel=1, **init_qkv)
            self.proj = Conv2d(out_channels, out_channels, kernel=1, **init_zero)

    def forward(self, x, emb):
        orig = x
        x = self.conv0(silu(self.norm0(x)))
        params = self.affine(emb).unsqueeze(2).unsqueeze(3).to(x.dtype)
        if self.adaptive_scale:
            scale, shift = params.chunk(chunks=2, dim=1)
            x = silu(torch.addcmul(shift, self.norm1(x), scale + 1))
        else:
            x = silu(self.norm1(x + params))
        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        x = (x + (self.skip(orig) if self.skip is not None else orig)) * self.skip_scale

        if self.num_heads:
            # Head layout: channel c of head h is qkv channel (h * C/heads + c) * 3 + {0: q, 1: k, 2: v}.
            q, k, v = self.qkv(self.norm2(x)).reshape(x.shape[0] * self.num_heads, x.shape[1] // self.num_heads,
                                                      3, -1).unbind(2)
            if self.eff_attn:
                a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
                a = a.transpose(1, 2)
            else:
                a = torch.einsum("nqk,nck->ncq", AttentionOp.apply(q, k), v)
            x = (self.proj(a.reshape(*x.shape)) + x) * self.skip_scale
        return x


class PositionalEmbedding(nn.Module):
    """[cos(x f_i), sin(x f_i)] with f_i = (1 / max_positions)^(i / (num_channels/2 - endpoint)): the
    transformer timestep embedding (ADM; DDPM++ with endpoint=True)."""

    def __init__(self, num_channels, max_positions=10000, endpoint=False):
        super().__init__()
        self.num_channels, self.max_positions, self.endpoint = num_channels, max_positions, endpoint

    def forward(self, x):
        half = self.num_channels // 2
        freqs = torch.arange(start=0, end=half, dtype=torch.float32, device=x.device)
        freqs = (1 / self.max_positions) ** (freqs / (half - (1 if self.endpoint else 0)))
        x = x.ger(freqs.to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """[cos(2 pi x f_i), sin(2 pi x f_i)] with random frequencies f ~ N(0, scale^2), saved as the
    buffer `freqs` (NCSN++)."""

    def __init__(self, num_channels, scale=16):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x):
        x = x.ger((2 * np.pi * self.freqs).to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


__all__ = ["weight_init", "Linear", "Conv2d", "GroupNorm", "AttentionOp", "UNetBlock", "PositionalEmbedding",
           "FourierEmbedding"]
