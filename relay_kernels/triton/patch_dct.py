"""patch_dct_triton: C P C^T (C^T U C when inverse) on every k x k patch (SPEC 1)."""

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from .._contract import check_patch_dct
from .common import (
    basis_for,
    dct_tile,
    define_op,
    idct_tile,
    load_basis,
    on_device,
    patch_tile,
    patch_tile_configs,
    prune_patch_configs,
)


@triton.autotune(configs=patch_tile_configs(), key=["H", "W", "K"],
                 prune_configs_by={"early_config_prune": prune_patch_configs})
@triton.jit
def _patch_dct_kernel(x_ptr, out_ptr, basis_ptr, H, W,
                      INVERSE: tl.constexpr, K: tl.constexpr,
                      TILE_H: tl.constexpr, TILE_W: tl.constexpr):
    CDT: tl.constexpr = basis_ptr.dtype.element_ty
    plane, y0, x0, row, col = patch_tile(H, W, K, TILE_H, TILE_W)
    offs = plane.to(tl.int64) * H * W + row.to(tl.int64) * W + col
    mask = (row < H) & (col < W)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(CDT)
    c = load_basis(basis_ptr, K, False)
    ct = load_basis(basis_ptr, K, True)
    if INVERSE:
        y = idct_tile(x, c, ct)
    else:
        y = dct_tile(x, c, ct)
    tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


def patch_dct(x: torch.Tensor, k: int, inverse: bool) -> torch.Tensor:
    check_patch_dct(x, k)
    x = x.contiguous()
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    b, c, h, w = x.shape
    if out.numel() == 0:
        return out
    basis = basis_for(x, k)

    def grid(meta):
        return (b * c * triton.cdiv(h, meta["TILE_H"]), triton.cdiv(w, meta["TILE_W"]))

    with on_device(x):
        wrap_triton(_patch_dct_kernel)[grid](x, out, basis, h, w, INVERSE=inverse, K=k)
    return out


patch_dct_triton = define_op("patch_dct", patch_dct)
