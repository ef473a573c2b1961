"""Small helpers the test files share (conftest holds fixtures; this holds plain functions)."""

import torch
from conftest import ATOL, DTYPES, SHAPES, assert_close_to_truth, layouts, rand_image  # noqa: F401


def sample_scalars(batch, lo, hi, seed=0):
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(batch, generator=g, dtype=torch.float64)


def check_against_truth(fn, truth_fn, inputs64, dtype, what):
    """Run fn on inputs rounded to dtype and compare with truth_fn in float64 (2x rule)."""
    low = [t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dim() == 4 else t
           for t in inputs64]
    truth = truth_fn(*[t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in low])
    torch_lowp = truth_fn(*low)
    out = fn(*low)
    assert_close_to_truth(out, truth, torch_lowp, dtype, what)
    return out
