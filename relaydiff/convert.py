"""Convert a published EDM `.pkl` / RDM `.pt` network into a relaydiff run directory.

    python -m relaydiff.convert ckpts/imagenet_first_stage.pkl --stage 1 --outdir runs/rdm-imagenet
    python -m relaydiff.convert ckpts/imagenet_second_stage.pt --stage 2 --outdir runs/rdm-imagenet

The file is read by importer.import_network (no code from it runs) and written in relaydiff's own
layout (checkpoint.py: RUN/config.json and RUN/checkpoint.pt, state_dicts plus JSON, each written to a
temporary file and renamed), so `relaydiff.sample --run RUN` and `checkpoint.load_network` read it.
Converting into a RUN that already holds other stages keeps them. The stage's "loss" entry records
the relay settings relaydiff.sample uses when no --preset is given; "imported" in config.json names
the source file.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys

from . import cli_args as cli
from .checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from .importer import import_network


def parse_args(argv=None):
    p = cli.Parser(prog="python -m relaydiff.convert", description=__doc__.split("\n")[0],
                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("src", metavar="SRC", help="EDM network snapshot (.pkl) or RDM checkpoint (.pt)")
    p.add_argument("--stage", type=int, choices=[1, 2], required=True,
                   help="1: the low-resolution EDM stage; 2: the relay stage")
    p.add_argument("--outdir", required=True, help="run directory to write (created; other stages kept)")
    p.add_argument("--key", choices=["ema", "net"], default="ema",
                   help="which network of the file: the EMA weights, or an RDM training state's raw 'net'")
    p.add_argument("--k", type=cli.positive_int, default=4,
                   help="relay factor: stage-2 resolution / stage-1 resolution (the released up_scale)")
    p.add_argument("--block-scale", type=cli.nonnegative_float, default=0.15,
                   help="stage 2: block-noise scale recorded in the loss settings (released --block-scale)")
    p.add_argument("--prob-length", type=cli.positive_float, default=0.93,
                   help="stage 2: blur schedule length recorded in the loss settings (released --prob-length; "
                   "0.89 for CelebA-HQ)")
    p.add_argument("--blur-sigma-max", type=cli.positive_float, default=3.0,
                   help="stage 2: largest blur sigma recorded in the loss settings (released --blur-sigma-max; "
                   "2.0 for CelebA-HQ)")
    return p.parse_args(argv)


def stage_config(info: dict, args) -> dict:
    """The STAGE entry of config.json (checkpoint.py's layout) for an imported network."""
    kw = info["network"]["kwargs"]
    if args.stage == 1:
        loss = {"class_name": "EDMLoss", "kwargs": dict(P_mean=-1.2, P_std=1.2, sigma_data=kw.get("sigma_data", 0.5))}
    else:
        loss = {"class_name": "RelayLoss", "kwargs": dict(k=args.k, blur_sigma_max=args.blur_sigma_max,
                                                          block_scale=args.block_scale, prob_length=args.prob_length)}
    return {"stage": args.stage, "resolution": info["resolution"], "img_channels": info["img_channels"],
            "label_dim": info["label_dim"], "k": args.k, "network": info["network"], "loss": loss}


def check_stages_agree(low: dict, high: dict, k: int, where: str) -> None:
    """ValueError naming the field unless a stage-1 and a relay stage config make one cascade:
    relay resolution = k x stage-1 resolution, the same channels and the same label_dim."""
    if high.get("resolution") != k * low.get("resolution", 0):
        raise ValueError(f"{where}: the relay stage is {high.get('resolution')} px, the stage-1 network "
                         f"{low.get('resolution')} px; with --k {k} it must be {k * low.get('resolution', 0)} px")
    for field in ("img_channels", "label_dim"):
        if high.get(field) != low.get(field):
            raise ValueError(f"{where}: {field} is {low.get(field)} for stage 1 but {high.get(field)} for stage 2")


def convert(args) -> str:
    """Import args.src and write it as stage args.stage of the run args.outdir; returns the checkpoint path."""
    net, info = import_network(args.src, key=args.key)
    if args.stage == 2 and info["resolution"] % args.k:
        raise ValueError(f"{args.src}: resolution {info['resolution']} is not a multiple of --k {args.k}")
    config, stages, step = {"train": {}, "k": args.k, "stages": {}, "imported": {}}, {}, 0
    if os.path.exists(os.path.join(args.outdir, CHECKPOINT_NAME)):
        state = load_checkpoint(args.outdir)
        config, stages, step = state["config"], state["stages"], state["step"]
        if config.get("k", args.k) != args.k:
            raise ValueError(f"{args.outdir} is a run with k={config['k']}, not --k {args.k}")
        config.setdefault("imported", {})
    key = str(args.stage)
    mine = stage_config(info, args)
    other = config["stages"].get(str(3 - args.stage))
    if isinstance(other, dict):  # the stages joined must make one cascade, checked before anything is written
        low, high = (mine, other) if args.stage == 1 else (other, mine)
        check_stages_agree(low, high, args.k, f"{args.outdir}: stage {args.stage} from {args.src}")
    config["k"] = args.k
    config["stages"][key] = mine
    config["imported"][key] = {"src": os.path.abspath(args.src), "format": info["format"], "key": args.key}
    weights = {name: t.detach().clone() for name, t in net.state_dict().items()}
    # The file's network is the EMA (or, with --key net, the raw weights): both slots hold it, and no
    # optimizer state is carried over.
    stages[key] = {"net": weights, "ema": weights, "optimizer": {}}
    return save_checkpoint(args.outdir, step, config, stages)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cli.check_outdir(args.outdir)
        path = convert(args)
    except (OSError, ValueError, KeyError, pickle.UnpicklingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote stage {args.stage} of {args.src} to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
