"""Every bad input gets a clear Python exception naming the problem, on every backend."""

import pytest
import torch
from conftest import cpu_backends

import relay_kernels as rk
from relay_kernels import reference

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


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_same_error_on_every_backend(case):
    """More than the match above: one exception type and one whole message on every backend here."""
    outcomes = {}
    for name, reason in cpu_backends():
        if reason is None:
            with pytest.raises(Exception) as info:
                BAD[case][0](name)
            outcomes[name] = (type(info.value), str(info.value))
    if len(outcomes) < 2:
        pytest.skip(f"only {list(outcomes)} run here: nothing to compare")
    assert len(set(outcomes.values())) == 1, outcomes


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


# ---------------------------------------------------------------------------------------------
# Scalars at the edges of their ranges (issue 12 item 4): a clear error naming the argument and its
# range, the same on every backend, or the documented limit.

I63 = 2**63 - 1
N_X = 3 * 8 * 8  # counters per sample of X
RANGE = {
    "blur sigma overflows float32": (
        lambda b: rk.patch_blur(X, 1e300, backend=b), ValueError,
        r"blur_sigma must be in \[0, 3\.4\d*e\+38\] .*float32, the op's compute dtype\), got 1e\+300"),
    "blur sigma tensor overflows float32": (lambda b: rk.patch_blur(X, torch.tensor([1.0, 1e300], dtype=torch.float64),
                                                                    backend=b), ValueError, "blur_sigma"),
    "sigma inf": (lambda b: rk.relay_corrupt(X, float("inf"), 1.0, seed=0, backend=b), ValueError,
                  "sigma must be finite"),
    "sigma nan tensor": (lambda b: rk.relay_corrupt(X, torch.tensor([float("nan"), 1.0]), 1.0, seed=0, backend=b),
                         ValueError, "sigma must be finite"),
    "sigma huge int": (lambda b: rk.relay_corrupt(X, 10**400, 1.0, seed=0, backend=b), ValueError, "sigma"),
    "t_cur underflows": (_step(t_cur=1e-50), ValueError, r"t_cur must be in \[1\.17\d*e-38, 3\.4\d*e\+38\]"),
    "t_cur underflows float64 tensor": (_step(t_cur=torch.tensor([1e-50, 0.5], dtype=torch.float64)), ValueError,
                                        r"t_cur must be in \[1\.17\d*e-38, .*got 1e-50"),
    "t_next over t_cur overflows": (_step(t_cur=1e-30, t_next=1e30), ValueError, "t_next / t_cur"),
    "correct t_next zero": (lambda b: rk.relay_correct(X, X, X, X, 0.5, 0.0, seed=0, backend=b), ValueError,
                            "t_next must be positive"),
    "prob_length zero": (_step(prob_length=0.0), ValueError, "prob_length must be"),
    "prob_length nan": (_step(prob_length=float("nan")), ValueError, "prob_length must be"),
    "blur_sigma_max inf": (_step(blur_sigma_max=float("inf")), ValueError, "blur_sigma_max must be"),
    "min_scale nan": (lambda b: rk.patch_blur(X, 1.0, min_scale=float("nan"), backend=b), ValueError,
                      r"min_scale must be .*\[0, 1\]"),
    "min_scale above one": (_step(min_scale=2.0), ValueError, "min_scale"),
    "block_scale nan": (lambda b: rk.relay_corrupt(X, 1.0, 1.0, block_scale=float("nan"), seed=0, backend=b),
                        ValueError, "block_scale must be finite"),
    "block_scale huge with normalize": (lambda b: rk.relay_corrupt(X, 1.0, 1.0, block_scale=1e200, normalize=True,
                                                                   seed=0, backend=b), ValueError, "block_scale"),
    "s_block nan": (_step(s_block=float("nan")), ValueError, "s_block must be finite"),
    "offset 2^63": (lambda b: rk.randn((2, 4), 0, offset=2**63, backend=b), ValueError,
                    r"offset must be in \[0, 9223372036854775803\]"),
    "offset past int64 with 2N": (lambda b: rk.relay_corrupt(X, 1.0, 1.0, seed=0, offset=I63 - 2 * N_X + 1,
                                                             backend=b), ValueError, r"offset \+ 2N"),
    "block_noise offset past int64": (lambda b: rk.block_noise((1, 1, 4, 4), 2, seed=0, offset=I63 - 15, backend=b),
                                      ValueError, "offset"),
    "seed range past int64": (lambda b: rk.randn((3, 4), I63 - 1, backend=b), ValueError,
                              r"seed must be in \[-2\^63, 2\^63 - 3\]"),
    "seed below int64": (lambda b: rk.randn((3, 4), -(2**63) - 1, backend=b), ValueError, r"seed must be in"),
    "seed huge": (lambda b: rk.relay_corrupt(X, 1.0, 1.0, seed=2**70, backend=b), ValueError, "seed must be in"),
    "seed uint64 tensor": (lambda b: rk.randn((1, 4), torch.tensor([1], dtype=torch.uint64), backend=b), TypeError,
                           "seed must be"),
    "seed meta tensor": (lambda b: rk.randn((2, 4), torch.zeros(2, dtype=torch.int64, device="meta"), device="cpu",
                                            backend=b), ValueError, "seed is on meta"),
    "sigma meta tensor": (lambda b: rk.relay_corrupt(X, torch.ones(2, device="meta"), 1.0, seed=0, backend=b),
                          ValueError, "sigma is on meta"),
    "t_cur sparse tensor": (_step(t_cur=torch.ones(2).to_sparse()), TypeError, "t_cur must be a dense"),
    "seed sparse tensor": (lambda b: rk.randn((2, 4), torch.ones(2, dtype=torch.int64).to_sparse(), backend=b),
                           TypeError, "seed must be a dense"),
    "image sparse": (lambda b: rk.patch_dct(torch.zeros(1, 1, 8, 8).to_sparse(), 4, backend=b), TypeError,
                     "x must be a dense"),
}


@pytest.mark.parametrize("case", list(RANGE), ids=list(RANGE))
def test_scalar_out_of_range(backend, case):
    fn, exc, match = RANGE[case]
    with pytest.raises(exc, match=match):
        fn(backend)


def test_largest_offset_and_seed_run(backend):
    """The last counters and seeds inside int64 are accepted and agree with the reference."""
    x = torch.randn(2, 3, 8, 8)
    off = I63 - 2 * N_X
    seeds = torch.tensor([I63, -(2**63)])
    out = rk.relay_corrupt(x, 0.5, 1.0, seed=seeds, offset=off, backend=backend)
    e = reference.randn(seeds, x.shape, off)
    e2 = reference.randn(seeds, x.shape, off + N_X)
    ref = reference.relay_corrupt(x, torch.full((2,), 0.5), torch.ones(2), (e, e2))
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-5)
    top = rk.randn((2, 4), I63 - 1, offset=I63 - 4, backend=backend)
    torch.testing.assert_close(top, reference.randn(torch.tensor([I63 - 1, I63]), (2, 4), I63 - 4), atol=4e-6, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_huge_finite_blur_sigma_is_the_full_blur(backend, dtype):
    """b -> inf: DC weight 1, every other weight min_scale (b^2 overflowing must not make 0 * inf)."""
    x = torch.randn(2, 3, 8, 8).to(dtype)
    big = 1e300 if dtype == torch.float64 else 2e19
    out = rk.patch_blur(x, torch.tensor([big, 1.0], dtype=torch.float64), min_scale=0.25, backend=backend)
    assert torch.isfinite(out).all()
    u = reference.patch_dct(x[:1].double(), 4)
    dc = torch.zeros_like(u)
    dc[..., ::4, ::4] = u[..., ::4, ::4]
    limit = reference.patch_idct(0.25 * u + 0.75 * dc, 4)
    tol = 1e-10 if dtype == torch.float64 else 2e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-5
    torch.testing.assert_close(out[:1].double(), limit, atol=tol, rtol=tol)


def test_blur_spectrum_limit_and_unchanged_bits():
    lam_b = torch.tensor([2e19, 3.4e38, 0.0], dtype=torch.float32)
    a = reference.blur_spectrum(lam_b, 4, 0.1)
    assert a[0, 0, 0] == 1 and a[2].eq(1).all()
    assert torch.equal(a[0].flatten()[1:], torch.full((15,), 0.1))
    assert torch.equal(a[1], a[0])
    # Ordinary inputs keep their bits: exp(lambda * (-b^2/2)) (1 - m) + m exactly as written in SPEC 2.
    for dt in (torch.float32, torch.float64):
        b = torch.cat([torch.logspace(-20, 15, 400, dtype=dt), torch.linspace(0, 10, 401, dtype=dt)])
        lam = reference.frequency_squares(8, dt)
        plain = torch.exp(lam * (b * b * -0.5)[:, None, None]) * (1 - 1e-3) + 1e-3
        assert torch.equal(reference.blur_spectrum(b, 8, 1e-3), plain)
