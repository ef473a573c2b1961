"""Every public op honours `backend=` (issue 12, item 1).

A dropped argument would fall back to the selected backend silently, so each op is called with a
default backend other than the one asked for, through a spy on the backend lookup that records
which backend's kernels were resolved and which of its kernels ran.
"""

import pytest
import torch
from conftest import rk

from relay_kernels import _backend, functional

X = torch.randn(2, 3, 8, 8, dtype=torch.float64).float()
T = torch.tensor([0.7, 1.3])

# (op name, the kernel it must run, call(backend))
OPS = [
    ("patch_dct", "patch_dct", lambda be: rk.patch_dct(X, 4, backend=be)),
    ("patch_idct", "patch_dct", lambda be: rk.patch_idct(X, 4, backend=be)),
    ("patch_blur", "relay_fused", lambda be: rk.patch_blur(X, T, 4, backend=be)),
    ("block_filter", "block_filter", lambda be: rk.block_filter(X, 3, backend=be)),
    ("randn", "noise", lambda be: rk.randn((2, 3, 8, 8), 5, backend=be)),
    ("block_noise", "noise", lambda be: rk.block_noise((2, 3, 8, 8), 3, seed=5, backend=be)),
    ("relay_corrupt", "relay_fused", lambda be: rk.relay_corrupt(X, T, T, 4, seed=5, backend=be)),
    ("relay_step", "relay_fused", lambda be: rk.relay_step(X, X, T, T / 2, 4, seed=5, backend=be)),
    ("relay_correct", "relay_fused", lambda be: rk.relay_correct(X, X, X, X, T, T / 2, 4, seed=5, backend=be)),
]
OP_IDS = [name for name, _, _ in OPS]


@pytest.mark.parametrize("name,kernel,call", OPS, ids=OP_IDS)
def test_unknown_backend_raises(name, kernel, call):
    with pytest.raises(ValueError, match="no-such-backend"):
        call("no-such-backend")


@pytest.mark.parametrize("name,kernel,call", OPS, ids=OP_IDS)
def test_unavailable_backend_raises(name, kernel, call):
    # CUDA kernels never run on CPU tensors, built or not.
    with pytest.raises(_backend.BackendUnavailableError, match="'cuda'"):
        call("cuda")


@pytest.mark.parametrize("name,kernel,call", OPS, ids=OP_IDS)
def test_runs_the_requested_backend(backend, name, kernel, call, monkeypatch):
    ran = []

    def spy(kernels, field):
        fn = getattr(kernels, field)

        def wrapped(*args):
            ran.append((kernels.name, field))
            return fn(*args)
        return wrapped

    real_resolve = functional.resolve

    def resolve(device, name=None, k=None):
        kernels = real_resolve(device, name, k)
        fields = ("patch_dct", "block_filter", "noise", "relay_fused")
        return _backend.Kernels(kernels.name, *(spy(kernels, f) for f in fields))

    monkeypatch.setattr(functional, "resolve", resolve)
    # The selected default differs from the requested backend, so an ignored argument shows.
    monkeypatch.setattr(_backend, "_selected", "cpu" if backend == "reference" else "reference")
    out = call(backend)
    assert isinstance(out, torch.Tensor)
    assert ran == [(backend, kernel)]
