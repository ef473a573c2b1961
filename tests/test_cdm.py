"""Conditioning cascade (CDM): conditioning augmentation statistics, the loss on known cases, and the
sampler (plain and truncated augmentation) with exact denoisers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_sampling import EDMPosterior, make_data

from relaydiff import sampling
from relaydiff.compare.cdm import CDMLoss, augment_condition, sample_cdm
from relaydiff.compare.nets import Precond


class CondRecorder:
    """A conditional 'denoiser' returning a fixed image and recording (x, sigma, cond, cond_sigma)."""

    def __init__(self, out, resolution=None):
        self.out, self.calls = out, []
        self.img_channels, self.img_resolution = out.shape[1], resolution or out.shape[-1]

    def __call__(self, x, sigma, class_labels=None, cond=None, cond_sigma=None):
        self.calls.append((x.clone(), sigma.clone(), cond.clone(), cond_sigma.clone()))
        return self.out.expand(x.shape[0], -1, -1, -1).to(x.dtype)


def test_augmentation_statistics():
    images = torch.zeros(4000, 1, 4, 4)
    cond, s = augment_condition(images, torch.arange(4000), k=2, aug_max=0.8)
    assert cond.shape == (4000, 1, 2, 2)
    assert s.min() >= 0 and s.max() <= 0.8
    assert abs(s.mean().item() - 0.4) < 0.02 and abs(s.var().item() - 0.64 / 12) < 0.005  # U(0, 0.8)
    e = cond / s[:, None, None, None]
    assert abs(e.mean().item()) < 0.02 and abs(e.std().item() - 1) < 0.02


def test_augmentation_is_per_image_and_centered_on_the_pooled_image():
    images = make_data(n=4, res=8).float()
    seeds = torch.tensor([3, 4, 5, 6])
    cond, s = augment_condition(images, seeds, k=4, aug_max=1.0)
    part, s_part = augment_condition(images[2:], seeds[2:], k=4, aug_max=1.0)
    torch.testing.assert_close(cond[2:], part, rtol=0, atol=0)
    torch.testing.assert_close(s[2:], s_part, rtol=0, atol=0)
    cond0, _ = augment_condition(images, seeds, k=4, aug_max=1e-9)
    torch.testing.assert_close(cond0, F.avg_pool2d(images, 4), rtol=0, atol=1e-6)


def test_cdm_loss_perfect_denoiser_zero_and_weighting():
    images = make_data(n=3, res=8).float()
    seeds = torch.arange(3)
    net = CondRecorder(images)
    loss = CDMLoss(k=4, aug_max=0.5)(net, images, seeds)
    assert torch.count_nonzero(loss) == 0
    _, sigma, cond, cond_sigma = net.calls[0]
    want, s = augment_condition(images, seeds, 4, 0.5)
    torch.testing.assert_close(cond, want)
    torch.testing.assert_close(cond_sigma, s)
    zero = CondRecorder(torch.zeros_like(images))
    loss = CDMLoss(k=4)(zero, images, seeds)
    sigma = zero.calls[0][1]
    w = (sigma**2 + 0.25) / (sigma * 0.5) ** 2
    torch.testing.assert_close(loss, w[:, None, None, None] * images**2)


def test_precond_conditional_needs_its_condition():
    net = Precond(8, cond_channels=3, model_channels=8, channel_mult=(1, 2), attn_resolutions=())
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="conditional"):
        net(x, torch.ones(2))
    out = net(x, torch.ones(2), cond=torch.randn(2, 3, 2, 2), cond_sigma=torch.full((2,), 0.2))
    assert out.shape == x.shape
    plain = Precond(8, model_channels=8, channel_mult=(1, 2), attn_resolutions=())
    with pytest.raises(ValueError, match="unconditional"):
        plain(x, torch.ones(2), cond=torch.randn(2, 3, 2, 2), cond_sigma=torch.ones(2))


@pytest.mark.parametrize("truncate", [False, True])
def test_sample_cdm_one_image_dataset(truncate):
    data = make_data(n=1, res=8)
    low = F.avg_pool2d(data, 4)
    low_net = sampling.CountCalls(EDMPosterior(low))
    sr = CondRecorder(data)
    seeds = torch.arange(10, 14)
    x, cond = sample_cdm(low_net, sr, seeds, low_steps=4, high_steps=3, cond_sigma=0.25, truncate=truncate)
    assert (x - data).abs().max() < 1e-6 and len(sr.calls) == 5
    # The condition: the low-res image plus noise of level cond_sigma, from the stage-1 latents when
    # truncated (the ODE x0 + (t / 80) (80 n - x0) stopped at t = cond_sigma), else fresh noise from
    # stage 2's stream added to x0.
    offset = 0 if truncate else 2 * sampling.STAGE_STRIDE
    e = sampling.latents_from_seeds(seeds, (3, 2, 2), offset).double()
    want = low + 0.25 / 80 * (80 * e - low) if truncate else low + 0.25 * e
    torch.testing.assert_close(cond.double(), want, rtol=0, atol=1e-6)
    assert low_net.nfe == (6 if truncate else 7)
    assert torch.equal(sr.calls[0][3], torch.full((4,), 0.25))
