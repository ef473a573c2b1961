"""Bit-for-bit invariance (SPEC 4, issue 12 item 2): on any one backend a sample's result does not
depend on the rest of its batch, its position in the batch, or the number of threads.

The shapes are chosen so that the CPU kernels' work chunks (rows or bands of k rows, handed out
per thread) start inside an image plane, at a row that differs between one and two threads and
between a sample alone and the same sample behind others.
"""

import pytest
import torch
from conftest import rand_image, rk

BOX_SIZES = range(1, 8)
# (H, W): awkward widths (prime, not a multiple of the vector width, wide and narrow). The CPU
# kernels need images this large before they split a plane among threads; the reference and
# Triton (interpreted here) take the small ones, which keep the batch-composition check.
FILTER_SHAPES = [(40, 684), (300, 61)]
FUSED_SHAPES = [(48, 684), (152, 60)]  # divisible by k = 4
SMALL = {(40, 684): (8, 37), (300, 61): (11, 8), (48, 684): (8, 20), (152, 60): (12, 8)}
SEEDS = torch.tensor([10, 11, 12])  # the sample under test is seed 12, last in the batch


def threads(n, fn):
    """fn() run with n intra-op threads (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


def assert_invariant(alone, batched, pos=2):
    """alone(), a [1, ...] result, equals batched()[pos] bit for bit, with 1 and 2 threads."""
    base = threads(1, alone)
    for n in (1, 2):
        for name, out in (("alone", threads(n, alone)[0]), ("batched", threads(n, batched)[pos])):
            diff = (out.view(torch.int32 if out.dtype == torch.float32 else torch.int16)
                    != base[0].view(torch.int32 if base.dtype == torch.float32 else torch.int16))
            assert not diff.any(), f"{name}, {n} threads: {int(diff.sum())} of {diff.numel()} elements differ"


@pytest.mark.parametrize("s", BOX_SIZES)
@pytest.mark.parametrize("hw", FILTER_SHAPES, ids=str)
def test_block_filter_invariant(backend, hw, s):
    hw = _size(backend, hw)
    e = rand_image((3, 2, *hw), torch.float32, seed=s)
    assert_invariant(lambda: rk.block_filter(e[2:], s, backend=backend),
                     lambda: rk.block_filter(e, s, backend=backend))


@pytest.mark.parametrize("s", BOX_SIZES)
@pytest.mark.parametrize("hw", FILTER_SHAPES, ids=str)
def test_block_noise_invariant(backend, hw, s):
    shape = (3, 2, *_size(backend, hw))
    assert_invariant(lambda: rk.block_noise((1, *shape[1:]), s, seed=SEEDS[2:], offset=3, backend=backend),
                     lambda: rk.block_noise(shape, s, seed=SEEDS, offset=3, backend=backend))


@pytest.mark.parametrize("hw", FILTER_SHAPES + [(1, 100_003)], ids=str)
def test_randn_invariant(backend, hw):
    shape = (3, 2, *hw) if backend == "cpu" else (3, 2, 5, 7)
    assert_invariant(lambda: rk.randn((1, *shape[1:]), SEEDS[2:], 5, backend=backend),
                     lambda: rk.randn(shape, SEEDS, 5, backend=backend))


def _size(backend, hw):
    return hw if backend == "cpu" else SMALL[hw]


def _fused_inputs(backend, hw, dtype, s):
    hw = _size(backend, hw)
    x = [rand_image((3, 2, *hw), dtype, seed=10 * s + i) for i in range(4)]
    sig = torch.tensor([0.3, 2.0, 0.8])
    return x, sig, torch.tensor([1.5, 0.2, 2.5])


FUSED_DTYPES = [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("dtype", FUSED_DTYPES, ids=str)
@pytest.mark.parametrize("s", BOX_SIZES)
@pytest.mark.parametrize("hw", FUSED_SHAPES, ids=str)
def test_relay_corrupt_invariant(backend, hw, s, dtype):
    x, sig, b = _fused_inputs(backend, hw, dtype, s)

    def run(sl):
        return rk.relay_corrupt(x[0][sl], sig[sl], b[sl], 4, seed=SEEDS[sl], offset=9, block_size=s,
                                backend=backend)
    assert_invariant(lambda: run(slice(2, 3)), lambda: run(slice(0, 3)))


@pytest.mark.parametrize("dtype", FUSED_DTYPES, ids=str)
@pytest.mark.parametrize("s", BOX_SIZES)
@pytest.mark.parametrize("hw", FUSED_SHAPES, ids=str)
def test_relay_step_invariant(backend, hw, s, dtype):
    x, tc, tn = _fused_inputs(backend, hw, dtype, s)

    def run(sl):
        return rk.relay_step(x[0][sl], x[1][sl], tc[sl], tn[sl], 4, seed=SEEDS[sl], offset=9, block_size=s,
                             backend=backend)
    assert_invariant(lambda: run(slice(2, 3)), lambda: run(slice(0, 3)))


@pytest.mark.parametrize("dtype", FUSED_DTYPES, ids=str)
@pytest.mark.parametrize("s", BOX_SIZES)
@pytest.mark.parametrize("hw", FUSED_SHAPES, ids=str)
def test_relay_correct_invariant(backend, hw, s, dtype):
    x, tc, tn = _fused_inputs(backend, hw, dtype, s)

    def run(sl):
        return rk.relay_correct(x[0][sl], x[1][sl], x[2][sl], x[3][sl], tc[sl], tn[sl] * 0.5, 4, seed=SEEDS[sl],
                                offset=9, block_size=s, backend=backend)
    assert_invariant(lambda: run(slice(2, 3)), lambda: run(slice(0, 3)))
