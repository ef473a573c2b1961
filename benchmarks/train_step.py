"""One training step of a paper preset (forward, backward, optimizer step, EMA update), and the share of
it spent in relay_kernels' ops vs the network, with the fused ops and with the released code's
corruption formulation (benchmarks/baselines.released_relay_corrupt: FFT DCTs, rolled block noise).

On the CPU the preset is scaled down (--channels, --resolution, --batch-gpu); on a GPU
(`make gpu-check`) the real presets run at --batch-gpu 16-32 with their fp16 setting:

    PYTHONPATH=. python benchmarks/train_step.py [--preset celebahq-64-256] [--channels 32] [--resolution 64]
        [--batch-gpu 4] [--steps 3] [--device cpu|cuda] [--full-size]

The ops are timed by wrapping the relay_kernels functions the losses call (relay_corrupt, randn,
block_noise); on CUDA each timed call is synchronized, which adds a few microseconds per call.
"""

from __future__ import annotations

import argparse
import copy
import functools
import time

import torch

import relay_kernels as rk
from benchmarks import baselines
from relaydiff import loss as losses
from relaydiff.networks import build_network
from relaydiff.train_presets import PRESETS, preset_options
from relaydiff.train_scale import peak_memory_gib
from relaydiff.train_step import LossScale, ema_update, optimizer_step
from relaydiff.training_loop import image_seeds, stage_configs

OPS = ("relay_corrupt", "randn", "block_noise")


def released_corrupt(images, sigma, blur_sigma, k=4, block_scale=0.15, seed=None, offset=0):
    """rk.relay_corrupt's signature over the released formulation (its own torch.randn noise)."""
    return baselines.released_relay_corrupt(images, sigma, blur_sigma, k=k, block_scale=block_scale)


class OpTimer:
    """Replaces relay_kernels' functions with timed wrappers while in use; `seconds` adds up."""

    def __init__(self, device, corrupt=None):
        self.device, self.corrupt, self.seconds, self._saved = device, corrupt, 0.0, {}

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __enter__(self):
        for name in OPS:
            fn = self._saved[name] = getattr(rk, name)
            if name == "relay_corrupt" and self.corrupt is not None:
                fn = self.corrupt
            setattr(rk, name, self._timed(fn))
        return self

    def _timed(self, fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            self._sync()
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            self._sync()
            self.seconds += time.perf_counter() - t0
            return out

        return run

    def __exit__(self, *exc):
        for name, fn in self._saved.items():
            setattr(rk, name, fn)


def bench(name, opts, device, steps, corrupt=None) -> dict:
    """Median-free simple figures over `steps` timed steps after one warm-up step."""
    label_dim = PRESETS[name]["classes"] if opts["cond"] else 0
    (sc,) = stage_configs(opts, label_dim).values()
    torch.manual_seed(0)
    fmt = torch.channels_last if opts["channels_last"] and device.type == "cuda" else torch.contiguous_format
    net = build_network(sc["network"]).to(device, memory_format=fmt).train()
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=opts["lr"], betas=(0.9, 0.999), eps=1e-8)
    loss_fn = getattr(losses, sc["loss"]["class_name"])(**sc["loss"]["kwargs"])
    fp16 = bool(opts["fp16"]) and device.type == "cuda"
    scale = LossScale("dynamic", device.type, enabled=fp16)
    autocast = torch.autocast(device.type, dtype=torch.float16, enabled=fp16)
    b, res = opts["batch_gpu"], sc["resolution"]
    src = torch.rand(b, 3, opts["resolution"], opts["resolution"], device=device) * 2 - 1
    x = torch.nn.functional.avg_pool2d(src, opts["k"]) if sc["stage"] == 1 else src
    labels = torch.eye(label_dim, device=device)[torch.arange(b) % label_dim] if label_dim else None
    total = ops = 0.0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(steps + 1):
        seeds = image_seeds(0, i, range(b), sc["stage"], device)
        with OpTimer(device, corrupt) as timer:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            with autocast:
                loss = loss_fn(net, x.contiguous(memory_format=fmt), seeds, labels).float().mean()
            scale.backward(loss)
            optimizer_step(net, opt, opts["lr"], opts["grad_clip"], scale)
            ema_update(ema, net, (i + 1) * b, b, opts["ema_halflife_kimg"], opts["ema_rampup"])
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            dt = time.perf_counter() - t0
        if i:  # the first step warms up (allocator, cuDNN autotuning)
            total, ops = total + dt, ops + timer.seconds
    params = sum(p.numel() for p in net.parameters())
    return dict(step_ms=1e3 * total / steps, ops_ms=1e3 * ops / steps, img_s=b * steps / total,
                params_m=params / 1e6, res=res, peak_gib=peak_memory_gib(device))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="celebahq-64-256", help="a preset, or 'all'")
    p.add_argument("--full-size", action="store_true", help="the preset's own network size (GPU)")
    p.add_argument("--channels", type=int, default=32, help="scaled-down model_channels (without --full-size)")
    p.add_argument("--resolution", type=int, default=64, help="scaled-down data resolution (without --full-size)")
    p.add_argument("--batch-gpu", type=int, default=4)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names = sorted(PRESETS) if args.preset == "all" else [args.preset]
    print("| preset | size | res | batch-gpu | corruption | step ms | img/s | relay_kernels ops ms (share) | "
          "network+optimizer ms | peak GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        opts = {**preset_options(name), "batch_gpu": args.batch_gpu}
        if not args.full_size:
            opts.update(channels=args.channels, resolution=args.resolution, attn_res="8")
            if opts["resolution"] // (opts["k"] if opts["stage"] == "1" else 1) < 2 ** 3:
                raise SystemExit(f"--resolution {args.resolution} is too small for {name}")
            mult = "channel_mult1" if opts["stage"] == "1" else "channel_mult2"
            opts[mult] = ",".join(opts[mult].split(",")[: 3 if opts["stage"] == "1" else 4])
        for label, corrupt in (("fused", None), ("released", released_corrupt)):
            try:
                r = bench(name, opts, device, args.steps, corrupt)
            except torch.OutOfMemoryError:  # one preset too big for this GPU at this batch: the rest still run
                print(f"| {name} | | | {args.batch_gpu} | {label} | out of memory | | | | |", flush=True)
                torch.cuda.empty_cache()
                continue
            size = "full" if args.full_size else f"{r['params_m']:.1f}M"
            print(f"| {name} | {size} | {r['res']} | {args.batch_gpu} | {label} | {r['step_ms']:.1f} | "
                  f"{r['img_s']:.1f} | {r['ops_ms']:.2f} ({100 * r['ops_ms'] / r['step_ms']:.1f} %) | "
                  f"{r['step_ms'] - r['ops_ms']:.1f} | {r['peak_gib']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
