"""Compare single-stage EDM (with and without block noise), the conditioning cascade (CDM, plain and
truncated conditioning augmentation), LowDiff and relay on the same data, an equal training budget per
method and matched network evaluations (NFE) at sampling:

    python -m relaydiff.compare --data builtin --budget-kimg 20 --nfe 35 --outdir runs/compare

writes DIR/results.md (and results.json) with RAPSD distance, sliced Wasserstein distance, KID/FID
(with --inception), NFE, sampling seconds per image, training images and parameters per method, and
DIR/grid-<method>.png. Trained networks are kept in DIR/units/ (written atomically): a rerun with the
same options reuses them and the finished methods' results, so an interrupted run loses nothing
already written. Method details and every choice made are in docs/COMPARE.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time

import numpy as np
import PIL.Image
import torch
import tqdm

from .. import checkpoint as ckpt
from .. import cli_args as cli
from .. import distributed as dist_util
from .. import eval as evaluation
from ..dataset import open_dataset
from ..images import quantize, row_tile_size, write_row_grid
from ..safe_load import load_state_dict
from .methods import METHODS, UNITS, build_unit, match_nfe, sample_method, train_unit
from .nets import num_params

SMOKE = dict(resolution=16, channels=8, batch=4, budget_kimg=0.008, nfe=5, num_samples=8, grid=8, threads=1)


def parse_args(argv=None):
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = cli.Parser(prog="python -m relaydiff.compare", description=__doc__.split("\n\n")[0], formatter_class=fmt)
    p.add_argument("--data", default="builtin", help="'builtin', an image folder or an EDM-style zip")
    p.add_argument("--outdir", default="runs/compare", help="output folder")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {', '.join(METHODS)}")
    p.add_argument("--budget-kimg", type=cli.nonnegative_float, default=20.0,
                   help="training images seen per method, in thousands (0: no image limit)")
    p.add_argument("--budget-minutes", type=cli.nonnegative_float, default=0.0,
                   help="training wall clock per method (0: no time limit); with both, whichever ends first")
    p.add_argument("--low-fraction", type=cli.probability, default=0.5,
                   help="share of a cascade's budget spent on its low-res stage (LowDiff: share of low-res steps)")
    p.add_argument("--nfe", type=cli.positive_int, default=35, help="network evaluations per image to match")
    p.add_argument("--low-nfe-share", type=cli.probability, default=0.5,
                   help="share of a cascade's evaluations aimed at its low-res stage")
    p.add_argument("--num-samples", type=cli.positive_int, default=128, help="images generated per method")
    p.add_argument("--sample-batch", type=cli.positive_int, default=64, help="images per sampling batch")
    p.add_argument("--grid", type=cli.positive_int, default=32, help="images in each method's grid")
    p.add_argument("--resolution", type=cli.positive_int, default=32, help="full resolution")
    p.add_argument("--k", type=cli.positive_int, default=4, help="low-res factor (low resolution = resolution / k)")
    p.add_argument("--channels", type=cli.positive_int, default=16, help="U-Net model_channels")
    p.add_argument("--channel-mult-low", type=cli.number_list(int, 1, 64), default="1,2", help="low-res U-Nets")
    p.add_argument("--channel-mult-high", type=cli.number_list(int, 1, 64), default="1,2,2", help="full-res U-Nets")
    p.add_argument("--attn-res", type=cli.number_list(int, 1, 4096), default="8", help="attention resolutions")
    p.add_argument("--num-blocks", type=cli.positive_int, default=1, help="blocks per U-Net level")
    p.add_argument("--batch", type=cli.positive_int, default=16, help="training batch")
    p.add_argument("--lr", type=cli.positive_float, default=2e-3, help="Adam learning rate")
    p.add_argument("--block-scale", type=cli.nonnegative_float, default=0.15,
                   help="block-noise weight (relay, single_block; RDM C.2)")
    p.add_argument("--cond-sigma", type=cli.positive_float, default=0.2,
                   help="conditioning noise level at sampling (CDM augmentation, CDM/LowDiff truncation)")
    p.add_argument("--aug-max", type=cli.positive_float, default=1.0, help="training augmentation level ~ U(0, this)")
    p.add_argument("--seed", type=cli.nonnegative_int, default=0, help="training and sampling seed")
    p.add_argument("--device", default="auto",
                   help="torch device for training and sampling: auto (cuda if available, else cpu), cpu, cuda, cuda:N")
    p.add_argument("--inception", default=None,
                   help="FID Inception-v3 state_dict file (relaydiff.eval's --detector): adds KID and FID")
    p.add_argument("--threads", type=cli.nonnegative_int, default=1,
                   help="torch threads (0: torch's default; 1 is robust on a shared machine)")
    p.add_argument("--smoke", action="store_true", help=f"tiny settings that run in seconds ({SMOKE})")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = p.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        p.error(f"--methods: unknown {bad}; choose from {', '.join(METHODS)}")
    args.methods = methods
    if not args.budget_kimg and not args.budget_minutes:
        p.error("give a budget: --budget-kimg or --budget-minutes (> 0)")
    if args.resolution % args.k or args.k < 2 or args.k & (args.k - 1):
        p.error(f"--k {args.k} must be a power of two >= 2 dividing --resolution {args.resolution}")
    return args


def unit_config(args) -> dict:
    """Everything a trained unit depends on (a saved unit is reused only when this matches)."""
    keys = ("data", "resolution", "k", "channels", "channel_mult_low", "channel_mult_high", "attn_res",
            "num_blocks", "batch", "lr", "block_scale", "aug_max", "seed", "low_fraction", "budget_kimg",
            "budget_minutes")
    return {key: getattr(args, key) for key in keys}


def _save_state(path, state):
    ckpt.atomic_write(path, lambda f: torch.save(state, f))


def get_unit(name, args, dataset, device):
    """A trained unit from DIR/units when its config matches, else trained now and saved."""
    cfg = unit_config(args)
    base = os.path.join(args.outdir, "units", name)
    info_path = base + ".json"
    if os.path.isfile(info_path) and os.path.isfile(base + ".pt"):
        try:  # a corrupted unit (either file) is trained again, with a note naming it
            with open(info_path) as f:
                info = json.load(f)
            if info.get("config") == json.loads(json.dumps(cfg)):
                net, _ = build_unit(name, cfg)
                net.load_state_dict(load_state_dict(base + ".pt", what="comparison unit"))
                return net.to(device).eval().requires_grad_(False), dict(info["stats"])
        except (ValueError, KeyError, TypeError, AttributeError, RuntimeError) as exc:
            print(f"note: retraining unit {name}: {base}.pt/.json unreadable ({str(exc)[:200]})", file=sys.stderr)
    net, stats = train_unit(name, cfg, dataset, device, progress=not args.no_progress)
    os.makedirs(os.path.dirname(base), exist_ok=True)
    _save_state(base + ".pt", net.state_dict())
    ckpt.save_json(info_path, {"config": cfg, "stats": stats})
    return net, stats


def _reference(dataset, n):
    """(reference images, other data images or None): disjoint random subsets of the dataset (fixed order)."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(12345))
    ref = dataset.batch(order[:n])[0]
    other = dataset.batch(order[n:2 * n])[0] if len(dataset) >= 2 * n else None
    return ref, other


def score(gen_u8, ref_u8, inception=None) -> dict:
    names = ("rapsd", "swd") + (("fid", "kid") if inception else ())
    out = evaluation.compare(gen_u8, ref_u8, names, detector=inception)
    return {key: out[key] for key in ("rapsd_distance", "swd", "fid", "kid") if key in out}


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def write_results(args, rows, command, data_row):
    """DIR/results.md and DIR/results.json from the finished rows (atomic: old or whole new file)."""
    kid = bool(args.inception)
    head = "| method | RAPSD dist | SWD x1e3 |" + (" KID | FID |" if kid else "") + \
        " NFE (low+high) | steps (low, high) | s / image | train kimg | train min | params |"
    lines = [
        "# relaydiff.compare results", "",
        f"Command: `{command}`", "",
        f"Machine: {platform.machine()} {platform.system()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads. Budget per method: "
        f"{args.budget_kimg} kimg" + (f", {args.budget_minutes} min" if args.budget_minutes else "") +
        f" (low-res share {args.low_fraction}); target NFE {args.nfe} (cascades aim {args.low_nfe_share} of it "
        f"at low res); {args.num_samples} samples per method "
        f"against {args.num_samples} dataset images; {args.resolution}px, k={args.k}.", "",
        head, "|" + "---|" * (head.count("|") - 1),
    ]
    for r in ([data_row] if data_row else []) + rows:
        m = r["metrics"]
        cells = [r["method"], _fmt(m.get("rapsd_distance"), ".4f"), _fmt(m.get("swd"), ".2f")]
        if kid:
            cells += [_fmt(m.get("kid"), ".4f"), _fmt(m.get("fid"), ".1f")]
        if r["method"].startswith("data"):
            cells += ["-"] * 6
        else:
            s = r["steps"]
            cells += [f"{s['low_nfe']}+{s['high_nfe']}={r['nfe']}", f"{s['low_steps']}, {s['high_steps']}",
                      f"{r['seconds_per_image']:.3f}", f"{r['train_images'] / 1000:.2f}",
                      f"{r['train_seconds'] / 60:.1f}", f"{r['params']:,}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Lower is better for every metric. The `data` row scores other images of the dataset against "
              "the reference set (the floor at this sample size). Grids: " +
              ", ".join(f"`grid-{r['method']}.png`" for r in rows) +
              "; `grid-all.png` stacks the first row of each: the data, then the methods in the table's order.", ""]
    text = "\n".join(lines)
    ckpt.atomic_write(os.path.join(args.outdir, "results.md"), lambda f: f.write(text.encode()))
    ckpt.save_json(os.path.join(args.outdir, "results.json"),
                   {"command": command, "config": _run_config(args), "rows": rows, "data": data_row})


def run(args, command="python -m relaydiff.compare") -> list[dict]:
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args, command)
    finally:
        torch.set_num_threads(threads)


def _run(args, command):
    device = dist_util.resolve_device(args.device)
    os.makedirs(args.outdir, exist_ok=True)
    dataset = open_dataset(args.data, args.resolution, seed=args.seed)
    ref_u8, other_u8 = _reference(dataset, args.num_samples)
    write_row_grid(os.path.join(args.outdir, "grid-data.png"), _grid_rows(ref_u8[:args.grid]), args.resolution)
    data_row = None
    if other_u8 is not None:
        data_row = {"method": "data (other images)", "metrics": score(other_u8, ref_u8, args.inception)}
    rows, units = [], {}
    done_path = os.path.join(args.outdir, "results.json")
    previous = {}
    if os.path.isfile(done_path):
        try:  # a corrupted results.json: its rows are computed again
            with open(done_path) as f:
                saved = json.load(f)
            if saved.get("config") == _run_config(args):
                previous = {r["method"]: r for r in saved.get("rows", []) if isinstance(r.get("metrics"), dict)}
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            print(f"note: {done_path} unreadable ({str(exc)[:200]}): computing every method again", file=sys.stderr)
    for method in tqdm.tqdm(args.methods, desc="methods", disable=args.no_progress, leave=False):
        if method in previous:
            rows.append(previous[method])
            continue
        for name in UNITS[method]:
            if name not in units:
                units[name] = get_unit(name, args, dataset, device)
        nets = {name: units[name][0] for name in UNITS[method]}
        steps = match_nfe(method, args.nfe, unit_config(args), low_share=args.low_nfe_share)
        images, calls, t0 = [], 0, time.perf_counter()
        for start in range(0, args.num_samples, args.sample_batch):
            seeds = list(range(start, min(start + args.sample_batch, args.num_samples)))
            x, c = sample_method(method, nets, seeds, steps, _run_config(args), device)
            images.append(quantize(x))
            calls = c  # network calls of one batch = per-image NFE (every call is batched)
        seconds = time.perf_counter() - t0
        if calls != steps["nfe"]:
            raise RuntimeError(f"{method}: the sampler made {calls} network calls, the NFE plan says {steps['nfe']}")
        gen = torch.cat(images)
        write_row_grid(os.path.join(args.outdir, f"grid-{method}.png"), _grid_rows(gen[:args.grid]), args.resolution)
        stats = [units[name][1] for name in UNITS[method]]
        rows.append({"method": method, "metrics": score(gen, ref_u8, args.inception), "steps": steps,
                     "nfe": steps["nfe"], "seconds_per_image": seconds / args.num_samples,
                     "train_images": sum(s["images"] for s in stats),
                     "train_seconds": sum(s["seconds"] for s in stats), "params": num_params(*nets.values())})
        write_results(args, rows, command, data_row)
    write_results(args, rows, command, data_row)
    write_overview(args.outdir, [r["method"] for r in rows], args.resolution)
    return rows


def write_overview(outdir, methods, resolution):
    """DIR/grid-all.png: the first row of grid-data.png, then of each method's grid, top to bottom."""
    tile = row_tile_size(resolution)  # the height of one row of write_row_grid
    strips = []
    for name in ["data", *methods]:
        with PIL.Image.open(os.path.join(outdir, f"grid-{name}.png")) as im:
            strips.append(np.asarray(im.convert("RGB"))[:tile])
    width = max(s.shape[1] for s in strips)
    strips = [np.pad(s, ((0, 0), (0, width - s.shape[1]), (0, 0))) for s in strips]
    img = PIL.Image.fromarray(np.concatenate(strips, axis=0))
    ckpt.atomic_write(os.path.join(outdir, "grid-all.png"), lambda f: img.save(f, format="PNG"))


def _run_config(args) -> dict:
    keys = ("nfe", "low_nfe_share", "num_samples", "cond_sigma", "inception")
    return json.loads(json.dumps({**unit_config(args), **{key: getattr(args, key) for key in keys}}))


def _grid_rows(u8, per_row=8):
    return [u8[i:i + per_row] for i in range(0, u8.shape[0] - per_row + 1, per_row)] or [u8]


def main(argv=None) -> int:
    args = parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    command = "python -m relaydiff.compare " + " ".join(shlex.quote(a) for a in argv)
    try:
        dist_util.resolve_device(args.device)
        cli.check_outdir(args.outdir, "--outdir")
        rows = run(args, command)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(open(os.path.join(args.outdir, "results.md")).read())
    return 0 if rows else 1
