"""What can be checked of the CUDA side on any machine: asking for a GPU backend where it cannot
run says why, and tests/test_gpu.py is sound enough to run on the first GPU it meets."""

import os
import subprocess
import sys

import pytest
import torch
from test_gpu import to_device
from test_op_registration import _op_samples

import relay_kernels as rk
from relay_kernels import _backend

X = torch.zeros(1, 1, 8, 8)


def test_cuda_backend_on_cpu_tensors_says_why():
    """With or without a GPU, CPU tensors never go to the cuda backend; without one the error adds why
    no CUDA tensor could exist (the CUDA-torch-without-GPU setting of CI's build check)."""
    with pytest.raises(rk.BackendUnavailableError, match="backend 'cuda' runs on CUDA tensors, got cpu") as err:
        rk.patch_dct(X, backend="cuda")
    if torch.version.cuda is None:
        assert "CPU-only build" in str(err.value)
    elif not torch.cuda.is_available():
        assert "no CUDA device is visible" in str(err.value)


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_noise_on_a_missing_cuda_device_says_why(backend):
    """randn/block_noise create their output: device='cuda' without a GPU is refused by name, before
    torch's own error from allocating on a device that is not there."""
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present (this checks the error without one)")
    seeds = [0, 1]
    want = "CPU-only build" if torch.version.cuda is None else "no CUDA device is visible"
    with pytest.raises(rk.BackendUnavailableError, match=f"backend '{backend}' is unavailable: .*{want}"):
        rk.block_noise((2, 3, 8, 8), 4, seed=torch.tensor(seeds), device="cuda", backend=backend)
    with pytest.raises(rk.BackendUnavailableError, match=want):
        rk.randn((2, 3, 8, 8), torch.tensor(seeds), device="cuda", backend=backend)


def test_cuda_kernels_registered_when_built_with_cuda():
    """RELAY_KERNELS_EXPECT_CUDA=1 (set by .ci/cuda_torch_build.sh and tools/gpu_check.sh, which build
    against a CUDA torch with nvcc) makes a build that silently dropped its CUDA part fail here."""
    if os.environ.get("RELAY_KERNELS_EXPECT_CUDA") != "1":
        pytest.skip("RELAY_KERNELS_EXPECT_CUDA is not 1 (only the CUDA build checks set it)")
    assert _backend.compiled_error() is None, _backend.compiled_error()
    assert _backend.has_compiled_kernel("cuda"), "relay_kernels._C has no CUDA kernels"
    assert _backend.has_compiled_kernel("cpu"), "relay_kernels._C has no CPU kernels"


@pytest.mark.parametrize("case", range(len(_op_samples())))
def test_op_samples_move_to_another_device(case):
    """test_gpu's opcheck moves these arguments to the GPU; here to `meta`, which every torch has:
    shapes (int lists) stay as they are, tensor lists move, gradient-needing leaves stay leaves."""
    name, args = _op_samples()[case]
    moved = to_device(args, "meta")

    def walk(a, b):
        if isinstance(a, torch.Tensor):
            assert b.device.type == "meta" and b.shape == a.shape and b.dtype == a.dtype
            assert b.is_leaf and b.requires_grad == a.requires_grad
        elif isinstance(a, (list, tuple)):
            assert type(b) is type(a) and len(b) == len(a)
            for x, y in zip(a, b, strict=True):
                walk(x, y)
        else:
            assert b is a

    walk(args, moved)


def test_gpu_tests_skip_with_reason_without_a_device():
    """Every test of tests/test_gpu.py is reported skipped, with its reason, where there is no GPU."""
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: tests/test_gpu.py runs for real")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-m", "pytest", os.path.join("tests", "test_gpu.py"), "-q", "-rs",
                          "-p", "no:cacheprovider"], capture_output=True, text=True, cwd=root, timeout=300)
    summary = (out.stdout.strip().splitlines() or [""])[-1]
    assert out.returncode == 0 and " skipped" in summary, out.stdout + out.stderr
    assert "passed" not in summary and "failed" not in summary and "error" not in summary, summary
    assert "no CUDA device" in out.stdout
