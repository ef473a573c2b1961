"""EDM's preconditioners (Karras et al. 2022, Table 1): VPPrecond, VEPrecond, iDDPMPrecond and
EDMPrecond, each wrapping one U-Net of relaydiff/unets.py as in NVlabs/edm `training/networks.py`
(relaydiff/networks.py re-exports them), and edm_coefficients, the one home of their formulas."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .unets import MODEL_TYPES


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
