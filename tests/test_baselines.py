"""The benchmark baselines compute the same thing as the reference (else their timings mean nothing)."""

import torch
from helpers import rand_image

from benchmarks import baselines as base
from relay_kernels import reference


def test_released_and_best_blur():
    x = rand_image((2, 3, 16, 8), torch.float32)
    b = torch.tensor([0.4, 2.2])
    want = reference.patch_blur(x, b, 4)
    torch.testing.assert_close(base.released_patch_blur(x, b), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(base.best_patch_blur(x, b), want, atol=1e-5, rtol=1e-5)


def test_block_filters():
    e = rand_image((2, 3, 8, 12), torch.float32)
    want = reference.block_filter(e, 3)
    torch.testing.assert_close(base.best_block_filter(e, 3), want, atol=1e-5, rtol=1e-5)
    torch.manual_seed(0)
    rolled = base.released_block_noise(e, 3)
    torch.manual_seed(0)
    torch.testing.assert_close(rolled, reference.block_filter(torch.randn_like(e), 3), atol=1e-5, rtol=1e-5)


def test_relay_step_formulations_agree_without_noise():
    x, den = rand_image((2, 3, 8, 8), torch.float32), rand_image((2, 3, 8, 8), torch.float32, 1)
    tc, tn = torch.tensor([0.8, 0.6]), torch.tensor([0.5, 0.2])
    zero = torch.zeros_like(x)
    want = reference.relay_step(x, den, tc, tn, (zero, zero), s_noise=0.0)
    torch.testing.assert_close(base.released_relay_step(x, den, tc, tn, s_noise=0.0), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(base.best_relay_step(x, den, tc, tn, s_noise=0.0), want, atol=1e-5, rtol=1e-5)


def test_relay_correct_formulations_agree_without_noise():
    x, den, xn, dn = (rand_image((2, 3, 8, 12), torch.float32, i) for i in range(4))
    tc, tn = torch.tensor([0.8, 0.6]), torch.tensor([0.5, 0.2])
    zero = torch.zeros_like(x)
    want = reference.relay_correct(x, den, xn, dn, tc, tn, (zero, zero), s_noise=0.0)
    got_released = base.released_relay_correct(x, den, xn, dn, tc, tn, s_noise=0.0)
    torch.testing.assert_close(got_released, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(base.best_relay_correct(x, den, xn, dn, tc, tn, s_noise=0.0), want, atol=1e-5, rtol=1e-5)
