"""Samplers for Relay Diffusion: EDM's stochastic Heun sampler for the first stage, Algorithm 1 for
the relay stages, in crowsonkb/k-diffusion's conventions (`k_diffusion/sampling.py`).

Conventions (one API: `sample_cascade`, the CLI and the training previews build on these):

* `sample_x(model, x, sigmas, extra_args=None, callback=None, disable=None, *, ...)`.
* `model(x, sigma, **extra_args)` is a denoiser in EDM's convention (NVlabs/edm `EDMPrecond`):
  it returns the denoised image; sigma is a `[B]` tensor. Class labels go through
  `extra_args={"class_labels": labels}`; classifier-free guidance through the `CFGDenoiser` wrapper.
* `sigmas`: 1-D, t_0 > ... > t_{M-1} > 0 followed by 0, from the schedule functions below
  (`get_sigmas_karras`, `get_sigmas_relay`); with `net=` they clamp to the net's sigma range and
  round as EDM's sampler does.
* `callback` receives a dict with k-diffusion's keys `x`, `i`, `sigma`, `sigma_hat`, `denoised`
  (sigma and sigma_hat are 0-dim tensors, the step's noise level).
* `noise_sampler(sigma, sigma_next)` returns a standard normal tensor shaped like the sampler's x:
  through it a caller supplies every normal the sampler draws, in the order of the released
  THUDM/RelayDiffusion `generate.py` (see each sampler). Without it the noise comes from the
  device-independent per-image Philox streams of SPEC 4 (`seeds`, `offset`).

Noise streams: stage `s` of a cascade draws all of its noise from the per-image Philox streams
starting at counter `s * STAGE_STRIDE`, so stages never share counters.

This module is the public API; the code lives in three modules along its concerns, every public
name re-exported here: `relaydiff.schedules` (sigma schedules, seeds, noise streams),
`relaydiff.samplers` (`sample_edm`, `sample_relay`, the model wrappers and argument checks) and
`relaydiff.cascade` (`sample_cascade`).
"""

from .cascade import sample_cascade
from .samplers import (
    CFGDenoiser,
    CountCalls,
    check_sampler_args,
    one_hot_labels,
    relay_schedule_weights,
    relay_up_scale,
    sample_edm,
    sample_relay,
)
from .schedules import (
    STAGE_STRIDE,
    PerSeedGenerator,
    as_seeds,
    get_sigmas_karras,
    get_sigmas_relay,
    latents_from_seeds,
    net_sigma_range,
    randn_like_sampler,
    relay_nfe,
    relay_noise,
    round_sigmas,
)

__all__ = [
    "STAGE_STRIDE", "get_sigmas_karras", "get_sigmas_relay", "relay_nfe", "net_sigma_range", "round_sigmas",
    "as_seeds", "latents_from_seeds", "relay_noise", "PerSeedGenerator", "randn_like_sampler",
    "one_hot_labels", "CFGDenoiser", "CountCalls", "check_sampler_args",
    "sample_edm", "relay_schedule_weights", "relay_up_scale", "sample_relay", "sample_cascade",
]
