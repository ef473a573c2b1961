"""Side-by-side timing: implementations are interleaved round by round, medians reported."""

from __future__ import annotations

import statistics
import time

import torch


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_side_by_side(fns: dict, device: str, rounds: int = 15, warmup: int = 2, inner: int = 1) -> dict:
    """{name: median seconds per call}, each round calling every fn once (drift hits all alike)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    samples = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            _sync(device)
            samples[name].append((time.perf_counter() - t0) / inner)
    return {name: statistics.median(s) for name, s in samples.items()}
