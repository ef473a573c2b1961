"""The RDM paper's training recipes as `python -m relaydiff.train --preset NAME` (docs/TRAINING.md).

Each preset trains one stage, reading the dataset at the final resolution: a stage-1 preset trains at
resolution / k on the images average-pooled by k (the box downsample the relay stage starts from).
Sources: "T4"/"T5" are Tables 4/5 of the paper (Teng et al., ICLR 2024, Appendix B and C.1);
"train.py" is the released THUDM/RelayDiffusion train.py (EDM's, plus --precond blur), whose ADM
settings are EDM's: 192 channels, num_blocks 3 below 256 px; 256 channels, [1,1,2,2,4,4],
num_blocks 2 at 256 px; "EDM" is NVlabs/edm training_loop.py's defaults.
"""

from __future__ import annotations

import math

LR_RAMPUP_KIMG = 10000  # EDM's training_loop.py default (train.py does not change it)

# Values every preset shares, and where each comes from.
COMMON = dict(arch="adm", lr=1e-4, attn_res="32,16,8", ema_halflife_kimg=500.0, ema_rampup=0.05, grad_clip=0.0,
              label_dropout=0.0, block_scale=0.15, prob_length=0.93, channels_last=True)
COMMON_SOURCES = dict(arch="T4 (ADM, Dhariwal & Nichol), train.py --arch adm", lr="T4/T5 1e-4",
                      attn_res="T4/T5 32,16,8", ema_halflife_kimg="train.py --ema 0.5 (Mimg)",
                      ema_rampup="EDM ema_rampup_ratio 0.05", grad_clip="EDM: no clipping",
                      label_dropout="train.py: none", block_scale="train.py --block-scale 0.15",
                      prob_length="train.py --prob-length 0.93",
                      channels_last="relaydiff: faster convolutions on CUDA, same math")

STAGE1_ADM64 = dict(stage="1", k=4, resolution=256, channels=192, channel_mult1="1,2,3,4", num_blocks=3)
STAGE2_ADM256 = dict(stage="2", k=4, resolution=256, channels=256, channel_mult2="1,1,2,2,4,4", num_blocks=2)

# name -> options (beside COMMON), the paper's parameter count in millions, the images trained (M),
# the classes of the data (used by --dry-run, which reads no data) and each value's source.
PRESETS = {
    "imagenet-64": dict(
        options=dict(**STAGE1_ADM64, dropout=0.1, batch=4096, fp16=True, cond=True),
        params_m=295, mimg=2500, classes=1000,
        sources=dict(channels="T4 192", channel_mult1="T4 1,2,3,4", num_blocks="train.py (EDM's ADM) 3",
                     dropout="T4 0.1", batch="T4 4096", fp16="T4 FP16", cond="class-conditional ImageNet")),
    "imagenet-64-256": dict(
        options=dict(**STAGE2_ADM256, dropout=0.1, blur_sigma_max=3.0, batch=4096, fp16=True, cond=True),
        params_m=553, mimg=1000, classes=1000,
        sources=dict(channels="T4 256", channel_mult2="T4 1,1,2,2,4,4", num_blocks="train.py ADM 256 px: 2",
                     dropout="T4 0.1", blur_sigma_max="T4 3.0", batch="T4 4096", fp16="T4 FP16",
                     cond="class-conditional ImageNet")),
    "celebahq-64": dict(
        options=dict(**STAGE1_ADM64, dropout=0.15, augment=0.2, batch=1024, fp16=False, cond=False),
        params_m=295, mimg=70, classes=0,
        sources=dict(channels="T4 192", channel_mult1="T4 1,2,3,4", num_blocks="train.py (EDM's ADM) 3",
                     dropout="T4 0.15 (B.1)", augment="T4 0.2", batch="T4 1024", fp16="T4: no FP16",
                     cond="unconditional")),
    "celebahq-64-256": dict(
        options=dict(**STAGE2_ADM256, dropout=0.2, augment=0.2, blur_sigma_max=2.0, batch=1024, fp16=True,
                     cond=False),
        params_m=553, mimg=40, classes=0,
        sources=dict(channels="T4 256", channel_mult2="T4 1,1,2,2,4,4", num_blocks="train.py ADM 256 px: 2",
                     dropout="T4 0.2 (B.1)", augment="T4 0.2", blur_sigma_max="T4 2.0", batch="T4 1024",
                     fp16="T4 FP16", cond="unconditional")),
    "celebahq-256-512": dict(
        options=dict(stage="2", k=2, resolution=512, channels=256, channel_mult2="0.5,1,1,2,2,4,4", num_blocks=2,
                     dropout=0.2, augment=0.2, blur_sigma_max=1.25, batch=256, fp16=True, cond=False),
        params_m=558, mimg=15, classes=0,
        sources=dict(k="T5 256->512", channels="T5 256", channel_mult2="T5 0.5,1,1,2,2,4,4",
                     num_blocks="C.1: as the 64->256 model", dropout="T5 0.2", augment="T5 0.2",
                     blur_sigma_max="T5 1.25", batch="T5 256", fp16="T5 FP16", cond="unconditional")),
    "celebahq-256-1024": dict(
        options=dict(stage="2", k=4, resolution=1024, channels=256, channel_mult2="0.5,0.5,1,1,2,2,4,4",
                     num_blocks=2, dropout=0.1, augment=0.2, blur_sigma_max=2.0, batch=256, fp16=True, cond=False),
        params_m=562, mimg=11, classes=0,
        sources=dict(k="T5 256->1024", channels="T5 256", channel_mult2="T5 0.5,0.5,1,1,2,2,4,4",
                     num_blocks="C.1: as the 64->256 model", dropout="T5 0.1", augment="T5 0.2",
                     blur_sigma_max="T5 2.0", batch="T5 256", fp16="T5 FP16", cond="unconditional")),
}


def preset_options(name: str, batch: int | None = None) -> dict:
    """The options of a preset: COMMON, its own, and --steps / --lr-rampup for the paper's training
    images and EDM's warm-up images at its batch (or at `batch`, when one is given beside it)."""
    if name not in PRESETS:
        raise ValueError(f"--preset must be one of {sorted(PRESETS)}, not {name!r}")
    p = PRESETS[name]
    out = {**COMMON, **p["options"]}
    out["batch"] = batch or out["batch"]
    out["steps"] = math.ceil(p["mimg"] * 1e6 / out["batch"])
    out["lr_rampup"] = math.ceil(LR_RAMPUP_KIMG * 1000 / out["batch"])
    return out


def preset_sources(name: str) -> dict:
    """Where each of the preset's values comes from (the table in docs/TRAINING.md)."""
    p = PRESETS[name]
    out = {**COMMON_SOURCES, "stage": "stage 1" if p["options"]["stage"] == "1" else "relay stage",
           "k": "T4: 64 -> 256", "resolution": "the data's resolution (stage 1 trains at resolution / k)",
           **p["sources"], "steps": f"T4/T5 training images {p['mimg']}M / batch",
           "lr_rampup": f"EDM lr_rampup_kimg {LR_RAMPUP_KIMG} / batch"}
    return out


def apply_preset(name: str, opts: dict, explicit: set[str], known: set[str]) -> tuple[dict, dict]:
    """(options, not applied): opts with the preset's values for every option not given explicitly.
    Preset values of options this relaydiff does not have (known: its option names) are returned
    apart, so the caller can say so instead of dropping them silently."""
    values = preset_options(name, opts["batch"] if "batch" in explicit else None)
    out, missing = dict(opts), {}
    for key, value in values.items():
        if key not in known:
            missing[key] = value
        elif key not in explicit:
            out[key] = value
    return out, missing
