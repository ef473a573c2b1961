"""One run, one table: every op's implementations timed side by side, as ratios and bandwidth.

    python -m benchmarks.table                      # CPU, [16, 3, 256, 256], float32 and bfloat16
    python -m benchmarks.table --device cuda --shape 64,3,256,256

Each op's group also times `x.clone()` (the copy) and `torch.randn_like(x)` in the same rounds,
so "x copy" and "x randn_like" are ratios taken side by side.
"""

from __future__ import annotations

import argparse
import platform

import torch

import relay_kernels as rk
from relay_kernels import _backend

from .cases import OPS, TENSORS_MOVED, Config, Inputs, implementations
from .timing import time_side_by_side


def available_fused(device: str) -> list[str]:
    dev = torch.device(device)
    names = ["cpu"] if dev.type == "cpu" else ["cuda", "triton"]
    return [n for n in names if _backend._unavailable(n, dev) is None]


def run(op, dtype, shape, device, rounds, compile_best):
    cfg = Config(op, shape, dtype, device)
    inp = Inputs(cfg)
    fns = {"copy (x.clone())": inp.x.clone, "torch.randn_like": lambda: torch.randn_like(inp.x)}
    fns.update(implementations(op, inp, available_fused(device), compile_best))
    times = time_side_by_side(fns, device, rounds=rounds, inner=20 if device.startswith("cuda") else 1)
    nbytes = inp.x.numel() * inp.x.element_size()
    return fns, times, nbytes


def format_group(op, dtype, times, nbytes):
    copy_t, randn_t = times["copy (x.clone())"], times["torch.randn_like"]
    copy_bw = TENSORS_MOVED["copy"] * nbytes / copy_t / 1e9
    ref = times.get("best plain PyTorch, compiled", times.get("best plain PyTorch"))
    lines = [f"\n### {op}, {str(dtype).replace('torch.', '')}\n",
             "| implementation | median µs | GB/s | % copy BW | x copy | x randn_like "
             "| speedup vs best plain (compiled) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, t in times.items():
        moved = TENSORS_MOVED["copy" if name.startswith("copy") else "randn_like" if "randn" in name else op]
        bw = moved * nbytes / t / 1e9
        speed = f"{ref / t:.2f}" if ref else "-"
        lines.append(f"| {name} | {t * 1e6:,.0f} | {bw:.1f} | {100 * bw / copy_bw:.0f}% | {t / copy_t:.2f} | "
                     f"{t / randn_t:.2f} | {speed} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--shape", default=None, help="B,C,H,W (default 16,3,256,256 on CPU, 64,3,256,256 on CUDA)")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--ops", default=",".join(OPS))
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile of the best plain formulation")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    default_shape = "64,3,256,256" if args.device.startswith("cuda") else "16,3,256,256"
    shape = tuple(int(s) for s in (args.shape or default_shape).split(","))
    on_gpu = args.device.startswith("cuda")
    machine = torch.cuda.get_device_name() if on_gpu else platform.processor() or platform.machine()
    print(f"# relay_kernels benchmark: shape {list(shape)}, device {args.device} ({machine}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, relay_kernels {rk.__version__}")
    for op in args.ops.split(","):
        for dt in args.dtypes.split(","):
            dtype = getattr(torch, dt)
            _, times, nbytes = run(op, dtype, shape, args.device, args.rounds, not args.no_compile)
            print(format_group(op, dtype, times, nbytes), flush=True)


if __name__ == "__main__":
    main()
