"""Generate images with a trained Relay Diffusion run (as NVlabs/edm `generate.py`).

    python -m relaydiff.sample --run RUN --stages both --seeds 0-63 --outdir out
    torchrun --nproc_per_node=4 -m relaydiff.sample -- --run RUN --seeds 0-999 --outdir out --device cuda

The `--` ends torchrun's own options (without it torchrun takes --run for an abbreviation of its
--run-path and stops). Every image depends only on its seed (per-image Philox streams), so the
result does not depend on --batch or on the number of ranks; under torchrun rank r takes
seeds[r::world]. Writes OUTDIR/SEED.png for the final stage (OUTDIR/stage1/SEED.png too with
--stages both) and OUTDIR/grid.png. --stages second refines the low-resolution images in --low-res
(files SEED.png, e.g. the output of --stages first), which must be resolution / k pixels wide.

The published RDM checkpoints run directly, without a relaydiff run directory (names as in the
released THUDM/RelayDiffusion generate.py; nothing from the files is executed, see importer.py):

    python -m relaydiff.sample --preset imagenet-256 --network-first edm-imagenet-64x64-cond-adm.pkl \
        --network-second imagenet_second_stage.pt --outdir out --device cuda

--preset sets every sampler option as the released generate_celebahq.py / generate_imagenet.py do
(presets.py); an option given explicitly overrides the preset.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys

import numpy as np
import PIL.Image
import torch
import tqdm

from . import cli_args as cli
from . import distributed as dist_util
from . import images, presets, sampling
from .images import save_png, to_uint8, write_grid

parse_int_list = cli.seed_list  # '0-3,8,10-11' -> [0, 1, 2, 3, 8, 10, 11] (ranges inclusive, as EDM)


def parse_args(argv=None):
    p = cli.Parser(
        prog="python -m relaydiff.sample",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    src = p.add_argument_group("networks (--run, or the released files)")
    src.add_argument("--run", default=None, help="run directory (or checkpoint file) from relaydiff.train")
    src.add_argument("--network-first", default=None, metavar="PATH",
                     help="stage-1 network: an EDM .pkl snapshot or RDM .pt file (as released generate.py)")
    src.add_argument("--network-second", default=None, metavar="PATH",
                     help="relay-stage network: an RDM .pt (or EDM-format .pkl) file")
    p.add_argument("--preset", choices=sorted(presets.PRESETS), default=None,
                   help="the released sampler settings for both stages (relaydiff/presets.py)")
    p.add_argument(
        "--stages",
        choices=["first", "second", "both"],
        default="both",
        help="first: stage-1 EDM only; second: relay stage(s) on --low-res images; both: cascade",
    )
    p.add_argument("--low-res", default=None, help="folder of low-res SEED.png images for --stages second")
    per = "one number for every stage, or one per stage (stage 1 first)"
    p.add_argument("--steps", type=cli.number_list(int, 1, 100_000), default=None,
                   help=f"Karras steps: {per}; default the preset's, else 18 for stage 1 and 40 for each relay stage")
    p.add_argument("--cfg", type=cli.number_list(float, 0.0, 100.0), default=None,
                   help=f"classifier-free guidance scale: {per}; default the preset's, else 1 (none)")
    p.add_argument("--sigma-min", type=cli.number_list(float, 1e-6, 1e6), default=None,
                   help=f"lowest noise level: {per}; default the preset's, else 0.002 / 0.008")
    p.add_argument("--sigma-max", type=cli.number_list(float, 1e-6, 1e6), default=None,
                   help=f"highest noise level: {per}; default the preset's, else 80")
    p.add_argument("--rho", type=cli.number_list(float, 0.1, 100.0), default=None,
                   help=f"Karras time-step exponent: {per}; default the preset's, else 7")
    p.add_argument("--S-churn", dest="S_churn", type=cli.nonnegative_float, default=None,
                   help="stage-1 stochasticity strength (EDM Algorithm 2); default the preset's, else 0")
    p.add_argument("--S-min", dest="S_min", type=cli.nonnegative_float, default=None,
                   help="stage-1 churn from this noise level; default the preset's, else 0")
    p.add_argument("--S-max", dest="S_max", type=cli.nonnegative_float, default=None,
                   help="stage-1 churn up to this noise level; default the preset's, else inf")
    p.add_argument("--S-noise", dest="S_noise", type=cli.positive_float, default=None,
                   help="stage-1 churn noise inflation; default the preset's, else 1")
    p.add_argument("--sde-scale", dest="sde_scale", type=cli.nonnegative_float, default=None,
                   help="stage-1 noise g = sde_scale * t_next added at each Euler and Heun update (the released "
                        "CelebA-HQ edm_sampler's --sde_scale_first, below 1); default the preset's, else 0")
    p.add_argument(
        "--class",
        dest="class_idx",
        type=cli.nonnegative_int,
        default=None,
        help="class label for every image (default: one per seed, see --class-rule)",
    )
    p.add_argument("--class-rule", choices=["random", "seed-mod"], default=None,
                   help="labels when --class is not given: a class drawn from each seed, or seed %% label_dim "
                   "(released generate.py); default the preset's, else random")
    p.add_argument("--seeds", type=cli.seed_list, default=None,
                   help=f"e.g. 0-63 or 1,5,9-12 (at most {cli.MAX_SEEDS}); default the preset's, else 0-63")
    p.add_argument("--noise", choices=("philox", "torch"), default="philox",
                   help="philox: relaydiff's per-image streams (the same image on every device and batch); "
                        "torch: the released generate scripts' streams (one torch.Generator per seed), so a seed "
                        "gives the released script's image on the same device")
    p.add_argument("--batch", type=cli.positive_int, default=16, help="images per batch (per rank)")
    p.add_argument("--outdir", required=True, help="where to write the PNGs")
    p.add_argument(
        "--device", default="auto",
        help="auto (cuda if available, else cpu), cpu, cuda, cuda:N (cuda: each torchrun rank takes its LOCAL_RANK)"
    )
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--s-noise", type=cli.probability, default=None,
                   help="relay stochasticity s_noise; default the preset's, else 0.2")
    p.add_argument("--s-block", type=cli.in_range(float), default=None,
                   help="relay block-noise scale; default the preset's, else the training one")
    p.add_argument("--truncation-sigma", type=cli.positive_float, default=None,
                   help="relay schedule keeps t_i below this; default the preset's, else 0.9")
    p.add_argument("--prob-length", type=cli.positive_float, default=None,
                   help="relay blur schedule length (released truncation_t); default the preset's, "
                   "else the training one")
    p.add_argument("--blur-sigma-max", type=cli.positive_float, default=None,
                   help="relay largest blur sigma; default the preset's, else the training one")
    p.add_argument("--enhance", action=argparse.BooleanOptionalAction, default=None,
                   help="apply the released scripts' PIL contrast/brightness/colour enhancement to the saved "
                   "images; default on with a preset, else off")
    p.add_argument("--grid", type=cli.in_range(int, 0, 4096), default=images.GRID_LIMIT,
                   help="OUTDIR/grid.png tiles the first N images (0: no grid)")
    p.add_argument("--grid-cols", type=cli.in_range(int, 1, 4096), default=None,
                   help="grid columns (default: about sqrt(n))")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = p.parse_args(argv)
    if args.run is not None and (args.network_first or args.network_second):
        p.error("give either --run or --network-first/--network-second, not both")
    if args.run is None and not (args.network_first or args.network_second):
        p.error("give --run RUN, or --network-first / --network-second (released checkpoint files)")
    if args.seeds is None:
        args.seeds = parse_int_list(presets.preset(args.preset)["seeds"] if args.preset else "0-63")
    if args.sigma_min is not None and args.sigma_max is not None:
        try:
            cli.check_sigma_order(args.sigma_min, args.sigma_max)
        except ValueError as exc:
            p.error(str(exc))
    return args


# ---------------------------------------------------------------------------- nets and checks


def load_stages(args, device):
    """[(stage, net, stage_config)] for the stages to run, after consistency checks."""
    nets = load_run_stages(args, device) if args.run is not None else load_file_stages(args, device)
    for (_, prev, _), (s, net, cfg) in zip(nets, nets[1:], strict=False):
        check_low_res(prev.img_resolution, net, cfg, f"stage {s} follows a stage that makes")
        if net.img_channels != prev.img_channels:
            raise ValueError(
                f"stage {s} has {net.img_channels} channels, the previous stage {prev.img_channels}"
            )
        if net.label_dim and prev.label_dim and net.label_dim != prev.label_dim:
            raise ValueError(f"stage {s} has {net.label_dim} classes, the previous stage {prev.label_dim}")
    return nets


def load_run_stages(args, device):
    from .checkpoint import load_checkpoint, load_network, resolve_path

    path = resolve_path(args.run)  # FileNotFoundError with the path when missing
    available = sorted(int(s) for s in load_checkpoint(path)["stages"])
    relay = [s for s in available if s >= 2]
    want = {"first": [1], "second": relay, "both": [1] + relay}[args.stages]
    if args.stages != "second" and 1 not in available:
        raise ValueError(f"{path} has no stage-1 (low-res EDM) network (stages: {available})")
    if args.stages != "first" and not relay:
        raise ValueError(f"{path} has no relay-stage network (stages: {available}); train stage 2 first")
    return [(s, *load_network(path, s, ema=not args.no_ema, device=device)) for s in want]


def load_file_stages(args, device):
    """Stages from released checkpoint files (importer.import_network). The relay factor k is the
    ratio of the two nets' resolutions, or without a stage-1 net the preset's (else 4, the released
    up_scale default)."""
    from .importer import import_network

    need = {"first": ["first"], "second": ["second"], "both": ["first", "second"]}[args.stages]
    for which in need:
        if not getattr(args, f"network_{which}"):
            raise ValueError(f"--stages {args.stages} needs --network-{which}")
    key = "net" if args.no_ema else "ema"
    out = []
    for stage, which in ((1, "first"), (2, "second")):
        if which in need:
            net, info = import_network(getattr(args, f"network_{which}"), key=key, device=device)
            out.append((stage, net, {"stage": stage, "resolution": info["resolution"], "label_dim": info["label_dim"],
                                     "network": info["network"], "source": info["path"]}))
    if len(out) == 2:
        low, high = out[0][1].img_resolution, out[1][1].img_resolution
        if high % low:
            raise ValueError(f"the relay net's resolution {high} is not a multiple of the stage-1 net's {low}")
        out[1][2]["k"] = high // low
    elif out[0][0] == 2:
        out[0][2]["k"] = presets.preset(args.preset)["stage2"]["k"] if args.preset else 4
    return out


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


STAGE1_KEYS = ("num_steps", "sigma_min", "sigma_max", "rho", "S_churn", "S_min", "S_max", "S_noise",
               "sde_scale")


def sampler_settings(args, stage_cfgs) -> tuple[dict | None, list[dict], list[float]]:
    """(stage1_kwargs or None, [relay_kwargs per relay stage], [cfg per stage]) for sample_cascade.
    Precedence: an explicit option, then the preset, then (relay stages) the run's training settings,
    then the built-in defaults."""
    pre = presets.preset(args.preset) if args.preset else None
    n = len(stage_cfgs)
    is_relay = [cfg["stage"] >= 2 for cfg in stage_cfgs]

    def option(name, i):  # the i-th stage's value of a per-stage option, or None
        values = getattr(args, name)
        return None if values is None else per_stage(values, n, name.replace("_", "-"))[i]

    stage1, relays = None, []
    for i, cfg in enumerate(stage_cfgs):
        if not is_relay[i]:
            kw = dict(pre["stage1"]) if pre else dict(num_steps=18)
            for key in ("S_churn", "S_min", "S_max", "S_noise", "sde_scale"):
                if getattr(args, key) is not None:
                    kw[key] = getattr(args, key)
        else:
            loss = cfg.get("loss", {}).get("kwargs", {})
            kw = dict(num_steps=40, s_noise=0.2, truncation_sigma=0.9, s_block=float(loss.get("block_scale", 0.15)),
                      blur_sigma_max=float(loss.get("blur_sigma_max", 3.0)),
                      prob_length=float(loss.get("prob_length", 0.93)))
            if pre:
                kw.update(pre["stage2"])
                if pre["stage2"]["k"] != relay_k(cfg):
                    raise ValueError(f"--preset {args.preset} is for k={pre['stage2']['k']} (up_scale) relay "
                                     f"nets; this relay stage has k={relay_k(cfg)}")
            kw["k"] = relay_k(cfg)
            for key in ("s_noise", "s_block", "truncation_sigma", "prob_length", "blur_sigma_max"):
                if getattr(args, key) is not None:
                    kw[key] = getattr(args, key)
        for opt, key in (("steps", "num_steps"), ("sigma_min", "sigma_min"), ("sigma_max", "sigma_max"),
                         ("rho", "rho")):
            if option(opt, i) is not None:
                kw[key] = option(opt, i)
        if "num_steps" in kw:
            kw["num_steps"] = int(kw["num_steps"])
        if is_relay[i]:
            relays.append(kw)
        else:
            stage1 = kw
    cfgs = per_stage(args.cfg, n, "cfg") if args.cfg else None
    if cfgs is None:
        cfgs = [pre["cfg"][1 if r else 0] for r in is_relay] if pre else [1.0] * n
    return stage1, relays, [float(c) for c in cfgs]


def output_settings(args) -> tuple[str, dict | None]:
    """(class rule, enhancement factors or None) from the options and the preset."""
    pre = presets.preset(args.preset) if args.preset else {}
    rule = args.class_rule or pre.get("class_rule", "random")
    use = args.enhance if args.enhance is not None else bool(pre)
    if use and not pre.get("enhance"):
        raise ValueError("--enhance needs a --preset (the factors are the released script's)")
    return rule, (pre["enhance"] if use else None)


def per_stage(values, n, name):
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise ValueError(f"--{name} has {len(values)} values for {n} stages")
    return values


def class_labels_for(seeds, label_dim, class_idx, device, rule="random"):
    """One-hot labels: --class for all, else one per seed (batch independent): drawn from the seed's
    RandomState (rule 'random') or seed % label_dim (rule 'seed-mod', the released generate.py)."""
    if not label_dim:
        if class_idx is not None:
            raise ValueError("--class given but the networks are unconditional")
        return None
    if class_idx is not None and not 0 <= class_idx < label_dim:
        raise ValueError(f"--class {class_idx} is outside [0, {label_dim})")
    if class_idx is not None:
        idx = [class_idx] * len(seeds)
    elif rule == "seed-mod":
        idx = [s % label_dim for s in seeds]
    else:
        idx = [int(np.random.RandomState(s % 2**32).randint(label_dim)) for s in seeds]
    return torch.eye(label_dim, device=device)[idx]


# ---------------------------------------------------------------------------- images


MAX_LOW_RES = 4096  # px per side of a --low-res image (the released relay inputs are 64 px)


def load_low_res(folder: str, seeds, channels: int, device) -> torch.Tensor:
    imgs = []
    for s in seeds:
        path = os.path.join(folder, f"{s:06d}.png")
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"--low-res: no image {path} for seed {s} (write them with --stages first)"
            )
        try:  # the header's size is checked before any pixel is decoded (a small file may claim 100k x 100k)
            with PIL.Image.open(path) as im:
                if im.width > MAX_LOW_RES or im.height > MAX_LOW_RES:
                    raise ValueError(f"--low-res: {path} is {im.width}x{im.height}, larger than {MAX_LOW_RES} px")
                if imgs and im.size != (imgs[0].shape[1], imgs[0].shape[0]):
                    raise ValueError(f"--low-res: {path} is {im.width}x{im.height}, the first image "
                                     f"{imgs[0].shape[1]}x{imgs[0].shape[0]}")
                arr = np.asarray(im.convert("L" if channels == 1 else "RGB"))
        except (OSError, SyntaxError, PIL.Image.DecompressionBombError) as exc:  # not a (whole) image
            raise ValueError(f"--low-res: cannot read {path} as an image ({type(exc).__name__})") from None
        imgs.append(arr.reshape(arr.shape[0], arr.shape[1], -1))
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).to(device, torch.float32)
    return (x - 127.5) / 127.5


# ---------------------------------------------------------------------------- main


def generate(args) -> list[str]:
    device = dist_util.local_device(dist_util.resolve_device(args.device))
    dist_util.init(device)
    rank, world = dist_util.get_rank(), dist_util.get_world_size()
    nets = load_stages(args, device)
    stage1_kwargs, r_kwargs, cfgs = sampler_settings(args, [cfg for _, _, cfg in nets])
    class_rule, enhance = output_settings(args)
    has_stage1 = nets[0][0] == 1
    stage1 = nets[0][1] if has_stage1 else None
    relays = [(net, cfg) for s, net, cfg in nets if s >= 2]
    label_dim = max(net.label_dim for _, net, _ in nets)

    os.makedirs(args.outdir, exist_ok=True)
    if args.stages == "both":
        os.makedirs(os.path.join(args.outdir, "stage1"), exist_ok=True)
    my_seeds = args.seeds[rank::world]
    batches = [my_seeds[i : i + args.batch] for i in range(0, len(my_seeds), args.batch)]
    bar = tqdm.tqdm(total=len(my_seeds), unit="img", disable=args.no_progress or rank != 0)
    for batch_seeds in batches:
        seeds = torch.tensor(batch_seeds, dtype=torch.int64, device=device)
        labels = class_labels_for(batch_seeds, label_dim, args.class_idx, device, class_rule)
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
            stage1_kwargs=stage1_kwargs,
            relay_kwargs=r_kwargs,
            device=device,
            disable=True,
            noise=args.noise,
        )
        for stage_out in outs:
            if not bool(torch.isfinite(stage_out).all()):  # NaN weights, sigma_data or guidance: not black PNGs
                raise ValueError(f"the sampler produced NaN or infinite pixels (seeds {batch_seeds[0]}-"
                                 f"{batch_seeds[-1]}): check the network's weights and the sampler options")
        final = to_uint8(outs[-1])
        for s, img in zip(batch_seeds, final, strict=False):
            save_png(img, os.path.join(args.outdir, f"{s:06d}.png"), enhance)
        if args.stages == "both":
            for s, img in zip(batch_seeds, to_uint8(outs[0]), strict=False):
                save_png(img, os.path.join(args.outdir, "stage1", f"{s:06d}.png"))
        bar.update(len(batch_seeds))
        bar.set_postfix(nfe="+".join(map(str, nfe)))
    bar.close()
    dist_util.barrier()
    paths = [os.path.join(args.outdir, f"{s:06d}.png") for s in args.seeds]
    if rank == 0:
        write_grid(paths, os.path.join(args.outdir, "grid.png"), args.grid_cols, limit=args.grid)
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
        cli.check_outdir(args.outdir)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        generate(args)
    # OSError: missing files, a full disk, a read-only --outdir; UnpicklingError: a refused checkpoint file.
    except (OSError, ValueError, KeyError, pickle.UnpicklingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2  # as every relaydiff command: a bad file or value is a usage error
    return 0


if __name__ == "__main__":
    sys.exit(main())
