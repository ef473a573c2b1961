"""Samplers driven by exact posterior-mean denoisers over tiny datasets.

For finite data {x0_j} the optimal denoiser of the relay forward process
x_t = blur(x0, b(t)) + t (e + s_block Block_k(e')) is a posterior mean over the data points with
Gaussian likelihood N(blur(x0_j, b(t)), t^2 (I + s_block^2 B B^T)). B (the block filter) is a
circular convolution, so the covariance is diagonal in the 2-D DFT basis with eigenvalues
t^2 (1 + s_block^2 |FFT(h)|^2), h the s x s box of height 1/s: the exact likelihood costs one FFT.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from relay_kernels import reference
from relaydiff import sampling

K, S_BLOCK, B_MAX = 4, 0.15, 3.0

# ---------------------------------------------------------------------------- exact denoisers


def _softmax_mean(logw, data, labels_of_data, class_labels):
    if class_labels is not None:
        # Condition on the class: data points outside it have zero prior (a zero label = no class).
        member = class_labels.to(data.dtype) @ labels_of_data.T  # [B, N]
        uncond = class_labels.abs().sum(1, keepdim=True) == 0
        logw = torch.where(uncond | (member > 0), logw, torch.full_like(logw, -math.inf))
    w = torch.softmax(logw, dim=1)
    return torch.einsum("bn,nchw->bchw", w, data)


class EDMPosterior:
    """E[x0 | x0 + sigma e] over finite data (EDM forward process)."""

    def __init__(self, data, labels_of_data=None):
        self.data, self.labels_of_data = data, labels_of_data
        self.img_channels, self.img_resolution = data.shape[1], data.shape[-1]
        self.label_dim = 0 if labels_of_data is None else labels_of_data.shape[1]

    def __call__(self, x, sigma, class_labels=None):
        sq = ((x[:, None] - self.data[None]) ** 2).flatten(2).sum(-1)
        return _softmax_mean(-sq / (2 * sigma[:, None] ** 2), self.data, self.labels_of_data, class_labels)


class RelayPosterior:
    """E[x0 | x_t] for the relay forward process over finite data, exact block-noise covariance."""

    def __init__(self, data, labels_of_data=None, k=K, s_block=S_BLOCK, blur_sigma_max=B_MAX):
        self.data, self.labels_of_data = data, labels_of_data
        self.k, self.blur_sigma_max = k, blur_sigma_max
        self.img_channels, self.img_resolution = data.shape[1], data.shape[-1]
        self.label_dim = 0 if labels_of_data is None else labels_of_data.shape[1]
        h = torch.zeros(data.shape[-2:], dtype=torch.float64)
        h[:k, :k] = 1.0 / k
        self.var_scale = 1 + s_block**2 * torch.fft.fft2(h).abs() ** 2  # DFT eigenvalues of the cov / t^2

    def mean(self, sigma):
        """blur(x0_j, b(sigma)) for every image and data point: [B, N, C, H, W]."""
        b, n = sigma.shape[0], self.data.shape[0]
        blur = reference.blur_schedule(sigma.to(torch.float64), self.blur_sigma_max)
        x0 = self.data.repeat(b, 1, 1, 1)
        return reference.patch_blur(x0, blur.repeat_interleave(n), self.k).reshape(b, n, *self.data.shape[1:])

    def whitened(self, r, sigma):
        """Per-image mean of |FFT(r)|^2 / (t^2 (1 + s^2 |H|^2)): 1 in expectation under the forward noise."""
        spec = torch.fft.fft2(r.to(torch.float64), norm="ortho").abs() ** 2
        return spec / (sigma.to(torch.float64).reshape(-1, *[1] * (r.ndim - 1)) ** 2 * self.var_scale)

    def __call__(self, x, sigma, class_labels=None):
        r = x[:, None].to(torch.float64) - self.mean(sigma)
        quad = self.whitened(r.flatten(0, 1), sigma.repeat_interleave(self.data.shape[0]))
        logw = -0.5 * quad.flatten(1).sum(-1).reshape(r.shape[0], r.shape[1])
        return _softmax_mean(logw, self.data, self.labels_of_data, class_labels).to(x.dtype)


def make_data(n=4, channels=3, res=16, up=4, detail=0.2, seed=0):
    """Data whose low-res versions differ a lot (+-0.7 blocks) plus fine detail the relay must add."""
    g = torch.Generator().manual_seed(seed)
    low = 0.7 * torch.sign(torch.randn(n, channels, res // up, res // up, generator=g, dtype=torch.float64))
    fine = detail * (2 * torch.rand(n, channels, res, res, generator=g, dtype=torch.float64) - 1)
    fine = fine - F.interpolate(F.avg_pool2d(fine, up), scale_factor=up, mode="nearest")
    return F.interpolate(low, scale_factor=up, mode="nearest") + fine


def low_res(x, up=4):
    return F.avg_pool2d(x, up)


# ---------------------------------------------------------------------------- the k-diffusion-style calls


def _relay(net, x_low, *, num_steps=40, truncation_sigma=0.9, class_labels=None, cfg_scale=1.0, **kw):
    """sample_relay as a user calls it: a schedule, labels through extra_args, guidance by CFGDenoiser."""
    sigmas = sampling.get_sigmas_relay(num_steps, truncation_sigma=truncation_sigma, net=net)
    extra = None if class_labels is None else {"class_labels": class_labels}
    return sampling.sample_relay(sampling.CFGDenoiser(net, cfg_scale), x_low, sigmas, extra, **kw)


def _edm(net, latents, *, num_steps=18, class_labels=None, cfg_scale=1.0, S_churn=0.0, S_min=0.0,
         S_max=float("inf"), **kw):
    sigmas = sampling.get_sigmas_karras(num_steps, net=net)
    extra = None if class_labels is None else {"class_labels": class_labels}
    x = latents.to(torch.float64) * sigmas[0]
    return sampling.sample_edm(sampling.CFGDenoiser(net, cfg_scale), x, sigmas, extra, s_churn=S_churn, s_tmin=S_min,
                               s_tmax=S_max, **kw).to(latents.dtype)


# ---------------------------------------------------------------------------- relay sampler


def test_relay_returns_to_source_and_tracks_forward_marginals():
    data = make_data()
    net = sampling.CountCalls(RelayPosterior(data))
    idx = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    x_low = low_res(data[idx])
    record = []
    out = _relay(
        net, x_low, num_steps=40, seeds=torch.arange(100, 108), callback=record.append, disable=True
    )
    assert out.dtype == torch.float64 and out.shape == data[idx].shape
    assert (out - data[idx]).abs().max() < 1e-3
    assert net.nfe == sampling.relay_nfe(40) == 2 * len(record) - 1
    # The residual x_i - blur(x0, b(t_i)) has the forward noise's spectrum, step after step.
    ratios = []
    for d in record:
        assert d["sigma"].dim() == 0 and torch.equal(d["sigma"], d["sigma_hat"])  # k-diffusion: one sigma per step
        sigma = d["sigma"].to(torch.float64).expand(8)
        mean = net.mean(sigma)[torch.arange(8), idx]
        w = net.whitened(d["x"] - mean, sigma)
        hi = torch.zeros(w.shape[-2:], dtype=torch.bool)
        hi[4:-3, 4:-3] = True  # frequencies above a quarter of Nyquist in both directions
        ratios.append((w.mean().item(), w[..., hi].mean().item(), w[..., ~hi].mean().item()))
    for total, hi_band, lo_band in ratios:
        assert 0.85 < total < 1.2, ratios
        assert 0.8 < hi_band < 1.25 and 0.8 < lo_band < 1.25, ratios


def test_relay_seeds_independent_of_batch():
    data = make_data()
    net = RelayPosterior(data)
    x_low = low_res(data[[3, 1, 2, 0, 1, 2]])
    seeds = torch.tensor([7, 8, 9, 10, 11, 12])
    kw = dict(num_steps=8, disable=True, truncation_sigma=5.0)
    full = _relay(net, x_low, seeds=seeds, **kw)
    parts = [_relay(net, x_low[s], seeds=seeds[s], **kw) for s in (slice(0, 1), slice(4, 6))]
    torch.testing.assert_close(torch.cat([full[:1], full[4:]]), torch.cat(parts), rtol=0, atol=1e-12)
    # An int seed s means s, s+1, ...
    as_int = _relay(net, x_low, seeds=7, **kw)
    torch.testing.assert_close(full, as_int, rtol=0, atol=0)


def test_relay_trajectory_depends_on_seed():
    data = make_data()
    net = RelayPosterior(data)
    x_low = low_res(data[[0, 0]])
    xs = []
    _relay(
        net,
        x_low,
        num_steps=12,
        seeds=torch.tensor([5, 6]),
        disable=True,
        callback=lambda d: xs.append(d["x"]),
    )
    assert not torch.allclose(xs[0][0], xs[0][1])


def test_relay_rejects_bad_input():
    net = RelayPosterior(make_data())
    with pytest.raises(ValueError, match="multiple"):
        _relay(net, torch.zeros(1, 3, 5, 5, dtype=torch.float64), disable=True)
    with pytest.raises(ValueError, match="truncation"):
        _relay(
            net,
            torch.zeros(1, 3, 4, 4, dtype=torch.float64),
            num_steps=3,
            truncation_sigma=1e-3,
            disable=True,
        )
    with pytest.raises(ValueError, match=r"s_noise must be in \[0, 1\)"):
        _relay(net, torch.zeros(1, 3, 4, 4, dtype=torch.float64), num_steps=20, s_noise=1.5, disable=True)
    with pytest.raises(TypeError, match="sigmas must be a 1-D"):
        sampling.sample_relay(net, torch.zeros(1, 3, 4, 4, dtype=torch.float64), [0.5, 0.0], disable=True)
    with pytest.raises(ValueError, match="positive"):
        sampling.sample_relay(net, torch.zeros(1, 3, 4, 4, dtype=torch.float64), torch.tensor([0.5, -0.1, 0.0]),
                              disable=True)
    with pytest.raises(ValueError, match="seeds"):
        _relay(
            net, torch.zeros(2, 3, 4, 4, dtype=torch.float64), seeds=[1, 2, 3], disable=True
        )


def test_relay_rejects_bad_up_scale_and_shape():
    net = RelayPosterior(make_data())  # 16px
    x16 = torch.zeros(1, 3, 16, 16, dtype=torch.float64)
    identity = lambda x, sigma: x  # noqa: E731 - a net without img_resolution
    with pytest.raises(ValueError, match="up_scale must be an integer >= 2"):
        _relay(net, x16, num_steps=3, disable=True)  # already at the net's resolution
    for bad in (1, 1.5):
        with pytest.raises(ValueError, match="up_scale must be an integer >= 2"):
            _relay(identity, x16, up_scale=bad, num_steps=3, disable=True)
    with pytest.raises(ValueError, match="not the net's resolution 16"):
        _relay(net, torch.zeros(1, 3, 4, 4, dtype=torch.float64), up_scale=2, disable=True)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        _relay(net, torch.zeros(3, 4, 4, dtype=torch.float64), disable=True)


# ---------------------------------------------------------------------------- guidance


def _labelled():
    data = make_data(n=4)
    labels_of_data = torch.eye(2, dtype=torch.float64)[[0, 0, 1, 1]]
    return data, labels_of_data


class ManualGuidance:
    """uncond + w (cond - uncond) computed by hand, for fixed labels."""

    def __init__(self, net, labels, w):
        self.net, self.labels, self.w = net, labels, w
        self.img_resolution = net.img_resolution

    def __call__(self, x, sigma, class_labels=None):
        cond = self.net(x, sigma, self.labels)
        uncond = self.net(x, sigma, torch.zeros_like(self.labels))
        return uncond + self.w * (cond - uncond)


@pytest.mark.parametrize("w", [0.0, 0.5, 1.0, 2.5])
def test_relay_cfg_matches_manual_guidance(w):
    """Guided only for w > 1, as the released generate.py: w <= 1 is the conditional net alone."""
    data, lab = _labelled()
    net = sampling.CountCalls(RelayPosterior(data, lab))
    labels = lab[[0, 1, 1]]
    x_low = low_res(data[[1, 2, 0]]) + 0.05
    seeds = torch.tensor([3, 4, 5])
    got = _relay(
        net,
        x_low,
        num_steps=10,
        seeds=seeds,
        class_labels=labels,
        cfg_scale=w,
        disable=True,
        truncation_sigma=2.0,
    )
    want = _relay(
        ManualGuidance(net.net, labels, max(w, 1.0)),
        x_low,
        num_steps=10,
        seeds=seeds,
        disable=True,
        truncation_sigma=2.0,
    )
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    # Guidance costs one (double-batch) call per evaluation.
    assert net.nfe == sampling.relay_nfe(10, truncation_sigma=2.0)


def test_edm_cfg_matches_manual_guidance():
    data, lab = _labelled()
    data = low_res(data)
    net = EDMPosterior(data, lab)
    labels = lab[[1, 0]]
    latents = sampling.latents_from_seeds([0, 1], data.shape[1:], dtype=torch.float64)
    got = _edm(net, latents, num_steps=8, class_labels=labels, cfg_scale=3.0, disable=True)
    manual = ManualGuidance(net, labels, 3.0)
    want = _edm(manual, latents, num_steps=8, disable=True)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


# ---------------------------------------------------------------------------- EDM and cascades


def test_edm_sampler_lands_on_data_and_is_batch_independent():
    data = low_res(make_data(n=4))
    net = sampling.CountCalls(EDMPosterior(data))
    seeds = torch.arange(6)
    latents = sampling.latents_from_seeds(seeds, data.shape[1:], dtype=torch.float64)
    out = _edm(net, latents, num_steps=18, disable=True)
    assert net.nfe == 35
    dist = ((out[:, None] - data[None]) ** 2).flatten(2).sum(-1).sqrt().min(1).values
    assert dist.max() < 1e-3
    half = _edm(net, latents[:2], num_steps=18, disable=True)
    torch.testing.assert_close(out[:2], half, rtol=0, atol=1e-12)


def test_edm_churn_uses_per_image_seeds():
    data = low_res(make_data(n=4))
    net = EDMPosterior(data)
    seeds = torch.arange(4)
    latents = sampling.latents_from_seeds(seeds, data.shape[1:], dtype=torch.float64)
    kw = dict(num_steps=10, S_churn=40, S_min=0.05, S_max=50, disable=True)
    full = _edm(net, latents, seeds=seeds, **kw)
    part = _edm(net, latents[2:], seeds=seeds[2:], **kw)
    torch.testing.assert_close(full[2:], part, rtol=0, atol=1e-12)


def test_cascade_two_relay_stages_reports_nfe():
    hi = make_data(n=3, channels=1, res=32, up=8, detail=0.1, seed=1)  # 4 -> 16 -> 32... via 8 -> 32
    mid = F.avg_pool2d(hi, 2)  # 16x16
    mid_fine = mid - F.interpolate(F.avg_pool2d(mid, 4), scale_factor=4, mode="nearest")
    assert mid_fine.abs().max() > 0.01
    low = F.avg_pool2d(mid, 4)  # 4x4
    stage1 = EDMPosterior(low)
    relay16, relay32 = RelayPosterior(mid), RelayPosterior(hi)
    seen = set()
    outs, nfe = sampling.sample_cascade(
        stage1,
        [relay16, relay32],
        seeds=[0, 1, 2, 3],
        stage1_kwargs=dict(num_steps=12),
        relay_kwargs=[dict(num_steps=30), dict(num_steps=30, up_scale=2)],
        callback=lambda d: seen.add(d["stage"]),
        disable=True,
    )
    assert [o.shape[-1] for o in outs] == [4, 16, 32]
    assert nfe == [23, sampling.relay_nfe(30), sampling.relay_nfe(30)] and seen == {0, 1, 2}
    assert outs[1].shape[-1] == 16
    # Every final image is the data point whose low-res version stage 1 produced.
    j = ((outs[0][:, None].double() - low[None]) ** 2).flatten(2).sum(-1).argmin(1)
    assert (outs[2].double() - hi[j]).abs().max() < 1e-3
    assert (outs[1].double() - mid[j]).abs().max() < 1e-3
    # Relay stages draw the same noise when the low-res images are given instead of sampled.
    again, nfe2 = sampling.sample_cascade(
        None, [relay16], seeds=[0, 1, 2, 3], x_low=outs[0], relay_kwargs=dict(num_steps=30), disable=True
    )
    torch.testing.assert_close(again[0], outs[1], rtol=0, atol=0)


def test_cascade_from_given_low_res():
    data = make_data(n=2)
    outs, nfe = sampling.sample_cascade(
        None,
        [RelayPosterior(data)],
        seeds=5,
        x_low=low_res(data),
        relay_kwargs=dict(num_steps=20),
        disable=True,
    )
    assert len(outs) == 1 and nfe == [sampling.relay_nfe(20)]
    assert (outs[0] - data).abs().max() < 1e-3


# ---------------------------------------------------------------------------- the public module


def test_every_documented_sampling_name_is_importable_from_relaydiff_sampling():
    """The code lives in schedules / samplers / cascade; the documented API is relaydiff.sampling.X for
    every name the README and docs/*.md use (`relaydiff.sampling.X`, or `sampling.X` after
    `from relaydiff import sampling`), each the same object as in the module that holds its code."""
    import re
    from pathlib import Path

    from relaydiff import cascade, samplers, schedules

    repo = Path(__file__).resolve().parents[1]
    docs = [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]
    pattern = re.compile(r"(?<![\w.])(?:relaydiff\.)?sampling\.([A-Za-z_]\w*)")
    named = {m for p in docs for m in pattern.findall(p.read_text())} - {"py"}  # `sampling.py`, the file
    assert {"sample_relay", "sample_edm", "CFGDenoiser", "relay_noise"} <= named  # the scan finds the docs' names
    assert sorted(n for n in named if not hasattr(sampling, n)) == []
    assert named <= set(sampling.__all__)
    for name in sampling.__all__:
        assert any(getattr(m, name, None) is getattr(sampling, name) for m in (schedules, samplers, cascade)), name
