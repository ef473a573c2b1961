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


def run_on_cpu_isa(code: str, isa: str) -> None:
    """Run `code` (which prints 'ok' when its checks pass) in a fresh Python with
    RELAY_KERNELS_CPU_ISA=isa: the CPU kernels choose their instruction set once per process."""
    import os
    import subprocess
    import sys

    import pytest

    from relay_kernels import _backend

    if _backend._unavailable("cpu", torch.device("cpu")):
        pytest.skip("compiled CPU backend not built")
    env = {**os.environ, "RELAY_KERNELS_CPU_ISA": isa}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
