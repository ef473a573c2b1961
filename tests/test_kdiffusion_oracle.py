"""relaydiff's EDM sampler and schedules against crowsonkb/k-diffusion 0.1.1 (the PyPI package
k-diffusion==0.1.1.post1, installed by `make install-test` with --no-deps plus the test extra's
torchsde, torchdiffeq, dctorch, einops).

k-diffusion's package __init__ imports its training modules (jsonmerge, clean-fid, torchvision, ...),
and k_diffusion.utils imports torchvision.transforms.functional at the top (used only by its image
helpers). So the submodules we need (sampling, layers, external) are loaded under a stand-in
`k_diffusion` package object, with an empty stand-in `torchvision` when none is installed; both
stand-ins are removed from sys.modules again after the import.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import pytest
import torch

from relaydiff import sampling
from relaydiff.networks import EDMPrecond


def _load_k_diffusion():
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("k-diffusion is not installed (make install-test installs k-diffusion==0.1.1.post1)")
    stubs = {"k_diffusion": types.ModuleType("k_diffusion")}
    stubs["k_diffusion"].__path__ = list(spec.submodule_search_locations)
    if importlib.util.find_spec("torchvision") is None:
        for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional"):
            stubs[name] = types.ModuleType(name)
            stubs[name].__path__ = []
    saved = {name: sys.modules.get(name) for name in stubs}
    sys.modules.update(stubs)
    try:
        mods = types.SimpleNamespace(**{m: importlib.import_module(f"k_diffusion.{m}")
                                        for m in ("sampling", "layers", "external")})
    finally:
        for name in [n for n in sys.modules if n in stubs or n.startswith("k_diffusion.")]:
            del sys.modules[name]
        sys.modules.update({k: v for k, v in saved.items() if v is not None})
    return mods


@pytest.fixture(scope="module")
def K():
    return _load_k_diffusion()


class Analytic(torch.nn.Module):
    """A smooth EDM-convention denoiser (float64): the posterior mean under a two-point prior."""

    def __init__(self, res=4):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.points = torch.rand(2, 3, res, res, generator=g, dtype=torch.float64) * 2 - 1

    def forward(self, x, sigma, class_labels=None):
        sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1, 1, 1)
        sq = ((x[:, None] - self.points[None]) ** 2).flatten(2).sum(-1)  # [B, 2]
        w = torch.softmax(-sq / (2 * sigma.reshape(-1, 1) ** 2), dim=1)
        return torch.einsum("bk,kchw->bchw", w, self.points)


def _x(batch=3, res=4, sigma=80.0):
    return torch.randn(batch, 3, res, res, generator=torch.Generator().manual_seed(7), dtype=torch.float64) * sigma


def test_get_sigmas_karras_matches(K):
    ours = sampling.get_sigmas_karras(12, 0.002, 80.0, 7.0)
    theirs = K.sampling.get_sigmas_karras(12, 0.002, 80.0, 7.0)  # float32 linspace
    torch.testing.assert_close(ours.float(), theirs, rtol=1e-6, atol=0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        theirs64 = K.sampling.get_sigmas_karras(12, 0.002, 80.0, 7.0)
    finally:
        torch.set_default_dtype(old)
    torch.testing.assert_close(ours, theirs64, rtol=1e-14, atol=0)


@pytest.mark.parametrize("churn", [dict(), dict(s_churn=10.0, s_tmin=0.05, s_tmax=20.0, s_noise=1.003)])
@pytest.mark.parametrize("stop_above_zero", [False, True])
def test_sample_edm_is_sample_heun(K, churn, stop_above_zero):
    """Same noise (torch's global generator, drawn once per step by both), same images and callbacks;
    a schedule stopping above 0 (the first half of a split schedule) corrects its last step too."""
    net = Analytic()
    sigmas = sampling.get_sigmas_karras(10, 0.002, 80.0)
    if stop_above_zero:
        sigmas = sigmas[:6]
    x0 = _x()
    ours_cb, theirs_cb = [], []
    calls = sampling.CountCalls(net)
    torch.manual_seed(1)
    ours = sampling.sample_edm(calls, x0, sigmas, disable=True, callback=ours_cb.append,
                               noise_sampler=lambda s, s_next: torch.randn_like(x0), **churn)
    torch.manual_seed(1)
    theirs = K.sampling.sample_heun(net, x0, sigmas, disable=True, callback=theirs_cb.append, **churn)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    n = sigmas.numel() - 1
    assert calls.nfe == (2 * n if stop_above_zero else 2 * n - 1)
    assert len(ours_cb) == len(theirs_cb) == n
    for a, b in zip(ours_cb, theirs_cb, strict=True):  # x: the churned x_hat
        assert set(a) == set(b) and a["i"] == b["i"]
        for key in ("x", "sigma", "sigma_hat", "denoised"):
            torch.testing.assert_close(torch.as_tensor(a[key]).double(), torch.as_tensor(b[key]).double(),
                                       rtol=1e-13, atol=1e-12)


def test_last_step_to_zero_is_sample_euler(K):
    """sample_edm's step onto sigma = 0 is k-diffusion's Euler step (with churn)."""
    net, x0 = Analytic(), _x(sigma=1.5)
    sigmas = torch.tensor([1.5, 0.0], dtype=torch.float64)
    torch.manual_seed(2)
    ours = sampling.sample_edm(net, x0, sigmas, disable=True, s_churn=0.3,
                               noise_sampler=lambda s, s_next: torch.randn_like(x0))
    torch.manual_seed(2)
    theirs = K.sampling.sample_euler(net, x0, sigmas, disable=True, s_churn=0.3)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-13)


def _tiny_edm_precond():
    torch.manual_seed(0)
    net = EDMPrecond(8, 3, label_dim=2, model_type="SongUNet", model_channels=8, channel_mult=[1], num_blocks=1,
                     attn_resolutions=[], dropout=0.0).eval()
    with torch.no_grad():  # EDM zero-initialises output layers; random ones make the net do something
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


SAMPLERS = ["sample_euler", "sample_heun", "sample_dpm_2", "sample_lms", "sample_dpmpp_2m", "sample_euler_ancestral",
            "sample_dpm_2_ancestral", "sample_dpmpp_2s_ancestral", "sample_dpmpp_sde", "sample_dpmpp_2m_sde"]


@pytest.mark.filterwarnings("ignore:Should have ta>=t0")  # torchsde, float32 sigma_min rounding
def test_k_diffusion_samplers_drive_edm_precond(K, one_thread):
    """Ten k-diffusion samplers run relaydiff's EDMPrecond as it is (x, sigma [B], class_labels):
    the deterministic ones solve the same ODE as relaydiff's sample_edm (agree to a few 1e-2 at 24
    steps), sample_heun to 1e-5 in float32; the stochastic ones give finite, distinct images."""
    net = _tiny_edm_precond()
    labels = torch.eye(2)[[0, 1]]
    sigmas = sampling.get_sigmas_karras(24, 0.002, 80.0, net=net).float()
    x0 = _x(batch=2, res=8).float()
    extra = {"class_labels": labels}
    reference = sampling.sample_edm(net, x0, sigmas, extra, disable=True)
    outs = {}
    for name in SAMPLERS:
        torch.manual_seed(0)
        outs[name] = getattr(K.sampling, name)(net, x0, sigmas, extra_args=extra, disable=True)
        assert outs[name].shape == x0.shape and torch.isfinite(outs[name]).all(), name
    torch.testing.assert_close(outs["sample_heun"], reference, rtol=0, atol=1e-5)
    # Measured at 24 steps: euler 0.22, dpm_2 0.019, lms 0.075, dpmpp_2m 0.006 (first vs second order).
    assert (outs["sample_euler"] - reference).abs().max() < 0.5
    for name in ("sample_dpm_2", "sample_lms", "sample_dpmpp_2m"):
        assert (outs[name] - reference).abs().max() < 0.1, name
    for name in SAMPLERS[5:]:  # ancestral / SDE samplers: 1.9 .. 2.7 away, the noise is not a no-op
        assert (outs[name] - reference).abs().max() > 0.5, name


def test_relaydiff_samplers_drive_k_diffusion_wrappers(K, one_thread):
    """sample_edm over k-diffusion's own wrappers (layers.Denoiser's preconditioning, external's
    discrete-DDPM eps wrapper) gives what sample_heun gives over them."""

    class Inner(torch.nn.Module):
        def forward(self, x, sigma, **kw):
            return torch.tanh(x) * 0.5 + 0.01 * torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1, 1, 1)

    x0 = _x(batch=2)
    wrappers = [K.layers.Denoiser(Inner(), sigma_data=0.5)]
    betas = torch.linspace(1e-4, 2e-2, 1000, dtype=torch.float64)
    wrappers.append(K.external.DiscreteEpsDDPMDenoiser(Inner(), torch.cumprod(1 - betas, 0), quantize=False))
    for wrapper in wrappers:
        smin, smax = (0.002, 80.0) if not hasattr(wrapper, "sigmas") else (wrapper.sigma_min.item(),
                                                                           wrapper.sigma_max.item())
        sigmas = sampling.get_sigmas_karras(8, smin, smax)
        ours = sampling.sample_edm(wrapper, x0 * smax / 80.0, sigmas, disable=True)
        theirs = K.sampling.sample_heun(wrapper, x0 * smax / 80.0, sigmas, disable=True)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)
        assert (ours - x0 * smax / 80.0).abs().max() > 1e-2
