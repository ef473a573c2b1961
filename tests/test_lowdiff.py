"""LowDiff: one network whose low-res core both generates the low-res image and runs inside the
high-res pathway (weight sharing), its loss on known cases and its bottom-up sampler."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_sampling import make_data

from relaydiff import sampling
from relaydiff.compare.cdm import augment_condition
from relaydiff.compare.lowdiff import LowDiffLoss, LowDiffNet, sample_lowdiff
from relaydiff.compare.methods import build_unit

ARCH = dict(model_channels=8, channel_mult=(1, 2), attn_resolutions=())


def _net():
    torch.manual_seed(0)
    net = LowDiffNet(16, k=4, feature_channels=4, outer_channels=8, **ARCH)
    # Zero-initialised weights (EDM's init of output and residual convolutions) block gradients
    # upstream: give them small random values.
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() > 1 and not p.any():
                p.normal_(0, 0.1)
    return net


def test_low_and_high_pass_share_the_core():
    net = _net()
    images = make_data(n=2, res=16).float()
    seeds = torch.arange(2)
    core = dict(net.core.named_parameters())
    outer = [p for n, p in net.named_parameters() if not n.startswith("core.")]
    LowDiffLoss(k=4)(net, images, seeds, stage="high").mean().backward()
    high_grads = {n: p.grad.clone() for n, p in core.items() if p.grad is not None}
    # The high-res loss reaches the shared (core) blocks, not only the outer pathway.
    assert sum(g.abs().sum() > 0 for g in high_grads.values()) > len(core) // 2
    net.zero_grad(set_to_none=True)
    LowDiffLoss(k=4)(net, images, seeds, stage="low").mean().backward()
    low_grads = {n for n, p in core.items() if p.grad is not None and p.grad.abs().sum() > 0}
    assert len(low_grads & set(high_grads)) > len(core) // 2  # the same tensors get both gradients
    assert all(p.grad is None for p in outer)  # the low pass uses the core alone
    # Changing a core weight changes both passes.
    x_low, x = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 16, 16)
    s = torch.ones(2)
    before = net(x_low, s), net(x, s, cond=x_low, cond_sigma=s * 0.2)
    with torch.no_grad():
        next(iter(net.core.enc.values())).weight.add_(0.5)  # the core U-Net's input conv
    after = net(x_low, s), net(x, s, cond=x_low, cond_sigma=s * 0.2)
    assert not torch.allclose(before[0], after[0]) and not torch.allclose(before[1], after[1])


def test_lowdiff_rejects_wrong_resolutions():
    net = _net()
    with pytest.raises(ValueError, match="low pass"):
        net(torch.randn(1, 3, 16, 16), torch.ones(1))
    with pytest.raises(ValueError, match="high pass"):
        net(torch.randn(1, 3, 16, 16), torch.ones(1), cond=torch.randn(1, 3, 8, 8), cond_sigma=torch.ones(1))
    with pytest.raises(ValueError, match="power of two"):
        LowDiffNet(24, k=3, **ARCH)


class Oracle:
    """Returns the single data image at either resolution, recording the conditions it is given."""

    def __init__(self, data, k=4):
        self.data, self.low = data, F.avg_pool2d(data, k)
        self.img_channels, self.img_resolution, self.low_resolution = 3, data.shape[-1], data.shape[-1] // k
        self.conds = []

    def __call__(self, x, sigma, class_labels=None, cond=None, cond_sigma=None):
        if cond is None:
            return self.low.expand(x.shape[0], -1, -1, -1)
        self.conds.append((cond, cond_sigma))
        return self.data.expand(x.shape[0], -1, -1, -1)


def test_lowdiff_loss_perfect_denoiser_and_condition():
    data = make_data(n=1, res=16)
    images, seeds = data.repeat(3, 1, 1, 1).float(), torch.arange(3)
    oracle = Oracle(images[:1])
    loss_fn = LowDiffLoss(k=4, aug_max=0.7)
    for stage in ("low", "high"):
        assert torch.count_nonzero(loss_fn(oracle, images, seeds, stage=stage)) == 0
    cond, s = oracle.conds[0]
    want, s_want = augment_condition(images, seeds, 4, 0.7)
    torch.testing.assert_close(cond, want)
    torch.testing.assert_close(s, s_want)
    with pytest.raises(ValueError, match="stage"):
        loss_fn(oracle, images, seeds, stage="mid")


def test_sample_lowdiff_one_image_dataset():
    data = make_data(n=1, res=16)
    oracle = Oracle(data)
    counted = sampling.CountCalls(oracle)
    seeds = torch.arange(4)
    x, cond = sample_lowdiff(counted, seeds, low_steps=4, high_steps=3, cond_sigma=0.3)
    assert (x - data).abs().max() < 1e-6  # float32 latents
    # Truncation: the low pass stops at cond_sigma, on the ODE x0 + (t / 80) (80 n - x0) of its latents.
    e = sampling.latents_from_seeds(seeds, (3, 4, 4), 0).double()
    torch.testing.assert_close(cond.double(), oracle.low + 0.3 / 80 * (80 * e - oracle.low), rtol=0, atol=1e-6)
    assert counted.nfe == 6 + 5
    assert all(torch.equal(c, cond) for c, _ in oracle.conds)


def test_interleaving_gives_the_low_fraction():
    cfg = dict(resolution=16, k=4, channels=8, channel_mult_low=(1, 2), channel_mult_high=(1, 2, 2),
               attn_res=(), num_blocks=1, aug_max=1.0, low_fraction=0.25, block_scale=0.15)
    net, step_loss = build_unit("lowdiff", cfg)
    stages = []

    def fake_loss(self, net, images, seeds, labels=None, stage="high"):
        stages.append(stage)
        return torch.zeros(1)

    orig = LowDiffLoss.__call__
    LowDiffLoss.__call__ = fake_loss
    try:
        for i in range(40):
            step_loss(net, None, None, i)
    finally:
        LowDiffLoss.__call__ = orig
    assert stages.count("low") == 10 and stages[:4] == ["high", "high", "high", "low"]
