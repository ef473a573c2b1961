"""What is benchmarked: for each op, the implementations and the bytes the op must move.

Every implementation is a zero-argument callable built from one `Inputs`, so the table script
and the pytest-benchmark suites time exactly the same work.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

import relay_kernels as rk

from . import baselines as base


@dataclass(frozen=True)
class Config:
    op: str
    shape: tuple
    dtype: torch.dtype
    device: str


@dataclass(frozen=True)
class Result:
    config: Config
    impl: str
    median_us: float
    gbps: float


class Inputs:
    """Tensors for one Config; per-sample scalars as [B] tensors on the device."""

    def __init__(self, cfg: Config):
        g = torch.Generator(device="cpu").manual_seed(0)
        b = cfg.shape[0]
        make = lambda: torch.randn(cfg.shape, generator=g).to(cfg.device, cfg.dtype)  # noqa: E731
        self.x, self.den, self.x_next, self.den_next = make(), make(), make(), make()
        self.sigma = torch.linspace(0.1, 2.0, b).to(cfg.device)
        self.blur = torch.linspace(0.0, 3.0, b).to(cfg.device)
        self.t_cur = torch.linspace(0.5, 0.85, b).to(cfg.device)
        self.t_next = self.t_cur * 0.6
        self.seeds = torch.arange(b, dtype=torch.int64, device=cfg.device)


# Bytes each op must read and write, in units of one image tensor.
TENSORS_MOVED = {"copy": 2, "randn_like": 1, "patch_blur": 2, "block_noise": 1, "relay_corrupt": 2,
                 "relay_step": 3, "relay_correct": 5}


@functools.lru_cache(maxsize=None)
def _compiled(fn):
    return torch.compile(fn, dynamic=False)


def implementations(op: str, inp: Inputs, fused_backends: list[str], compile_best: bool = True):
    """{impl name: callable} for op on these inputs (the copy/randn_like anchors come from table.py)."""
    x = inp.x
    impls = {}
    if op == "patch_blur":
        impls["released (FFT DCT)"] = lambda: base.released_patch_blur(x, inp.blur)
        best = lambda: base.best_patch_blur(x, inp.blur)  # noqa: E731
        fused = lambda be: (lambda: rk.patch_blur(x, inp.blur, backend=be))  # noqa: E731
        best_c = lambda: _compiled(base.best_patch_blur)(x, inp.blur)  # noqa: E731
    elif op == "block_noise":
        impls["released (rolled)"] = lambda: base.released_block_noise(x)
        best = lambda: base.best_block_noise(x)  # noqa: E731
        fused = lambda be: (lambda: rk.block_noise(x.shape, 4, seed=inp.seeds, dtype=x.dtype, backend=be))  # noqa: E731
        best_c = lambda: _compiled(base.best_block_noise)(x)  # noqa: E731
    elif op == "relay_corrupt":
        impls["released (FFT DCT, rolled)"] = lambda: base.released_relay_corrupt(x, inp.sigma, inp.blur)
        best = lambda: base.best_relay_corrupt(x, inp.sigma, inp.blur)  # noqa: E731
        fused = lambda be: (lambda: rk.relay_corrupt(x, inp.sigma, inp.blur, seed=inp.seeds, backend=be))  # noqa: E731
        best_c = lambda: _compiled(base.best_relay_corrupt)(x, inp.sigma, inp.blur)  # noqa: E731
    elif op == "relay_step":
        impls["released (FFT DCT, rolled)"] = lambda: base.released_relay_step(x, inp.den, inp.t_cur, inp.t_next)
        best = lambda: base.best_relay_step(x, inp.den, inp.t_cur, inp.t_next)  # noqa: E731
        fused = lambda be: (lambda: rk.relay_step(x, inp.den, inp.t_cur, inp.t_next, seed=inp.seeds,  # noqa: E731
                                                  backend=be))
        best_c = lambda: _compiled(base.best_relay_step)(x, inp.den, inp.t_cur, inp.t_next)  # noqa: E731
    elif op == "relay_correct":
        args = (x, inp.den, inp.x_next, inp.den_next, inp.t_cur, inp.t_next)
        impls["released (FFT DCT, rolled)"] = lambda: base.released_relay_correct(*args)
        best = lambda: base.best_relay_correct(*args)  # noqa: E731
        fused = lambda be: (lambda: rk.relay_correct(*args, seed=inp.seeds, backend=be))  # noqa: E731
        best_c = lambda: _compiled(base.best_relay_correct)(*args)  # noqa: E731
    else:
        raise ValueError(op)
    impls["best plain PyTorch"] = best
    if compile_best:
        impls["best plain PyTorch, compiled"] = best_c
    for be in fused_backends:
        impls[f"fused {be}"] = fused(be)
    return impls


OPS = ["patch_blur", "block_noise", "relay_corrupt", "relay_step", "relay_correct"]
