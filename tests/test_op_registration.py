"""The kernel ops as torch custom ops: opcheck, gradients, torch.compile(fullgraph=True)."""

import pytest
import torch
from helpers import rand_image

import relay_kernels as rk
from relay_kernels import _backend, _ops, reference


def _variant(backend):
    return _backend.OP_VARIANTS[backend]


def _op_samples(dtype=torch.float64):
    shape = (2, 3, 8, 12)
    x = rand_image(shape, dtype).requires_grad_()
    y = rand_image(shape, dtype, 1).requires_grad_()
    wdt = reference.compute_dtype(dtype)
    w1 = reference.blur_spectrum(torch.tensor([0.5, 2.0], dtype=wdt), 4)[:, None].contiguous()
    w2, scale = reference.relay_step_weights(torch.tensor([0.8, 0.5], dtype=wdt), torch.tensor([0.4, 0.1], dtype=wdt),
                                             4, 0.2, 3.0, 0.93, 1e-3)
    seeds = torch.tensor([3, 9], dtype=torch.int64)
    e, e2 = rand_image(shape, dtype, 2).requires_grad_(), rand_image(shape, dtype, 3).requires_grad_()
    return [
        ("patch_dct", (x, 4, False)),
        ("patch_dct", (x, 4, True)),
        ("block_filter", (x, 3, False)),
        ("block_filter", (x, 4, True)),
        ("noise", (seeds, [2, 3, 8, 12], 5, 0, dtype)),
        ("noise", (seeds, [2, 3, 8, 12], 5, 4, dtype)),
        ("relay_fused", ([x], w1, None, 0.0, 1, None, 0, None, None)),
        ("relay_fused", ([x, y], w2.contiguous(), scale, 0.15, 4, seeds, 3, None, None)),
        ("relay_fused", ([x, y], w2.contiguous(), scale, 0.15, 3, None, 0, e, e2)),
    ]


@pytest.mark.parametrize("case", range(9))
def test_opcheck(fused_backend, case):
    name, args = _op_samples()[case]
    _backend.resolve(torch.device("cpu"), fused_backend)  # loads the backend's ops
    torch.library.opcheck(_ops.op(name, _variant(fused_backend)), args)


@pytest.mark.parametrize("case", [0, 1, 2, 3, 6, 7, 8])
def test_gradients_match_reference(backend, case):
    """Backward of each op equals autograd through the plain-PyTorch reference."""
    name, args = _op_samples()[case]
    kernels = _backend.resolve(torch.device("cpu"), backend)
    out = getattr(kernels, name)(*args)
    grad_out = rand_image(tuple(out.shape), out.dtype, 11)
    leaves = [a for a in _flat(args) if isinstance(a, torch.Tensor) and a.requires_grad]
    got = torch.autograd.grad(out, leaves, grad_out, allow_unused=True)
    want = torch.autograd.grad(getattr(reference, name)(*args), leaves, grad_out, allow_unused=True)
    for g, w in zip(got, want, strict=True):
        assert (g is None) == (w is None)
        if g is not None:
            torch.testing.assert_close(g, w, atol=1e-10, rtol=1e-10)


def _flat(args):
    for a in args:
        if isinstance(a, (list, tuple)):
            yield from a
        else:
            yield a


def test_gradcheck_public_ops(backend):
    shape = (1, 2, 8, 8)
    x = rand_image(shape, torch.float64).requires_grad_()
    den = rand_image(shape, torch.float64, 1).requires_grad_()
    torch.autograd.gradcheck(lambda t: rk.patch_blur(t, 1.3, backend=backend), (x,), fast_mode=True)
    torch.autograd.gradcheck(lambda a, d: rk.relay_step(a, d, 0.7, 0.3, seed=4, backend=backend), (x, den),
                             fast_mode=True)


def _relay_loop(x, den_fn, sigmas, seeds, backend):
    """A short Heun relay sampling loop, as relaydiff.sampling runs it."""
    n = x[0].numel()
    for i in range(len(sigmas) - 1):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        den = den_fn(x)
        x_next = rk.relay_step(x, den, t_cur, t_next, seed=seeds, offset=4 * n * i, backend=backend)
        x = rk.relay_correct(x, den, x_next, den_fn(x_next), t_cur, t_next, seed=seeds,
                             offset=4 * n * i + 2 * n, backend=backend)
    return x


def test_compile_fullgraph_sampling_loop(fused_backend):
    """(The reference backend compiles too, but tracing its integer Philox takes minutes.)"""
    backend = fused_backend
    x = rand_image((2, 3, 16, 16), torch.float32)
    seeds = torch.tensor([1, 2], dtype=torch.int64)
    sigmas = [0.8, 0.5, 0.2]
    den_fn = lambda t: 0.9 * t  # noqa: E731  (a stand-in denoiser)
    eager = _relay_loop(x, den_fn, sigmas, seeds, backend)
    torch._dynamo.reset()
    compiled = torch.compile(lambda a: _relay_loop(a, den_fn, sigmas, seeds, backend), fullgraph=True)
    torch.testing.assert_close(compiled(x), eager, atol=1e-5, rtol=1e-5)


def test_compile_fullgraph_blur_with_tensor_sigma(backend):
    x = rand_image((2, 3, 8, 8), torch.float32)
    b = torch.tensor([0.5, 1.5])
    fn = torch.compile(lambda a, s: rk.patch_blur(a, s, backend=backend) * 2, fullgraph=True)
    torch.testing.assert_close(fn(x, b), 2 * reference.patch_blur(x, b), atol=1e-5, rtol=1e-5)
