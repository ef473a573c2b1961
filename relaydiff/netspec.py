"""Network specs and their checked construction, for our runs (checkpoint.py) and for published weights
(importer.py) alike.

A spec is networks.build_network's JSON: {"class_name": "EDMPrecond", "kwargs": {the wrapper's kwargs,
"model_type": "SongUNet"|"DhariwalUNet", the U-Net's kwargs}}; a STAGE dict (checkpoint.py's layout)
holds one under "network". `check_stage_config` checks types and sane limits before any tensor is
made; `build_checked` builds on the meta device, compares every tensor's name and shape with the
weights, and only then allocates and loads. This module imports no run or file-format module, so
both loaders build on it without importing each other.
"""

from __future__ import annotations

import re

import torch

from .networks import MODEL_TYPES, OLD_FAMILY_MESSAGE, build_network, refuse_old_network_family
from .safe_load import check_finite, check_finite_number

# Sane upper limits for a loaded network config, checked before anything is built: a crafted or
# damaged config.json must not make a loader allocate without bound. Far above any model this
# project trains (the defaults are 16 channels, 32 px) and EDM's and RDM's released models.
NETWORK_LIMITS = dict(img_resolution=8192, img_channels=64, label_dim=1_000_000, augment_dim=1024,
                      model_channels=8192, channel_mult_emb=64, channel_mult_noise=64, num_blocks=64,
                      channels_per_head=8192)
# List-valued kwargs: (largest entry, smallest entry).
NETWORK_LIST_LIMITS = dict(channel_mult=(64, 1), attn_resolutions=(8192, 1), resample_filter=(1024, 0))
MAX_LEVELS, MAX_MULT = 16, 64


def _check_int(value, field: str, low: int, high: int, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{where}: config field {field} must be an int in [{low}, {high}], got {value!r}")
    return value


def check_stage_config(stage_config, where: str) -> dict:
    """Types and sane limits of a STAGE dict (checkpoint.py's RUN/config.json layout), before any tensor is made."""
    if not isinstance(stage_config, dict) or not isinstance(stage_config.get("network"), dict) \
            or not isinstance(stage_config["network"].get("kwargs"), dict):
        raise ValueError(f"{where}: stage config has no network.kwargs dict")
    check_network_family(stage_config["network"], where=where)
    kw = stage_config["network"]["kwargs"]
    if not isinstance(kw["model_type"], str) or kw["model_type"] not in MODEL_TYPES:
        raise ValueError(f"{where}: config field network.kwargs.model_type must be one of {sorted(MODEL_TYPES)}, "
                         f"got {kw['model_type']!r}")
    for field, high in NETWORK_LIMITS.items():
        if field in kw or field == "img_resolution":
            low = 0 if field in ("label_dim", "augment_dim") else 1
            _check_int(kw.get(field), f"network.kwargs.{field}", low, high, where)
    for field, (high, low) in NETWORK_LIST_LIMITS.items():
        values = kw.get(field, [])
        if not isinstance(values, (list, tuple)) or len(values) > MAX_LEVELS:
            raise ValueError(f"{where}: config field network.kwargs.{field} must be a list of at most "
                             f"{MAX_LEVELS} ints, got {values!r}")
        for v in values:
            mc = kw.get("model_channels")
            if field == "channel_mult" and isinstance(v, float) and 0 < v < 1 and isinstance(mc, int) \
                    and float(v * mc).is_integer():
                continue  # RDM's 512/1024 stages (paper Table 5) use 0.5: fine while the channel count is whole
            _check_int(v, f"network.kwargs.{field}", low, high, where)
    for field in ("sigma_data", "sigma_min", "sigma_max", "dropout", "label_dropout", "M", "C_1", "C_2", "beta_d",
                  "beta_min", "epsilon_t"):
        if field in kw:
            check_finite_number(kw[field], where, f"network.kwargs.{field}", allow_inf=field == "sigma_max")
    if "sigma_data" in kw and not kw["sigma_data"] > 0:
        raise ValueError(f"{where}: config field network.kwargs.sigma_data must be > 0, got {kw['sigma_data']!r}")
    loss_kw = (stage_config.get("loss") or {}).get("kwargs") if isinstance(stage_config.get("loss"), dict) else None
    for field, value in (loss_kw or {}).items() if isinstance(loss_kw, dict) else ():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            check_finite_number(value, where, f"loss.kwargs.{field}")
    res = kw["img_resolution"]
    for field in ("resolution", "img_channels", "label_dim"):
        mine = "img_resolution" if field == "resolution" else field
        if field in stage_config and mine in kw and stage_config[field] != kw[mine]:
            raise ValueError(f"{where}: config field {field}={stage_config[field]!r} differs from "
                             f"network.kwargs.{mine}={kw[mine]!r}")
    if "k" in stage_config:
        k = _check_int(stage_config["k"], "k", 1, res, where)
        if res % k:
            raise ValueError(f"{where}: config field k={k} does not divide the resolution {res}")
    return stage_config


# The U-Nets' first convolution (model.enc.<res>x<res>_conv.weight): [model_channels * mult, img_channels, 3, 3].
_FIRST_CONV = re.compile(r"model\.enc\.\d+x\d+_conv\.weight")


def _mismatch_field(key: str, want: tuple, have: tuple) -> str:
    """The config field that sets a mismatched tensor's size, for the tensors that name one alone."""
    if _FIRST_CONV.fullmatch(key) and want[1:2] == have[1:2]:
        return "network.kwargs.model_channels"
    if _FIRST_CONV.fullmatch(key):
        return "network.kwargs.img_channels"
    if key.endswith("map_label.weight") and want[1:] != have[1:]:
        return "network.kwargs.label_dim"
    return ("network.kwargs (model_type, model_channels, channel_mult, num_blocks, attn_resolutions, label_dim, "
            "encoder_type, decoder_type, ...)")


# State_dict keys only the old relaydiff UNet had (EDM's U-Nets name these enc.<res>x<res>_conv, out_conv, ...).
_OLD_KEYS = re.compile(r"model\.(conv_in|conv_out|norm_out|mid)\.")


def check_network_family(spec, where: str) -> None:
    """ValueError naming `where` for a network config of the old relaydiff UNet (see networks.py)."""
    try:
        refuse_old_network_family(spec, what="config")
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def build_checked(spec: dict, state_dict, where: str, device="cpu"):
    """build_network(spec) with weights from state_dict, having first built it on the meta device (no
    memory) and compared every tensor's name and shape with the state_dict's: a config that does not
    describe its weights is an error naming the config field, never a huge allocation. Configs and
    weights of the old relaydiff UNet are refused (OLD_FAMILY_MESSAGE)."""
    check_network_family(spec, where=where)
    if isinstance(state_dict, dict) and any(_OLD_KEYS.match(str(key)) for key in state_dict):
        raise ValueError(f"{where}: " + OLD_FAMILY_MESSAGE.format(what="checkpoint's weights"))
    try:
        with torch.device("meta"):
            net = build_network(spec)
    except (TypeError, ValueError) as exc:  # an unknown or ill-typed kwarg, an unknown class
        raise ValueError(f"{where}: config field network: {exc}") from exc
    want = {key: tuple(t.shape) for key, t in net.state_dict().items()}
    have = {key: tuple(t.shape) for key, t in state_dict.items()} if isinstance(state_dict, dict) else {}
    if want.keys() != have.keys():
        extra, missing = sorted(have.keys() - want.keys()), sorted(want.keys() - have.keys())
        raise ValueError(f"{where}: the config's network does not match the saved weights (config field "
                         f"{_mismatch_field('', (), ())}): missing {missing[:3]}, unexpected {extra[:3]}")
    # The first conv first: its shape names model_channels or img_channels alone.
    for key in sorted(want, key=lambda name: not _FIRST_CONV.fullmatch(name)):
        shape = want[key]
        if shape != have[key]:
            raise ValueError(f"{where}: config field {_mismatch_field(key, shape, have[key])} does not match "
                             f"the saved weights: {key} is {list(have[key])} in the checkpoint but "
                             f"{list(shape)} for the config")
    check_finite(state_dict, where)  # NaN weights would sample black images with exit 0
    net = net.to_empty(device=device)  # every tensor is then overwritten by the strict load below
    net.load_state_dict(state_dict, strict=True)
    return net
