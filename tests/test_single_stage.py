"""Single-stage EDM with and without block noise (RDM Appendix C.2): EDMLoss's noise mixture, and the
shared Heun call (full and truncated) driven by exact denoisers."""

from __future__ import annotations

import pytest
import torch
from test_sampling import EDMPosterior, make_data

from relaydiff import sampling
from relaydiff.compare.single_stage import heun, heun_nfe, sample_single_stage
from relaydiff.loss import EDMLoss


class Recorder:
    """A 'denoiser' returning a fixed image, recording its inputs."""

    def __init__(self, out):
        self.out, self.calls = out, []

    def __call__(self, x, sigma, class_labels=None):
        self.calls.append((x.clone(), sigma.clone()))
        return self.out


def _images(n=3, res=8):
    return torch.rand(n, 3, res, res, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_edm_loss_perfect_denoiser_is_zero():
    images = _images()
    for bs in (0.0, 0.15):
        loss = EDMLoss(block_scale=bs)(Recorder(images), images, torch.arange(3))
        assert loss.shape == images.shape and torch.count_nonzero(loss) == 0


@pytest.mark.parametrize("block_scale", [0.0, 0.15])
def test_edm_loss_noise_is_the_samplers_mixture_and_weighting(block_scale):
    images, seeds = _images(), torch.tensor([5, 9, 11])
    net = Recorder(torch.zeros_like(images))
    loss = EDMLoss(block_scale=block_scale, k=4)(net, images, seeds)
    (x_t, sigma), = net.calls
    n = (x_t - images) / sigma[:, None, None, None]
    # The corruption noise is exactly the start noise the single-stage sampler draws.
    want = sampling.relay_noise(seeds, (3, 8, 8), 4, block_scale, 0) if block_scale else \
        sampling.latents_from_seeds(seeds, (3, 8, 8))
    torch.testing.assert_close(n, want, rtol=0, atol=2e-5)
    if block_scale:  # the block part is a 4x4 box sum: neighbours share 12 of 16 terms (correlation 3/4)
        e = sampling.latents_from_seeds(seeds, (3, 8, 8))
        block = (n - e) / block_scale
        corr = torch.corrcoef(torch.stack([block.flatten(), block.roll(1, -1).flatten()]))[0, 1]
        assert corr > 0.5
    # A zero output gives lambda(sigma) x0^2 with EDM's weighting.
    w = (sigma**2 + 0.25) / (sigma * 0.5) ** 2
    torch.testing.assert_close(loss, w[:, None, None, None] * images**2)


def test_edm_loss_levels_follow_lognormal():
    images = torch.zeros(4000, 1, 2, 2)
    net = Recorder(images)
    EDMLoss(P_mean=-1.2, P_std=1.2)(net, images, torch.arange(4000))
    ln_sigma = net.calls[0][1].log()
    assert abs(ln_sigma.mean().item() + 1.2) < 0.06 and abs(ln_sigma.std().item() - 1.2) < 0.06


@pytest.mark.parametrize("block_scale", [0.0, 0.15])
def test_single_stage_one_image_dataset_gives_that_image(block_scale):
    data = make_data(n=1, res=8)
    net = sampling.CountCalls(EDMPosterior(data))
    out = sample_single_stage(net, torch.arange(4), num_steps=6, block_scale=block_scale)
    assert (out - data).abs().max() < 1e-6
    assert net.nfe == heun_nfe(6) == 11


def test_single_stage_lands_on_data_points():
    data = make_data(n=3, res=8)
    out = sample_single_stage(EDMPosterior(data), torch.arange(6), num_steps=18, block_scale=0.15)
    dist = ((out[:, None] - data[None]) ** 2).flatten(2).mean(-1).min(1).values
    assert dist.max() < 1e-4


def test_truncated_heun_stops_at_sigma_min_with_one_call_less():
    data = make_data(n=1, res=8)
    net = sampling.CountCalls(EDMPosterior(data))
    noise = sampling.latents_from_seeds(torch.arange(3), (3, 8, 8), 0).double()
    out = heun(net, noise, num_steps=5, sigma_min=0.3, truncate=True)
    # One data point: the probability-flow ODE from x(80) = 80 n is x(t) = x0 + (t / 80) (80 n - x0),
    # linear in t, so Heun follows it exactly.
    torch.testing.assert_close(out, data + 0.3 / 80 * (80 * noise - data), rtol=0, atol=1e-9)
    assert net.nfe == heun_nfe(5, truncate=True) == 8
    with pytest.raises(ValueError, match="num_steps >= 2"):
        heun(net, noise, num_steps=1, truncate=True)
