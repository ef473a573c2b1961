"""Host overhead of the relay sampler: per-call op weights (before) against weights computed once per
sampling call (after), side by side in one run.

"before" is the loop relaydiff.sampling.sample_relay ran until the weights were precomputed: each
rk.relay_step / rk.relay_correct call gets t_cur and t_next and rebuilds alpha(t) and the step
weights (reference.relay_step_weights / relay_correct_weights, about 20 small tensor ops). "after"
is sample_relay itself: relaydiff.sampling.relay_schedule_weights once, then `weights=` per call.
The network is one 1x1 convolution on tiny images, so the sampler's own host time is not hidden.
Before and after repeats are interleaved and the median of each is reported.

    PYTHONPATH=. python benchmarks/sampler_overhead.py [--batches 1,8] [--res 16] [--steps 40] [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import relay_kernels as rk
from relay_kernels import reference
from relaydiff import sampling


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)

    def forward(self, x, sigma):
        return self.conv(x)


@torch.no_grad()
def relay_per_call_weights(model, x_low, sigmas, seeds, k=4, s_block=0.15):
    """The loop before: the same noise layout, t_cur/t_next handed to every op call."""
    batch = x_low.shape[0]
    t = sigmas.to(x_low.dtype)
    x = F.interpolate(x_low, scale_factor=4, mode="nearest")
    n2 = 2 * x[0].numel()
    x = x + t[0] * sampling.relay_noise(seeds, tuple(x.shape[1:]), k, s_block)
    off, den = n2, x
    m = t.numel() - 1
    for i in range(m):
        tc, tn = t[i].expand(batch), t[i + 1].expand(batch)
        den = model(x, tc)
        if i == m - 1:
            break
        x_next = rk.relay_step(x, den, tc, tn, k=k, s_block=s_block, seed=seeds, offset=off)
        x = rk.relay_correct(x, den, x_next, model(x_next, tn), tc, tn, k=k, s_block=s_block, seed=seeds,
                             offset=off + n2)
        off += 2 * n2
    return den


def interleaved(fns, repeats):
    """Median seconds of each function, their repeats interleaved (load drifts hit both alike)."""
    for fn in fns:
        fn()  # warm-up
    samples = [[] for _ in fns]
    for _ in range(repeats):
        for j, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            samples[j].append(time.perf_counter() - t0)
    return [statistics.median(s) for s in samples]


def op_call_rows(batch, res, repeats):
    """One relay_step / relay_correct call: per-call weights against precomputed weights."""
    g = torch.Generator().manual_seed(0)
    x, den, xn, dn = (torch.randn(batch, 3, res, res, generator=g) for _ in range(4))
    tc, tn = torch.full((batch,), 0.8), torch.full((batch,), 0.5)
    seeds = torch.arange(batch)
    args = (4, 0.2, 3.0, 0.93, 1e-3)
    ws, wc = reference.relay_step_weights(tc, tn, *args), reference.relay_correct_weights(tc, tn, *args)
    loops = 50
    rows = []
    for name, before, after in (
        ("relay_step call", lambda: rk.relay_step(x, den, tc, tn, seed=seeds),
         lambda: rk.relay_step(x, den, seed=seeds, weights=ws)),
        ("relay_correct call", lambda: rk.relay_correct(x, den, xn, dn, tc, tn, seed=seeds),
         lambda: rk.relay_correct(x, den, xn, dn, seed=seeds, weights=wc)),
    ):
        b, a = interleaved([lambda f=before: [f() for _ in range(loops)], lambda f=after: [f() for _ in range(loops)]],
                           repeats)
        rows.append((f"{name} (B={batch})", b / loops * 1e6, a / loops * 1e6, "us"))
    return rows


def sampler_rows(batch, res, steps, repeats):
    net = TinyNet().eval()
    x_low = torch.randn(batch, 3, res // 4, res // 4, generator=torch.Generator().manual_seed(1))
    seeds = torch.arange(batch)
    sigmas = sampling.get_sigmas_relay(steps)
    m = sigmas.numel() - 1
    want = relay_per_call_weights(net, x_low, sigmas, seeds)
    got = sampling.sample_relay(net, x_low, sigmas, disable=True, up_scale=4, seeds=seeds)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # the same samples (bitwise on this CPU)
    b, a = interleaved([lambda: relay_per_call_weights(net, x_low, sigmas, seeds),
                        lambda: sampling.sample_relay(net, x_low, sigmas, disable=True, up_scale=4, seeds=seeds)],
                       repeats)
    return [(f"per step (B={batch}, {m} steps, {res}px)", b / m * 1e3, a / m * 1e3, "ms"),
            (f"per image (B={batch})", b / batch * 1e3, a / batch * 1e3, "ms")]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", default="1,8")
    p.add_argument("--res", type=int, default=16)
    p.add_argument("--steps", type=int, default=40, help="Karras steps before truncation at sigma 0.9")
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for batch in map(int, args.batches.split(",")):
        rows += op_call_rows(batch, args.res, args.repeats)
        rows += sampler_rows(batch, args.res, args.steps, args.repeats)
    print(f"relay sampler host time, CPU, torch {torch.__version__}, backend {rk.get_backend()}, 1 thread, "
          f"median of {args.repeats} interleaved repeats")
    print(f"{'':44s} {'before':>10s} {'after':>10s} {'after/before':>13s}")
    for name, b, a, unit in rows:
        print(f"{name:44s} {b:8.3g}{unit:>2s} {a:8.3g}{unit:>2s} {a / b:13.2f}")


if __name__ == "__main__":
    main()
