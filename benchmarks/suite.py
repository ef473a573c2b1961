"""What the pytest-benchmark suites (`pytest benchmarks/ --benchmark-only`) share.

Shape and device come from RK_BENCH_SHAPE (default 16,3,256,256 on CPU) and RK_BENCH_DEVICE
(default cpu). Results are grouped per op and dtype, so pytest-benchmark's table shows each
implementation's ratio to the fastest; extra_info carries GB/s.
"""

import os

import torch

from benchmarks.cases import TENSORS_MOVED, Config, Inputs, implementations
from benchmarks.table import available_fused

DEVICE = os.environ.get("RK_BENCH_DEVICE", "cpu")
SHAPE = tuple(int(s) for s in os.environ.get(
    "RK_BENCH_SHAPE", "64,3,256,256" if DEVICE.startswith("cuda") else "16,3,256,256").split(","))
DTYPES = [torch.float32, torch.bfloat16]


def impl_names(op):
    cfg = Config(op, (1, 1, 8, 8), torch.float32, DEVICE)
    return ["copy", "randn_like", *implementations(op, Inputs(cfg), available_fused(DEVICE))]


def run_bench(benchmark, op, impl, dtype):
    cfg = Config(op, SHAPE, dtype, DEVICE)
    inp = Inputs(cfg)
    fns = {"copy": inp.x.clone, "randn_like": lambda: torch.randn_like(inp.x)}
    fns.update(implementations(op, inp, available_fused(DEVICE)))
    fn = fns[impl]
    if DEVICE.startswith("cuda"):
        inner = fn
        fn = lambda: (inner(), torch.cuda.synchronize())  # noqa: E731
    benchmark.group = f"{op} {str(dtype).replace('torch.', '')} {list(SHAPE)}"
    moved = TENSORS_MOVED["copy" if impl == "copy" else "randn_like" if impl == "randn_like" else op]
    nbytes = moved * inp.x.numel() * inp.x.element_size()
    benchmark.pedantic(fn, rounds=10, warmup_rounds=2, iterations=1)
    benchmark.extra_info["GB/s"] = round(nbytes / benchmark.stats["median"] / 1e9, 2)
