"""What is specific to the cuda_emu backend (the CUDA kernels run by the CPU block emulator).

The whole CPU test matrix also runs on cuda_emu through conftest's backend list; here: the
emulator's own semantics (barriers, indexing, CUDA's launch errors), shapes that drive the CUDA
launchers into each tile path, thread-count independence and noise agreement with cpu / triton.
"""

import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import rand_image

import relay_kernels as rk
from relay_kernels import _backend, reference

_REASON = _backend._unavailable("cuda_emu", torch.device("cpu"))
needs_emu = pytest.mark.skipif(bool(_REASON), reason=_REASON or "")


def _emu():
    from relay_kernels import _cuda_emu

    return _cuda_emu


# ---------------------------------------------------------------- backend selection


def test_unbuilt_emulator_says_how_to_build():
    out = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import sys
        sys.modules['relay_kernels._cuda_emu'] = None  # makes `from . import _cuda_emu` raise ImportError
        import torch, relay_kernels as rk
        try:
            rk.patch_dct(torch.zeros(1, 1, 8, 8), 4, backend='cuda_emu')
        except rk.BackendUnavailableError as e:
            print(e)
    """)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "relay_kernels._cuda_emu is not built" in out.stdout
    assert "RELAY_KERNELS_CUDA_EMU=1" in out.stdout


def test_cpu_tensors_only_and_never_auto():
    with pytest.raises(rk.BackendUnavailableError, match="runs on CPU tensors"):
        _backend.resolve(torch.device("cuda"), "cuda_emu")
    assert _backend.auto_choice("cpu") != "cuda_emu"


@needs_emu
def test_import_stays_lazy():
    out = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import sys, torch, relay_kernels as rk
        assert 'relay_kernels._cuda_emu' not in sys.modules
        rk.patch_dct(torch.zeros(1, 1, 8, 8), 4, backend='cuda_emu')
        assert 'relay_kernels._cuda_emu' in sys.modules
        print('ok')
    """)], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# ---------------------------------------------------------------- the emulator itself


@needs_emu
@pytest.mark.parametrize("blocks,threads,rounds", [(1, 1, 3), (3, 33, 4), (2, 256, 5), (1, 1024, 2)])
def test_barrier_semantics(blocks, threads, rounds):
    """Every thread reaches each barrier before any passes it, and writes before it are visible."""
    assert _emu().barrier_probe(blocks, threads, rounds) == 0


@needs_emu
def test_thread_exiting_before_barrier_releases_it():
    """Undefined in CUDA; the emulator does what sm_70+ hardware does and counts the event."""
    values, divergent = _emu().early_exit_probe(64)
    assert values == [(t + 1) % 32 for t in range(32)]
    assert divergent == 1


@needs_emu
@pytest.mark.parametrize("grid,block", [((1, 1, 1), (1, 1, 1)), ((3, 2, 2), (4, 3, 2)), ((5, 1, 1), (1024, 1, 1)),
                                        ((1, 7, 1), (8, 8, 16))])
def test_thread_and_block_indices(grid, block):
    assert _emu().index_probe(*grid, *block) == 0


OK, BAD_CONFIG, BAD_VALUE = "no error", "invalid configuration argument", "invalid argument"


@needs_emu
@pytest.mark.parametrize("grid,threads,smem,optin,expected", [
    ((1, 65535, 1), 1, 0, 0, OK),
    ((1, 65536, 1), 1, 0, 0, BAD_CONFIG),
    ((1, 1, 65536), 1, 0, 0, BAD_CONFIG),
    ((0, 1, 1), 32, 0, 0, BAD_CONFIG),
    ((1, 1, 1), 1024, 0, 0, OK),
    ((1, 1, 1), 1025, 0, 0, BAD_CONFIG),
    ((1, 1, 1), 32, 48 * 1024, 0, OK),
    ((1, 1, 1), 32, 48 * 1024 + 1, 0, BAD_VALUE),  # more than 48 KiB needs the opt-in
    ((1, 1, 1), 32, 64 * 1024, 64 * 1024, OK),
    ((1, 1, 1), 32, 64 * 1024 + 16, 64 * 1024, BAD_VALUE),  # more than opted in
    ((1, 1, 1), 32, 1024, 232448 + 1, BAD_VALUE),  # over the H100/H200 opt-in limit
])
def test_launch_configuration_errors(grid, threads, smem, optin, expected):
    assert _emu().launch_status(*grid, threads, smem, optin) == expected


@needs_emu
def test_correct_kernels_never_diverge_at_barriers():
    before = _emu().divergent_barriers()
    x = rand_image((2, 3, 32, 48), torch.float32)
    rk.patch_blur(x, torch.tensor([0.5, 1.5]), k=8, backend="cuda_emu")
    _kernels().block_filter(x, 5, True)
    _kernels().noise(torch.tensor([1, 2]), [2, 3, 32, 48], 0, 3, torch.float32)
    assert _emu().divergent_barriers() == before


# ---------------------------------------------------------------- launcher tile paths

_F64 = dict(atol=1e-12, rtol=1e-12)


def _kernels():
    return _backend.resolve(torch.device("cpu"), "cuda_emu")


# Tiles of the box filter are 32 x 64 (block_noise.cu): (40, 100) leaves ragged last tiles both
# ways; s = 64 in float needs a shrunk tile to stay within 48 KiB; s = 80 in float64 does not fit
# even a 1 x 1 tile (80 * 80 * 8 bytes of halo), so the launch opts in beyond 48 KiB.
@needs_emu
@pytest.mark.parametrize("shape,s,dtype", [
    ((1, 2, 40, 100), 3, torch.float64),
    ((1, 1, 64, 64), 64, torch.float32),
    ((1, 1, 80, 80), 80, torch.float64),
])
@pytest.mark.parametrize("transpose", [False, True])
def test_block_filter_tile_paths(shape, s, dtype, transpose):
    e = rand_image(shape, dtype)
    want = reference.block_filter(e.double(), s, transpose)
    got = _kernels().block_filter(e, s, transpose)
    tol = _F64 if dtype == torch.float64 else dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.double(), want, **tol)


# Strip tiles (launchers.h): W = 560 > 512 tasks at k = 8 gives a ragged last column tile; with the
# block term, k = 4, s = 48 in float shrinks the tile to fit 48 KiB, and k = 16, s = 64 in float64
# cannot fit a 16 x 16 tile into 48 KiB, so the launch opts in.
@needs_emu
@pytest.mark.parametrize("shape,k,s,dtype", [
    ((1, 1, 16, 560), 8, 3, torch.float64),
    ((1, 2, 64, 64), 4, 48, torch.float32),
    ((1, 1, 64, 64), 16, 64, torch.float64),
])
def test_relay_fused_tile_paths(shape, k, s, dtype):
    x, y = rand_image(shape, dtype, 1), rand_image(shape, dtype, 2)
    e, e2 = rand_image(shape, torch.float64, 3), rand_image(shape, torch.float64, 4)
    cdt = reference.compute_dtype(dtype)
    w = rand_image((1, 2, k, k), cdt, 5)
    scale = torch.tensor([0.7], dtype=cdt)
    args = ([x, y], w, scale, 0.3, s, None, 0, e.to(cdt), e2.to(cdt))
    want = reference.relay_fused(*[[t.double() for t in args[0]], w.double(), scale.double(), *args[3:7],
                                   e, e2])
    got = _kernels().relay_fused(*args)
    tol = _F64 if dtype == torch.float64 else dict(atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(got.double(), want, **tol)
    if dtype == torch.float64:
        torch.testing.assert_close(_kernels().patch_dct(x, k, False), reference.patch_dct(x, k, False), **_F64)


@needs_emu
def test_results_do_not_depend_on_thread_count():
    x = rand_image((3, 2, 32, 48), torch.float32)
    w = rand_image((3, 1, 4, 4), torch.float32, 1)
    seeds = torch.tensor([5, 6, 7])
    run = lambda: _kernels().relay_fused([x], w, torch.ones(3), 0.5, 5, seeds, 11, None, None)  # noqa: E731
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(max(2, threads))
        many = run()
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


# ---------------------------------------------------------------- noise agreement


def _ulp_diff(a, b):
    """Distance in float32 units in the last place (a and b of one sign, as here)."""
    ia, ib = a.view(torch.int32).long(), b.view(torch.int32).long()
    return (ia - ib).abs()


# Measured on these seeds: the emulated normals (the C library's logf/cosf, correctly rounded sqrt)
# differ from the cpu backend's (its own logf/cosf) by at most 3 ulp on 2^20 draws, 25% of them not
# bit-identical; from the Triton interpreter's by at most 3 ulp on 2^13 draws (24%). The Philox
# words and the uniforms agree exactly: signs are equal and a single differing bit would move a
# value by far more than a few ulp.
EMU_CPU_MAX_ULP = 3


@needs_emu
@pytest.mark.parametrize("other", ["cpu", "triton"])
def test_noise_agrees_with(other):
    reason = _backend._unavailable(other, torch.device("cpu"))
    if reason:
        pytest.skip(reason)
    shape = [2, 1 << 19] if other == "cpu" else [2, 1 << 12]
    seeds = torch.tensor([123456789, -(1 << 40)])
    emu = _kernels().noise(seeds, shape, 77, 0, torch.float32)
    ref = _backend.resolve(torch.device("cpu"), other).noise(seeds, shape, 77, 0, torch.float32)
    assert torch.equal(emu.sign(), ref.sign())
    assert _ulp_diff(emu, ref).max().item() <= EMU_CPU_MAX_ULP


@needs_emu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_conversions_round_to_nearest_even(dtype):
    """__float2half_rn / __float2bfloat16_rn of the emulator give torch's bits (subnormals included)."""
    seeds = torch.tensor([3, 4])
    noise = _kernels().noise
    x = noise(seeds, [2, 1, 512, 512], 0, 0, torch.float32) * 1e-4  # many half subnormals too
    got = _kernels().block_filter(x.to(dtype), 1, False)  # from_acc((0 + to_acc(v)) / 1): -0 becomes +0
    assert torch.equal(got.view(torch.int16), (x.to(dtype).float() + 0.0).to(dtype).view(torch.int16))
    # Rounding the kernel's float value: from_acc, against torch's conversion of the same floats.
    got = noise(seeds, [2, 4096], 5, 0, dtype)
    assert torch.equal(got.view(torch.int16), noise(seeds, [2, 4096], 5, 0, torch.float32).to(dtype).view(torch.int16))
