"""CUDA-graph capture and replay of a whole relay sampling loop (relaydiff.sampling.sample_relay:
start noise, the schedule's op weights, every Euler step and Heun correction, a small U-Net), per GPU
backend, compared with the same call run eagerly. sigmas and seeds are made on the GPU before the
capture, so nothing inside it copies from the host. Run by tools/gpu_check.sh; exit status 0 when
every backend agrees.

    PYTHONPATH=. python tools/gpu_graph_check.py [--backends cuda,triton] [--steps 8]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

import relay_kernels as rk
from relay_kernels import _backend
from relaydiff.networks import EDMPrecond
from relaydiff.sampling import get_sigmas_relay, relay_nfe, sample_relay


def check(backend: str, steps: int, atol: float) -> bool:
    torch.manual_seed(0)
    net = EDMPrecond(32, 3, model_type="SongUNet", model_channels=16, channel_mult=(1, 2), attn_resolutions=(16,))
    net = net.cuda().eval()
    seeds = torch.arange(4, dtype=torch.int64, device="cuda")
    x_a = torch.randn(4, 3, 16, 16, device="cuda")
    x_b = torch.randn(4, 3, 16, 16, device="cuda")
    sigmas = get_sigmas_relay(steps, device="cuda")
    rk.set_backend(backend)

    def run(x):
        return sample_relay(net, x, sigmas, disable=True, seeds=seeds)

    # Warm-up on a side stream, as torch.cuda.graph asks: Triton autotuning and JIT, cuDNN and
    # cuBLAS handles, and the per-device tensors the ops cache are all made before capture.
    static_x = x_a.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        run(static_x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    t0 = time.perf_counter()
    with torch.cuda.graph(graph):
        static_out = run(static_x)
    capture_s = time.perf_counter() - t0
    ok = True
    for name, x in (("a", x_a), ("b", x_b)):  # a second input proves replay reads the static input
        static_x.copy_(x)
        graph.replay()
        want = run(x)
        err = (static_out - want).abs().max().item()
        good = bool(torch.isfinite(want).all()) and err <= atol
        ok &= good
        print(f"graph-check {backend}: input {name}: replay vs eager max |diff| {err:.3g} "
              f"({'ok' if good else f'FAILED, above {atol:g}'})")
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        graph.replay()
    torch.cuda.synchronize()
    replay_ms = (time.perf_counter() - t0) / 10 * 1e3
    print(f"graph-check {backend}: captured in {capture_s:.2f} s; replay {replay_ms:.2f} ms per sampling loop "
          f"({relay_nfe(steps)} network calls, batch 4, 16 -> 32 px)")
    return ok


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", default="cuda,triton")
    p.add_argument("--steps", type=int, default=8, help="num_steps of sample_relay (Karras steps before truncation)")
    p.add_argument("--atol", type=float, default=1e-4)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("graph-check: no CUDA device", file=sys.stderr)
        return 2
    failed = []
    for backend in args.backends.split(","):
        reason = _backend._unavailable(backend, torch.device("cuda"))
        if reason:
            print(f"graph-check {backend}: FAILED, backend unavailable: {reason}")
            failed.append(backend)
            continue
        try:
            if not check(backend, args.steps, args.atol):
                failed.append(backend)
        except Exception as exc:  # report and go on with the next backend
            print(f"graph-check {backend}: FAILED with {type(exc).__name__}: {exc}")
            failed.append(backend)
    print(f"graph-check: {'FAILED for ' + ', '.join(failed) if failed else 'all backends agree'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
