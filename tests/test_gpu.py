"""GPU backends (cuda, triton) on CUDA tensors. Marked `gpu`: skipped, and reported so, without one."""

import pytest
import torch
from helpers import DTYPES, check_against_truth, rand_image, sample_scalars

import relay_kernels as rk
from relay_kernels import _backend, _ops, reference

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]

GPU_BACKENDS = ["cuda", "triton"]
SHAPES = [(1, 1, 8, 8), (2, 3, 16, 24), (3, 5, 32, 16), (4, 3, 64, 64)]


@pytest.fixture(params=GPU_BACKENDS)
def gpu_backend(request):
    reason = _backend._unavailable(request.param, torch.device("cuda"))
    if reason:
        pytest.skip(reason)
    return request.param


def _cuda(*ts):
    return [t.cuda() for t in ts]


def to_device(arg, device):
    """An op argument on `device`: tensors moved (a leaf that needs a gradient stays such a leaf),
    lists and tuples element by element, anything else (shapes, sizes, dtypes, None) as it is."""
    if isinstance(arg, torch.Tensor):
        return arg.detach().to(device).requires_grad_(arg.requires_grad)
    if isinstance(arg, (list, tuple)):
        return type(arg)(to_device(a, device) for a in arg)
    return arg


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("k", [4, 8])
def test_ops_against_reference(gpu_backend, dtype, shape, k):
    be = gpu_backend
    x, den, xn, dn, e, e2 = _cuda(*(rand_image(shape, torch.float64, s) for s in range(6)))
    b, sig = _cuda(sample_scalars(shape[0], 0, 3), sample_scalars(shape[0], 0.01, 4, seed=1))
    tc, = _cuda(sample_scalars(shape[0], 0.1, 0.9, seed=2))
    tn = tc * 0.5
    check_against_truth(lambda t: rk.patch_dct(t, k, backend=be), lambda t: reference.patch_dct(t, k), [x], dtype,
                        "patch_dct")
    check_against_truth(lambda t: rk.patch_blur(t, b, k, backend=be),
                        lambda t: reference.patch_blur(t, b.to(reference.compute_dtype(t.dtype)), k), [x], dtype,
                        "patch_blur")
    check_against_truth(lambda t: rk.block_filter(t, 3, backend=be), lambda t: reference.block_filter(t, 3), [x],
                        dtype, "block_filter")
    check_against_truth(lambda a, n0, n1: rk.relay_corrupt(a, sig, b, k, noise=(n0, n1), backend=be),
                        lambda a, n0, n1: reference.relay_corrupt(a, sig, b, (n0, n1), k), [x, e, e2], dtype,
                        "relay_corrupt")
    check_against_truth(lambda a, d, n0, n1: rk.relay_step(a, d, tc, tn, k, noise=(n0, n1), backend=be),
                        lambda a, d, n0, n1: reference.relay_step(a, d, tc, tn, (n0, n1), k), [x, den, e, e2], dtype,
                        "relay_step")
    check_against_truth(
        lambda a, d, p, q, n0, n1: rk.relay_correct(a, d, p, q, tc, tn, k, noise=(n0, n1), backend=be),
        lambda a, d, p, q, n0, n1: reference.relay_correct(a, d, p, q, tc, tn, (n0, n1), k),
        [x, den, xn, dn, e, e2], dtype, "relay_correct")


@pytest.mark.parametrize("offset", [0, 12345, 2**34 + 1])
def test_noise_identical_across_backends(offset):
    """Same seeds, same noise on cpu, cuda and triton (Philox bits exact; log/cos to an ulp or two)."""
    seeds = torch.tensor([0, 1, 2**40 + 9], dtype=torch.int64)
    shape = (3, 3, 32, 48)
    outs = {"reference": rk.block_noise(shape, 4, seed=seeds, offset=offset, backend="reference")}
    for be, dev in [("cpu", "cpu"), ("cuda", "cuda"), ("triton", "cuda")]:
        if _backend._unavailable(be, torch.device(dev)) is None:
            outs[be] = rk.block_noise(shape, 4, seed=seeds.to(dev), offset=offset, backend=be).cpu()
    assert len(outs) > 2, f"only {list(outs)} available"
    for be, out in outs.items():
        torch.testing.assert_close(out, outs["reference"], atol=4e-6, rtol=4e-6, msg=be)


@pytest.mark.parametrize("case", range(9))
def test_opcheck_cuda(gpu_backend, case):
    from test_op_registration import _op_samples

    name, args = _op_samples()[case]
    args = to_device(args, "cuda")
    variant = "_triton" if gpu_backend == "triton" else ""
    torch.library.opcheck(_ops.op(name, variant), args)


def test_compile_fullgraph_on_gpu(gpu_backend):
    from test_op_registration import _relay_loop

    x = rand_image((2, 3, 32, 32), torch.float32).cuda()
    seeds = torch.tensor([1, 2], dtype=torch.int64, device="cuda")
    den_fn = lambda t: 0.9 * t  # noqa: E731
    eager = _relay_loop(x, den_fn, [0.8, 0.5, 0.2], seeds, gpu_backend)
    torch._dynamo.reset()
    fn = torch.compile(lambda a: _relay_loop(a, den_fn, [0.8, 0.5, 0.2], seeds, gpu_backend), fullgraph=True)
    torch.testing.assert_close(fn(x), eager, atol=1e-5, rtol=1e-5)


def test_cuda_graph_capture_of_sampling_loop(gpu_backend):
    """No host sync inside any op: a whole relay loop (tensor sigmas) captures and replays."""
    from test_op_registration import _relay_loop

    x = rand_image((2, 3, 32, 32), torch.float32).cuda()
    seeds = torch.tensor([5, 6], dtype=torch.int64, device="cuda")
    sigmas = [torch.full((2,), s, device="cuda") for s in (0.8, 0.5, 0.2)]
    den_fn = lambda t: 0.9 * t  # noqa: E731
    static_x = x.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        _relay_loop(static_x, den_fn, sigmas, seeds, gpu_backend)  # warm up (Triton autotuning, JIT)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = _relay_loop(static_x, den_fn, sigmas, seeds, gpu_backend)
    x_new = rand_image((2, 3, 32, 32), torch.float32, 1).cuda()  # replay must read the static input anew
    static_x.copy_(x_new)
    graph.replay()
    torch.testing.assert_close(static_out, _relay_loop(x_new, den_fn, sigmas, seeds, gpu_backend), atol=1e-5,
                               rtol=1e-5)



def test_cuda_graph_capture_of_sample_relay(gpu_backend):
    """relaydiff's whole relay sampler with a user's network (start noise, precomputed weights, every
    step and correction) captures in one CUDA graph and replays it on new inputs: sigmas, seeds and
    the net already on the GPU, so nothing copies from the host or syncs inside the capture."""
    from relaydiff import sampling

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.SiLU(),
                              torch.nn.Conv2d(8, 3, 3, padding=1)).cuda().eval()

    def model(x, sigma):
        c_skip = (0.25 / (sigma**2 + 0.25)).reshape(-1, 1, 1, 1)
        return c_skip * x + (1 - c_skip) * net(x)

    sigmas = sampling.get_sigmas_relay(12, truncation_sigma=2.0, device="cuda")
    seeds = torch.tensor([5, 6], dtype=torch.int64, device="cuda")
    previous = rk.get_backend()
    rk.set_backend(gpu_backend)
    try:
        def run(x):
            return sampling.sample_relay(model, x, sigmas, disable=True, up_scale=4, seeds=seeds)

        static_x = rand_image((2, 3, 8, 8), torch.float32).cuda()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            run(static_x)  # warm up (Triton autotuning, JIT, cuDNN)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = run(static_x)
        for i in (1, 2):  # replay must read the static input anew
            x_new = rand_image((2, 3, 8, 8), torch.float32, i).cuda()
            static_x.copy_(x_new)
            graph.replay()
            torch.testing.assert_close(static_out, run(x_new), atol=1e-5, rtol=1e-5)
    finally:
        rk.set_backend(previous)

def test_patch_dct_against_cupy(gpu_backend):
    """cupyx.scipy.fft's DCT as an independent oracle (cupy is optional)."""
    cupy = pytest.importorskip("cupy")
    cufft = pytest.importorskip("cupyx.scipy.fft")
    x = rand_image((2, 3, 16, 16), torch.float32).cuda()
    patches = x.reshape(2, 3, 4, 4, 4, 4).permute(0, 1, 2, 4, 3, 5).contiguous()
    want = cufft.dctn(cupy.asarray(patches), type=2, axes=(-2, -1), norm="ortho")
    want = torch.as_tensor(want, device="cuda").permute(0, 1, 2, 4, 3, 5).reshape(x.shape)
    torch.testing.assert_close(rk.patch_dct(x, 4, backend=gpu_backend), want, atol=1e-5, rtol=1e-5)


def test_auto_prefers_cuda_then_triton():
    x = torch.zeros(1, 1, 8, 8, device="cuda")
    chosen = _backend.resolve(x.device, "auto").name
    expected = next((n for n in ("cuda", "triton") if _backend._unavailable(n, x.device) is None), "reference")
    assert chosen == expected
