"""The kernel contract: every backend's kernel ops refuse the same bad input with the same error.

Each case calls one kernel op directly (torch.ops.relay_kernels.<op><variant> for cpu, cuda_emu and
triton; the reference backend's kernels, which apply relay_kernels._contract) and every backend
that runs here must raise the same exception type with the same message, the one in the table.
The compiled kernels take these rules from csrc/include/checks.h, the Python ones from _contract.py,
so a rule changed in one place and not the other fails here. (The public ops' errors are held
equal across backends by test_validation.test_same_error_on_every_backend.)
"""

import pytest
import torch
from conftest import HAS_CUDA, cpu_backends

from relay_kernels import _backend

F32 = torch.float32
X = torch.zeros(2, 3, 8, 8)
W1, W2 = torch.zeros(2, 1, 4, 4), torch.zeros(2, 2, 4, 4)
SCALE = torch.zeros(2)
SEED = torch.tensor([0, 1])
INT64_MAX = 2**63 - 1


def _fused(inputs=(X, X), weights=W2, scale=SCALE, block_size=4, seed=SEED, offset=0, noise=None, block=None):
    return "relay_fused", (list(inputs), weights, scale, 0.15, block_size, seed, offset, noise, block)


def _noise(seed=SEED, shape=(2, 3, 8, 8), offset=0, block_size=4, dtype=F32):
    return "noise", (seed, list(shape), offset, block_size, dtype)


# case: (kernel op and its arguments, message after "relay_kernels: ", fused backends only)
# The last column marks rules on the patch size: the reference takes any k >= 1.
CASES = {
    "dct k unsupported": (("patch_dct", (X, 3, False)), "patch size k must be 2, 4, 8 or 16, got 3", True),
    "dct not 4-D": (("patch_dct", (X[0], 4, False)), "x must be a 4-D [B, C, H, W] tensor, got shape [3, 8, 8]",
                    False),
    "dct integer": (("patch_dct", (X.int(), 4, False)),
                    "x must be float16, bfloat16, float32 or float64, got Int", False),
    "dct H not multiple": (("patch_dct", (torch.zeros(1, 1, 6, 8), 4, True)),
                           "x height and width must be multiples of the patch size k = 4, got shape [1, 1, 6, 8]",
                           False),
    "box not 4-D": (("block_filter", (X[0], 2, False)), "e must be a 4-D [B, C, H, W] tensor, got shape [3, 8, 8]",
                    False),
    "box size zero": (("block_filter", (X, 0, False)), "block_size must be in [1, min(H, W)] = [1, 8], got 0", False),
    "box larger than image": (("block_filter", (torch.zeros(1, 1, 4, 8), 5, True)),
                              "block_size must be in [1, min(H, W)] = [1, 4], got 5", False),
    "noise seed float": (_noise(seed=SEED.float()), "seed must be an int64 tensor, got Float", False),
    "noise seed int32": (_noise(seed=SEED.int()), "seed must be an int64 tensor, got Int", False),
    "noise seed batch": (_noise(seed=torch.tensor([0, 1, 2])), "seed must have shape [B] = [2], got [3]", False),
    "noise negative dim": (_noise(shape=(2, -1)), "noise shape must be non-negative, got [2, -1]", False),
    "noise empty shape": (_noise(shape=()), "noise shape must have at least one dimension [B, ...]", False),
    "noise dtype": (_noise(dtype=torch.int64),
                    "noise dtype must be float16, bfloat16, float32 or float64, got Long", False),
    "noise block negative": (_noise(block_size=-1), "block_size must be >= 0 (0 = plain normals), got -1", False),
    "noise block not 4-D": (_noise(shape=(2, 64)),
                            "block noise (block_size > 0) needs a 4-D shape [B, C, H, W], got [2, 64]", False),
    "noise block too big": (_noise(block_size=9), "block_size must be in [1, min(H, W)] = [1, 8], got 9", False),
    "noise offset negative": (_noise(offset=-1), "offset must be in [0, 9223372036854775615] so that the counters "
                              "offset + 1 * N (N = 192 elements per sample) fit in int64, got -1", False),
    "noise offset overflow": (_noise(shape=(2, 5), block_size=0, offset=INT64_MAX - 4),
                              "offset must be in [0, 9223372036854775802] so that the counters offset + 1 * N "
                              "(N = 5 elements per sample) fit in int64, got 9223372036854775803", False),
    "fused no inputs": (_fused(inputs=()), "relay_fused takes 1 to 4 inputs, got 0", False),
    "fused five inputs": (_fused(inputs=[X] * 5), "relay_fused takes 1 to 4 inputs, got 5", False),
    "fused weights 3-D": (_fused(weights=W2[0]), "weights must have shape [B, n_inputs, k, k], got [2, 4, 4]",
                          False),
    "fused k unsupported": (_fused(weights=torch.zeros(2, 2, 3, 3)), "patch size k must be 2, 4, 8 or 16, got 3",
                            True),
    "fused input integer": (_fused(inputs=[X.int()], weights=W1),
                            "inputs[0] must be float16, bfloat16, float32 or float64, got Int", False),
    "fused input shape": (_fused(inputs=[X, X[:1]]),
                          "inputs[1] has shape [1, 3, 8, 8] but inputs[0] has shape [2, 3, 8, 8]", False),
    "fused input dtype": (_fused(inputs=[X, X.double()]), "inputs[1] is Double but inputs[0] is Float", False),
    "fused weights count": (_fused(weights=W1), "weights must have shape [B, n_inputs, k, k] = [2, 2, k, k], "
                            "got [2, 1, 4, 4]", False),
    "fused weights dtype": (_fused(weights=W2.double()), "weights must be Float for Float inputs, got Double",
                            False),
    "fused half weights": (_fused(inputs=[X.half()], weights=W1.half()),
                           "weights must be Float for Half inputs, got Half", False),
    "fused scale shape": (_fused(scale=torch.zeros(3)), "noise_scale must have shape [B] = [2], got [3]", False),
    "fused scale dtype": (_fused(scale=SCALE.double()), "noise_scale must be Float, got Double", False),
    "fused half noise": (_fused(noise=X, block=None), "give both noise and noise_block, or neither (and a seed)",
                         False),
    "fused noise shape": (_fused(seed=None, noise=X, block=X[:, :1]),
                          "noise_block must have the inputs' shape [2, 3, 8, 8], got [2, 1, 8, 8]", False),
    "fused noise integer": (_fused(seed=None, noise=X.int(), block=X),
                            "noise must be float16, bfloat16, float32 or float64, got Int", False),
    "fused no seed": (_fused(seed=None), "relay_fused with noise_scale needs a seed or the noise tensors", False),
    "fused seed int32": (_fused(seed=SEED.int()), "seed must be an int64 tensor, got Int", False),
    "fused offset negative": (_fused(offset=-3), "offset must be in [0, 9223372036854775423] so that the counters "
                              "offset + 2 * N (N = 192 elements per sample) fit in int64, got -3", False),
    "fused block zero": (_fused(block_size=0), "block_size must be in [1, min(H, W)] = [1, 8], got 0", False),
    "fused block too big": (_fused(seed=None, noise=X, block=X, block_size=9),
                            "block_size must be in [1, min(H, W)] = [1, 8], got 9", False),
}


def _backends(fused_only: bool):
    """(name, device) of every backend that runs here; cuda and triton on a GPU where there is one."""
    names = [(name, "cpu") for name, reason in cpu_backends() if reason is None]
    if HAS_CUDA:
        gpu = torch.device("cuda")
        names += [(name, "cuda") for name in ("cuda", "triton") if not _backend._unavailable(name, gpu)]
    return [(n, d) for n, d in names if not (fused_only and n == "reference")]


def _to(args, device):
    if isinstance(args, torch.Tensor):
        return args.to(device)
    if isinstance(args, (list, tuple)):
        return type(args)(_to(a, device) for a in args)
    return args


def _outcome(backend: str, device: str, op: str, args):
    kernel = getattr(_backend.resolve(torch.device(device), backend), op)
    try:
        kernel(*_to(args, device))
    except Exception as exc:  # the outcome under test is the exception itself
        return type(exc), str(exc).split("\n")[0]
    return None


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_every_backend_gives_the_same_error(case, one_thread):
    (op, args), message, fused_only = CASES[case]
    backends = _backends(fused_only)
    if len(backends) < 2:
        pytest.skip(f"only {backends} run here: nothing to compare")
    want = (RuntimeError, "relay_kernels: " + message)
    for backend, device in backends:
        assert _outcome(backend, device, op, args) == want, f"{backend} on {device}"


def test_valid_arguments_pass_the_contract(one_thread):
    """The cases above are one rule away from arguments every backend runs."""
    valid = [("patch_dct", (X, 4, False)), ("block_filter", (X, 8, True)), _noise(), _noise(shape=(2, 5),
             block_size=0, offset=INT64_MAX - 5), _fused(), _fused(seed=None, noise=X, block=X, block_size=8),
             _fused(inputs=[X.half()], weights=W1, scale=None)]
    for backend, device in _backends(False):
        for op, args in valid:
            assert _outcome(backend, device, op, args) is None, (backend, op)
