"""How far each backend's normals are from the ideal transform of SPEC 4, in ulps.

The ideal is Box-Muller on the reference's Philox words with every float32 step correctly rounded
(log, sqrt and cos taken in float64, then rounded). Prints, per backend, the share of normals that
differ from the ideal and from the reference, and the largest ulp distance, over `--count`
consecutive counters of a few keys and over special counters (u0 clamped at 1e-7, u0 near 1,
u1 near 0, 0.25, 0.5, 0.75 and 1) found by scanning the Philox words.

    python -m benchmarks.noise_ulp --count 10000000 --backends reference,cpu,triton
    RELAY_KERNELS_CPU_ISA=scalar python -m benchmarks.noise_ulp --backends cpu

The CPU generator chooses its instruction set once per process: run it once per
RELAY_KERNELS_CPU_ISA. Triton on CPU tensors runs under TRITON_INTERPRET=1 (numpy math, not
libdevice).
"""

from __future__ import annotations

import argparse
import os

import torch

KEYS = (0, 12345, 2**40 + 3)


def ordered(x: torch.Tensor) -> torch.Tensor:
    """float32 -> int64, monotone, with one step per representable float (+0 and -0 both 0)."""
    i = x.contiguous().view(torch.int32).to(torch.int64)
    return torch.where(i < 0, -(i & 0x7FFFFFFF), i)


def ulp_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (ordered(a.float()) - ordered(b.float())).abs()


def ideal_from_bits(r0: torch.Tensor, r1: torch.Tensor) -> torch.Tensor:
    """sqrt(-2 ln u0) cos(2 pi u1) in float32 with each step correctly rounded."""
    from relay_kernels import reference as R

    u0 = torch.clamp(R.uniform_from_bits(r0), min=1e-7)
    u1 = R.uniform_from_bits(r1)
    radius = torch.sqrt((-2.0 * torch.log(u0.double()).float()).double()).float()
    angle = (u1.double() * float(torch.tensor(R.TWO_PI, dtype=torch.float32))).float()
    return (radius.double() * torch.cos(angle.double()).float().double()).float()


def words(key: int, counters: torch.Tensor):
    from relay_kernels import reference as R

    r0, r1, _, _ = R.philox4x32(torch.tensor(key, dtype=torch.int64), counters)
    return r0, r1


def special_counters(key: int, scan: int, chunk: int = 1 << 21) -> dict[str, list[int]]:
    """Counters < scan whose words give the edge cases of Box-Muller."""
    top = 2**31 - 1
    windows = {"u0 clamped (s0 < 215)": (0, lambda s0, s1: s0 < 215),
               "u0 near 1": (0, lambda s0, s1: s0 > top - 2**11),
               "u1 near 0": (1, lambda s0, s1: s1 < 2**11),
               "u1 near 0.25": (1, lambda s0, s1: (s1 - 2**29).abs() < 2**11),
               "u1 near 0.5": (1, lambda s0, s1: (s1 - 2**30).abs() < 2**11),
               "u1 near 0.75": (1, lambda s0, s1: (s1 - 3 * 2**29).abs() < 2**11),
               "u1 near 1": (1, lambda s0, s1: s1 > top - 2**11)}
    found = {name: [] for name in windows}
    for start in range(0, scan, chunk):
        c = torch.arange(start, min(scan, start + chunk), dtype=torch.int64)
        r0, r1 = words(key, c)
        s0 = torch.where(r0 >= 2**31, 2**32 - 1 - r0, r0)
        s1 = torch.where(r1 >= 2**31, 2**32 - 1 - r1, r1)
        for name, (_, hit) in windows.items():
            found[name] += c[hit(s0, s1)].tolist()
    return found


def draw(backend: str, key: int, offset: int, n: int) -> torch.Tensor:
    import relay_kernels as rk

    return rk.randn((1, n), torch.tensor([key]), offset, backend=backend)[0]


def compare(out: torch.Tensor, ideal: torch.Tensor, ref: torch.Tensor) -> dict:
    d_ideal, d_ref = ulp_distance(out, ideal), ulp_distance(out, ref)
    return {"n": out.numel(),
            "differ_from_ideal": (d_ideal > 0).double().mean().item(),
            "max_ulp_ideal": int(d_ideal.max()),
            "differ_from_ref": (d_ref > 0).double().mean().item(),
            "max_ulp_ref": int(d_ref.max())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=10**6, help="consecutive counters per key (default %(default)s)")
    p.add_argument("--scan", type=int, default=2**25, help="counters per key scanned for special cases")
    p.add_argument("--backends", default="reference,cpu", help="comma-separated (default %(default)s)")
    args = p.parse_args()
    backends = [b for b in args.backends.split(",") if b]
    if "triton" in backends:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    isa = os.environ.get("RELAY_KERNELS_CPU_ISA", "auto")
    print(f"RELAY_KERNELS_CPU_ISA={isa}; keys {KEYS}; {args.count} counters per key; scan {args.scan}")
    per_backend = {b: [] for b in backends}
    ideals, refs = [], []
    for key in KEYS:
        ideals.append(ideal_from_bits(*words(key, torch.arange(args.count, dtype=torch.int64))))
        refs.append(draw("reference", key, 0, args.count))
        for backend in backends:
            per_backend[backend].append(draw(backend, key, 0, args.count))
    for backend, outs in per_backend.items():
        print(f"{backend:10s} consecutive: {compare(torch.cat(outs), torch.cat(ideals), torch.cat(refs))}")
    for key in KEYS[:2]:
        for name, counters in special_counters(key, args.scan).items():
            if not counters:
                continue
            c = torch.tensor(counters, dtype=torch.int64)
            ideal = ideal_from_bits(*words(key, c))
            ref = torch.stack([draw("reference", key, int(i), 1)[0] for i in counters])
            for backend in backends:
                out = torch.stack([draw(backend, key, int(i), 1)[0] for i in counters])
                print(f"key {key} {name:22s} {backend:10s} {compare(out, ideal, ref)}")


if __name__ == "__main__":
    main()
