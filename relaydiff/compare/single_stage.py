"""Single-stage EDM at full resolution, with or without block noise (RDM Appendix C.2), and the EDM
Heun call every method of the comparison shares (`heun`, the only call site of sampling.sample_edm).

Training is loss.EDMLoss(block_scale=...): x_t = x0 + sigma (e + block_scale Block_k(e')). Sampling
starts from t_0 (e + block_scale Block_k(e')) drawn from the per-image streams (sampling.relay_noise),
then runs EDM's deterministic Heun sampler: the same noise mixture the net was trained on.
"""

from __future__ import annotations

import torch

from .. import sampling


class _Truncated(Exception):
    """Raised by _StopAtCall to end a sampler at its last network call, carrying that call's input."""

    def __init__(self, x):
        super().__init__("sampler stopped at the truncation level")
        self.x = x


class _StopAtCall:
    """Wraps a net: calls 1 .. n-1 pass through; call n raises _Truncated(its input) unevaluated."""

    def __init__(self, net, n):
        self.net, self.n, self.calls = net, n, 0

    def __call__(self, x, sigma, class_labels=None):
        self.calls += 1
        if self.calls == self.n:
            raise _Truncated(x)
        return self.net(x, sigma, class_labels)

    def __getattr__(self, name):
        return getattr(self.__dict__["net"], name)


def heun_nfe(num_steps: int, truncate: bool = False) -> int:
    """Network evaluations of `heun`: 2 S - 1 (EDM Algorithm 2), one fewer when truncated."""
    return 2 * num_steps - 1 - int(truncate)


@torch.no_grad()
def heun(net, noise, *, num_steps, sigma_min=0.002, sigma_max=80.0, truncate=False, disable=True):
    """EDM Heun from x = t_0 noise over the Karras steps t_0 = sigma_max > ... > t_{S-1} = sigma_min.

    truncate=False: the last step goes to 0 and the denoised image is returned. truncate=True: the
    sampler stops at t_{S-1} = sigma_min and returns the noisy image there (the truncated low-res
    stage of CDM and LowDiff): the final call of EDM Algorithm 2 is the Euler step out of t_{S-1},
    whose input is exactly that image, so it is caught before the net runs (2 S - 2 evaluations).
    """
    if truncate and num_steps < 2:
        raise ValueError("a truncated Heun run needs num_steps >= 2 (one step to leave sigma_max)")
    if truncate:
        net = _StopAtCall(net, heun_nfe(num_steps))
    try:
        sigmas = sampling.get_sigmas_karras(num_steps, sigma_min, sigma_max, device=noise.device)
        x = noise.to(torch.float64) * sigmas[0]
        return sampling.sample_edm(net, x, sigmas, disable=disable).to(noise.dtype)
    except _Truncated as stop:
        return stop.x.to(noise.dtype)


def sample_single_stage(net, seeds, *, num_steps, block_scale=0.0, k=4, offset=0, device="cpu", disable=True):
    """Images [B, C, R, R] from one full-resolution EDM net; the start noise mixes in block noise when
    block_scale > 0 (image b's noise from its stream seeds[b], counters from offset)."""
    seeds = sampling.as_seeds(seeds, device=device)
    shape = (net.img_channels, net.img_resolution, net.img_resolution)
    if block_scale:
        noise = sampling.relay_noise(seeds, shape, k, block_scale, offset, device)
    else:
        noise = sampling.latents_from_seeds(seeds, shape, offset, device)
    return heun(net, noise, num_steps=num_steps, disable=disable)
