"""EDM's U-Nets and preconditioners: relaydiff's one network family.

`SongUNet` (DDPM++ / NCSN++) and `DhariwalUNet` (ADM) with the preconditioning wrappers `EDMPrecond`,
`VPPrecond`, `VEPrecond` and `iDDPMPrecond`, in the structure of NVlabs/edm `training/networks.py`:
the same class names, constructor arguments and defaults, module and state_dict names, initialisation
and order of operations, so weights from EDM's `.pkl` snapshots and RDM's `.pt` files (THUDM/
RelayDiffusion, whose `training/networks.py` forks EDM's) load here and give the same outputs.
The building blocks live in relaydiff/layers.py and are re-exported here, so every class of EDM's
file is importable as `relaydiff.networks.<ClassName>`. docs/NETWORKS.md lists the state_dict key
patterns per option and every difference from EDM's and RDM's files.

Denoiser call: `net(x, sigma, class_labels=None, force_fp32=False, **model_kwargs) -> D(x; sigma)`;
model call: `model(x, noise_labels, class_labels, augment_labels=None) -> F(x)`. relaydiff's own
runs rebuild networks from a JSON-able spec (`build_network`), so checkpoints never pickle code.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.functional import silu

from .layers import (
    AttentionOp,
    Conv2d,
    FourierEmbedding,
    GroupNorm,
    Linear,
    PositionalEmbedding,
    UNetBlock,
    weight_init,
)

__all__ = ["weight_init", "Linear", "Conv2d", "GroupNorm", "AttentionOp", "UNetBlock", "PositionalEmbedding",
           "FourierEmbedding", "SongUNet", "DhariwalUNet", "VPPrecond", "VEPrecond", "iDDPMPrecond", "EDMPrecond",
           "MODEL_TYPES", "ARCH_PRESETS", "PRECONDS", "build_network", "check_network_family", "OLD_FAMILY_MESSAGE"]


def _drop_labels(class_labels, label_dropout, training, batch, device):
    """Label dropout (for classifier-free guidance): each image's labels zeroed with this probability."""
    if training and label_dropout:
        keep = torch.rand([batch, 1], device=device) >= label_dropout
        return class_labels * keep.to(class_labels.dtype)
    return class_labels


def _level_channels(model_channels, mult) -> int:
    """A level's channel count model_channels * mult as an int. RDM's 512/1024 stages (paper Table 5)
    use multipliers of 0.5, which EDM's U-Nets take as long as the product is a whole number."""
    channels = model_channels * mult
    if isinstance(mult, bool) or not isinstance(mult, (int, float)) or channels < 1 or channels != int(channels):
        raise ValueError(f"channel multiplier {mult!r} times model_channels {model_channels} is not a whole "
                         f"number of channels (>= 1)")
    return int(channels)


class SongUNet(nn.Module):
    """DDPM++ / NCSN++ (Song et al. 2021) as reimplemented in EDM. Presets (EDM's train.py):
    DDPM++: embedding_type='positional', channel_mult_noise=1, encoder_type='standard', resample_filter=[1,1];
    NCSN++: embedding_type='fourier', channel_mult_noise=2, encoder_type='residual', resample_filter=[1,3,3,1].
    Blocks scale their residual sums by sqrt(1/2), GroupNorm eps 1e-6, one attention head, the noise
    embedding's halves swapped to [sin, cos]."""

    def __init__(self, img_resolution, in_channels, out_channels, label_dim=0, augment_dim=0,
                 model_channels=128, channel_mult=(1, 2, 2, 2), channel_mult_emb=4, num_blocks=4,
                 attn_resolutions=(16,), dropout=0.10, label_dropout=0, embedding_type="positional",
                 channel_mult_noise=1, encoder_type="standard", decoder_type="standard", resample_filter=(1, 1),
                 eff_attn=False):
        for name, value, allowed in (("embedding_type", embedding_type, ("fourier", "positional")),
                                     ("encoder_type", encoder_type, ("standard", "skip", "residual")),
                                     ("decoder_type", decoder_type, ("standard", "skip"))):
            if value not in allowed:
                raise ValueError(f"SongUNet: {name} must be one of {list(allowed)}, not {value!r}")
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        init = dict(init_mode="xavier_uniform")
        init_zero = dict(init_mode="xavier_uniform", init_weight=1e-5)
        init_attn = dict(init_mode="xavier_uniform", init_weight=np.sqrt(0.2))
        block = dict(emb_channels=emb_channels, num_heads=1, dropout=dropout, skip_scale=np.sqrt(0.5), eps=1e-6,
                     resample_filter=resample_filter, resample_proj=True, adaptive_scale=False, init=init,
                     init_zero=init_zero, init_attn=init_attn, eff_attn=eff_attn)

        # Mapping: noise (and label, augmentation) embedding -> emb_channels.
        if embedding_type == "positional":
            self.map_noise = PositionalEmbedding(num_channels=noise_channels, endpoint=True)
        else:
            self.map_noise = FourierEmbedding(num_channels=noise_channels)
        self.map_label = Linear(label_dim, noise_channels, **init) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_channels, bias=False, **init) if augment_dim else None
        self.map_layer0 = Linear(noise_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)

        # Encoder: one entry per resolution level; 'aux' entries carry the image pyramid (skip/residual).
        self.enc = nn.ModuleDict()
        cout = caux = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels
                self.enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, kernel=3, **init)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block)
                if encoder_type == "skip":
                    self.enc[f"{res}x{res}_aux_down"] = Conv2d(caux, caux, kernel=0, down=True,
                                                               resample_filter=resample_filter)
                    self.enc[f"{res}x{res}_aux_skip"] = Conv2d(caux, cout, kernel=1, **init)
                if encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(caux, cout, kernel=3, down=True,
                                                                   resample_filter=resample_filter,
                                                                   fused_resample=True, **init)
                    caux = cout
            for idx in range(num_blocks):
                cin, cout = cout, _level_channels(model_channels, mult)
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=res in attn_resolutions,
                                                                **block)
        skips = [b.out_channels for name, b in self.enc.items() if "aux" not in name]

        # Decoder: the lowest level starts with an attention block; only its last block per level attends.
        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), _level_channels(model_channels, mult)
                attn = idx == num_blocks and res in attn_resolutions
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=attn, **block)
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < len(channel_mult) - 1:
                    self.dec[f"{res}x{res}_aux_up"] = Conv2d(out_channels, out_channels, kernel=0, up=True,
                                                             resample_filter=resample_filter)
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(num_channels=cout, eps=1e-6)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(cout, out_channels, kernel=3, **init_zero)

    def forward(self, x, noise_labels, class_labels, augment_labels=None):
        emb = self.map_noise(noise_labels)
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(*emb.shape)  # [cos, sin] -> [sin, cos]
        if self.map_label is not None:
            labels = _drop_labels(class_labels, self.label_dropout, self.training, x.shape[0], x.device)
            emb = emb + self.map_label(labels * np.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = silu(self.map_layer0(emb))
        emb = silu(self.map_layer1(emb))

        skips, aux = [], x
        for name, block in self.enc.items():
            if "aux_down" in name:
                aux = block(aux)
            elif "aux_skip" in name:
                x = skips[-1] = x + block(aux)
            elif "aux_residual" in name:
                x = skips[-1] = aux = (x + block(aux)) / np.sqrt(2)
            else:
                x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
                skips.append(x)

        aux = tmp = None
        for name, block in self.dec.items():
            if "aux_up" in name:
                aux = block(aux)
            elif "aux_norm" in name:
                tmp = block(x)
            elif "aux_conv" in name:
                tmp = block(silu(tmp))
                aux = tmp if aux is None else tmp + aux
            else:
                if x.shape[1] != block.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb)
        return aux


class DhariwalUNet(nn.Module):
    """ADM (Dhariwal & Nichol 2021) as reimplemented in EDM: adaptive scale/shift blocks, no skip
    scaling, GroupNorm eps 1e-5, out_channels // channels_per_head attention heads (blocks narrower
    than channels_per_head get none, as in EDM), labels added after the noise MLP.

    channels_per_head is a relaydiff option (EDM fixes it at 64) so small networks can attend."""

    def __init__(self, img_resolution, in_channels, out_channels, label_dim=0, augment_dim=0,
                 model_channels=192, channel_mult=(1, 2, 3, 4), channel_mult_emb=4, num_blocks=3,
                 attn_resolutions=(32, 16, 8), dropout=0.10, label_dropout=0, eff_attn=False, channels_per_head=64):
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        init = dict(init_mode="kaiming_uniform", init_weight=np.sqrt(1 / 3), init_bias=np.sqrt(1 / 3))
        init_zero = dict(init_mode="kaiming_uniform", init_weight=0, init_bias=0)
        block = dict(emb_channels=emb_channels, channels_per_head=channels_per_head, dropout=dropout, init=init,
                     init_zero=init_zero, eff_attn=eff_attn)

        self.map_noise = PositionalEmbedding(num_channels=model_channels)
        self.map_augment = Linear(augment_dim, model_channels, bias=False, **init_zero) if augment_dim else None
        self.map_layer0 = Linear(model_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)
        self.map_label = Linear(label_dim, emb_channels, bias=False, init_mode="kaiming_normal",
                                init_weight=np.sqrt(label_dim)) if label_dim else None

        self.enc = nn.ModuleDict()
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, _level_channels(model_channels, mult)
                self.enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, kernel=3, **init)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block)
            for idx in range(num_blocks):
                cin, cout = cout, _level_channels(model_channels, mult)
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=res in attn_resolutions,
                                                                **block)
        skips = [b.out_channels for b in self.enc.values()]

        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), _level_channels(model_channels, mult)
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=res in attn_resolutions,
                                                                **block)
        self.out_norm = GroupNorm(num_channels=cout)
        self.out_conv = Conv2d(cout, out_channels, kernel=3, **init_zero)

    def forward(self, x, noise_labels, class_labels, augment_labels=None):
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(silu(self.map_layer0(emb)))
        if self.map_label is not None:
            emb = emb + self.map_label(_drop_labels(class_labels, self.label_dropout, self.training, x.shape[0],
                                                    x.device))
        emb = silu(emb)

        skips = []
        for block in self.enc.values():
            x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)
        for block in self.dec.values():
            if x.shape[1] != block.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
        return self.out_conv(silu(self.out_norm(x)))


MODEL_TYPES = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}


def _make_model(model_type, **kwargs):
    if not isinstance(model_type, str) or model_type not in MODEL_TYPES:
        raise ValueError(f"model_type must be one of {sorted(MODEL_TYPES)}, not {model_type!r}")
    return MODEL_TYPES[model_type](**kwargs)


class _Precond(nn.Module):
    """What the four preconditioners share: input conversion and the fp16 switch (as EDM's)."""

    def _inputs(self, x, sigma, class_labels, force_fp32):
        """(x float32, sigma [N|1, 1, 1, 1] float32, class labels [N|1, label_dim] float32 or None, model dtype).

        Beyond EDM: sigma may be a Python number, and integer class labels [N] are one-hot encoded."""
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, device=x.device).to(torch.float32).reshape(-1, 1, 1, 1)
        if self.label_dim == 0:
            class_labels = None
        elif class_labels is None:
            class_labels = torch.zeros([1, self.label_dim], device=x.device)
        else:
            if not torch.is_floating_point(class_labels):
                class_labels = F.one_hot(class_labels.long().reshape(-1), self.label_dim)
            class_labels = class_labels.to(torch.float32).reshape(-1, self.label_dim)
        # fp16 only on CUDA, as in EDM: on the CPU use_fp16 runs the model in float32.
        fp16 = self.use_fp16 and not force_fp32 and x.device.type == "cuda"
        return x, sigma, class_labels, torch.float16 if fp16 else torch.float32

    def _output(self, x, f_x, c_skip, c_out, dtype, n_channels=None):
        if f_x.dtype != dtype:
            raise RuntimeError(f"{type(self).__name__}: the model returned {f_x.dtype}, expected {dtype}")
        f_x = f_x if n_channels is None else f_x[:, :n_channels]
        return c_skip * x + c_out * f_x.to(torch.float32)


class VPPrecond(_Precond):
    """Variance preserving (Song et al. 2021) preconditioning, EDM Table 1."""

    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, beta_d=19.9, beta_min=0.1,
                 M=1000, epsilon_t=1e-5, model_type="SongUNet", **model_kwargs):
        super().__init__()
        self.img_resolution, self.img_channels, self.label_dim, self.use_fp16 = (img_resolution, img_channels,
                                                                                 label_dim, use_fp16)
        self.beta_d, self.beta_min, self.M, self.epsilon_t = beta_d, beta_min, M, epsilon_t
        self.sigma_min = float(self.sigma(epsilon_t))
        self.sigma_max = float(self.sigma(1))
        self.model = _make_model(model_type, img_resolution=img_resolution, in_channels=img_channels,
                                 out_channels=img_channels, label_dim=label_dim, **model_kwargs)

    def forward(self, x, sigma, class_labels=None, force_fp32=False, **model_kwargs):
        x, sigma, class_labels, dtype = self._inputs(x, sigma, class_labels, force_fp32)
        c_skip, c_out = 1, -sigma
        c_in = 1 / (sigma**2 + 1).sqrt()
        c_noise = (self.M - 1) * self.sigma_inv(sigma)
        f_x = self.model((c_in * x).to(dtype), c_noise.flatten(), class_labels=class_labels, **model_kwargs)
        return self._output(x, f_x, c_skip, c_out, dtype)

    def sigma(self, t):
        t = torch.as_tensor(t)
        return ((0.5 * self.beta_d * (t**2) + self.beta_min * t).exp() - 1).sqrt()

    def sigma_inv(self, sigma):
        sigma = torch.as_tensor(sigma)
        return ((self.beta_min**2 + 2 * self.beta_d * (1 + sigma**2).log()).sqrt() - self.beta_min) / self.beta_d

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)


class VEPrecond(_Precond):
    """Variance exploding (Song et al. 2021) preconditioning, EDM Table 1."""

    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, sigma_min=0.02, sigma_max=100,
                 model_type="SongUNet", **model_kwargs):
        super().__init__()
        self.img_resolution, self.img_channels, self.label_dim, self.use_fp16 = (img_resolution, img_channels,
                                                                                 label_dim, use_fp16)
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.model = _make_model(model_type, img_resolution=img_resolution, in_channels=img_channels,
                                 out_channels=img_channels, label_dim=label_dim, **model_kwargs)

    def forward(self, x, sigma, class_labels=None, force_fp32=False, **model_kwargs):
        x, sigma, class_labels, dtype = self._inputs(x, sigma, class_labels, force_fp32)
        c_skip, c_out, c_in = 1, sigma, 1
        c_noise = (0.5 * sigma).log()
        f_x = self.model((c_in * x).to(dtype), c_noise.flatten(), class_labels=class_labels, **model_kwargs)
        return self._output(x, f_x, c_skip, c_out, dtype)

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)


class iDDPMPrecond(_Precond):  # noqa: N801 (EDM's class name)
    """Improved DDPM (Nichol & Dhariwal 2021) preconditioning, EDM Table 1: sigma is rounded to the
    M discrete levels `u` (a buffer); the model predicts 2 * img_channels (mean and variance)."""

    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, C_1=0.001, C_2=0.008, M=1000,
                 model_type="DhariwalUNet", **model_kwargs):
        super().__init__()
        self.img_resolution, self.img_channels, self.label_dim, self.use_fp16 = (img_resolution, img_channels,
                                                                                 label_dim, use_fp16)
        self.C_1, self.C_2, self.M = C_1, C_2, M
        self.model = _make_model(model_type, img_resolution=img_resolution, in_channels=img_channels,
                                 out_channels=img_channels * 2, label_dim=label_dim, **model_kwargs)
        # On the CPU even inside `with torch.device("meta")`: sigma_min/sigma_max are read from it here.
        u = torch.zeros(M + 1, device="cpu")
        for j in range(M, 0, -1):  # u_{j-1} from u_j (EDM Table 1, iDDPM column)
            u[j - 1] = ((u[j] ** 2 + 1) / (self.alpha_bar(j - 1) / self.alpha_bar(j)).clip(min=C_1) - 1).sqrt()
        self.register_buffer("u", u)
        self.sigma_min, self.sigma_max = float(u[M - 1]), float(u[0])

    def forward(self, x, sigma, class_labels=None, force_fp32=False, **model_kwargs):
        x, sigma, class_labels, dtype = self._inputs(x, sigma, class_labels, force_fp32)
        c_skip, c_out = 1, -sigma
        c_in = 1 / (sigma**2 + 1).sqrt()
        c_noise = self.M - 1 - self.round_sigma(sigma, return_index=True).to(torch.float32)
        f_x = self.model((c_in * x).to(dtype), c_noise.flatten(), class_labels=class_labels, **model_kwargs)
        return self._output(x, f_x, c_skip, c_out, dtype, n_channels=self.img_channels)

    def alpha_bar(self, j):
        j = torch.as_tensor(j, device="cpu")
        return (0.5 * np.pi * j / self.M / (self.C_2 + 1)).sin() ** 2

    def round_sigma(self, sigma, return_index=False):
        sigma = torch.as_tensor(sigma)
        u = self.u
        index = torch.cdist(sigma.to(u.device).to(torch.float32).reshape(1, -1, 1), u.reshape(1, -1, 1)).argmin(2)
        result = index if return_index else u[index.flatten()].to(sigma.dtype)
        return result.reshape(sigma.shape).to(sigma.device)


def edm_coefficients(sigma, sigma_data: float):
    """(c_skip, c_out, c_in, c_noise) of EDM's preconditioning (Karras et al. 2022, Table 1); the one
    place the formulas live (EDMPrecond, the comparison's conditional denoisers, the diffusers scheduler)."""
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / (sigma**2 + sigma_data**2).sqrt()
    c_in = 1 / (sigma_data**2 + sigma**2).sqrt()
    return c_skip, c_out, c_in, sigma.log() / 4


class EDMPrecond(_Precond):
    """D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) with EDM's choices (Karras et al. 2022, Table 1):
    c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2), c_in = 1 / sqrt(sd^2 +
    sigma^2), c_noise = ln(sigma) / 4, sd = sigma_data. sigma_min/sigma_max are the supported range
    that EDM's and RDM's samplers clamp to; round_sigma is the identity."""

    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, sigma_min=0, sigma_max=float("inf"),
                 sigma_data=0.5, model_type="DhariwalUNet", **model_kwargs):
        super().__init__()
        self.img_resolution, self.img_channels, self.label_dim, self.use_fp16 = (img_resolution, img_channels,
                                                                                 label_dim, use_fp16)
        self.sigma_min, self.sigma_max, self.sigma_data = sigma_min, sigma_max, sigma_data
        self.model = _make_model(model_type, img_resolution=img_resolution, in_channels=img_channels,
                                 out_channels=img_channels, label_dim=label_dim, **model_kwargs)

    def forward(self, x, sigma, class_labels=None, force_fp32=False, **model_kwargs):
        x, sigma, class_labels, dtype = self._inputs(x, sigma, class_labels, force_fp32)
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, self.sigma_data)
        f_x = self.model((c_in * x).to(dtype), c_noise.flatten(), class_labels=class_labels, **model_kwargs)
        return self._output(x, f_x, c_skip, c_out, dtype)

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)


# EDM's train.py --arch presets (the architecture-defining kwargs; EDM's train.py also sets model_channels
# 128/128/192 and channel_mult [2,2,2]/[2,2,2]/[1,2,3,4], which relaydiff's training takes from its options).
ARCH_PRESETS = {
    "ddpmpp": dict(model_type="SongUNet", embedding_type="positional", encoder_type="standard",
                   decoder_type="standard", channel_mult_noise=1, resample_filter=[1, 1]),
    "ncsnpp": dict(model_type="SongUNet", embedding_type="fourier", encoder_type="residual",
                   decoder_type="standard", channel_mult_noise=2, resample_filter=[1, 3, 3, 1]),
    "adm": dict(model_type="DhariwalUNet"),
}

PRECONDS = {"EDMPrecond": EDMPrecond, "VPPrecond": VPPrecond, "VEPrecond": VEPrecond, "iDDPMPrecond": iDDPMPrecond}

OLD_FAMILY_MESSAGE = ("relaydiff's network family changed to EDM's (SongUNet / DhariwalUNet inside EDMPrecond, "
                      "as in NVlabs/edm); this {what} is from an older relaydiff whose UNet no longer exists, so "
                      "the run must be retrained (python -m relaydiff.train --arch ...)")

# kwargs only the old relaydiff UNet took (EDM's U-Nets have none of them).
_OLD_ONLY_KWARGS = ("num_heads",)


def check_network_family(spec, what: str = "network config") -> None:
    """ValueError (OLD_FAMILY_MESSAGE) for a spec written by an older relaydiff: such configs name no
    model_type (relaydiff always writes it now) or pass the old UNet's kwargs."""
    kwargs = spec.get("kwargs") if isinstance(spec, dict) else None
    if isinstance(kwargs, dict) and ("model_type" not in kwargs or any(k in kwargs for k in _OLD_ONLY_KWARGS)):
        raise ValueError(OLD_FAMILY_MESSAGE.format(what=what))


def build_network(spec: dict) -> nn.Module:
    """Rebuild a network from its JSON config {'class_name': 'EDMPrecond'|'VPPrecond'|'VEPrecond'|
    'iDDPMPrecond', 'kwargs': {... 'model_type': 'SongUNet'|'DhariwalUNet', ...}}; lists may stand for
    tuples (channel_mult, attn_resolutions, resample_filter). Unknown classes, model types or kwargs
    are a ValueError / TypeError naming them; a config of the old relaydiff UNet is refused
    (check_network_family)."""
    if not isinstance(spec, dict) or not isinstance(spec.get("kwargs"), dict):
        raise ValueError(f"a network spec is {{'class_name': ..., 'kwargs': {{...}}}}, not {spec!r}")
    name = spec.get("class_name", "EDMPrecond")
    if not isinstance(name, str) or name not in PRECONDS:
        raise ValueError(f"unknown network class {name!r} (one of {sorted(PRECONDS)})")
    check_network_family(spec)
    return PRECONDS[name](**spec["kwargs"])
