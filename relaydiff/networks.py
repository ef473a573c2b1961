"""EDM's U-Nets and preconditioners: relaydiff's one network family.

`SongUNet` (DDPM++ / NCSN++) and `DhariwalUNet` (ADM) with the preconditioning wrappers `EDMPrecond`,
`VPPrecond`, `VEPrecond` and `iDDPMPrecond`, in the structure of NVlabs/edm `training/networks.py`:
the same class names, constructor arguments and defaults, module and state_dict names, initialisation
and order of operations, so weights from EDM's `.pkl` snapshots and RDM's `.pt` files (THUDM/
RelayDiffusion, whose `training/networks.py` forks EDM's) load here and give the same outputs.
The building blocks live in relaydiff/layers.py, the U-Nets in relaydiff/unets.py and the
preconditioners in relaydiff/preconditioners.py; all are re-exported here, so every class of EDM's
file is importable as `relaydiff.networks.<ClassName>`. This module adds the JSON specs and their
construction (ARCH_PRESETS, build_network). docs/NETWORKS.md lists the state_dict key
patterns per option and every difference from EDM's and RDM's files.

Denoiser call: `net(x, sigma, class_labels=None, force_fp32=False, **model_kwargs) -> D(x; sigma)`;
model call: `model(x, noise_labels, class_labels, augment_labels=None) -> F(x)`. relaydiff's own
runs rebuild networks from a JSON-able spec (`build_network`), so checkpoints never pickle code.
"""

from __future__ import annotations

from torch import nn

from .layers import (
    AttentionOp,
    Conv2d,
    FourierEmbedding,
    GroupNorm,
    Linear,
    PositionalEmbedding,
    UNetBlock,
    weight_init,
)
from .preconditioners import EDMPrecond, VEPrecond, VPPrecond, edm_coefficients, iDDPMPrecond
from .unets import MODEL_TYPES, DhariwalUNet, SongUNet

__all__ = ["weight_init", "Linear", "Conv2d", "GroupNorm", "AttentionOp", "UNetBlock", "PositionalEmbedding",
           "FourierEmbedding", "SongUNet", "DhariwalUNet", "VPPrecond", "VEPrecond", "iDDPMPrecond", "EDMPrecond",
           "edm_coefficients", "MODEL_TYPES", "ARCH_PRESETS", "PRECOND_CLASSES", "build_network",
           "refuse_old_network_family", "OLD_FAMILY_MESSAGE"]


# EDM's train.py --arch presets (the architecture-defining kwargs; EDM's train.py also sets model_channels
# 128/128/192 and channel_mult [2,2,2]/[2,2,2]/[1,2,3,4], which relaydiff's training takes from its options).
ARCH_PRESETS = {
    "ddpmpp": dict(model_type="SongUNet", embedding_type="positional", encoder_type="standard",
                   decoder_type="standard", channel_mult_noise=1, resample_filter=[1, 1]),
    "ncsnpp": dict(model_type="SongUNet", embedding_type="fourier", encoder_type="residual",
                   decoder_type="standard", channel_mult_noise=2, resample_filter=[1, 3, 3, 1]),
    "adm": dict(model_type="DhariwalUNet"),
}

# class_name of a network spec -> its class (importer.PRECONDS maps the same names to their U-Net).
PRECOND_CLASSES = {"EDMPrecond": EDMPrecond, "VPPrecond": VPPrecond, "VEPrecond": VEPrecond,
                   "iDDPMPrecond": iDDPMPrecond}

OLD_FAMILY_MESSAGE = ("relaydiff's network family changed to EDM's (SongUNet / DhariwalUNet inside EDMPrecond, "
                      "as in NVlabs/edm); this {what} is from an older relaydiff whose UNet no longer exists, so "
                      "the run must be retrained (python -m relaydiff.train --arch ...)")

# kwargs only the old relaydiff UNet took (EDM's U-Nets have none of them).
_OLD_ONLY_KWARGS = ("num_heads",)


def refuse_old_network_family(spec, what: str = "network config") -> None:
    """ValueError (OLD_FAMILY_MESSAGE) for a spec written by an older relaydiff: such configs name no
    model_type (relaydiff always writes it now) or pass the old UNet's kwargs."""
    kwargs = spec.get("kwargs") if isinstance(spec, dict) else None
    if isinstance(kwargs, dict) and ("model_type" not in kwargs or any(k in kwargs for k in _OLD_ONLY_KWARGS)):
        raise ValueError(OLD_FAMILY_MESSAGE.format(what=what))


def build_network(spec: dict) -> nn.Module:
    """Rebuild a network from its JSON config {'class_name': 'EDMPrecond'|'VPPrecond'|'VEPrecond'|
    'iDDPMPrecond', 'kwargs': {... 'model_type': 'SongUNet'|'DhariwalUNet', ...}}; lists may stand for
    tuples (channel_mult, attn_resolutions, resample_filter). Unknown classes, model types or kwargs
    are a ValueError / TypeError naming them; a config of the old relaydiff UNet is refused
    (refuse_old_network_family)."""
    if not isinstance(spec, dict) or not isinstance(spec.get("kwargs"), dict):
        raise ValueError(f"a network spec is {{'class_name': ..., 'kwargs': {{...}}}}, not {spec!r}")
    name = spec.get("class_name", "EDMPrecond")
    if not isinstance(name, str) or name not in PRECOND_CLASSES:
        raise ValueError(f"unknown network class {name!r} (one of {sorted(PRECOND_CLASSES)})")
    refuse_old_network_family(spec)
    return PRECOND_CLASSES[name](**spec["kwargs"])
