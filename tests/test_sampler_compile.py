"""Precomputed op weights, the sampler's default noise layout, and the whole relay loop under
torch.compile(fullgraph=True) on the CPU (CUDA-graph capture is in test_gpu.py)."""

from __future__ import annotations

import pytest
import torch

import relay_kernels as rk
from relay_kernels import reference
from relaydiff import sampling


def _images(seed, shape=(2, 3, 16, 16), dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_precomputed_weights_match_per_call_weights(dtype):
    x, den, x_next, den_next = (_images(i, dtype=dtype) for i in range(4))
    wdt = reference.compute_dtype(dtype)
    tc, tn = torch.tensor([0.8, 0.6], dtype=wdt), torch.tensor([0.5, 0.2], dtype=wdt)
    args = (4, 0.2, 3.0, 0.93, 1e-3)
    want = rk.relay_step(x, den, tc, tn, seed=3, offset=10)
    got = rk.relay_step(x, den, seed=3, offset=10, weights=reference.relay_step_weights(tc, tn, *args))
    assert torch.equal(got, want)
    want = rk.relay_correct(x, den, x_next, den_next, tc, tn, seed=3, offset=10)
    got = rk.relay_correct(x, den, x_next, den_next, seed=3, offset=10,
                           weights=reference.relay_correct_weights(tc, tn, *args))
    assert torch.equal(got, want)
    # The sampler's whole-schedule table holds the same weights, step by step.
    t = torch.tensor([0.8, 0.5, 0.2], dtype=wdt)
    step, correct, scale = sampling.relay_schedule_weights(t, 2, *args)
    w1, s1 = reference.relay_step_weights(t[1:2].expand(2), t[2:3].expand(2), *args)
    w2, _ = reference.relay_correct_weights(t[1:2].expand(2), t[2:3].expand(2), *args)
    # (Equal bit for bit on the machines tried; a vectorised exp/log on longer vectors may round
    # differently elsewhere, hence a float32-ulp tolerance.)
    for got, want in ((step[1], w1), (correct[1], w2), (scale[1], s1)):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_precomputed_weights_are_checked():
    x, den = _images(0), _images(1)
    w, s = reference.relay_step_weights(torch.tensor([0.8, 0.6]), torch.tensor([0.5, 0.2]), 4, 0.2, 3.0, 0.93, 1e-3)
    with pytest.raises(ValueError, match="not both"):
        rk.relay_step(x, den, 0.8, 0.5, seed=0, weights=(w, s))
    with pytest.raises(ValueError, match=r"weights must be \(w \[2, 2, 4, 4\]"):
        rk.relay_step(x, den, seed=0, weights=(w[:1], s[:1]))
    with pytest.raises(ValueError, match=r"w \[2, 4, 4, 4\]"):
        rk.relay_correct(x, den, x, den, seed=0, weights=(w, s))
    with pytest.raises(TypeError, match="torch.float32"):
        rk.relay_step(x, den, seed=0, weights=(w.double(), s))
    with pytest.raises(TypeError, match="a pair"):
        rk.relay_step(x, den, seed=0, weights=w)
    with pytest.raises(ValueError, match="give t_cur and t_next"):
        rk.relay_step(x, den, seed=0)


class TinyNet(torch.nn.Module):
    """A few convolutions and a sigma-dependent skip, EDM's model(x, sigma) convention."""

    def __init__(self, res=16):
        super().__init__()
        torch.manual_seed(0)
        self.img_resolution = res
        self.conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.SiLU(),
                                        torch.nn.Conv2d(8, 3, 3, padding=1))

    def forward(self, x, sigma, class_labels=None):
        c_skip = (0.25 / (sigma**2 + 0.25)).reshape(-1, 1, 1, 1)
        return c_skip * x + (1 - c_skip) * self.conv(x)


def test_sample_relay_default_noise_is_the_per_call_op_loop():
    """The default stream layout (start at [offset, offset + 2N), each op call the next 2N) and the
    precomputed weights give exactly what a hand loop of per-call rk ops gives."""
    net = TinyNet()
    x_low, seeds = _images(5, (2, 3, 4, 4)), torch.tensor([9, 3])
    sigmas = sampling.get_sigmas_relay(12, truncation_sigma=2.0)
    got = sampling.sample_relay(net, x_low, sigmas, disable=True, seeds=seeds, offset=77)

    t = sigmas.float()
    x = torch.nn.functional.interpolate(x_low, scale_factor=4, mode="nearest")
    n2 = 2 * x[0].numel()
    x = x + t[0] * sampling.relay_noise(seeds, tuple(x.shape[1:]), 4, 0.15, 77)
    off = 77 + n2
    for i in range(len(t) - 1):
        tc, tn = t[i].expand(2), t[i + 1].expand(2)
        den = net(x, tc)
        if i == len(t) - 2:
            break
        x_next = rk.relay_step(x, den, tc, tn, seed=seeds, offset=off)
        x = rk.relay_correct(x, den, x_next, net(x_next, tn), tc, tn, seed=seeds, offset=off + n2)
        off += 2 * n2
    # Bit for bit on the machines tried (see test_precomputed_weights_match_per_call_weights); a
    # counter off by one would change every pixel by O(1).
    torch.testing.assert_close(got, den, rtol=1e-5, atol=1e-5)


def test_whole_relay_loop_compiles_fullgraph():
    """sample_relay with a user's network, as one graph: no graph break, no host sync.
    (aot_eager traces the whole loop through dynamo and AOTAutograd, with the ops' fake kernels,
    in seconds; inductor's code generation adds nothing to what this checks.)"""
    net = TinyNet().eval()
    x_low, seeds = _images(2, (2, 3, 4, 4)), torch.tensor([4, 1])
    sigmas = sampling.get_sigmas_relay(6, truncation_sigma=1.5)
    assert sigmas.numel() == 4  # three listed steps: two Euler + Heun pairs and a final denoise

    def run(x, sig):
        return sampling.sample_relay(net, x, sig, disable=True, seeds=seeds)

    eager = run(x_low, sigmas)
    torch._dynamo.reset()
    compiled = torch.compile(run, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x_low, sigmas), eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(compiled(x_low + 0.1, sigmas), run(x_low + 0.1, sigmas), rtol=1e-5, atol=1e-5)
