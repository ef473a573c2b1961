"""patch_dct, patch_idct and patch_blur on every backend against reference.py."""

import pytest
import torch
from helpers import DTYPES, SHAPES, check_against_truth, layouts, rand_image, run_on_cpu_isa, sample_scalars

import relay_kernels as rk
from relay_kernels import reference


def cases(ks):
    return [pytest.param(s, k, id=f"{s}-k{k}") for s in SHAPES for k in ks if s[-1] % k == 0 and s[-2] % k == 0]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,k", cases([2, 4, 8]))
def test_patch_dct_roundtrip_and_truth(backend, dtype, shape, k):
    x = rand_image(shape, torch.float64)
    fwd = lambda t: rk.patch_dct(t, k, backend=backend)  # noqa: E731
    u = check_against_truth(fwd, lambda t: reference.patch_dct(t, k), [x], dtype, "patch_dct")
    inv = lambda t: rk.patch_idct(t, k, backend=backend)  # noqa: E731
    check_against_truth(inv, lambda t: reference.patch_idct(t, k), [u.double()], dtype, "patch_idct")


def test_patch_dct_is_orthonormal_dct2():
    """The reference agrees with the closed-form DCT-II sum on one patch (independent check)."""
    import math

    k = 8
    x = rand_image((1, 1, k, k), torch.float64)
    u = reference.patch_dct(x, k)[0, 0]
    p = x[0, 0]
    for a in range(k):
        for b in range(k):
            ca = math.sqrt((1 if a == 0 else 2) / k)
            cb = math.sqrt((1 if b == 0 else 2) / k)
            s = sum(p[n, m] * math.cos(math.pi * (2 * n + 1) * a / (2 * k)) *
                    math.cos(math.pi * (2 * m + 1) * b / (2 * k)) for n in range(k) for m in range(k))
            assert abs(u[a, b].item() - ca * cb * s) < 1e-12


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,k", cases([4, 8, 16]))
def test_patch_blur(backend, dtype, shape, k):
    x = rand_image(shape, torch.float64)
    b = sample_scalars(shape[0], 0.0, 3.0)
    fn = lambda t: rk.patch_blur(t, b, k, backend=backend)  # noqa: E731
    check_against_truth(fn, lambda t: reference.patch_blur(t, b.to(reference.compute_dtype(t.dtype)), k),
                        [x], dtype, "patch_blur")


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_layouts_give_same_values(backend, layout):
    x = rand_image((2, 3, 16, 24), torch.float32)
    b = torch.tensor([0.3, 2.5])
    expected = reference.patch_blur(x, b, 4)
    out = rk.patch_blur(layouts(x)[layout], b, 4, backend=backend)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    u = rk.patch_dct(layouts(x)[layout], 4, backend=backend)
    torch.testing.assert_close(u, reference.patch_dct(x, 4), atol=1e-5, rtol=1e-5)


def test_blur_scalar_and_tensor_sigma_agree(backend):
    x = rand_image((3, 2, 8, 8), torch.float32)
    a = rk.patch_blur(x, 1.5, backend=backend)
    b = rk.patch_blur(x, torch.full((3,), 1.5), backend=backend)
    c = rk.patch_blur(x, torch.full((3, 1, 1, 1), 1.5), backend=backend)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    torch.testing.assert_close(a, c, atol=0, rtol=0)


def test_blur_limits(backend):
    """b = 0 is the identity; a large b keeps only each patch's mean plus min_scale of the rest."""
    x = rand_image((2, 3, 8, 8), torch.float64)
    torch.testing.assert_close(rk.patch_blur(x, 0.0, backend=backend), x, atol=1e-12, rtol=0)
    out = rk.patch_blur(x, 1e3, backend=backend, min_scale=0.0)
    mean = x.reshape(2, 3, 2, 4, 2, 4).mean(dim=(3, 5), keepdim=True).expand(2, 3, 2, 4, 2, 4).reshape(x.shape)
    torch.testing.assert_close(out, mean, atol=1e-10, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_blur_batch_mixing_sigma_zero_and_positive(backend, dtype):
    """Blur sigma 0 makes a sample's weights all 1 (the CPU kernel then adds x untransformed);
    its neighbours in the same call are still blurred, each with its own sigma."""
    x = rand_image((3, 2, 8, 12), torch.float64)
    b = torch.tensor([0.0, 1.5, 0.0])
    fn = lambda t: rk.patch_blur(t, b, backend=backend)  # noqa: E731
    out = check_against_truth(fn, lambda t: reference.patch_blur(t, b.to(reference.compute_dtype(t.dtype))),
                              [x], dtype, "patch_blur")
    tol = {torch.float64: 1e-10, torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    torch.testing.assert_close(out[0], x[0].to(dtype), atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_nan_in_nan_out(backend, dtype):
    x = rand_image((1, 2, 8, 36), dtype)
    x[0, 1, 5, 6] = float("nan")
    x[0, 1, 1, 33] = float("nan")  # in the CPU kernel's padded last tile
    out = rk.patch_blur(x, 1.0, backend=backend)
    assert torch.isnan(out[0, 1, 4:8, 4:8]).all()  # the NaNs' patches
    assert torch.isnan(out[0, 1, 0:4, 32:36]).all()
    assert torch.isfinite(out[0, 1, :, 8:32]).all() and torch.isfinite(out[0, 0]).all()  # the rest untouched


@pytest.mark.parametrize("isa", ["scalar", "avx2"])
def test_cpu_transform_paths_agree(isa):
    """Each CPU path for the fused transforms (AVX2 + FMA register tiles at patch size 4 where the
    CPU has them, the portable band passes otherwise) matches the reference, in float32 and
    bfloat16, for one and for four transformed inputs, with a padded last tile (W = 44)."""
    code = """
import torch, relay_kernels as rk
from relay_kernels import reference as R
g = torch.Generator().manual_seed(0)
x, d, p, q = (torch.randn(3, 2, 8, 44, generator=g) for _ in range(4))
b, tc = torch.tensor([0.0, 0.8, 2.5]), torch.tensor([0.3, 0.6, 0.9])
tn = tc / 2
for dt, tol in ((torch.float32, 2e-6), (torch.bfloat16, 2e-2)):
    out = rk.patch_blur(x.to(dt), b, backend='cpu').float()
    torch.testing.assert_close(out, R.patch_blur(x.to(dt), b).float(), atol=tol, rtol=tol)
    args = [t.to(dt) for t in (x, d, p, q)]
    out = rk.relay_correct(*args, tc, tn, noise=(d.to(dt), q.to(dt)), backend='cpu').float()
    ref = R.relay_correct(*args, tc, tn, (d.to(dt), q.to(dt)), 4).float()
    torch.testing.assert_close(out, ref, atol=3 * tol, rtol=tol)
print('ok')
"""
    run_on_cpu_isa(code, isa)
