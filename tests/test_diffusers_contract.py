"""RelayEDMScheduler against the contract diffusers' own schedulers keep (what diffusers'
tests/schedulers/test_schedulers.py checks of every scheduler, written here ourselves): attribute
probing before set_timesteps, one generator per image as `diffusers.utils.torch_utils.randn_tensor`
draws them, save/load and from_config across scheduler classes, the step output class and
return_dict, deprecated kwargs, devices, a batch of timesteps. Nothing is downloaded.
"""

import inspect
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("diffusers", reason="diffusers is not installed (pip install relay_kernels[diffusers])")

from diffusers import EDMEulerScheduler, SchedulerMixin  # noqa: E402
from diffusers.utils import BaseOutput  # noqa: E402

import relay_kernels as rk  # noqa: E402
from relaydiff import sampling  # noqa: E402
from relaydiff.diffusers import RelayEDMScheduler, RelayEDMSchedulerOutput  # noqa: E402


def model(model_input, t):
    """A smooth stand-in for EDM's raw network F (prediction_type 'epsilon')."""
    return torch.tanh(model_input) * 0.3 + 0.1 * t


def x_low(batch=3, seed=1):
    return torch.rand(batch, 3, 4, 4, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def loop(scheduler, low, seeds, generator=None, steps=12, expand_t=False):
    scheduler.set_timesteps(steps)
    x = scheduler.prepare_latents(low, seeds=seeds)
    for t in scheduler.timesteps:
        tt = t.expand(x.shape[0]) if expand_t else t
        x = scheduler.step(model(scheduler.scale_model_input(x, tt), t), tt, x, generator=generator).prev_sample
    return x


def test_attributes_answer_before_set_timesteps():
    scheduler = RelayEDMScheduler()
    for name in ("init_noise_sigma", "scale_model_input", "step", "timesteps", "order", "config"):
        assert hasattr(scheduler, name), name
    assert scheduler.init_noise_sigma is None and scheduler.timesteps is None and len(scheduler) == 0
    scheduler.set_timesteps(20)
    assert scheduler.init_noise_sigma == float(scheduler.sigmas[0]) < 0.9


def test_generator_list_is_one_stream_per_image():
    """generator=[g_0, .., g_{B-1}]: image b's noise from g_b alone, so a batch of B is the B single
    runs; it is sample_relay fed the same per-image streams (e, then e', per op call)."""
    low, seeds = x_low(), torch.tensor([4, 9, 2])
    gens = lambda: [torch.Generator().manual_seed(s) for s in (10, 20, 30)]  # noqa: E731
    batch = loop(RelayEDMScheduler(up_scale=2), low, seeds, gens())
    singles = [loop(RelayEDMScheduler(up_scale=2), low[b:b + 1], seeds[b:b + 1], [g]) for b, g in enumerate(gens())]
    assert torch.equal(batch, torch.cat(singles))
    # sample_relay with the start from the Philox streams (prepare_latents) and the steps from the generators.
    scheduler = RelayEDMScheduler(up_scale=2)
    scheduler.set_timesteps(12)
    full, n = (3, 3, 8, 8), 3 * 8 * 8
    rnd, calls = sampling.PerSeedGenerator([10, 20, 30]), []

    def noise(sigma, sigma_next):
        calls.append(1)
        if len(calls) <= 2:  # the start pair: Philox e, e' at counters 0 and N
            return rk.randn(full, seeds, (len(calls) - 1) * n)
        return rnd.randn(full)

    def denoiser(x, sigma):
        sd = 0.5
        c_skip, c_out = sd**2 / (sigma**2 + sd**2), sigma * sd / (sigma**2 + sd**2).sqrt()
        c_in, c_noise = 1 / (sigma**2 + sd**2).sqrt(), sigma.log() / 4
        s4 = lambda v: v.reshape(-1, 1, 1, 1)  # noqa: E731
        return s4(c_skip) * x + s4(c_out) * model(s4(c_in) * x, c_noise[0])

    want = sampling.sample_relay(denoiser, low, scheduler.sigmas, disable=True, up_scale=2, noise_sampler=noise)
    assert torch.equal(batch, want)  # the same float32 ops in the same order: bit for bit
    assert (batch - loop(RelayEDMScheduler(up_scale=2), low, seeds)).abs().max() > 1e-3  # not the Philox run
    with pytest.raises(ValueError, match="one per image"):
        loop(RelayEDMScheduler(up_scale=2), low, seeds, gens()[:2])
    with pytest.raises(TypeError, match="generator"):
        loop(RelayEDMScheduler(up_scale=2), low, seeds, 5)


def test_save_load_and_from_config_across_schedulers(tmp_path):
    relay = RelayEDMScheduler(sigma_min=0.01, sigma_max=60.0, rho=5.0, up_scale=2, prediction_type="sample")
    relay.save_pretrained(tmp_path)
    loaded = RelayEDMScheduler.from_pretrained(tmp_path)
    settings = lambda cfg: {k: v for k, v in cfg.items() if not k.startswith("_")}  # noqa: E731
    assert isinstance(loaded, SchedulerMixin) and settings(loaded.config) == settings(relay.config)
    # The shared EDM keys carry over both ways; the others keep their defaults.
    edm = EDMEulerScheduler.from_config(relay.config)
    assert (edm.config.sigma_min, edm.config.sigma_max, edm.config.rho) == (0.01, 60.0, 5.0)
    back = RelayEDMScheduler.from_config(EDMEulerScheduler(sigma_min=0.02, sigma_data=0.6).config)
    assert back.config.sigma_min == 0.02 and back.config.sigma_data == 0.6 and back.config.k == 4
    assert torch.equal(loop(loaded, x_low(), 3), loop(relay, x_low(), 3))
    assert (loop(loaded, x_low(), 3) - loop(RelayEDMScheduler(up_scale=2), x_low(), 3)).abs().max() > 1e-3


def test_step_output_class_and_return_dict():
    scheduler = RelayEDMScheduler(up_scale=2)
    scheduler.set_timesteps(10)
    x = scheduler.prepare_latents(x_low(), seeds=0)
    t = scheduler.timesteps[0]
    out = scheduler.step(model(scheduler.scale_model_input(x, t), t), t, x)
    assert isinstance(out, RelayEDMSchedulerOutput) and isinstance(out, BaseOutput)
    assert torch.equal(out[0], out.prev_sample) and torch.equal(out.to_tuple()[1], out.pred_original_sample)
    again = RelayEDMScheduler(up_scale=2)
    again.set_timesteps(10)
    x2 = again.prepare_latents(x_low(), seeds=0)
    tup = again.step(model(again.scale_model_input(x2, t), t), t, x2, return_dict=False)
    assert isinstance(tup, tuple) and len(tup) == 2
    assert torch.equal(tup[0], out.prev_sample) and torch.equal(tup[1], out.pred_original_sample)


def test_deprecated_kwargs_consistent():
    """As diffusers checks: **kwargs in __init__ if and only if _deprecated_kwargs is not empty."""
    has_kwargs = "kwargs" in inspect.signature(RelayEDMScheduler.__init__).parameters
    assert has_kwargs == (len(RelayEDMScheduler._deprecated_kwargs) > 0)
    with pytest.raises(TypeError):
        RelayEDMScheduler(not_an_option=1)


def test_devices_and_batched_timesteps():
    """timesteps go to the device asked for, sigmas stay host floats; a [B] timestep (t.expand(B), as
    some pipelines pass it) is the scheduled one; a wrong one is refused."""
    scheduler = RelayEDMScheduler(up_scale=2)
    scheduler.set_timesteps(10, device=torch.device("cpu"))
    assert scheduler.timesteps.device.type == "cpu" and scheduler.sigmas.device.type == "cpu"
    assert scheduler.timesteps.dtype == torch.float32
    assert torch.equal(loop(RelayEDMScheduler(up_scale=2), x_low(), 3, expand_t=True),
                       loop(RelayEDMScheduler(up_scale=2), x_low(), 3))
    scheduler.set_timesteps(10)
    x = scheduler.prepare_latents(x_low(), seeds=0)
    wrong = torch.stack([scheduler.timesteps[0], scheduler.timesteps[0], scheduler.timesteps[1]])
    with pytest.raises(ValueError, match="scheduled"):
        scheduler.step(model(x, 0.0), wrong, x)
    # add_noise takes one timestep per image: the batch is the per-image calls.
    x0 = x_low(2, 5).repeat_interleave(2, -1).repeat_interleave(2, -2)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    ts = scheduler.timesteps[[0, 5]]
    batched = scheduler.add_noise(x0, noise, ts)
    each = torch.cat([scheduler.add_noise(x0[b:b + 1], noise[b:b + 1], ts[b:b + 1]) for b in range(2)])
    torch.testing.assert_close(batched, each, rtol=0, atol=1e-6)
