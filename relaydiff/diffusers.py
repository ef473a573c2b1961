"""The relay sampler (SPEC 6, RDM Algorithm 1) as a diffusers scheduler: `RelayEDMScheduler`.

Needs the optional extra `diffusers` (from a checkout: `pip install --no-build-isolation ".[diffusers]"`;
without it, importing this module is a one-line MissingExtraError); `import relaydiff` does not
import it. The interface follows diffusers' conventions, facts taken from
huggingface/diffusers `schedulers/scheduling_edm_euler.py` (EDM preconditioning, timesteps =
c_noise = ln(sigma) / 4, `prediction_type="epsilon"` meaning EDM's raw network F) and
`schedulers/scheduling_heun_discrete.py` (`order = 2`, a Heun step as two `step` calls with the
first call's state kept in between, timesteps after the first listed twice):

    scheduler = RelayEDMScheduler(up_scale=4)
    scheduler.set_timesteps(40)
    x = scheduler.prepare_latents(x_low, seeds=seeds)       # upsample + t_0 n (relay start)
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(x, t)     # c_in x
        model_output = unet(model_input, t.expand(len(x)), None)  # F(c_in x; c_noise), no labels
        x = scheduler.step(model_output, t, x).prev_sample

With a relaydiff `EDMPrecond` net this loop on `net.model` gives bit for bit the images of
`relaydiff.sampling.sample_relay(net, x_low, get_sigmas_relay(40), seeds=seeds, up_scale=4)`: the
same fused ops, the same per-image Philox streams and counters, the same float32 preconditioning arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

try:
    from diffusers.configuration_utils import ConfigMixin, register_to_config
    from diffusers.schedulers.scheduling_utils import SchedulerMixin
    from diffusers.utils import BaseOutput
    from diffusers.utils.torch_utils import randn_tensor
except ImportError:
    from relaydiff.extras import require

    require("diffusers", "diffusers", "relaydiff.diffusers (RelayEDMScheduler)")  # the one-line error
    raise  # diffusers is there but broken: its own error is the real one

import relay_kernels as rk
from relay_kernels import reference
from relaydiff.networks import edm_coefficients
from relaydiff.sampling import as_seeds, get_sigmas_relay, relay_noise

PREDICTION_TYPES = ("epsilon", "sample")


@dataclass
class RelayEDMSchedulerOutput(BaseOutput):
    """`prev_sample`: x for the next model call (the final image after the last call);
    `pred_original_sample`: the denoised estimate D(x; sigma) of this call."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


def _positive(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def _positive_int(value, name, minimum=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


class RelayEDMScheduler(SchedulerMixin, ConfigMixin):
    """Relay sampler of RDM (blurring diffusion from an upsampled low-resolution image), EDM-style.

    Config (saved by `save_pretrained`): the schedule (`sigma_min`, `sigma_max`, `rho`: Karras steps
    of which those below `truncation_sigma` are kept, SPEC 6), the relay settings of
    `relay_kernels.relay_step` (`k`, `s_noise`, `s_block`, `blur_sigma_max`, `prob_length`,
    `min_scale`), `sigma_data` of the EDM preconditioning, `up_scale` (output / input resolution,
    used by `prepare_latents`) and `prediction_type`:
      - "epsilon" (default, as diffusers' EDM schedulers): model_output is EDM's raw network output F,
        and D = c_skip x + c_out F with c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2);
      - "sample": model_output is the denoised image D(x; sigma) itself.
    Either way the model's input is `scale_model_input(x, t)` = c_in x, c_in = 1 / sqrt(sigma^2 + sd^2),
    and its noise input is the timestep t = c_noise = ln(sigma) / 4.

    After `set_timesteps`, `sigmas` is the relay schedule [t_0, ..., t_{M-1}, 0] (float64, on the
    CPU, as `get_sigmas_relay`) and `timesteps` has one entry per model call, 2 M - 1 of them:
    t_0, then t_1 .. t_{M-1} twice each. Steps 0, 2, 4, ... are Euler steps (`relay_step`), the odd
    ones their Heun corrections (`relay_correct`), and the last call returns D as the final image.

    Noise: by default image b draws from its Philox stream seeds[b] exactly as `sample_relay` does
    (start noise at counters [offset, offset + 2N), then 2N more per op call); `prepare_latents` sets
    seeds and offset, and without it the seeds are 0, 1, ... at offset 0 (`sample_relay`'s default).
    `step(..., generator=g)` draws that call's noise from g instead, as diffusers'
    `randn_tensor` draws it (e then e', each shaped like the sample); a list of generators, one per
    image as diffusers pipelines pass them, draws image b's rows from generator[b].
    """

    order = 2
    _compatibles = []

    @register_to_config
    def __init__(
        self,
        sigma_min: float = 0.008,
        sigma_max: float = 80.0,
        rho: float = 7.0,
        truncation_sigma: float = 0.9,
        k: int = 4,
        s_noise: float = 0.2,
        s_block: float = 0.15,
        blur_sigma_max: float = 3.0,
        prob_length: float = 0.93,
        min_scale: float = 1e-3,
        sigma_data: float = 0.5,
        up_scale: int | None = None,
        prediction_type: str = "epsilon",
    ):
        positives = dict(sigma_min=sigma_min, sigma_max=sigma_max, rho=rho, truncation_sigma=truncation_sigma,
                         prob_length=prob_length, sigma_data=sigma_data)
        for name, value in positives.items():
            _positive(value, name)
        if sigma_max <= sigma_min:
            raise ValueError(f"sigma_max={sigma_max} must be larger than sigma_min={sigma_min}")
        _positive_int(k, "k")
        if not 0.0 <= s_noise <= 1.0:
            raise ValueError(f"s_noise must lie in [0, 1] (the step keeps sqrt(1 - s_noise^2)), got {s_noise!r}")
        if not math.isfinite(s_block) or not math.isfinite(blur_sigma_max) or blur_sigma_max < 0:
            raise ValueError(f"s_block must be finite and blur_sigma_max finite and >= 0, got {s_block}, "
                             f"{blur_sigma_max}")
        if not 0.0 <= min_scale <= 1.0:
            raise ValueError(f"min_scale must lie in [0, 1], got {min_scale!r}")
        if up_scale is not None:
            _positive_int(up_scale, "up_scale", 2)
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        self.num_inference_steps = None
        self.sigmas = None
        self.timesteps = None
        self._seeds, self._offset = None, 0
        self._reset_state()

    # ----------------------------------------------------------------------------------------
    # Schedule.

    def _reset_state(self):
        self._step_index = 0
        self._counter = None  # next Philox counter; set on the first noisy call
        self._x_cur = self._den = None  # the Euler call's state for its Heun correction

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None):
        """Karras steps of `num_inference_steps` below truncation_sigma (as `sample_relay`'s num_steps).

        Also resets the step state and the noise seeds (set them again with `prepare_latents`).
        """
        _positive_int(num_inference_steps, "num_inference_steps")
        cfg = self.config
        sigmas = get_sigmas_relay(num_inference_steps, cfg.sigma_min, cfg.sigma_max, cfg.rho, cfg.truncation_sigma)
        if sigmas.numel() < 2:
            raise ValueError(f"no Karras step of {num_inference_steps} lies below "
                             f"truncation_sigma={cfg.truncation_sigma}")
        self.num_inference_steps = num_inference_steps
        self.sigmas = sigmas.cpu()
        listed = sigmas[:-1]
        calls = torch.cat([listed[:1], listed[1:].repeat_interleave(2)])
        self._call_sigmas = calls.tolist()  # host floats: the loop never reads a device scalar
        self._host_timesteps = self.sigma_to_timestep(calls)
        self.timesteps = self._host_timesteps.to(device)
        self._seeds, self._offset = None, 0
        self._reset_state()

    @staticmethod
    def sigma_to_timestep(sigma) -> torch.Tensor:
        """EDM's c_noise = ln(sigma) / 4 of the float32 sigma (the network's noise input)."""
        return torch.as_tensor(sigma, dtype=torch.float64).to(torch.float32).log() / 4

    @staticmethod
    def timestep_to_sigma(timestep) -> torch.Tensor:
        """sigma = exp(4 t), in float64 (inverse of sigma_to_timestep up to float32 rounding)."""
        return torch.exp(4 * torch.as_tensor(timestep, dtype=torch.float64))

    @property
    def init_noise_sigma(self) -> float | None:
        """t_0, the noise level the relay starts at (the scale of the start noise); None before
        set_timesteps fixes the schedule (so probing the attribute, as diffusers does, answers)."""
        return None if self.sigmas is None else float(self.sigmas[0])

    @property
    def step_index(self) -> int:
        """Index into `timesteps` of the next model call."""
        return self._step_index

    def __len__(self) -> int:
        return 0 if self.timesteps is None else len(self.timesteps)

    def _need_timesteps(self):
        if self.timesteps is None:
            raise RuntimeError("call set_timesteps(num_inference_steps) first")

    def _current_sigma(self, timestep) -> float:
        """The sigma of the current call; checks that `timestep` is the scheduled one."""
        self._need_timesteps()
        i = self._step_index
        if i >= len(self._call_sigmas):
            raise RuntimeError(f"all {len(self._call_sigmas)} steps are done: call set_timesteps again to sample anew")
        # Only host values are compared, so a CUDA loop makes no host sync here.
        if not isinstance(timestep, torch.Tensor) or timestep.device.type == "cpu":
            expected = float(self._host_timesteps[i])
            # One timestep, or one per image (a pipeline's t.expand(B)), all the scheduled one.
            given = torch.as_tensor(timestep, dtype=torch.float64).reshape(-1)
            if given.numel() == 0 or float((given - expected).abs().max()) > 1e-6 * max(1.0, abs(expected)):
                raise ValueError(f"timestep {timestep} is not the scheduled timesteps[{i}] = {expected}: pass each "
                                 "entry of scheduler.timesteps in order, once to scale_model_input and once to step")
        return self._call_sigmas[i]

    # ----------------------------------------------------------------------------------------
    # Preconditioning (EDM Table 1), in float32 as relaydiff.networks.EDMPrecond computes it.

    def _sigma32(self, sigma: float, device) -> torch.Tensor:
        return torch.tensor(sigma, dtype=torch.float64).to(device=device, dtype=torch.float32)

    def scale_model_input(self, sample: torch.Tensor, timestep) -> torch.Tensor:
        """c_in x with c_in = 1 / sqrt(sigma^2 + sigma_data^2), as diffusers' EDM schedulers.

        Computed and returned in float32, as relaydiff's EDMPrecond computes it (so the loop matches
        sample_relay bit for bit); cast it to the model's dtype for a half-precision model.
        """
        sigma = self._sigma32(self._current_sigma(timestep), sample.device)
        c_in = edm_coefficients(sigma, self.config.sigma_data)[2]
        return c_in * sample.to(torch.float32)

    def precondition_outputs(self, sample: torch.Tensor, model_output: torch.Tensor, sigma: float) -> torch.Tensor:
        """D(x; sigma) from the model output, in the sample's dtype (see prediction_type)."""
        if model_output.shape != sample.shape:
            raise ValueError(f"model_output has shape {tuple(model_output.shape)}, the sample "
                             f"{tuple(sample.shape)}")
        if self.config.prediction_type == "sample":
            return model_output.to(sample.dtype)
        c_skip, c_out, _, _ = edm_coefficients(self._sigma32(sigma, sample.device), self.config.sigma_data)
        return (c_skip * sample.to(torch.float32) + c_out * model_output.to(torch.float32)).to(sample.dtype)

    # ----------------------------------------------------------------------------------------
    # Noise and the relay start.

    def _noise_kwargs(self, sample: torch.Tensor, generator) -> dict:
        """seed/offset for the fused op (next 2N counters of the Philox streams) or the noise itself."""
        if generator is not None:
            if isinstance(generator, (list, tuple)):
                if len(generator) != sample.shape[0] or not all(isinstance(g, torch.Generator) for g in generator):
                    raise ValueError(f"generator must be one torch.Generator or a list of one per image "
                                     f"({sample.shape[0]}), got {len(generator)} items")
                generator = list(generator)
            elif not isinstance(generator, torch.Generator):
                raise TypeError(f"generator must be a torch.Generator or a list of them, not "
                                f"{type(generator).__name__}")
            draw = lambda: randn_tensor(tuple(sample.shape), generator=generator, device=sample.device,  # noqa: E731
                                        dtype=sample.dtype)
            e = draw()
            return dict(noise=(e, draw()))
        two_n = 2 * sample[0].numel()
        if self._seeds is None:
            self._seeds = as_seeds(0, sample.shape[0], sample.device)
        if self._seeds.numel() != sample.shape[0]:
            raise ValueError(f"{self._seeds.numel()} seeds for a batch of {sample.shape[0]}")
        if self._counter is None:
            self._counter = self._offset + two_n  # counters [offset, offset + 2N) are the start noise
        kwargs = dict(seed=self._seeds, offset=self._counter)
        self._counter += two_n
        return kwargs

    def prepare_latents(self, x_low: torch.Tensor, seeds=0, offset: int = 0, up_scale: int | None = None):
        """The relay start: upsample_nearest(x_low) + t_0 n, n = e + s_block Block_k(e') (Algorithm 1 line 1).

        n for image b comes from its stream seeds[b] (an int s means s, s + 1, ...) at counters
        [offset, offset + 2N), as `sample_relay` draws it; the following steps use the same seeds.
        up_scale defaults to the config's. Call after set_timesteps.
        """
        self._need_timesteps()
        if x_low.dim() != 4:
            raise ValueError(f"x_low must be a [B, C, H, W] batch, not shape {tuple(x_low.shape)}")
        up_scale = self.config.up_scale if up_scale is None else up_scale
        if up_scale is None:
            raise ValueError("give up_scale (here or in the scheduler's config)")
        _positive_int(up_scale, "up_scale", 2)
        _positive_int(offset, "offset", 0)
        seeds = as_seeds(seeds, x_low.shape[0], x_low.device)
        x = F.interpolate(x_low, scale_factor=up_scale, mode="nearest")
        chw = tuple(x.shape[1:])
        noise = relay_noise(seeds, chw, self.config.k, self.config.s_block, offset, x.device, x.dtype)
        self._seeds, self._offset = seeds, offset
        self._reset_state()
        return x + float(self.sigmas[0]) * noise

    # ----------------------------------------------------------------------------------------
    # The sampler step.

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None,
             return_dict: bool = True):
        """One model call's update: Euler step, its Heun correction, or (last call) the final image.

        sample is the x the model saw (before scale_model_input). Returns RelayEDMSchedulerOutput, or
        the tuple (prev_sample, pred_original_sample) with return_dict=False.
        """
        sigma = self._current_sigma(timestep)
        i, last = self._step_index, len(self._call_sigmas) - 1
        if sample.dim() != 4:
            raise ValueError(f"sample must be a [B, C, H, W] batch, not shape {tuple(sample.shape)}")
        den = self.precondition_outputs(sample, model_output, sigma)
        cfg = self.config
        op_kw = dict(k=cfg.k, s_noise=cfg.s_noise, s_block=cfg.s_block, blur_sigma_max=cfg.blur_sigma_max,
                     prob_length=cfg.prob_length, min_scale=cfg.min_scale)
        # Calls 2j (Euler) and 2j + 1 (its correction) both go from t_j to t_{j+1}; per-image sigmas
        # are filled like sample_relay's, in the sample's dtype.
        j = i // 2
        t_cur = torch.full((sample.shape[0],), self.sigmas[j].item(), dtype=sample.dtype, device=sample.device)
        t_next = torch.full_like(t_cur, self.sigmas[j + 1].item())
        if i == last:
            prev = den  # the last listed step returns D (t_next = 0)
        elif i % 2 == 0:
            # Euler step (Eq. 11), its x_cur and D kept for the correction.
            prev = rk.relay_step(sample, den, t_cur, t_next, **op_kw, **self._noise_kwargs(sample, generator))
            self._x_cur, self._den = sample, den
        else:
            # Heun correction with fresh noise: sample is the Euler step's x_next, den its D'.
            prev = rk.relay_correct(self._x_cur, self._den, sample, den, t_cur, t_next, **op_kw,
                                    **self._noise_kwargs(sample, generator))
            self._x_cur = self._den = None
        self._step_index += 1
        if not return_dict:
            return prev, den
        return RelayEDMSchedulerOutput(prev_sample=prev, pred_original_sample=den)

    # ----------------------------------------------------------------------------------------
    # The forward process.

    def add_noise(self, original_samples: torch.Tensor, noise, timesteps) -> torch.Tensor:
        """The relay forward process (SPEC 5): patch_blur(x0, b(sigma)) + sigma n, one fused op.

        timesteps are c_noise values (as `timesteps`), one per image or one for all; sigma =
        exp(4 t) and b(sigma) the blur schedule. noise is either the pair (e, e') of standard
        normals, mixed as n = e + s_block Block_k(e'), or n itself (one tensor, e.g. `relay_noise`).
        """
        x0 = original_samples
        if x0.dim() != 4:
            raise ValueError(f"original_samples must be a [B, C, H, W] batch, not shape {tuple(x0.shape)}")
        sigma = self.timestep_to_sigma(torch.as_tensor(timesteps).detach().cpu()).reshape(-1)
        if sigma.numel() == 1:
            sigma = sigma.expand(x0.shape[0])
        if sigma.numel() != x0.shape[0]:
            raise ValueError(f"{sigma.numel()} timesteps for a batch of {x0.shape[0]}")
        cfg = self.config
        blur = reference.blur_schedule(sigma, cfg.blur_sigma_max, cfg.prob_length)
        if isinstance(noise, torch.Tensor):
            noise, block_scale = (noise, torch.zeros_like(noise)), 0.0
        elif isinstance(noise, (tuple, list)) and len(noise) == 2:
            block_scale = cfg.s_block
        else:
            raise TypeError("noise must be a tensor n or a pair (e, e') of tensors shaped like original_samples")
        return rk.relay_corrupt(x0, sigma.to(x0.device), blur.to(x0.device), cfg.k, block_scale,
                                noise=tuple(noise), min_scale=cfg.min_scale)
