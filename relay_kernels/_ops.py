"""Schemas of the kernel ops, defined once, with their fake (shape-only) kernels and backwards.

The compiled extension (`relay_kernels._C`) adds CPU and CUDA kernels for these names with
`TORCH_LIBRARY_IMPL(relay_kernels, CPU|CUDA, m)`. The CUDA emulator (`relay_kernels._cuda_emu`,
backend cuda_emu) adds CPU kernels for the schemas defined here under `<name>_cuda_emu`. The
Triton backend defines the same schemas under `<name>_triton` with `torch.library.triton_op` and
calls `register_variant("_triton")` so it gets the same fakes and backwards. See reference.py for what each op computes.

Every op is linear in its tensor inputs, so each backward is the adjoint op of the same variant:
patch_dct <-> inverse, block_filter <-> its mirrored window, relay_fused's blur part is
self-adjoint per input (orthonormal DCT, diagonal spectrum).
"""

from __future__ import annotations

import torch

NAMESPACE = "relay_kernels"

SCHEMAS = {
    "patch_dct": "(Tensor x, int k, bool inverse) -> Tensor",
    "block_filter": "(Tensor e, int block_size, bool transpose) -> Tensor",
    "noise": "(Tensor seed, int[] shape, int offset, int block_size, ScalarType dtype) -> Tensor",
    "relay_fused": (
        "(Tensor[] inputs, Tensor weights, Tensor? noise_scale, float block_scale, int block_size,"
        " Tensor? seed, int offset, Tensor? noise, Tensor? noise_block) -> Tensor"
    ),
}

CUDA_EMU_VARIANT = "_cuda_emu"

_lib = torch.library.Library(NAMESPACE, "DEF")
for _name, _schema in SCHEMAS.items():
    _lib.define(_name + _schema)
    _lib.define(_name + CUDA_EMU_VARIANT + _schema)


def op(name: str, variant: str = ""):
    """torch.ops.relay_kernels.<name><variant>, e.g. op('relay_fused', '_triton')."""
    return getattr(getattr(torch.ops, NAMESPACE), name + variant)


# ---------------------------------------------------------------------------- fake kernels


def _fake_like(x: torch.Tensor) -> torch.Tensor:
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _fake_patch_dct(x, k, inverse):
    return _fake_like(x)


def _fake_block_filter(e, block_size, transpose):
    return _fake_like(e)


def _fake_noise(seed, shape, offset, block_size, dtype):
    return torch.empty(tuple(shape), dtype=dtype, device=seed.device)


def _fake_relay_fused(inputs, weights, noise_scale, block_scale, block_size, seed, offset, noise,
                      noise_block):
    return _fake_like(inputs[0])


FAKES = {
    "patch_dct": _fake_patch_dct,
    "block_filter": _fake_block_filter,
    "noise": _fake_noise,
    "relay_fused": _fake_relay_fused,
}

# ---------------------------------------------------------------------------- backwards


def _autograd_for(variant: str):
    """setup_context/backward pairs that call the adjoint ops of the same variant."""

    def dct_setup(ctx, inputs, output):
        _, ctx.k, ctx.inverse = inputs

    def dct_backward(ctx, grad):
        return op("patch_dct", variant)(grad.contiguous(), ctx.k, not ctx.inverse), None, None

    def block_setup(ctx, inputs, output):
        _, ctx.block_size, ctx.transpose = inputs

    def block_backward(ctx, grad):
        g = op("block_filter", variant)(grad.contiguous(), ctx.block_size, not ctx.transpose)
        return g, None, None

    def fused_setup(ctx, inputs, output):
        tensors, weights, noise_scale, block_scale, block_size, _, _, noise, _ = inputs
        ctx.n_inputs = len(tensors)
        ctx.has_noise = noise is not None
        ctx.block_scale, ctx.block_size = block_scale, block_size
        ctx.save_for_backward(weights, noise_scale)

    def fused_backward(ctx, grad):
        weights, noise_scale = ctx.saved_tensors
        grad = grad.contiguous()
        fused = op("relay_fused", variant)
        # The spectral part is self-adjoint per input: grad_j = idct(w_j dct(grad)).
        grads = [
            fused([grad], weights[:, j : j + 1].contiguous(), None, 0.0, 1, None, 0, None, None)
            if ctx.needs_input_grad[0] else None
            for j in range(ctx.n_inputs)
        ]
        g_noise = g_block = None
        if ctx.has_noise and noise_scale is not None:
            scale = noise_scale.to(grad.dtype)[:, None, None, None]
            g_noise = grad * scale
            adj = op("block_filter", variant)(grad, ctx.block_size, True)
            g_block = adj * (scale * ctx.block_scale)
        return grads, None, None, None, None, None, None, g_noise, g_block

    return {
        "patch_dct": (dct_setup, dct_backward),
        "block_filter": (block_setup, block_backward),
        "relay_fused": (fused_setup, fused_backward),
    }


def register_variant(variant: str = "", fakes: bool = True) -> None:
    """Attach fakes (unless the op brings its own, as triton_op does) and backwards."""
    for name, (setup, backward) in _autograd_for(variant).items():
        qualname = f"{NAMESPACE}::{name}{variant}"
        torch.library.register_autograd(qualname, backward, setup_context=setup)
    if fakes:
        for name, fake in FAKES.items():
            torch.library.register_fake(f"{NAMESPACE}::{name}{variant}")(fake)


register_variant("")
register_variant(CUDA_EMU_VARIANT)
