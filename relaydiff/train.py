"""Train a two-stage Relay Diffusion model (RDM): `python -m relaydiff.train [options]`.

With no options it trains both stages on the built-in dataset (crops of scikit-image's sample
photographs): stage 1 at 8x8, the relay stage at 32x32, in a few minutes on a laptop CPU, and
writes RUN/checkpoint.pt, RUN/metrics.jsonl and RUN/grid.png (see relaydiff/checkpoint.py).

Data parallel: `torchrun --nproc_per_node=N -m relaydiff.train ...` (gloo on CPU, nccl on CUDA);
--batch is the global batch and must be divisible by N.
"""

from __future__ import annotations

import argparse
import sys

import torch

from .training_loop import DEFAULTS, training_loop


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
    resume="continue the run in --outdir from its checkpoint",
    cond="class-conditional training when the data has labels",
    label_dropout="label dropout probability (for classifier-free guidance)",
    channels="UNet base channels", channel_mult1="stage-1 channel multipliers",
    channel_mult2="stage-2 channel multipliers", attn_res="resolutions with self-attention",
    num_blocks="residual blocks per resolution", dropout="dropout probability",
    embedding="noise embedding: positional or fourier",
    blur_sigma_max="relay stage maximum blur sigma", block_scale="block noise scale (beta)",
    prob_length="relay schedule prob_length (L)", log_every="metrics.jsonl interval (steps)",
    snap_every="checkpoint interval (steps)", grid_every="preview grid interval (steps)",
    preview_steps="EDM sampler steps for the preview grid", progress="show the progress bar",
    threads="torch CPU threads per process (0: PyTorch's default); the small default models run "
            "fastest on one, and a shared machine thrashes with more",
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m relaydiff.train", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for name, default in DEFAULTS.items():
        flag = "--" + name.replace("_", "-")
        if name == "resume":
            p.add_argument(flag, action="store_true", help=HELP[name])
        elif isinstance(default, bool):
            p.add_argument(flag, type=_bool, default=default, metavar="BOOL", help=HELP[name])
        elif name == "stage":
            p.add_argument(flag, choices=["1", "2", "both"], default=default, help=HELP[name])
        elif name == "embedding":
            p.add_argument(flag, choices=["positional", "fourier"], default=default, help=HELP[name])
        else:
            p.add_argument(flag, type=type(default), default=default, help=HELP[name])
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        result = training_loop(**vars(args))
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
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
