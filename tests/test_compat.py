"""relay_kernels.compat: the released RDM code's signatures on top of the fast ops."""

import numpy as np
import pytest
import torch
from helpers import rand_image

from relay_kernels import compat, reference


@pytest.mark.parametrize("size", [4, 8])
def test_dct_2d_unnormalized_is_scipy_fftpack(size):
    fftpack = pytest.importorskip("scipy.fftpack")
    x = rand_image((1, 1, size, size), torch.float64)
    want = fftpack.dct(fftpack.dct(x[0, 0].numpy(), axis=0), axis=1)
    np.testing.assert_allclose(compat.dct_2d(x, size)[0, 0].numpy(), want, atol=1e-12)
    wanto = fftpack.dct(fftpack.dct(x[0, 0].numpy(), axis=0, norm="ortho"), axis=1, norm="ortho")
    np.testing.assert_allclose(compat.dct_2d(x, size, norm="ortho")[0, 0].numpy(), wanto, atol=1e-12)


@pytest.mark.parametrize("norm", [None, "ortho"])
@pytest.mark.parametrize("size", [4, 16, 32])
def test_dct_pair_inverts(norm, size):
    x = rand_image((2, 3, 32, 32), torch.float64)
    torch.testing.assert_close(compat.idct_2d(compat.dct_2d(x, size, norm), size, norm), x)


def test_dct_2d_is_patchwise():
    x = rand_image((1, 2, 8, 16), torch.float64)
    torch.testing.assert_close(compat.dct_2d(x, 4, "ortho"), reference.patch_dct(x, 4))


def test_block_noise_matches_rolled_sum():
    x = torch.zeros(2, 3, 8, 8)
    g = torch.Generator().manual_seed(0)
    e = torch.randn(x.shape, generator=g)
    out = compat.block_noise(x, randn_like=lambda t: e.clone(), block_size=3)
    rolled = sum(torch.roll(e, shifts=(px, py), dims=(-2, -1)) for px in range(3) for py in range(3)) / 3
    torch.testing.assert_close(out, rolled, atol=1e-5, rtol=1e-5)
    assert compat.block_noise(x, randn_like=lambda t: e.clone(), block_size=1).equal(e)


def test_get_alpha_t_tiles_alpha():
    t = torch.tensor([0.5, 2.0])
    a = compat.get_alpha_t(t, 4, repeat_dims=3)
    assert a.shape == (2, 1, 12, 12)
    want = reference.alpha(t.double(), 4).float()
    torch.testing.assert_close(a[:, 0, 4:8, 8:12], want)
    assert compat.get_alpha_t(0.5, 4, repeat_dims=2).shape == (8, 8)


def test_dctblur_is_patch_blur():
    x = rand_image((2, 3, 8, 8), torch.float32)
    b = torch.tensor([0.5, 1.0]).reshape(2, 1, 1, 1)
    torch.testing.assert_close(compat.DCTBlur(x, 4, b, 0.001), reference.patch_blur(x, b.reshape(2), 4))
