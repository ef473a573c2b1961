"""relaydiff's samplers reproduce the released THUDM/RelayDiffusion samplers image for image.

The released `generate.py` passes `randn_like=rnd.randn_like` (one torch.Generator per seed) to its
stage-1 `edm_sampler` and stage-2 `blur_sampler`. Below, both are transcribed by hand in plain
torch with their own patch DCT (no relay_kernels op, no relaydiff formula), following the order of
operations and of the randn_like calls of that file: the start noise randn_like then block_noise's
randn_like, every Euler step and Heun correction drawing the same pair, stage 1 drawing once per step
whatever its churn. relaydiff, given the same generator streams through `noise_sampler`, must agree
to 1e-6 in float64. (The released code builds alpha in float32; the transcription keeps float64, so
the comparison tests the algorithm rather than that rounding.)
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from relaydiff import sampling

# ---------------------------------------------------------------------------- transcription


def dct_basis(k):
    n = torch.arange(k, dtype=torch.float64)
    basis = torch.cos(math.pi * (2 * n[None, :] + 1) * n[:, None] / (2 * k)) * math.sqrt(2 / k)
    basis[0] /= math.sqrt(2)
    return basis


def patchwise(x, k, fn):
    b, c, h, w = x.shape
    p = x.reshape(b, c, h // k, k, w // k, k).permute(0, 1, 2, 4, 3, 5)
    return fn(p).permute(0, 1, 2, 4, 3, 5).reshape(b, c, h, w)


def dct2(x, k):
    m = dct_basis(k)
    return patchwise(x, k, lambda p: m @ p @ m.T)


def idct2(u, k):
    m = dct_basis(k)
    return patchwise(u, k, lambda p: m.T @ p @ m)


def alpha_image(t, k, res, prob_length, blur_sigma_max, min_scale=1e-3):
    """The blurring spectrum at noise level t, tiled over the whole image as get_alpha_t tiles it."""
    phi = 0.5 * math.erfc(-((math.log(t) + 1.2) / 1.2) / math.sqrt(2))
    blur = blur_sigma_max * math.sin(math.pi / 2 * phi / prob_length) ** 2
    f = math.pi * torch.arange(k, dtype=torch.float64) / k
    lam = (f[:, None] ** 2 + f[None, :] ** 2).repeat(res // k, res // k)
    return torch.exp(-lam * blur**2 / 2) * (1 - min_scale) + min_scale


def box_noise(ref, randn_like, size):
    g = randn_like(ref)
    total = torch.zeros_like(ref)
    for dy in range(size):
        for dx in range(size):
            total = total + torch.roll(g, shifts=(dy, dx), dims=(-2, -1))
    return total / size


def guided(net, x, t, labels, cfg):
    if cfg > 1:
        cond = net(x, t, labels).to(torch.float64)
        uncond = net(x, t, None).to(torch.float64)
        return cfg * cond - (cfg - 1) * uncond
    return net(x, t, labels).to(torch.float64)


def karras(num_steps, sigma_min, sigma_max, rho):
    i = torch.arange(num_steps, dtype=torch.float64)
    return (sigma_max ** (1 / rho) + i / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def released_blur_sampler(net, latents, labels, randn_like, num_steps, sigma_min, sigma_max, rho, truncation_sigma,
                          prob_length, patch, cfg, s_block, s_noise, blur_sigma_max, celebahq=False):
    """RDM Algorithm 1 as the released blur_sampler runs it (latents: the upsampled image).

    generate.py and generate_imagenet.py (blur_sampler): the start draws randn_like then block_noise's
    randn_like; each Euler step and each Heun correction draws the same pair. celebahq=True is
    generate_celebahq.py's blur_sampler, which adds, at the top of every step (the last included,
    after the start pair), its churn line `gamma = ... if S_min <= t_cur <= S_max else 0`,
    `t_hat = net.round_sigma(t_cur + gamma * t_cur)`, `x_hat = x_cur + (t_hat ** 2 - t_cur ** 2).sqrt()
    * S_noise * randn_like(x_cur)` (lines 78-80 of commit 6ee2d6f), at its main()'s S_churn = 0, and
    calls the net on x_hat with t_hat."""
    t = karras(num_steps, max(sigma_min, net.sigma_min), min(sigma_max, net.sigma_max), rho)
    t = t[t < truncation_sigma]
    t = torch.cat([net.round_sigma(t), torch.zeros(1, dtype=torch.float64)])
    m, res = len(t) - 1, latents.shape[-1]
    x = latents.to(torch.float64)
    start = randn_like(x) * t[0]
    if s_block > 0:
        start = start + s_block * box_noise(latents, randn_like, patch) * t[0]
    x = x + start
    for i in range(m):
        t_cur, t_next = t[i], t[i + 1]
        x_hat, t_hat = x, t_cur
        if celebahq:
            t_hat = net.round_sigma(t_cur + 0 * t_cur)  # gamma = 0: no --S_churn option, default 0
            x_hat = x + (t_hat**2 - t_cur**2).sqrt() * 1.0 * randn_like(x)
        den = guided(net, x_hat, t_hat, labels, cfg)
        if i == m - 1:
            return den
        a_n = alpha_image(t_next.item(), patch, res, prob_length, blur_sigma_max)
        a_c = alpha_image(t_cur.item(), patch, res, prob_length, blur_sigma_max)
        u = dct2(x, patch)
        d = (u - dct2(den, patch)) / t_cur
        g = math.sqrt(1 - s_noise**2) * t_next / t_cur
        spectra = (a_n + g - g * a_c, t_cur * (g * a_c - a_n))
        noise = (latents, randn_like, patch, s_block, s_noise * t_next)
        x_next = released_update(u, d, spectra, noise)
        den_next = guided(net, x_next, t_next, labels, cfg)
        x = released_update(u, (d + (dct2(x_next, patch) - dct2(den_next, patch)) / t_next) / 2, spectra, noise)


def released_update(u, slope, spectra, noise):
    """idct((a_n + g - g a_c) U + t_cur (g a_c - a_n) slope) + s_noise t_next (randn + s_block block noise)."""
    latents, randn_like, patch, s_block, scale = noise
    n = randn_like(latents)
    if s_block > 0:
        n = n + s_block * box_noise(latents, randn_like, patch)
    return idct2(spectra[0] * u + spectra[1] * slope, patch) + scale * n


def released_edm_sampler(net, latents, labels, randn_like, num_steps, sigma_min, sigma_max, rho, S_churn, S_min, S_max,
                         S_noise, cfg):
    """EDM's stochastic Heun sampler as the released edm_sampler runs it: one randn_like per step."""
    t = karras(num_steps, max(sigma_min, net.sigma_min), min(sigma_max, net.sigma_max), rho)
    t = torch.cat([net.round_sigma(t), torch.zeros(1, dtype=torch.float64)])
    x = latents.to(torch.float64) * t[0]
    for i in range(num_steps):
        t_cur, t_next = t[i], t[i + 1]
        gamma = min(S_churn / num_steps, math.sqrt(2) - 1) if S_min <= t_cur <= S_max else 0
        t_hat = net.round_sigma(t_cur + gamma * t_cur)
        x_hat = x + (t_hat**2 - t_cur**2).sqrt() * S_noise * randn_like(x)
        d = (x_hat - guided(net, x_hat, t_hat, labels, cfg)) / t_hat
        x = x_hat + (t_next - t_hat) * d
        if i < num_steps - 1:
            d_prime = (x - guided(net, x, t_next, labels, cfg)) / t_next
            x = x_hat + (t_next - t_hat) * (d + d_prime) / 2
    return x


def released_celebahq_edm_sampler(net, latents, randn_like, num_steps, sigma_min, sigma_max, rho, sde_scale):
    """generate_celebahq.py's edm_sampler (no churn): three randn_like per step, g = sde_scale t_next."""
    t = karras(num_steps, max(sigma_min, net.sigma_min), min(sigma_max, net.sigma_max), rho)
    t = torch.cat([net.round_sigma(t), torch.zeros(1, dtype=torch.float64)])
    x = latents.to(torch.float64) * t[0]
    for i in range(num_steps):
        t_cur, t_next = t[i], t[i + 1]
        t_hat = net.round_sigma(t_cur)
        x_hat = x + (t_hat**2 - t_cur**2).sqrt() * randn_like(x)
        d = (x_hat - net(x_hat, t_hat).to(torch.float64)) / t_hat
        g = sde_scale * t_next
        a = ((t_next**2 - g**2) / t_hat**2) ** 0.5
        x = x_hat + (a - 1) * t_hat * d + g * randn_like(x)
        if i < num_steps - 1:
            d_prime = (x - net(x, t_next).to(torch.float64)) / t_next
            x = x_hat + (a - 1) * t_hat * (d + d_prime) / 2 + g * randn_like(x)
    return x


class PerSeedGenerator:
    """One torch.Generator per image, as the released StackedRandomGenerator."""

    def __init__(self, seeds):
        self.gens = [torch.Generator().manual_seed(s) for s in seeds]

    def randn(self, shape, dtype=torch.float32):
        return torch.stack([torch.randn(shape[1:], generator=g, dtype=dtype) for g in self.gens])

    def randn_like(self, x):
        return self.randn(x.shape, x.dtype)


# ---------------------------------------------------------------------------- a small EDM-convention net


class TinyDenoiser(torch.nn.Module):
    """EDM-style preconditioned denoiser with sigma_min/sigma_max/round_sigma, in float64."""

    def __init__(self, res, label_dim=3, sigma_min=0.01, sigma_max=60.0, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.img_resolution, self.img_channels, self.label_dim = res, 3, label_dim
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1, dtype=torch.float64)
        with torch.no_grad():
            self.conv.weight.copy_(0.2 * torch.randn(self.conv.weight.shape, generator=g, dtype=torch.float64))
        self.embed = torch.randn(label_dim, 3, generator=g, dtype=torch.float64)

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)

    def forward(self, x, sigma, class_labels=None):
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1, 1, 1)
        if class_labels is None:
            class_labels = torch.zeros(1, self.label_dim, dtype=torch.float64)
        c_skip = 0.25 / (sigma**2 + 0.25)
        c_in = 1 / (sigma**2 + 0.25).sqrt()
        f = torch.tanh(self.conv(x * c_in)) + (class_labels.to(torch.float64) @ self.embed)[:, :, None, None]
        return c_skip * x + 0.5 * sigma * c_in * f


# ---------------------------------------------------------------------------- the tests

SEEDS = [11, 4, 7]


@pytest.mark.parametrize("cfg,s_block", [(1.0, 0.15), (2.5, 0.15), (2.5, 0.0)])
def test_sample_relay_reproduces_released_blur_sampler(cfg, s_block):
    net = TinyDenoiser(16)
    labels = torch.eye(3, dtype=torch.float64)[[0, 2, 1]]
    x_low = torch.rand(3, 3, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1
    cfg_kw = dict(num_steps=30, sigma_min=0.008, sigma_max=80.0, rho=7.0, truncation_sigma=2.0)
    released = released_blur_sampler(net, F.interpolate(x_low, 16), labels, PerSeedGenerator(SEEDS).randn_like,
                                      prob_length=0.93, patch=4, cfg=cfg, s_block=s_block, s_noise=0.2,
                                      blur_sigma_max=3.0, **cfg_kw)
    rnd = PerSeedGenerator(SEEDS)
    like = torch.empty(3, 3, 16, 16, dtype=torch.float64)
    sigmas = sampling.get_sigmas_relay(**cfg_kw, net=net)
    ours = sampling.sample_relay(sampling.CFGDenoiser(net, cfg), x_low, sigmas, {"class_labels": labels},
                                 disable=True, k=4, s_noise=0.2, s_block=s_block, blur_sigma_max=3.0, prob_length=0.93,
                                 noise_sampler=sampling.randn_like_sampler(rnd.randn_like, like))
    assert released.abs().max() > 0.1
    torch.testing.assert_close(ours, released, rtol=0, atol=1e-6)
    # Both drew the same number of normals: the generators are in the same state.
    probe = PerSeedGenerator(SEEDS)
    released_blur_sampler(net, F.interpolate(x_low, 16), labels, probe.randn_like, prob_length=0.93, patch=4,
                          cfg=cfg, s_block=s_block, s_noise=0.2, blur_sigma_max=3.0, **cfg_kw)
    assert torch.equal(rnd.randn((3, 5)), probe.randn((3, 5)))


def test_sample_edm_then_relay_reproduce_released_two_stage_generation():
    """generate.py --sampler_stages both: latents, stage 1 and stage 2 from one generator per seed."""
    net1, net2 = TinyDenoiser(4, seed=1, sigma_min=0.002, sigma_max=80.0), TinyDenoiser(16, seed=2)
    labels = torch.eye(3, dtype=torch.float64)[[1, 1, 0]]
    s1 = dict(num_steps=10, sigma_min=0.002, sigma_max=80.0, rho=7.0)
    churn = dict(S_churn=40.0, S_min=0.05, S_max=50.0, S_noise=1.003)
    s2 = dict(num_steps=20, sigma_min=0.008, sigma_max=80.0, rho=7.0, truncation_sigma=2.0)

    rnd = PerSeedGenerator(SEEDS)
    latents = rnd.randn((3, 3, 4, 4))
    low = released_edm_sampler(net1, latents, labels, rnd.randn_like, cfg=2.0, **s1, **churn)
    released = released_blur_sampler(net2, F.interpolate(low, 16), labels, rnd.randn_like, prob_length=0.93,
                                      patch=4, cfg=2.0, s_block=0.15, s_noise=0.2, blur_sigma_max=3.0, **s2)

    rnd = PerSeedGenerator(SEEDS)
    latents = rnd.randn((3, 3, 4, 4))
    sigmas = sampling.get_sigmas_karras(**s1, net=net1)
    low_ours = sampling.sample_edm(
        sampling.CFGDenoiser(net1, 2.0), latents.to(torch.float64) * sigmas[0], sigmas, {"class_labels": labels},
        disable=True, s_churn=40.0, s_tmin=0.05, s_tmax=50.0, s_noise=1.003,
        noise_sampler=sampling.randn_like_sampler(rnd.randn_like, torch.empty(3, 3, 4, 4, dtype=torch.float64)))
    torch.testing.assert_close(low_ours, low, rtol=0, atol=1e-6)
    ours = sampling.sample_relay(
        sampling.CFGDenoiser(net2, 2.0), low_ours, sampling.get_sigmas_relay(**s2, net=net2),
        {"class_labels": labels}, disable=True,
        noise_sampler=sampling.randn_like_sampler(rnd.randn_like, torch.empty(3, 3, 16, 16, dtype=torch.float64)))
    torch.testing.assert_close(ours, released, rtol=0, atol=1e-6)
    # The same through sample_cascade(noise="torch") (what `relaydiff.sample --noise torch` runs).
    outs, _ = sampling.sample_cascade(
        net1, [net2], seeds=SEEDS, class_labels=labels, cfg_scale=2.0, noise="torch", disable=True,
        stage1_kwargs=dict(**s1, **churn), relay_kwargs=dict(s2))
    torch.testing.assert_close(outs[0], low, rtol=0, atol=1e-6)
    torch.testing.assert_close(outs[1], released, rtol=0, atol=1e-6)
    philox, _ = sampling.sample_cascade(net1, [net2], seeds=SEEDS, class_labels=labels, cfg_scale=2.0,
                                        disable=True, stage1_kwargs=dict(**s1, **churn), relay_kwargs=dict(s2))
    assert (philox[1].double() - released).abs().max() > 1e-2


def test_sample_edm_sde_scale_reproduces_released_celebahq_stage1():
    """--preset celebahq-256's stage 1: sde_scale noise at each update, drawn in the released order."""
    net = TinyDenoiser(4, seed=3, sigma_min=0.002, sigma_max=80.0)
    s1 = dict(num_steps=12, sigma_min=0.002, sigma_max=80.0, rho=7.0)
    rnd = PerSeedGenerator(SEEDS)
    released = released_celebahq_edm_sampler(net, rnd.randn((3, 3, 4, 4)), rnd.randn_like, sde_scale=0.05, **s1)
    rnd = PerSeedGenerator(SEEDS)
    latents = rnd.randn((3, 3, 4, 4))
    sigmas = sampling.get_sigmas_karras(**s1, net=net)
    like = torch.empty(3, 3, 4, 4, dtype=torch.float64)
    ours = sampling.sample_edm(net, latents.to(torch.float64) * sigmas[0], sigmas, disable=True, sde_scale=0.05,
                               noise_sampler=sampling.randn_like_sampler(rnd.randn_like, like))
    torch.testing.assert_close(ours, released, rtol=0, atol=1e-6)
    # The noise matters (a different sde_scale moves the result), and the Philox default draws it too.
    plain = sampling.sample_edm(net, latents.to(torch.float64) * sigmas[0], sigmas, disable=True)
    assert (plain - ours).abs().max() > 1e-3
    a = sampling.sample_edm(net, latents.to(torch.float64) * sigmas[0], sigmas, disable=True, sde_scale=0.05, seeds=1)
    b = sampling.sample_edm(net, latents.to(torch.float64) * sigmas[0], sigmas, disable=True, sde_scale=0.05, seeds=2)
    assert (a - b).abs().max() > 1e-3 and (a - plain).abs().max() > 1e-3
    with pytest.raises(ValueError, match="sde_scale"):
        sampling.sample_edm(net, latents.to(torch.float64) * sigmas[0], sigmas, disable=True, sde_scale=1.5)


def test_sigmas_clamped_and_rounded_to_the_net():
    net = TinyDenoiser(16, sigma_min=0.05, sigma_max=20.0)
    net.round_sigma = lambda t: torch.as_tensor(t).mul(100).round().div(100)
    t = sampling.get_sigmas_karras(8, 0.002, 80.0, net=net)
    assert t[0].item() == 20.0 and t[-2].item() == 0.05 and t[-1].item() == 0
    torch.testing.assert_close(t, (t * 100).round() / 100, rtol=0, atol=0)
    r = sampling.get_sigmas_relay(30, 0.008, 80.0, truncation_sigma=0.9, net=net)
    assert r[-2].item() == 0.05 and r[0].item() < 0.9 and torch.equal(r, (r * 100).round() / 100)


def test_callback_follows_k_diffusion_keys_and_noise_sampler_order():
    net = TinyDenoiser(16)
    x_low = torch.zeros(2, 3, 4, 4, dtype=torch.float64)
    calls, seen = [], []
    sigmas = sampling.get_sigmas_relay(20, truncation_sigma=2.0)

    def noise_sampler(sigma, sigma_next):
        calls.append((sigma.item(), sigma_next.item()))
        return torch.zeros(2, 3, 16, 16, dtype=torch.float64)

    sampling.sample_relay(net, x_low, sigmas, disable=True, noise_sampler=noise_sampler, callback=seen.append)
    m = sigmas.numel() - 1
    assert [set(d) for d in seen] == [{"x", "i", "sigma", "sigma_hat", "denoised"}] * m
    assert [d["i"] for d in seen] == list(range(m)) and all(d["sigma"].dim() == 0 for d in seen)
    # Two normals (e, e') at the start and for each of the 2 (M - 1) op calls.
    t = sigmas.tolist()
    want = [(t[0], t[1])] * 2 + [p for i in range(m - 1) for p in [(t[i], t[i + 1])] * 4]
    assert calls == want


def test_celebahq_preset_reproduces_released_generate_celebahq():
    """--preset celebahq-256 --noise torch: generate_celebahq.py's edm_sampler (sde_scale) then its
    blur_sampler (the zero-weighted churn draw per step), one generator per seed, to 1e-6."""
    from relaydiff import presets

    pre = presets.preset("celebahq-256")
    net1, net2 = TinyDenoiser(4, seed=5, sigma_min=0.002, sigma_max=80.0), TinyDenoiser(16, seed=6)
    s1 = dict(pre["stage1"], num_steps=8)
    s2 = dict(pre["stage2"], num_steps=40)
    relay_args = dict(prob_length=s2["prob_length"], patch=4, cfg=1.0, s_block=s2["s_block"], s_noise=s2["s_noise"],
                      blur_sigma_max=s2["blur_sigma_max"], num_steps=40, sigma_min=s2["sigma_min"],
                      sigma_max=s2["sigma_max"], rho=s2["rho"], truncation_sigma=s2["truncation_sigma"])
    draws = []

    def released(celebahq):
        rnd = PerSeedGenerator(SEEDS)
        count = lambda x: draws.append(1) or rnd.randn_like(x)  # noqa: E731
        low = released_celebahq_edm_sampler(net1, rnd.randn((3, 3, 4, 4)), count, num_steps=8, sigma_min=0.002,
                                            sigma_max=80.0, rho=7.0, sde_scale=s1["sde_scale"])
        draws.clear()
        return released_blur_sampler(net2, F.interpolate(low, 16), None, count, celebahq=celebahq, **relay_args)

    want = released(celebahq=True)
    n_celebahq = len(draws)
    other = released(celebahq=False)
    m = sampling.get_sigmas_relay(40, truncation_sigma=0.95, net=net2).numel() - 1
    assert n_celebahq == 2 + 4 * (m - 1) + m and len(draws) == 2 + 4 * (m - 1)  # 68 vs 54 at 40 steps
    assert (want - other).abs().max() > 1e-2  # the shifted streams give another image

    outs, _ = sampling.sample_cascade(net1, [net2], seeds=SEEDS, noise="torch", disable=True, stage1_kwargs=s1,
                                      relay_kwargs=s2)
    torch.testing.assert_close(outs[1], want, rtol=0, atol=1e-6)
    without = dict(s2, churn_draw=False)
    outs, _ = sampling.sample_cascade(net1, [net2], seeds=SEEDS, noise="torch", disable=True, stage1_kwargs=s1,
                                      relay_kwargs=without)
    torch.testing.assert_close(outs[1], other, rtol=0, atol=1e-6)
    with pytest.raises(TypeError, match="churn_draw"):
        sampling.sample_cascade(net1, [net2], seeds=SEEDS, noise="torch", disable=True, stage1_kwargs=s1,
                                relay_kwargs=dict(s2, churn_draw="yes"))
