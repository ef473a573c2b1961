"""Every bad input gets a clear Python exception naming the problem, on every backend."""

import pytest
import torch

import relay_kernels as rk

X = torch.zeros(2, 3, 8, 8)


def _step(**kw):
    args = dict(x_cur=X, den=X, t_cur=0.5, t_next=0.2, seed=0)
    args.update(kw)
    return lambda backend: rk.relay_step(**args, backend=backend)


BAD = {
    "H not multiple of k": (lambda b: rk.patch_blur(torch.zeros(1, 1, 6, 8), 1.0, k=4, backend=b),
                            ValueError, "multiples of the patch size"),
    "W not multiple of k": (lambda b: rk.patch_dct(torch.zeros(1, 1, 8, 10), 4, backend=b), ValueError, "multiples"),
    "k zero": (lambda b: rk.patch_dct(X, 0, backend=b), ValueError, "k must be positive"),
    "k negative": (lambda b: rk.patch_blur(X, 1.0, k=-4, backend=b), ValueError, "k must be positive"),
    "k larger than image": (lambda b: rk.patch_dct(X, 16, backend=b), ValueError, "larger than the image"),
    "k not an int": (lambda b: rk.patch_dct(X, 4.0, backend=b), TypeError, "k must be an int"),
    "block size zero": (lambda b: rk.block_filter(X, 0, backend=b), ValueError, "block_size must be positive"),
    "block larger than image": (lambda b: rk.block_noise((1, 1, 4, 4), 8, seed=0, backend=b), ValueError,
                                "larger than the image"),
    "integer dtype": (lambda b: rk.patch_dct(torch.zeros(1, 1, 8, 8, dtype=torch.int32), 4, backend=b), TypeError,
                      "float16, bfloat16, float32 or float64"),
    "not 4-D": (lambda b: rk.patch_blur(torch.zeros(3, 8, 8), 1.0, backend=b), ValueError, "must be 4-D"),
    "not a tensor": (lambda b: rk.patch_blur([[1.0]], 1.0, backend=b), TypeError, "must be a torch.Tensor"),
    "den shape": (_step(den=torch.zeros(1, 3, 8, 8)), ValueError, "den must have the shape of x_cur"),
    "den dtype": (_step(den=X.double()), TypeError, "den must have the dtype"),
    "noise shape": (lambda b: rk.relay_corrupt(X, 1.0, 1.0, noise=(X, X[:1]), backend=b), ValueError,
                    r"noise\[1\] must have the shape"),
    "noise not a pair": (lambda b: rk.relay_corrupt(X, 1.0, 1.0, noise=X, backend=b), TypeError, "pair"),
    "sigma batch": (lambda b: rk.relay_corrupt(X, torch.ones(3), 1.0, seed=0, backend=b), ValueError,
                    "sigma must be a float or hold one value per sample"),
    "seed batch": (lambda b: rk.relay_corrupt(X, 1.0, 1.0, seed=torch.zeros(3, dtype=torch.int64), backend=b),
                   ValueError, "one seed per sample"),
    "seed float": (lambda b: rk.relay_corrupt(X, 1.0, 1.0, seed=torch.zeros(2), backend=b), TypeError,
                   "integer tensor"),
    "no seed nor noise": (lambda b: rk.relay_corrupt(X, 1.0, 1.0, backend=b), ValueError, "pass seed="),
    "seed and noise": (lambda b: rk.relay_corrupt(X, 1.0, 1.0, seed=0, noise=(X, X), backend=b), ValueError,
                       "either seed= or noise="),
    "negative sigma": (lambda b: rk.relay_corrupt(X, -1.0, 1.0, seed=0, backend=b), ValueError,
                       "sigma must be non-negative"),
    "negative sigma tensor": (lambda b: rk.relay_corrupt(X, torch.tensor([1.0, -0.1]), 1.0, seed=0, backend=b),
                              ValueError, "sigma must be non-negative"),
    "negative blur sigma": (lambda b: rk.patch_blur(X, -0.5, backend=b), ValueError,
                            "blur_sigma must be non-negative"),
    "t_cur zero": (_step(t_cur=0.0), ValueError, "t_cur must be positive"),
    "t_cur negative tensor": (_step(t_cur=torch.tensor([0.5, -0.5])), ValueError, "t_cur must be positive"),
    "s_noise one": (lambda b: rk.relay_step(X, X, 0.5, 0.2, s_noise=1.0, seed=0, backend=b), ValueError,
                    r"s_noise must be in \[0, 1\)"),
    "s_noise negative": (lambda b: rk.relay_step(X, X, 0.5, 0.2, s_noise=-0.1, seed=0, backend=b), ValueError,
                         "s_noise"),
    "negative offset": (lambda b: rk.randn((2, 4), 0, offset=-1, backend=b), ValueError, "offset"),
    "bad shape": (lambda b: rk.randn((2, 0), 0, backend=b), ValueError, "shape must hold positive ints"),
    "bad noise dtype": (lambda b: rk.randn((2, 4), 0, dtype=torch.int64, backend=b), TypeError, "dtype"),
    "correct den_next shape": (lambda b: rk.relay_correct(X, X, X, X[:1], 0.5, 0.2, seed=0, backend=b), ValueError,
                               "den_next"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_input(backend, case):
    fn, exc, match = BAD[case]
    with pytest.raises(exc, match=match):
        fn(backend)


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown relay_kernels backend 'fast'"):
        rk.set_backend("fast")
    with pytest.raises(ValueError, match="unknown relay_kernels backend"):
        rk.patch_dct(X, backend="nope")


def test_unavailable_backend_says_why():
    with pytest.raises(rk.BackendUnavailableError, match="backend 'cuda' runs on CUDA tensors"):
        rk.patch_dct(X, backend="cuda")


def test_env_var_selects_backend():
    import subprocess
    import sys

    code = "import relay_kernels as rk; print(rk.get_backend())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "RELAY_KERNELS_BACKEND": "reference"})
    assert out.stdout.strip() == "reference"


def test_sigma_gradient_is_refused():
    sigma = torch.tensor([0.5, 0.7], requires_grad=True)
    with pytest.raises(NotImplementedError, match="gradients with respect to sigma"):
        rk.relay_corrupt(X, sigma, 1.0, seed=0)


def test_nan_sigma_gives_nan(backend):
    out = rk.relay_corrupt(torch.ones(2, 1, 8, 8), torch.tensor([float("nan"), 1.0]), 1.0, seed=0, backend=backend)
    assert torch.isnan(out[0]).all() and torch.isfinite(out[1]).all()


def test_fused_backends_reject_unsupported_k(fused_backend):
    with pytest.raises(ValueError, match="k=3 is not supported by the fused"):
        rk.patch_dct(torch.zeros(1, 1, 6, 6), 3, backend=fused_backend)


def test_nan_pixel_stays_in_its_patch(backend):
    """A NaN pixel makes its own k x k patch NaN (the DCT mixes a patch) and nothing else."""
    x = torch.randn(2, 3, 8, 8)
    x[0, 1, 2, 3] = float("nan")
    patch = torch.zeros_like(x, dtype=torch.bool)
    patch[0, 1, 0:4, 0:4] = True
    for out in (rk.patch_blur(x, 1.0, backend=backend), rk.relay_step(x, x, 0.8, 0.5, seed=0, backend=backend)):
        assert torch.equal(torch.isnan(out), patch)
    window = torch.zeros_like(patch)
    window[0, 1, 2:6, 3:7] = True  # Block_4 spreads e[y, x] to the 4 x 4 window below-right of it
    assert torch.equal(torch.isnan(rk.block_filter(x, 4, backend=backend)), window)
