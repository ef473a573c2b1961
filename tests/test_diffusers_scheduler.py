"""relaydiff.diffusers.RelayEDMScheduler: a diffusers-style loop gives sample_relay's images bit for bit.

Skipped when diffusers (the optional extra `diffusers`) is not installed. Nothing is downloaded:
configs go through save_pretrained / from_pretrained on a temporary directory only.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local directory never needs the hub; fail loudly if asked
pytest.importorskip("diffusers", reason="diffusers is not installed (pip install relay_kernels[diffusers])")

import relay_kernels as rk  # noqa: E402
from relay_kernels import reference  # noqa: E402
from relaydiff import sampling  # noqa: E402
from relaydiff.diffusers import RelayEDMScheduler, RelayEDMSchedulerOutput  # noqa: E402
from relaydiff.networks import EDMPrecond  # noqa: E402

NON_DEFAULT = dict(k=2, s_noise=0.5, s_block=0.3, blur_sigma_max=2.0, prob_length=0.9, min_scale=1e-2,
                   truncation_sigma=2.0, sigma_min=0.01, sigma_max=60.0, rho=5.0)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The nets here are tiny: intra-op threads only add overhead (and spin on a busy 2-core runner)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def net():
    """A tiny EDM-preconditioned U-Net; its zero-initialized convs (EDM's init_zero: each block's
    conv1, the output conv) are randomized so F matters."""
    torch.manual_seed(0)
    net = EDMPrecond(8, 3, model_channels=8, channel_mult=(1,), num_blocks=1, attn_resolutions=()).eval()
    with torch.no_grad():
        for name, p in net.model.named_parameters():
            if name.startswith("out_conv") or ".conv1." in name:
                p.normal_(0.0, 0.3)
    assert net(torch.randn(1, 3, 8, 8), torch.ones(1)).abs().max() > 0
    return net


def relay_reference(net, x_low, num_steps, seeds, offset, relay_kw):
    """sample_relay's images: the one call to update when sample_relay's signature changes."""
    kw = dict(relay_kw)
    schedule = {n: kw.pop(n) for n in ("sigma_min", "sigma_max", "rho", "truncation_sigma") if n in kw}
    sigmas = sampling.get_sigmas_relay(num_steps, **schedule)
    return sampling.sample_relay(net, x_low, sigmas, disable=True, seeds=seeds, offset=offset, **kw)


def per_call_sigmas(scheduler):
    """The sigma of each model call: t_0, then t_1 .. t_{M-1} twice each (float32, as sample_relay's)."""
    listed = scheduler.sigmas[:-1]
    return torch.cat([listed[:1], listed[1:].repeat_interleave(2)]).to(torch.float32)


def diffusers_loop(scheduler, model, x_low, num_steps, seeds, offset, generator=None):
    """The loop a diffusers pipeline runs; model(model_input, t, x, call index) -> model_output."""
    scheduler.set_timesteps(num_steps)
    x = scheduler.prepare_latents(x_low, seeds=seeds, offset=offset)
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            model_input = scheduler.scale_model_input(x, t)
            out = scheduler.step(model(model_input, t, x, i), t, x, generator=generator)
            assert isinstance(out, RelayEDMSchedulerOutput)
            x = out.prev_sample
    return x, out.pred_original_sample


@pytest.mark.parametrize("relay_kw", [{}, NON_DEFAULT], ids=["defaults", "non_default"])
def test_epsilon_loop_matches_sample_relay_bitwise(net, relay_kw):
    x_low = torch.rand(3, 3, 4, 4, generator=torch.Generator().manual_seed(1)) * 2 - 1
    seeds, offset, num_steps = torch.tensor([5, 11, 2]), 7, 24
    expected = relay_reference(net, x_low, num_steps, seeds, offset, dict(relay_kw, up_scale=2))
    scheduler = RelayEDMScheduler(up_scale=2, **relay_kw)

    # "epsilon": the scheduler applies EDM's preconditioning around the raw U-Net F(c_in x; c_noise).
    def raw_unet(model_input, t, x, i):
        return net.model(model_input, t.expand(x.shape[0]), None)

    got, final_den = diffusers_loop(scheduler, raw_unet, x_low, num_steps, seeds, offset)
    listed = len(scheduler.sigmas) - 1  # M steps below truncation_sigma, then 0
    assert listed > 3 and len(scheduler.timesteps) == 2 * listed - 1  # Euler + Heun, the last call Euler only
    assert torch.equal(got, expected)
    assert torch.equal(got, final_den)  # the last call returns D
    # The model and the noise both matter: other seeds give other images.
    other, _ = diffusers_loop(scheduler, raw_unet, x_low, num_steps, seeds + 1, offset)
    assert (other - expected).abs().max() > 1e-3


def test_sample_prediction_matches_sample_relay_bitwise(net):
    x_low = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(2)) * 2 - 1
    expected = relay_reference(net, x_low, 16, 3, 0, dict(up_scale=2))
    scheduler = RelayEDMScheduler(up_scale=2, prediction_type="sample")
    scheduler.set_timesteps(16)
    sigmas = per_call_sigmas(scheduler)

    # "sample": model_output is D(x; sigma) itself (relaydiff's preconditioned net on the raw x).
    def denoiser(model_input, t, x, i):
        return net(x, sigmas[i].expand(x.shape[0]))

    got, _ = diffusers_loop(scheduler, denoiser, x_low, 16, 3, 0)
    assert torch.equal(got, expected)


def test_default_seeds_without_prepare_latents(net):
    """Without prepare_latents the steps use seeds 0, 1, ... from counter 2N on, as sample_relay's defaults."""
    x_low = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(7)) * 2 - 1
    expected = relay_reference(net, x_low, 12, 0, 0, dict(up_scale=2))
    scheduler = RelayEDMScheduler()
    scheduler.set_timesteps(12)
    x = torch.nn.functional.interpolate(x_low, scale_factor=2, mode="nearest")
    x = x + scheduler.init_noise_sigma * sampling.relay_noise(torch.arange(2), tuple(x.shape[1:]), 4, 0.15, 0)
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(net.model(scheduler.scale_model_input(x, t), t.expand(2), None), t, x).prev_sample
    assert torch.equal(x, expected)


def test_generator_noise(net):
    x_low = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(3)) * 2 - 1
    scheduler = RelayEDMScheduler(up_scale=2)

    def raw_unet(model_input, t, x, i):
        return net.model(model_input, t.expand(x.shape[0]), None)

    runs = [diffusers_loop(scheduler, raw_unet, x_low, 12, 0, 0, torch.Generator().manual_seed(s))[0]
            for s in (4, 4, 5)]
    philox, _ = diffusers_loop(scheduler, raw_unet, x_low, 12, 0, 0)
    assert torch.isfinite(runs[0]).all()
    assert torch.equal(runs[0], runs[1])
    assert (runs[0] - runs[2]).abs().max() > 1e-4
    assert (runs[0] - philox).abs().max() > 1e-4


def test_config_round_trip(tmp_path):
    scheduler = RelayEDMScheduler(up_scale=4, **NON_DEFAULT)
    scheduler.save_pretrained(tmp_path)
    saved = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert saved["_class_name"] == "RelayEDMScheduler" and saved["s_block"] == NON_DEFAULT["s_block"]
    loaded = RelayEDMScheduler.from_pretrained(tmp_path)
    def settings(cfg):  # diffusers' bookkeeping keys start with "_"
        return {k: v for k, v in cfg.items() if not k.startswith("_")}

    assert settings(loaded.config) == settings(scheduler.config)
    assert {k: loaded.config[k] for k in NON_DEFAULT} == NON_DEFAULT and loaded.config.up_scale == 4
    scheduler.set_timesteps(30)
    loaded.set_timesteps(30)
    assert torch.equal(loaded.sigmas, scheduler.sigmas) and torch.equal(loaded.timesteps, scheduler.timesteps)
    assert settings(RelayEDMScheduler.from_config(scheduler.config).config) == settings(scheduler.config)


def test_add_noise_is_relay_corrupt():
    scheduler = RelayEDMScheduler(k=4, s_block=0.25, blur_sigma_max=2.5, min_scale=1e-2)
    scheduler.set_timesteps(40)
    gen = torch.Generator().manual_seed(6)
    x0, e, e_block = (torch.randn(3, 2, 8, 12, generator=gen, dtype=torch.float64) for _ in range(3))
    t = scheduler.timesteps[[0, 3, 7]]
    sigma = torch.exp(4 * t.to(torch.float64))
    blur = reference.blur_schedule(sigma, 2.5, 0.93)
    got = scheduler.add_noise(x0, (e, e_block), t)
    fused = rk.relay_corrupt(x0, sigma, blur, 4, 0.25, noise=(e, e_block), min_scale=1e-2)
    assert torch.equal(got, fused)
    # Against the plain formula of SPEC 5, and with the mixed noise n passed as one tensor.
    n = e + 0.25 * reference.block_filter(e_block, 4)
    plain = reference.patch_blur(x0, blur, 4, 1e-2) + sigma[:, None, None, None] * n
    torch.testing.assert_close(got, plain, rtol=0, atol=1e-12)
    torch.testing.assert_close(scheduler.add_noise(x0, n, t), plain, rtol=0, atol=1e-12)
    # The scheduled timesteps map back to the scheduled sigmas (c_noise of the float32 sigma).
    torch.testing.assert_close(sigma, scheduler.sigmas[[0, 2, 4]], rtol=1e-6, atol=0)
    # One timestep for the whole batch.
    torch.testing.assert_close(scheduler.add_noise(x0, n, t[1]), scheduler.add_noise(x0, n, t[[1, 1, 1]]))


def test_bad_arguments(net):
    with pytest.raises(ValueError, match="sigma_max"):
        RelayEDMScheduler(sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="prediction_type"):
        RelayEDMScheduler(prediction_type="v_prediction")
    with pytest.raises(ValueError, match="up_scale"):
        RelayEDMScheduler(up_scale=1)
    with pytest.raises(ValueError, match="s_noise"):
        RelayEDMScheduler(s_noise=1.5)
    with pytest.raises(ValueError, match="k must be"):
        RelayEDMScheduler(k=0)
    scheduler = RelayEDMScheduler()
    x = torch.zeros(1, 3, 8, 8)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        scheduler.scale_model_input(x, 0.0)
    with pytest.raises(ValueError, match="num_inference_steps"):
        scheduler.set_timesteps(0)
    with pytest.raises(ValueError, match="truncation_sigma"):
        RelayEDMScheduler(truncation_sigma=0.005).set_timesteps(10)
    scheduler.set_timesteps(10)
    with pytest.raises(ValueError, match="up_scale"):
        scheduler.prepare_latents(torch.zeros(1, 3, 4, 4))  # neither the config nor the call gives it
    with pytest.raises(ValueError, match="x_low"):
        scheduler.prepare_latents(torch.zeros(3, 4, 4), up_scale=2)
    t = scheduler.timesteps
    with pytest.raises(ValueError, match="timesteps\\[0\\]"):
        scheduler.step(x, t[1], x)  # a skipped or repeated timestep
    with pytest.raises(ValueError, match="model_output"):
        scheduler.step(torch.zeros(1, 3, 4, 4), t[0], x)
    with pytest.raises(ValueError, match="batch"):
        scheduler.add_noise(x, x, t[:2])
    with pytest.raises(TypeError, match="noise"):
        scheduler.add_noise(x, [x], t[:1])
    for ti in t:
        x = scheduler.step(torch.zeros_like(x), ti, x).prev_sample
    with pytest.raises(RuntimeError, match="set_timesteps again"):
        scheduler.step(x, t[-1], x)


def test_import_relaydiff_does_not_import_diffusers():
    code = "import sys, relaydiff, relaydiff.sampling; assert 'diffusers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ))
