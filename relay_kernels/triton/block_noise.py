"""block_filter_triton and noise_triton: the circular s x s box (SPEC 3) and the generator (SPEC 4).

Both run box_tile on [ROWS, COLS] tiles of one channel; noise_triton draws the field from Philox
(key seed[b], counter offset + c H W + y W + x) inside the kernel instead of reading it.
"""

import math

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from .._contract import check_block_filter, check_noise
from .common import (
    box_tile,
    configs,
    define_op,
    halo_size,
    on_device,
    philox_normal,
    prune_halo_configs,
)

_BOX_CONFIGS = configs([
    triton.Config({"ROWS": 16, "COLS": 32}, num_warps=4),
    triton.Config({"ROWS": 16, "COLS": 64}, num_warps=4),
    triton.Config({"ROWS": 32, "COLS": 64}, num_warps=8),
    triton.Config({"ROWS": 16, "COLS": 128}, num_warps=8),
])


def _prune_box_configs(cfgs, named_args, **kwargs):
    return prune_halo_configs(cfgs, kwargs["HS"], "ROWS", "COLS")


@triton.autotune(configs=_BOX_CONFIGS, key=["H", "W", "HS"],
                 prune_configs_by={"early_config_prune": _prune_box_configs})
@triton.jit
def _block_filter_kernel(e_ptr, out_ptr, H, W, s, TRANSPOSE: tl.constexpr, HS: tl.constexpr,
                         ROWS: tl.constexpr, COLS: tl.constexpr):
    CDT: tl.constexpr = tl.float64 if e_ptr.dtype.element_ty == tl.float64 else tl.float32
    pid = tl.program_id(0)
    n_rt = tl.cdiv(H, ROWS)
    plane_off = (pid // n_rt).to(tl.int64) * H * W
    y0 = (pid % n_rt) * ROWS
    x0 = tl.program_id(1) * COLS
    box = box_tile(e_ptr + plane_off, 0, 0, y0, x0, H, W, s, ROWS, COLS, HS, TRANSPOSE, False, CDT)
    y = y0 + tl.arange(0, ROWS)[:, None]
    x = x0 + tl.arange(0, COLS)[None, :]
    tl.store(out_ptr + plane_off + y * W + x, box.to(out_ptr.dtype.element_ty), mask=(y < H) & (x < W))


@triton.autotune(configs=_BOX_CONFIGS, key=["C", "H", "W", "HS"],
                 prune_configs_by={"early_config_prune": _prune_box_configs})
@triton.jit
def _block_noise_kernel(seed_ptr, out_ptr, C, H, W, offset, s, HS: tl.constexpr,
                        F64: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr):
    CDT: tl.constexpr = tl.float64 if F64 else tl.float32
    pid = tl.program_id(0)
    n_rt = tl.cdiv(H, ROWS)
    plane = pid // n_rt
    seed = tl.load(seed_ptr + plane // C)
    cbase = (plane % C).to(tl.int64) * H * W + offset
    y0 = (pid % n_rt) * ROWS
    x0 = tl.program_id(1) * COLS
    box = box_tile(out_ptr, seed, cbase, y0, x0, H, W, s, ROWS, COLS, HS, False, True, CDT)
    y = y0 + tl.arange(0, ROWS)[:, None]
    x = x0 + tl.arange(0, COLS)[None, :]
    offs = plane.to(tl.int64) * H * W + y * W + x
    tl.store(out_ptr + offs, box.to(out_ptr.dtype.element_ty), mask=(y < H) & (x < W))


@triton.autotune(
    configs=configs([triton.Config({"BLOCK": 1024}, num_warps=4),
                     triton.Config({"BLOCK": 2048}, num_warps=8)]),
    key=["N"],
)
@triton.jit
def _randn_kernel(seed_ptr, out_ptr, N, offset, BLOCK: tl.constexpr):
    # One flat grid axis over (sample, block): grid.y would cap the batch at 65,535 samples.
    pid = tl.program_id(0).to(tl.int64)
    n_blocks = tl.cdiv(N, BLOCK)
    b = pid // n_blocks
    i = (pid % n_blocks) * BLOCK + tl.arange(0, BLOCK)
    seed = tl.load(seed_ptr + b)
    e = philox_normal(seed, i + offset)
    tl.store(out_ptr + b.to(tl.int64) * N + i, e.to(out_ptr.dtype.element_ty), mask=i < N)


def block_filter(e: torch.Tensor, block_size: int, transpose: bool) -> torch.Tensor:
    check_block_filter(e, block_size)
    e = e.contiguous()
    out = torch.empty(e.shape, dtype=e.dtype, device=e.device)
    b, c, h, w = e.shape
    if out.numel() == 0:
        return out

    def grid(meta):
        return (b * c * triton.cdiv(h, meta["ROWS"]), triton.cdiv(w, meta["COLS"]))

    with on_device(e):
        wrap_triton(_block_filter_kernel)[grid](e, out, h, w, block_size, TRANSPOSE=transpose,
                                                HS=halo_size(block_size))
    return out


def noise(seed: torch.Tensor, shape: list[int], offset: int, block_size: int,
          dtype: torch.dtype) -> torch.Tensor:
    shape = [int(d) for d in shape]
    check_noise(seed, shape, offset, block_size, dtype)
    seed = seed.contiguous()
    out = torch.empty(shape, dtype=dtype, device=seed.device)
    if out.numel() == 0:
        return out
    if block_size == 0:
        n = math.prod(shape[1:])

        def grid(meta):
            return (shape[0] * triton.cdiv(n, meta["BLOCK"]),)

        with on_device(seed):
            wrap_triton(_randn_kernel)[grid](seed, out, n, offset)
        return out
    b, c, h, w = shape

    def grid(meta):
        return (b * c * triton.cdiv(h, meta["ROWS"]), triton.cdiv(w, meta["COLS"]))

    with on_device(seed):
        wrap_triton(_block_noise_kernel)[grid](seed, out, c, h, w, offset, block_size,
                                               HS=halo_size(block_size), F64=dtype == torch.float64)
    return out


block_filter_triton = define_op("block_filter", block_filter)
noise_triton = define_op("noise", noise)
