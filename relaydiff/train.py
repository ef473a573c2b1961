"""Train a two-stage Relay Diffusion model (RDM): `python -m relaydiff.train [options]`.

With no options it trains both stages on the built-in dataset (crops of scikit-image's sample
photographs): stage 1 at 8x8, the relay stage at 32x32, in a few minutes on a laptop CPU, and
writes RUN/checkpoint.pt, RUN/metrics.jsonl and RUN/grid.png (see relaydiff/checkpoint.py).

`--preset NAME` takes one of the RDM paper's recipes (relaydiff/train_presets.py, docs/TRAINING.md);
options given beside it override it. `--dry-run` prints the resolved options and each stage's network
(config, parameter count) as JSON without building or reading anything.

`--outdir RUN --resume` continues RUN with the options it was started with (saved in RUN/checkpoint.pt,
mirrored in RUN/config.json).
Options given again must keep their saved values (anything else would not continue the run
exactly), except --steps (raise it to extend the run) and the operational --device, --threads,
--progress, --log-every, --snap-every, --grid-every and --preview-steps.

Data parallel: `torchrun --nproc_per_node=N -m relaydiff.train -- ...` (gloo on CPU, nccl on CUDA;
the `--` ends torchrun's own options, which it would otherwise match abbreviations against);
--batch is the global batch and must be divisible by N.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from . import checkpoint as ckpt
from . import cli_args as cli
from .networks import ARCH_PRESETS, build_network
from .train_presets import PRESETS, apply_preset, preset_options
from .train_scale import check_scale_options
from .train_step import parse_numbers
from .training_loop import DEFAULTS, stage_configs, training_loop

# Options a resumed run may change: they do not touch the training math (device: the same math on
# other hardware). --steps may change too: it only says where to stop.
FREE_ON_RESUME = ("steps", "progress", "threads", "device", "log_every", "snap_every", "grid_every",
                  "preview_steps")


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {text!r}")


HELP = dict(
    outdir="run directory (config.json, checkpoint.pt, metrics.jsonl, grid PNGs)",
    data="'builtin', an image folder, or an EDM-style zip (images + dataset.json labels)",
    resolution="final (stage-2) resolution; stage 1 trains at resolution / k",
    k="relay factor and DCT patch size",
    stage="which stage(s) to train: 1, 2 or both",
    steps="total optimizer steps (a resumed run continues up to this count)",
    batch="global batch size (divided evenly among ranks)",
    lr="Adam learning rate", lr_rampup="linear LR warm-up length in steps",
    grad_clip="gradient-norm clip (0: off)", ema_halflife_kimg="EMA half-life in thousands of images",
    ema_rampup="EMA half-life ramp-up ratio (EDM)", bf16="bfloat16 autocast",
    seed="global seed (data crops, order, noise and initialisation)",
    device="auto (cuda if available, else cpu), cpu, cuda, cuda:N",
    resume="continue the run in --outdir from its checkpoint, with the options saved in its checkpoint",
    cond="class-conditional training when the data has labels",
    label_dropout="label dropout probability (for classifier-free guidance)",
    arch="network: EDM's presets ddpmpp, ncsnpp (SongUNet) or adm (DhariwalUNet), scaled down by --channels, "
         "--channel-mult1/2, --num-blocks and --attn-res",
    channels="U-Net base channels (model_channels)", channel_mult1="stage-1 channel multipliers",
    channel_mult2="stage-2 channel multipliers", attn_res="resolutions with self-attention",
    num_blocks="residual blocks per resolution", dropout="dropout probability",
    blur_sigma_max="relay stage maximum blur sigma", block_scale="block noise scale (beta)",
    prob_length="relay schedule prob_length (L)", log_every="metrics.jsonl interval (steps; 0: last only)",
    snap_every="checkpoint interval (steps; 0: at the end and on a signal only); each also keeps "
               "RUN/network-snapshot-KKKKKK.pt (KKKKKK: kimg)",
    grid_every="preview grid interval (steps; 0: the final grid only)",
    preview_steps="EDM sampler steps for the preview grid", progress="show the progress bar",
    threads="torch CPU threads per process (0: PyTorch's default); the small default models run "
            "fastest on one, and a shared machine thrashes with more",
    batch_gpu="images per forward/backward pass on each rank; the per-rank batch is accumulated over "
              "batch/ranks/batch-gpu passes (0: one pass)",
    fp16="float16 autocast with loss scaling (--ls)", ls="fp16 loss scaling: 'dynamic' or a static factor",
    compile="torch.compile the networks' training forward",
    channels_last="channels_last memory format for networks and images (faster convolutions on CUDA)",
    transfer="start from trained weights, fresh optimizer: a relaydiff run/checkpoint/snapshot, or a "
             "released EDM .pkl / RDM .pt (one stage)",
)


# Allowed values of the numeric options (the rest take their type from DEFAULTS). The seed bound keeps
# dataset.global_indices' seed * 1_000_003 + epoch inside torch.manual_seed's 64-bit range.
TYPES = dict(
    resolution=cli.in_range(int, 1, 4096), k=cli.in_range(int, 1, 64), steps=cli.positive_int,
    batch=cli.positive_int, lr=cli.positive_float, lr_rampup=cli.nonnegative_int,
    grad_clip=cli.nonnegative_float, ema_halflife_kimg=cli.positive_float, ema_rampup=cli.nonnegative_float,
    seed=cli.in_range(int, 0, 2**40), label_dropout=cli.probability, channels=cli.in_range(int, 1, 8192),
    channel_mult1=cli.number_list(float, 1 / 64, 64, keep_text=True),  # 0.5: RDM Table 5
    channel_mult2=cli.number_list(float, 1 / 64, 64, keep_text=True),
    attn_res=cli.number_list(int, 1, 4096, keep_text=True), num_blocks=cli.in_range(int, 1, 64),
    dropout=cli.probability, blur_sigma_max=cli.nonnegative_float, block_scale=cli.in_range(float),
    prob_length=cli.in_range(float, 0.0, 1.0, low_open=True), log_every=cli.nonnegative_int,
    snap_every=cli.nonnegative_int, grid_every=cli.nonnegative_int, preview_steps=cli.positive_int,
    threads=cli.nonnegative_int, batch_gpu=cli.nonnegative_int,
)

# The data pipeline (relaydiff.dataset, relaydiff.augment). --workers and --cache change how images
# are read, not which: a resumed run may change them.
HELP.update(
    workers="DataLoader worker processes decoding the images ahead (0: in the training process; "
            "the batches are the same for any count)",
    cache="decode every --data image into RAM once at start (otherwise each when a batch needs it, so "
          "memory does not grow with the dataset; 'builtin' is always in memory)",
    xflip="EDM's dataset x-flips: every image also mirrored (doubles the dataset)",
    augment="EDM's augmentation probability (x/y-flips, scaling, rotation, anisotropy, translation), "
            "told to the network by 9 augmentation labels; 0: off",
)
TYPES.update(workers=cli.in_range(int, 0, 64), augment=cli.in_range(float, 0.0, 1.0))
FREE_ON_RESUME += ("workers", "cache")


def parser(suppress_defaults: bool = False) -> argparse.ArgumentParser:
    """The CLI; with suppress_defaults only the options on the command line land in the namespace."""
    p = cli.Parser(prog="python -m relaydiff.train", description=__doc__.splitlines()[0],
                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for name, value in DEFAULTS.items():
        flag = "--" + name.replace("_", "-")
        default = argparse.SUPPRESS if suppress_defaults else value
        if name == "resume":
            p.add_argument(flag, action="store_true", default=default, help=HELP[name])
        elif isinstance(value, bool):
            p.add_argument(flag, type=_bool, default=default, metavar="BOOL", help=HELP[name])
        elif name == "stage":
            p.add_argument(flag, choices=["1", "2", "both"], default=default, help=HELP[name])
        elif name == "arch":
            p.add_argument(flag, choices=sorted(ARCH_PRESETS), default=default, help=HELP[name])
        else:
            p.add_argument(flag, type=TYPES.get(name, type(value)), default=default, help=HELP[name])
    # Not training options (not saved in config.json): they choose the others, or stop before training.
    p.add_argument("--preset", choices=sorted(PRESETS), default=argparse.SUPPRESS if suppress_defaults else None,
                   help="the RDM paper's recipe (docs/TRAINING.md); options given beside it override it")
    p.add_argument("--dry-run", action="store_true", default=argparse.SUPPRESS if suppress_defaults else False,
                   help="print the resolved options and each stage's network as JSON, build nothing, exit")
    return p


def explicit_options(argv=None) -> set[str]:
    """The options given on the command line (not merely defaulted)."""
    return set(vars(parser(suppress_defaults=True).parse_args(argv))) - {"preset", "dry_run"}


def _same(name, a, b) -> bool:
    if name in ("channel_mult1", "channel_mult2", "attn_res"):
        return parse_numbers(a) == parse_numbers(b)
    if name == "data" and a != "builtin":
        return os.path.normpath(str(a)) == os.path.normpath(str(b))
    return str(a) == str(b) if name == "stage" else a == b


def resume_options(opts: dict, explicit: set[str]) -> dict:
    """The options of a --resume: the run's saved ones, except the explicitly given free ones.

    Any other option given with a value other than the saved one is an error, as changing it would
    silently break exact resume.
    """
    # The options come from checkpoint.pt, the run's source of truth: it is written before
    # config.json (checkpoint.py), so a crash between the two leaves a stale config.json only.
    path = os.path.join(opts["outdir"], ckpt.CHECKPOINT_NAME)
    if not os.path.isfile(path):
        return opts  # training_loop says there is nothing to resume
    try:
        saved = ckpt.load_checkpoint(path)["config"]["train"]
        if not isinstance(saved, dict):
            raise TypeError(f"the saved options are a {type(saved).__name__}, not a dict")
    except (KeyError, TypeError) as exc:
        raise ValueError(f"--resume: cannot read the run's options from {path} ({exc})") from exc
    out = dict(opts)
    for name in DEFAULTS:
        if name in ("outdir", "resume") or name not in saved:
            continue  # the run is where it is now; older runs did not save every option
        if name not in explicit:
            out[name] = saved[name]
        elif name not in FREE_ON_RESUME and not _same(name, opts[name], saved[name]):
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"--resume: {flag} {opts[name]} given, but the run was started with {flag} "
                             f"{saved[name]} ({path}); a changed {flag} would not continue it exactly "
                             f"(leave it out, or train into a new --outdir)")
    return out


def dry_run(opts: dict, preset: str | None, not_applied: dict) -> dict:
    """The --dry-run document: the resolved options and, per stage, the network's config and parameter
    count, built on the meta device (no memory, no data read: the label count is the preset's)."""
    label_dim = PRESETS[preset]["classes"] if preset and opts["cond"] else 0
    world = max(int(os.environ.get("WORLD_SIZE", "1")), 1)  # under torchrun: the ranks it would train on
    check_scale_options(opts, opts["batch"] // world)  # the errors the run itself would stop with
    stages = {}
    for s, sc in stage_configs(opts, label_dim).items():
        with torch.device("meta"):
            net = build_network(sc["network"])
        stages[s] = {"parameters": sum(p.numel() for p in net.parameters()), **sc}
    return {"preset": preset, "options": opts, "not_applied": not_applied,
            "label_dim": label_dim, "label_dim_source": "the preset's dataset" if preset else
            "0 (--dry-run reads no data)", "stages": stages}


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        opts = vars(args)
        cli.check_outdir(args.outdir)
        preset, dry = opts.pop("preset"), opts.pop("dry_run")
        explicit = explicit_options(argv)
        not_applied = {}
        if preset:
            opts, not_applied = apply_preset(preset, opts, explicit, set(DEFAULTS))
            for key, value in not_applied.items():
                print(f"relaydiff.train: warning: --preset {preset} sets {key}={value}, but this relaydiff has "
                      f"no --{key.replace('_', '-')}: not applied", file=sys.stderr)
        if args.resume:  # a preset's values count as given: they must match the run's
            opts = resume_options(opts, explicit | (set(preset_options(preset)) & set(DEFAULTS) if preset else set()))
        if dry:
            print(json.dumps(dry_run(opts, preset, not_applied), indent=2))
            return 0
        result = training_loop(**opts)
    except (OSError, ValueError) as exc:  # bad data or files, a full disk, an unwritable --outdir
        print(f"relaydiff.train: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if result["interrupted"] is not None:
        return 128 + int(result["interrupted"])
    if result["rank"] == 0:
        print(f"done: {result['step']} steps in {args.outdir} (grid: {args.outdir}/grid.png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
