"""Generate images with a trained Relay Diffusion run (as NVlabs/edm `generate.py`).

    python -m relaydiff.sample --run RUN --stages both --seeds 0-63 --outdir out
    torchrun --nproc_per_node=4 -m relaydiff.sample -- --run RUN --seeds 0-999 --outdir out --device cuda

The `--` ends torchrun's own options (without it torchrun takes --run for an abbreviation of its
--run-path and stops). Every image depends only on its seed (per-image Philox streams), so the
result does not depend on --batch or on the number of ranks; under torchrun rank r takes
seeds[r::world]. Writes OUTDIR/SEED.png for the final stage (OUTDIR/stage1/SEED.png too with
--stages both) and OUTDIR/grid.png. --stages second refines the low-resolution images in --low-res
(files SEED.png, e.g. the output of --stages first), which must be resolution / k pixels wide.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys

import numpy as np
import PIL.Image
import torch
import tqdm

from . import cli_args as cli
from . import distributed as dist_util
from . import sampling


def parse_int_list(text: str) -> list[int]:
    """'0-3,8,10-11' -> [0, 1, 2, 3, 8, 10, 11] (ranges inclusive, as EDM)."""
    out = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m:
            raise argparse.ArgumentTypeError(f"bad seed list {text!r}: use e.g. 0-63 or 1,5,9-12")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise argparse.ArgumentTypeError(f"bad range {part!r}")
        out.extend(range(lo, hi + 1))
    return out


def parse_args(argv=None):
    p = cli.Parser(
        prog="python -m relaydiff.sample",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--run", required=True, help="run directory (or checkpoint file) from relaydiff.train")
    p.add_argument(
        "--stages",
        choices=["first", "second", "both"],
        default="both",
        help="first: stage-1 EDM only; second: relay stage(s) on --low-res images; both: cascade",
    )
    p.add_argument("--low-res", default=None, help="folder of low-res SEED.png images for --stages second")
    p.add_argument(
        "--steps",
        type=cli.number_list(int, 1, 100_000),
        default=None,
        help="Karras steps: one number for every stage, or one per stage (stage 1 first); "
        "default 18 for stage 1 and 40 for each relay stage",
    )
    p.add_argument(
        "--cfg",
        type=cli.number_list(float),
        default=[1.0],
        help="classifier-free guidance scale: one for every stage, or one per stage",
    )
    p.add_argument(
        "--class",
        dest="class_idx",
        type=cli.nonnegative_int,
        default=None,
        help="class label for every image (default: a class drawn from each image's seed)",
    )
    p.add_argument(
        "--seeds", type=parse_int_list, default=parse_int_list("0-63"), help="e.g. 0-63 or 1,5,9-12"
    )
    p.add_argument("--batch", type=cli.positive_int, default=16, help="images per batch (per rank)")
    p.add_argument("--outdir", required=True, help="where to write the PNGs")
    p.add_argument(
        "--device", default="cpu", help="torch device (cuda: each torchrun rank takes its LOCAL_RANK)"
    )
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--s-noise", type=cli.probability, default=0.2, help="relay stochasticity s_noise")
    p.add_argument(
        "--s-block", type=cli.in_range(float), default=None, help="relay block-noise scale (default: the training one)"
    )
    p.add_argument("--truncation-sigma", type=cli.positive_float, default=0.9,
                   help="relay schedule keeps t_i below this")
    p.add_argument("--grid-cols", type=cli.positive_int, default=None, help="grid columns (default: about sqrt(n))")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------- nets and checks


def load_stages(args, device):
    """[(stage, net, stage_config)] for the stages to run, after consistency checks."""
    from .checkpoint import load_checkpoint, load_network, resolve_path

    path = resolve_path(args.run)  # FileNotFoundError with the path when missing
    available = sorted(int(s) for s in load_checkpoint(path)["stages"])
    relay = [s for s in available if s >= 2]
    want = {"first": [1], "second": relay, "both": [1] + relay}[args.stages]
    if args.stages != "second" and 1 not in available:
        raise ValueError(f"{path} has no stage-1 (low-res EDM) network (stages: {available})")
    if args.stages != "first" and not relay:
        raise ValueError(f"{path} has no relay-stage network (stages: {available}); train stage 2 first")
    nets = [(s, *load_network(path, s, ema=not args.no_ema, device=device)) for s in want]
    for (_, prev, _), (s, net, cfg) in zip(nets, nets[1:], strict=False):
        check_low_res(prev.img_resolution, net, cfg, f"stage {s} follows a stage that makes")
        if net.img_channels != prev.img_channels:
            raise ValueError(
                f"stage {s} has {net.img_channels} channels, the previous stage {prev.img_channels}"
            )
        if net.label_dim and prev.label_dim and net.label_dim != prev.label_dim:
            raise ValueError(f"stage {s} has {net.label_dim} classes, the previous stage {prev.label_dim}")
    return nets


def relay_k(cfg: dict) -> int:
    """The relay factor of a stage config: its upsampling factor and DCT patch size."""
    return int(cfg.get("k", cfg.get("loss", {}).get("kwargs", {}).get("k", 4)))


def check_low_res(size: int, net, cfg: dict, what: str) -> None:
    """A relay stage starts from its input upsampled by k (one k x k patch per pixel, the fully
    blurred state of training), so that input must be exactly resolution / k pixels wide."""
    k = relay_k(cfg)
    if size * k != net.img_resolution:
        raise ValueError(
            f"{what} {size}px images, but the relay net makes {net.img_resolution}px from "
            f"{net.img_resolution // k}px inputs (k={k})"
        )


def relay_kwargs(cfg: dict, steps, args) -> dict:
    loss = cfg.get("loss", {}).get("kwargs", {})
    k = relay_k(cfg)
    s_block = args.s_block if args.s_block is not None else float(loss.get("block_scale", 0.15))
    return dict(
        num_steps=int(steps),
        k=k,
        s_noise=args.s_noise,
        s_block=s_block,
        blur_sigma_max=float(loss.get("blur_sigma_max", 3.0)),
        prob_length=float(loss.get("prob_length", 0.93)),
        truncation_sigma=args.truncation_sigma,
    )


def per_stage(values, n, name):
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise ValueError(f"--{name} has {len(values)} values for {n} stages")
    return values


def class_labels_for(seeds, label_dim, class_idx, device):
    """One-hot labels: --class for all, else a class drawn from each image's seed (batch independent)."""
    if not label_dim:
        if class_idx is not None:
            raise ValueError("--class given but the networks are unconditional")
        return None
    if class_idx is not None and not 0 <= class_idx < label_dim:
        raise ValueError(f"--class {class_idx} is outside [0, {label_dim})")
    idx = [
        class_idx if class_idx is not None else int(np.random.RandomState(s % 2**32).randint(label_dim))
        for s in seeds
    ]
    return torch.eye(label_dim, device=device)[idx]


# ---------------------------------------------------------------------------- images


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] NCHW -> uint8 NHWC."""
    return (x * 127.5 + 128).clip(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def save_png(arr: np.ndarray, path: str) -> None:
    PIL.Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(path)


def load_low_res(folder: str, seeds, channels: int, device) -> torch.Tensor:
    imgs = []
    for s in seeds:
        path = os.path.join(folder, f"{s:06d}.png")
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"--low-res: no image {path} for seed {s} (write them with --stages first)"
            )
        arr = np.asarray(PIL.Image.open(path).convert("L" if channels == 1 else "RGB"))
        imgs.append(arr.reshape(arr.shape[0], arr.shape[1], -1))
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).to(device, torch.float32)
    return (x - 127.5) / 127.5


def write_grid(paths, out_path, cols=None) -> None:
    imgs = [np.asarray(PIL.Image.open(p)) for p in paths]
    if not imgs:
        return
    cols = cols or max(1, math.ceil(math.sqrt(len(imgs))))
    rows = math.ceil(len(imgs) / cols)
    h, w = imgs[0].shape[:2]
    grid = np.zeros((rows * h, cols * w) + imgs[0].shape[2:], dtype=np.uint8)
    for i, img in enumerate(imgs):
        r, c = divmod(i, cols)
        grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = img
    PIL.Image.fromarray(grid).save(out_path)


# ---------------------------------------------------------------------------- main


def generate(args) -> list[str]:
    device = dist_util.local_device(dist_util.resolve_device(args.device))
    dist_util.init(device)
    rank, world = dist_util.get_rank(), dist_util.get_world_size()
    nets = load_stages(args, device)
    n_stages = len(nets)
    steps = per_stage(args.steps or [18 if s == 1 else 40 for s, _, _ in nets], n_stages, "steps")
    cfgs = per_stage(args.cfg, n_stages, "cfg")
    has_stage1 = nets[0][0] == 1
    stage1 = nets[0][1] if has_stage1 else None
    relays = [(net, cfg) for s, net, cfg in nets if s >= 2]
    r_kwargs = [
        relay_kwargs(cfg, st, args) for (_, cfg), st in zip(relays, steps[int(has_stage1) :], strict=False)
    ]
    label_dim = max(net.label_dim for _, net, _ in nets)

    os.makedirs(args.outdir, exist_ok=True)
    if args.stages == "both":
        os.makedirs(os.path.join(args.outdir, "stage1"), exist_ok=True)
    my_seeds = args.seeds[rank::world]
    batches = [my_seeds[i : i + args.batch] for i in range(0, len(my_seeds), args.batch)]
    bar = tqdm.tqdm(total=len(my_seeds), unit="img", disable=args.no_progress or rank != 0)
    for batch_seeds in batches:
        seeds = torch.tensor(batch_seeds, dtype=torch.int64, device=device)
        labels = class_labels_for(batch_seeds, label_dim, args.class_idx, device)
        x_low = None
        if not has_stage1:
            x_low = load_low_res(args.low_res, batch_seeds, relays[0][0].img_channels, device)
            if x_low.shape[-2] != x_low.shape[-1]:
                raise ValueError(f"--low-res images are {x_low.shape[-1]}x{x_low.shape[-2]}, not square")
            check_low_res(x_low.shape[-1], *relays[0], f"--low-res {args.low_res} has")
        outs, nfe = sampling.sample_cascade(
            stage1,
            [net for net, _ in relays],
            seeds=seeds,
            class_labels=labels,
            cfg_scale=cfgs,
            x_low=x_low,
            stage1_kwargs=dict(num_steps=int(steps[0])) if has_stage1 else None,
            relay_kwargs=r_kwargs,
            device=device,
            disable=True,
        )
        final = to_uint8(outs[-1])
        for s, img in zip(batch_seeds, final, strict=False):
            save_png(img, os.path.join(args.outdir, f"{s:06d}.png"))
        if args.stages == "both":
            for s, img in zip(batch_seeds, to_uint8(outs[0]), strict=False):
                save_png(img, os.path.join(args.outdir, "stage1", f"{s:06d}.png"))
        bar.update(len(batch_seeds))
        bar.set_postfix(nfe="+".join(map(str, nfe)))
    bar.close()
    dist_util.barrier()
    paths = [os.path.join(args.outdir, f"{s:06d}.png") for s in args.seeds]
    if rank == 0:
        write_grid(paths, os.path.join(args.outdir, "grid.png"), args.grid_cols)
    return paths


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.stages == "second" and not args.low_res:
        print(
            "error: --stages second needs --low-res DIR (low-res SEED.png images, e.g. from --stages first)",
            file=sys.stderr,
        )
        return 2
    try:
        dist_util.resolve_device(args.device)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        generate(args)
    except (OSError, ValueError, KeyError) as exc:  # OSError: missing files, a full disk, a read-only --outdir
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
