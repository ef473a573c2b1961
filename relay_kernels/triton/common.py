"""Shared pieces of the Triton backend: launch configs, DCT basis, jit helpers (the input checks
are the kernel contract's, relay_kernels._contract).

Tiles: the patch ops give one program a patch row (k image rows) of one channel and TILE_W image
columns, held as a [k, TILE_W // k, k] tensor (row in patch, patch, column in patch) so the
per-patch DCT is a pair of broadcast-reductions with the k x k basis. The block filter builds its
tile plus a halo of s - 1 rows and columns, then sums the s x s window with gathers (registers have
no shifts), so Philox is evaluated about twice per pixel instead of s^2 times.
"""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

from .._contract import compute_dtype, stream_capturing

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def configs(full: list[triton.Config]) -> list[triton.Config]:
    """Autotune over `full` on a GPU; the interpreter gets only the first (it does not tune)."""
    return full[:1] if INTERPRET else full


def next_pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def halo_size(s: int) -> int:
    """Power-of-two halo width HS >= s - 1 for box_tile."""
    return next_pow2(s - 1)


def define_op(name: str, fn):
    """relay_kernels::<name>_triton with exactly the schema _ops.SCHEMAS[name].

    On a GPU this is a triton_op, so torch.compile traces into the kernels. Under TRITON_INTERPRET
    the kernels are plain Python that cannot be traced, so the op is an opaque custom_op with the
    shared fake instead (eager results are identical; compile treats it as one node).
    """
    from .. import _ops

    qualname = f"{_ops.NAMESPACE}::{name}_triton"
    schema = _ops.SCHEMAS[name]
    if INTERPRET:
        op = torch.library.custom_op(qualname, fn, mutates_args=(), schema=schema)
        op.register_fake(_ops.FAKES[name])
        return op
    # torch 2.13's triton_op accepts schema= but still infers one from the annotations (int ->
    # SymInt); pin the inference to our schema so every backend has the same signature.
    import torch._library.triton as triton_op_module

    inferred = getattr(triton_op_module, "infer_schema", None)
    triton_op_module.infer_schema = lambda *args, **kwargs: schema
    try:
        return torch.library.triton_op(qualname, fn, mutates_args={}, schema=schema)
    finally:
        if inferred is not None:
            triton_op_module.infer_schema = inferred


def split_float(v: float) -> tuple[float, float]:
    """v as hi + lo float32 words: kernel float args are float32, float64 kernels add both back."""
    hi = float(torch.tensor(v, dtype=torch.float32))
    return hi, float(v - hi)


# ---------------------------------------------------------------------------- DCT basis

_BASIS: dict = {}


def dct_basis(k: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Orthonormal DCT-II matrix C[u, n] (row-major k x k) in the compute dtype.

    Filled in float64 then rounded, like csrc/include/dct_basis.h. Cached per (k, dtype, device)
    for eager calls; while tracing (fake or functional tensors) it is rebuilt from torch ops so no
    traced tensor escapes into the cache.
    """
    n = torch.arange(k, dtype=torch.float64, device=device)
    u = n[:, None]
    scale = torch.where(u == 0, n.new_full((), (1.0 / k) ** 0.5), n.new_full((), (2.0 / k) ** 0.5))
    return (scale * torch.cos(torch.pi * (2 * n[None, :] + 1) * u / (2 * k))).to(dtype)


def basis_for(x: torch.Tensor, k: int) -> torch.Tensor:
    """The cached basis; never filled while x's stream captures a CUDA graph (a tensor made there
    holds its values only after the first replay), so a capture builds its own inside the graph."""
    dtype = compute_dtype(x.dtype)
    if type(x) is not torch.Tensor:  # FakeTensor / FunctionalTensor while tracing
        return dct_basis(k, dtype, x.device)
    key = (k, dtype, x.device)
    basis = _BASIS.get(key)
    if basis is None:
        basis = dct_basis(k, dtype, x.device)
        if not stream_capturing(x.device):
            _BASIS[key] = basis
    return basis


def on_device(x: torch.Tensor):
    """The context to launch x's kernels in: Triton launches on the current CUDA device and its
    current stream, so tensors on cuda:1 need cuda:1 entered (as the C++ ops' device guard does)."""
    return torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext()


# ---------------------------------------------------------------------------- jit helpers


@triton.jit
def wrap(v, n):
    """v mod n in [0, n) for any sign of v (Triton's % truncates like C)."""
    r = v % n
    return tl.where(r < 0, r + n, r)


def patch_tile_configs() -> list[triton.Config]:
    """[TILE_H, TILE_W] pixel tiles of the patch kernels (TILE_H, TILE_W >= 16 >= k); see also
    prune_patch_configs."""
    return configs([
        triton.Config({"TILE_H": 16, "TILE_W": 32}, num_warps=4),
        triton.Config({"TILE_H": 16, "TILE_W": 64}, num_warps=4),
        triton.Config({"TILE_H": 32, "TILE_W": 64}, num_warps=8),
        triton.Config({"TILE_H": 16, "TILE_W": 128}, num_warps=8),
    ])


def prune_halo_configs(cfgs, hs: int, rows: str, cols: str):
    """Keep tiles of at least HS rows and columns (box_tile repeats its halo up to the tile); for
    block sizes past every tile, one HS x HS tile."""
    keep = [c for c in cfgs if c.kwargs[rows] >= hs and c.kwargs[cols] >= hs]
    if keep:
        return keep
    base = cfgs[-1]
    return [triton.Config({**base.kwargs, rows: hs, cols: hs}, num_warps=8, num_stages=base.num_stages)]


def prune_patch_configs(cfgs, named_args, **kwargs):
    """Drop tiles whose k x k x tile broadcast products would not fit in registers, and tiles
    smaller than the block noise halo."""
    k = named_args["K"] if "K" in named_args else kwargs["K"]
    per_thread = 32 if named_args["basis_ptr"].dtype == torch.float64 else 64
    keep = [c for c in cfgs
            if k * c.kwargs["TILE_H"] * c.kwargs["TILE_W"] <= per_thread * 32 * c.num_warps]
    # Nothing fits (k = 16 in float64): the smallest tile. The 16 x 32 tile spilled 388 bytes per
    # thread for a seeded relay_correct on sm_90 (docs/TRITON_AOT.md).
    keep = keep or [triton.Config({"TILE_H": 16, "TILE_W": 16}, num_warps=4)]
    return prune_halo_configs(keep, kwargs.get("HS", 1), "TILE_H", "TILE_W")


@triton.jit
def patch_tile(H, W, K: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr):
    """Program -> (plane, y0, x0, row, col) of a TILE_H x TILE_W tile held as [K, NP, K]:
    (row inside the patch, patch, column inside the patch); patch p is (p // PW, p % PW)."""
    PW: tl.constexpr = TILE_W // K
    NP: tl.constexpr = (TILE_H // K) * PW
    pid = tl.program_id(0)
    n_rt = tl.cdiv(H, TILE_H)
    plane = pid // n_rt
    y0 = (pid % n_rt) * TILE_H
    x0 = tl.program_id(1) * TILE_W
    p = tl.arange(0, NP)[None, :, None]
    row = y0 + (p // PW) * K + tl.arange(0, K)[:, None, None]
    col = x0 + (p % PW) * K + tl.arange(0, K)[None, None, :]
    return plane, y0, x0, row, col


@triton.jit
def to_patch_layout(t, K: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr):
    """[TILE_H, TILE_W] image tile -> the [K, NP, K] layout of patch_tile."""
    PH: tl.constexpr = TILE_H // K
    PW: tl.constexpr = TILE_W // K
    t = tl.permute(tl.reshape(t, (PH, K, PW, K)), (1, 0, 2, 3))
    return tl.reshape(t, (K, PH * PW, K))


@triton.jit
def load_basis(basis_ptr, K: tl.constexpr, TRANSPOSED: tl.constexpr):
    """C[u, n] as a [K, K] tensor, or C^T when TRANSPOSED."""
    i = tl.arange(0, K)
    if TRANSPOSED:
        return tl.load(basis_ptr + i[None, :] * K + i[:, None])
    else:
        return tl.load(basis_ptr + i[:, None] * K + i[None, :])


@triton.jit
def mix_rows(a, x):
    """out[r, p, m] = sum_n a[r, n] x[n, p, m]: the transform along rows inside each patch."""
    return tl.sum(a[:, :, None, None] * x[None, :, :, :], axis=1)


@triton.jit
def mix_cols(x, a):
    """out[r, p, v] = sum_m x[r, p, m] a[v, m]: the transform along columns inside each patch."""
    return tl.sum(x[:, :, None, :] * a[None, None, :, :], axis=3)


@triton.jit
def dct_tile(x, c, ct):
    """C P C^T per patch of a [K, PW, K] tile; c = C, ct = C^T (both [K, K], loaded once)."""
    return mix_cols(mix_rows(c, x), c)


@triton.jit
def idct_tile(u, c, ct):
    """C^T U C per patch of a [K, PW, K] tile."""
    return mix_cols(mix_rows(ct, u), ct)


@triton.jit
def philox_normal(seed, counter):
    """tl.randn(seed, counter), bit for bit, but with a correctly rounded sqrt: tl.randn's tl.sqrt
    becomes sqrt.approx on a GPU, where the CUDA kernels (csrc/include/philox.h) round exactly.
    log and cos are libdevice's accurate ones in both."""
    r0, r1, _, _ = tl.randint4x(seed, counter)
    u0 = tl.maximum(1.0e-7, tl.uint_to_uniform_float(r0))
    u1 = tl.uint_to_uniform_float(r1)
    return tl.sqrt_rn(-2.0 * tl.log(u0)) * tl.cos(6.283185307179586 * u1)


@triton.jit
def field_at(src_ptr, seed, cbase, y, x, W, FROM_SEED: tl.constexpr, CDT: tl.constexpr):
    """The noise field of one channel at (y, x): Philox normal at counter cbase + y W + x (key
    seed), or src_ptr[y W + x]. cbase is int64, so counters past 2^32 split into lo/hi words."""
    idx = y.to(tl.int64) * W + x
    if FROM_SEED:
        v = philox_normal(seed, cbase + idx)
    else:
        v = tl.load(src_ptr + idx)
    return v.to(CDT)


@triton.jit
def tile_rows(t, ROWS: tl.constexpr):
    """[HS, N] -> [ROWS, N] with row r = t[r % HS] (HS divides ROWS): a broadcast, no data movement."""
    HS: tl.constexpr = t.shape[0]
    N: tl.constexpr = t.shape[1]
    return tl.reshape(tl.broadcast_to(t[None, :, :], (ROWS // HS, HS, N)), (ROWS, N))


@triton.jit
def tile_cols(t, COLS: tl.constexpr):
    """[N, HS] -> [N, COLS] with column c = t[:, c % HS] (HS divides COLS)."""
    N: tl.constexpr = t.shape[0]
    HS: tl.constexpr = t.shape[1]
    return tl.reshape(tl.broadcast_to(t[:, None, :], (N, COLS // HS, HS)), (N, COLS))


@triton.jit
def box_tile(src_ptr, seed, cbase, y0, x0, H, W, s,
             ROWS: tl.constexpr, COLS: tl.constexpr, HS: tl.constexpr,
             TRANSPOSE: tl.constexpr, FROM_SEED: tl.constexpr, CDT: tl.constexpr):
    """Block_s of the field on rows y0 + [0, ROWS), cols x0 + [0, COLS): a [ROWS, COLS] tile.

    Forward: (1/s) sum_{i,j<s} f[(y-i) mod H, (x-j) mod W]; TRANSPOSE: f[(y+i), (x+j)]. Both are
    (1/s) sum_{d,e<s} f[yo + r + d, xo + c + e], origin (yo, xo) = (y0, x0) - (s-1) forward. The
    field is read once on a main block plus halo blocks of HS >= s - 1 rows and columns (keeping
    power-of-two shapes without doubling the tile), then summed with gathers.

    Every gather reads a [ROWS, COLS] tensor with a [ROWS, COLS] index: the halo blocks are first
    repeated up to the tile's shape (HS <= ROWS, COLS; the launchers' config pruning ensures it).
    Triton 3.8 cannot lower a gather from a narrower source (an isWarpLocal assertion).
    """
    if TRANSPOSE:
        yo = y0
        xo = x0
    else:
        yo = y0 - (s - 1)
        xo = x0 - (s - 1)
    rm = tl.arange(0, ROWS)
    rh = tl.arange(0, HS)
    cm = tl.arange(0, COLS)
    ch = tl.arange(0, HS)
    ym = wrap(yo + rm, H)[:, None]
    yh = wrap(yo + ROWS + rh, H)[:, None]
    xm = wrap(xo + cm, W)[None, :]
    xh = wrap(xo + COLS + ch, W)[None, :]
    f_mm = field_at(src_ptr, seed, cbase, ym, xm, W, FROM_SEED, CDT)
    f_mh = tile_cols(field_at(src_ptr, seed, cbase, ym, xh, W, FROM_SEED, CDT), COLS)
    f_hm = tile_rows(field_at(src_ptr, seed, cbase, yh, xm, W, FROM_SEED, CDT), ROWS)
    f_hh = tile_cols(tile_rows(field_at(src_ptr, seed, cbase, yh, xh, W, FROM_SEED, CDT), ROWS), COLS)
    # Rows: the window of output row r is extended rows q = r + d, in the main block or the halo
    # (halo row q - ROWS < HS, found at that row of the repeated halo). vh holds the row sums of
    # the halo columns, repeated along columns like f_mh.
    vm = tl.zeros((ROWS, COLS), CDT)
    vh = tl.zeros((ROWS, COLS), CDT)
    for d in range(s):
        q = tl.broadcast_to(rm[:, None] + d, (ROWS, COLS))
        qm = tl.minimum(q, ROWS - 1)
        qh = tl.minimum(tl.maximum(q - ROWS, 0), HS - 1)
        in_main = q < ROWS
        vm += tl.where(in_main, tl.gather(f_mm, qm, 0), tl.gather(f_hm, qh, 0))
        vh += tl.where(in_main, tl.gather(f_mh, qm, 0), tl.gather(f_hh, qh, 0))
    # Columns, the same way on the row sums.
    acc = tl.zeros((ROWS, COLS), CDT)
    for e in range(s):
        q = tl.broadcast_to(cm[None, :] + e, (ROWS, COLS))
        from_main = tl.gather(vm, tl.minimum(q, COLS - 1), 1)
        from_halo = tl.gather(vh, tl.minimum(tl.maximum(q - COLS, 0), HS - 1), 1)
        acc += tl.where(q < COLS, from_main, from_halo)
    # Correctly rounded, as the CUDA kernels divide (Triton's f32 "/" is an approximate division).
    if CDT == tl.float32:
        return tl.div_rn(acc, tl.full((ROWS, COLS), s, tl.float32))
    else:
        return acc / s
