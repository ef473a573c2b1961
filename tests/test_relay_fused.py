"""relay_corrupt, relay_step, relay_correct: fused path against SPEC's literal formulas."""

import math

import pytest
import torch
from helpers import DTYPES, check_against_truth, layouts, rand_image, sample_scalars

import relay_kernels as rk
from relay_kernels import reference

SHAPES = [(1, 1, 8, 8), (2, 3, 16, 24), (3, 5, 8, 16)]


def _noise(shape, seed=7):
    return rand_image(shape, torch.float64, seed), rand_image(shape, torch.float64, seed + 1)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("k", [4, 8])
def test_relay_corrupt(backend, dtype, shape, k):
    x0 = rand_image(shape, torch.float64)
    e, e2 = _noise(shape)
    sigma, b = sample_scalars(shape[0], 0.01, 5.0), sample_scalars(shape[0], 0.0, 3.0, seed=1)
    fn = lambda x, n0, n1: rk.relay_corrupt(x, sigma, b, k, 0.15, noise=(n0, n1), backend=backend)  # noqa: E731
    truth = lambda x, n0, n1: reference.relay_corrupt(x, sigma, b, (n0, n1), k, 0.15)  # noqa: E731
    check_against_truth(fn, truth, [x0, e, e2], dtype, "relay_corrupt")


def _times(batch):
    t_cur = sample_scalars(batch, 0.1, 0.9)
    return t_cur, t_cur * sample_scalars(batch, 0.3, 0.9, seed=2)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("k", [2, 4, 8])
def test_relay_step(backend, dtype, shape, k):
    x, den = rand_image(shape, torch.float64), rand_image(shape, torch.float64, 3)
    e, e2 = _noise(shape)
    tc, tn = _times(shape[0])
    fn = lambda a, d, n0, n1: rk.relay_step(a, d, tc, tn, k, noise=(n0, n1), backend=backend)  # noqa: E731
    truth = lambda a, d, n0, n1: reference.relay_step(a, d, tc, tn, (n0, n1), k)  # noqa: E731
    check_against_truth(fn, truth, [x, den, e, e2], dtype, "relay_step")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("k", [4, 8])
def test_relay_correct(backend, dtype, shape, k):
    x, den = rand_image(shape, torch.float64), rand_image(shape, torch.float64, 3)
    xn, dn = rand_image(shape, torch.float64, 4), rand_image(shape, torch.float64, 5)
    e, e2 = _noise(shape)
    tc, tn = _times(shape[0])
    fn = lambda a, d, b, c, n0, n1: rk.relay_correct(a, d, b, c, tc, tn, k, noise=(n0, n1),  # noqa: E731
                                                    backend=backend)
    truth = lambda a, d, b, c, n0, n1: reference.relay_correct(a, d, b, c, tc, tn, (n0, n1), k)  # noqa: E731
    check_against_truth(fn, truth, [x, den, xn, dn, e, e2], dtype, "relay_correct")


def test_seeded_noise_is_the_generator(backend):
    """With seeds, e is drawn at counters offset+i and e' at offset+N+i (SPEC 4)."""
    shape = (2, 3, 8, 16)
    n = math.prod(shape[1:])
    seeds = torch.tensor([10, 20], dtype=torch.int64)
    x, den = rand_image(shape, torch.float32), rand_image(shape, torch.float32, 3)
    e = reference.randn(seeds, shape, 5)
    e2 = reference.randn(seeds, shape, 5 + n)
    tc, tn = torch.tensor([0.8, 0.6]), torch.tensor([0.5, 0.3])
    got = rk.relay_step(x, den, tc, tn, seed=seeds, offset=5, backend=backend)
    want = rk.relay_step(x, den, tc, tn, noise=(e, e2), backend="reference")
    torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)
    got = rk.relay_corrupt(x, tc, tn, seed=seeds, offset=5, backend=backend)
    want = rk.relay_corrupt(x, tc, tn, noise=(e, e2), backend="reference")
    torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)


def test_seeded_noise_independent_of_batch(backend):
    shape = (3, 2, 8, 8)
    seeds = torch.tensor([4, 8, 15], dtype=torch.int64)
    x = rand_image(shape, torch.float32)
    all3 = rk.relay_corrupt(x, 0.7, 1.0, seed=seeds, offset=3, backend=backend)
    one = rk.relay_corrupt(x[1:2], 0.7, 1.0, seed=seeds[1:2], offset=3, backend=backend)
    torch.testing.assert_close(all3[1:2], one, atol=0, rtol=0)


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_relay_step_layouts(backend, layout):
    shape = (2, 3, 16, 8)
    x, den = rand_image(shape, torch.float32), rand_image(shape, torch.float32, 3)
    e, e2 = rand_image(shape, torch.float32, 5), rand_image(shape, torch.float32, 6)
    want = reference.relay_step(x, den, torch.tensor([0.8, 0.7]), torch.tensor([0.4, 0.2]), (e, e2))
    got = rk.relay_step(layouts(x)[layout], layouts(den)[layout], torch.tensor([0.8, 0.7]),
                        torch.tensor([0.4, 0.2]), noise=(layouts(e)[layout], layouts(e2)[layout]), backend=backend)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)


def test_normalize_divides_the_noise(backend):
    shape = (1, 1, 8, 8)
    x = torch.zeros(shape)
    e, e2 = rand_image(shape, torch.float32, 1), rand_image(shape, torch.float32, 2)
    plain = rk.relay_corrupt(x, 1.0, 0.0, block_scale=0.5, noise=(e, e2), backend=backend)
    normed = rk.relay_corrupt(x, 1.0, 0.0, block_scale=0.5, noise=(e, e2), normalize=True, backend=backend)
    torch.testing.assert_close(normed, plain / math.sqrt(1.25), atol=1e-6, rtol=1e-6)


def test_weights_match_literal_forms():
    """The relay_fused weights (what kernels see) reproduce SPEC 6's U, D forms exactly."""
    shape = (2, 2, 8, 8)
    x, den, xn, dn = (rand_image(shape, torch.float64, s) for s in range(4))
    tc, tn = torch.tensor([0.85, 0.3], dtype=torch.float64), torch.tensor([0.5, 0.0], dtype=torch.float64)
    w, scale = reference.relay_step_weights(tc, tn, 4, 0.2, 3.0, 0.93, 1e-3)
    zero = torch.zeros_like(x)
    fused = reference.relay_fused([x, den], w)
    torch.testing.assert_close(fused, reference.relay_step(x, den, tc, tn, (zero, zero)))
    w, _ = reference.relay_correct_weights(tc, tn.clamp(min=0.1), 4, 0.2, 3.0, 0.93, 1e-3)
    fused = reference.relay_fused([x, den, xn, dn], w)
    torch.testing.assert_close(fused, reference.relay_correct(x, den, xn, dn, tc, tn.clamp(min=0.1), (zero, zero)))


def test_last_step_to_zero_returns_denoised(backend):
    """t_next = 0: g = 0 and alpha(0) = 1, so the Euler step lands on den exactly (no noise)."""
    shape = (2, 3, 8, 8)
    x, den = rand_image(shape, torch.float32), rand_image(shape, torch.float32, 1)
    out = rk.relay_step(x, den, 0.5, 0.0, seed=0, backend=backend)
    torch.testing.assert_close(out, den, atol=1e-5, rtol=1e-5)


# The CPU kernel takes patch size 4 in float32 and bfloat16 through register tiles of 16 columns
# (csrc/cpu/spectral_avx2.cpp) with a zero-padded last tile: widths around multiples of 16, and
# 1, 2 and 4 transformed inputs (blur and relay_corrupt, relay_step's den with x_cur added as
# g x_cur, relay_correct).
TILE_WIDTHS = [4, 12, 16, 20, 40, 44]


def _fused_call(op, backend, tc, tn, sigma, b):
    noise = lambda n0, n1: dict(noise=(n0, n1), backend=backend)  # noqa: E731
    return {
        "patch_blur": (lambda x: rk.patch_blur(x, b, backend=backend),
                       lambda x: reference.patch_blur(x, b.to(reference.compute_dtype(x.dtype))), 1),
        "relay_corrupt": (lambda x, n0, n1: rk.relay_corrupt(x, sigma, b, 4, 0.15, **noise(n0, n1)),
                          lambda x, n0, n1: reference.relay_corrupt(x, sigma, b, (n0, n1), 4, 0.15), 3),
        "relay_step": (lambda a, d, n0, n1: rk.relay_step(a, d, tc, tn, 4, **noise(n0, n1)),
                       lambda a, d, n0, n1: reference.relay_step(a, d, tc, tn, (n0, n1), 4), 4),
        "relay_correct": (lambda a, d, p, q, n0, n1: rk.relay_correct(a, d, p, q, tc, tn, 4, **noise(n0, n1)),
                          lambda a, d, p, q, n0, n1: reference.relay_correct(a, d, p, q, tc, tn, (n0, n1), 4), 6),
    }[op]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("width", TILE_WIDTHS)
@pytest.mark.parametrize("op", ["patch_blur", "relay_corrupt", "relay_step", "relay_correct"])
def test_widths_around_cpu_tiles(backend, op, width, dtype):
    shape = (2, 3, 8, width)
    tc, tn = _times(2)
    fn, truth, n_images = _fused_call(op, backend, tc, tn, sample_scalars(2, 0.01, 5.0),
                                      sample_scalars(2, 0.2, 3.0, seed=1))
    images = [rand_image(shape, torch.float64, seed) for seed in range(n_images)]
    check_against_truth(fn, truth, images, dtype, op)


# Non-finite values (SPEC): a NaN or infinity in a patch of a transformed input makes that whole
# patch of the output non-finite, also where the input's spectral weights are one constant and a
# kernel may add c x instead of transforming (patch_blur and relay_corrupt at blur sigma 0,
# relay_step's x_cur, and both inputs at t_next = 0, where x_cur's weight is 0 and den's is 1).
CONSTANT_WEIGHT_CASES = {
    "patch_blur_sigma0": (1, lambda xs, be: rk.patch_blur(xs[0], 0.0, backend=be)),
    "relay_corrupt_blur0": (1, lambda xs, be: rk.relay_corrupt(xs[0], 0.5, 0.0, seed=1, backend=be)),
    "relay_step": (2, lambda xs, be: rk.relay_step(xs[0], xs[1], 0.5, 0.3, seed=1, backend=be)),
    "relay_step_to_zero": (2, lambda xs, be: rk.relay_step(xs[0], xs[1], 0.5, 0.0, seed=1, backend=be)),
    "relay_correct": (4, lambda xs, be: rk.relay_correct(*xs, 0.5, 0.3, seed=1, backend=be)),
}
NONFINITE_CASES = [(case, j) for case, (n, _) in CONSTANT_WEIGHT_CASES.items() for j in range(n)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=str)
@pytest.mark.parametrize("case,j", NONFINITE_CASES, ids=[f"{c}-input{j}" for c, j in NONFINITE_CASES])
def test_nonfinite_spreads_over_its_patch(backend, case, j, value, dtype):
    n, fn = CONSTANT_WEIGHT_CASES[case]
    xs = [rand_image((2, 3, 8, 36), dtype, seed) for seed in range(n)]
    xs[j][0, 1, 5, 6] = value
    xs[j][1, 2, 1, 33] = value  # in the CPU kernel's zero-padded last tile
    expected = torch.zeros(2, 3, 8, 36, dtype=torch.bool)
    expected[0, 1, 4:8, 4:8] = True
    expected[1, 2, 0:4, 32:36] = True
    out = fn(xs, backend)
    assert torch.equal(~torch.isfinite(out), expected), f"{int((~torch.isfinite(out)).sum())} non-finite"
