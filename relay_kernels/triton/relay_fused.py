"""relay_fused_triton: idct(sum_j W_j dct(x_j)) + noise_scale[b] (e + block_scale Block_s(e')).

The one fused kernel behind patch_blur, relay_corrupt, relay_step and relay_correct (see
docs/KERNELS.md). Each program reads its [k, TILE_W] strip of every input once, does the per-patch
spectra in registers, draws e and the halo of e' from Philox (or reads given noise), and writes the
result once.
"""

from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from .._contract import check_relay_fused, compute_dtype
from .common import (
    basis_for,
    box_tile,
    dct_tile,
    define_op,
    halo_size,
    idct_tile,
    load_basis,
    on_device,
    patch_tile,
    patch_tile_configs,
    philox_normal,
    prune_patch_configs,
    split_float,
    to_patch_layout,
)


@triton.jit
def _weighted_spectrum(x_ptr, offs, mask, w_ptr, c, ct, CDT: tl.constexpr):
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(CDT)
    return dct_tile(x, c, ct) * tl.load(w_ptr).to(CDT)


@triton.autotune(configs=patch_tile_configs(),
                 key=["C", "H", "W", "K", "N_IN", "HAS_NOISE", "FROM_SEED", "HS"],
                 prune_configs_by={"early_config_prune": prune_patch_configs})
@triton.jit
def _relay_fused_kernel(out_ptr, x0_ptr, x1_ptr, x2_ptr, x3_ptr, w_ptr, basis_ptr,
                        scale_ptr, seed_ptr, e_ptr, eb_ptr,
                        C, H, W, offset, bs_hi, bs_lo, s,
                        N_IN: tl.constexpr, K: tl.constexpr, HAS_NOISE: tl.constexpr,
                        FROM_SEED: tl.constexpr, HS: tl.constexpr, F64: tl.constexpr,
                        TILE_H: tl.constexpr, TILE_W: tl.constexpr):
    # One program: a TILE_H x TILE_W tile of one channel, as [K, patches, K].
    CDT: tl.constexpr = basis_ptr.dtype.element_ty
    plane, y0, x0, row, col = patch_tile(H, W, K, TILE_H, TILE_W)
    b = plane // C
    pix = row.to(tl.int64) * W + col  # flat index inside the channel
    plane_off = plane.to(tl.int64) * H * W
    offs = plane_off + pix
    mask = (row < H) & (col < W)
    c = load_basis(basis_ptr, K, False)
    ct = load_basis(basis_ptr, K, True)

    # Spectrum: sum_j W_j[u, v] dct(x_j)[u, v] on every patch (weights [B, N_IN, K, K]).
    uv = tl.arange(0, K)[:, None, None] * K + tl.arange(0, K)[None, None, :]
    w_b = w_ptr + b.to(tl.int64) * (N_IN * K * K) + uv  # [K, 1, K] over (u, v)
    spec = _weighted_spectrum(x0_ptr, offs, mask, w_b, c, ct, CDT)
    if N_IN > 1:
        spec += _weighted_spectrum(x1_ptr, offs, mask, w_b + K * K, c, ct, CDT)
    if N_IN > 2:
        spec += _weighted_spectrum(x2_ptr, offs, mask, w_b + 2 * K * K, c, ct, CDT)
    if N_IN > 3:
        spec += _weighted_spectrum(x3_ptr, offs, mask, w_b + 3 * K * K, c, ct, CDT)
    out = idct_tile(spec, c, ct)

    if HAS_NOISE:
        # n = e + block_scale Block_s(e'): e at counter offset + i, e' at offset + N + i.
        if F64:
            block_scale = tl.cast(bs_hi, tl.float64) + tl.cast(bs_lo, tl.float64)
        else:
            block_scale = bs_hi
        scale = tl.load(scale_ptr + b).to(CDT)
        if FROM_SEED:
            seed = tl.load(seed_ptr + b)
            cbase = (plane % C).to(tl.int64) * H * W + offset
            # C (like any int argument) is a constexpr when it is 1, so no C.to(): tl.cast takes both.
            e = philox_normal(seed, cbase + pix).to(CDT)
            blk = box_tile(e_ptr, seed, cbase + tl.cast(C, tl.int64) * H * W, y0, x0, H, W, s,
                           TILE_H, TILE_W, HS, False, True, CDT)
        else:
            e = tl.load(e_ptr + offs, mask=mask, other=0.0).to(CDT)
            blk = box_tile(eb_ptr + plane_off, 0, 0, y0, x0, H, W, s,
                           TILE_H, TILE_W, HS, False, False, CDT)
        out += scale * (e + block_scale * to_patch_layout(blk, K, TILE_H, TILE_W))
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


def relay_fused(
    inputs: list[torch.Tensor],
    weights: torch.Tensor,
    noise_scale: Optional[torch.Tensor],
    block_scale: float,
    block_size: int,
    seed: Optional[torch.Tensor],
    offset: int,
    noise: Optional[torch.Tensor],
    noise_block: Optional[torch.Tensor],
) -> torch.Tensor:
    k = check_relay_fused(inputs, weights, noise_scale, block_size, seed, offset, noise, noise_block)
    xs = [x.contiguous() for x in inputs]
    x0 = xs[0]
    cdt = compute_dtype(x0.dtype)
    out = torch.empty(x0.shape, dtype=x0.dtype, device=x0.device)
    b, c, h, w = x0.shape
    if out.numel() == 0:
        return out
    weights = weights.contiguous()  # already the compute dtype (the contract)
    basis = basis_for(x0, k)
    has_noise = noise_scale is not None
    from_seed = has_noise and noise is None
    if has_noise:
        scale = noise_scale.contiguous()
    else:
        scale = weights
    seed_t = seed.contiguous() if from_seed else weights
    e = noise.contiguous() if has_noise and not from_seed else weights
    eb = noise_block.contiguous() if has_noise and not from_seed else weights
    bs_hi, bs_lo = split_float(block_scale)
    ptrs = xs + [x0] * (4 - len(xs))

    def grid(meta):
        return (b * c * triton.cdiv(h, meta["TILE_H"]), triton.cdiv(w, meta["TILE_W"]))

    with on_device(x0):
        wrap_triton(_relay_fused_kernel)[grid](
            out, *ptrs, weights, basis, scale, seed_t, e, eb,
            c, h, w, offset, bs_hi, bs_lo, block_size,
            N_IN=len(xs), K=k, HAS_NOISE=has_noise, FROM_SEED=from_seed,
            HS=halo_size(block_size) if has_noise else 1, F64=cdt == torch.float64,
        )
    return out


relay_fused_triton = define_op("relay_fused", relay_fused)
