"""Checkpoints: state_dicts of tensors plus a JSON config, never pickled code.

On-disk layout of a run directory (`python -m relaydiff.train --outdir RUN`):

    RUN/config.json        the run's config (JSON): {"train": {CLI options}, "k": 4,
                           "stages": {"1": STAGE, "2": STAGE}} for the stages trained, where
                           STAGE = {"stage": 1|2, "resolution": int, "img_channels": 3,
                           "label_dim": int, "k": int, "network": {"class_name": "EDMPrecond",
                           "kwargs": {EDMPrecond's kwargs, "model_type": "SongUNet"|"DhariwalUNet",
                           the U-Net's kwargs}} (networks.build_network), "loss": {"class_name":
                           "EDMLoss"|"RelayLoss", "kwargs": {...}}}
    RUN/checkpoint.pt      the latest training state (torch.save of a dict; read with safe_load.load):
                           {"format": FORMAT, "step": int (steps finished), "config": config.json's text,
                            "stages": {"1": {"net": sd, "ema": sd, "optimizer": sd, "loss_scale": {}
                                       or the fp16 GradScaler's state}, "2": {...}},
                            "rng": {"torch": uint8 tensor, "cuda": [uint8 tensors]}}
    RUN/network-snapshot-KKKKKK.pt  kept network snapshots (KKKKKK: kimg): checkpoint.pt's format with
                           only "net" and "ema" per stage (relaydiff/train_scale.py save_snapshot)
    RUN/metrics.jsonl      one JSON object per logged step (step, loss per stage, lr, images/s, ...)
    RUN/grid-NNNNNN.png    preview grids (rows: real images, stage-1 samples, relay outputs); grid.png
                           is the final one.

Every file is written to a temporary name in RUN and moved into place with os.replace, so a crash
never leaves a partial checkpoint behind.
"""

from __future__ import annotations

import json
import os

import torch

from .fileio import append_line, atomic_write, save_json  # noqa: F401  (re-exported: RUN/ files)
from .importer import import_network  # noqa: F401  (re-exported: published EDM/RDM weights)
from .netspec import NETWORK_LIMITS, NETWORK_LIST_LIMITS, build_checked, check_network_family, check_stage_config  # noqa: F401
from .safe_load import FileRefused
from .safe_load import load as safe_load_file

FORMAT = "relaydiff-checkpoint-v1"
CHECKPOINT_NAME = "checkpoint.pt"
CONFIG_NAME = "config.json"


def save_checkpoint(run_dir: str, step: int, config: dict, stages: dict, rng: dict | None = None) -> str:
    """Write RUN/checkpoint.pt then RUN/config.json, each atomically. stages: {"1": {"net": sd, "ema": sd,
    "optimizer": sd}, ...} (state_dicts). Returns the checkpoint path."""
    os.makedirs(run_dir, exist_ok=True)
    text = json.dumps(config, indent=2)
    state = {"format": FORMAT, "step": int(step), "config": text,
             "stages": {str(s): d for s, d in stages.items()}, "rng": rng or {}}
    path = os.path.join(run_dir, CHECKPOINT_NAME)
    # checkpoint.pt first: it carries the config text and every loader reads the config from it, so a
    # crash before config.json is rewritten leaves the new pair's truth (and the old file on a failure).
    atomic_write(path, lambda f: torch.save(state, f))
    save_json(os.path.join(run_dir, CONFIG_NAME), config)
    return path


def resolve_path(path: str) -> str:
    """A run directory or a checkpoint file -> the checkpoint file."""
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    return path


def _to_device(obj, device, depth: int = 0):
    """obj's tensors moved to device (the checkpoint's nesting is a few levels; safe_load bounds it)."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return type(obj)((k, _to_device(v, device, depth + 1)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device, depth + 1) for v in obj)
    return obj


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """The checkpoint dict (see the layout above) with "config" parsed to a dict, read by
    safe_load (no code from the file runs); a ValueError naming the file otherwise."""
    path = resolve_path(path)
    try:
        state, fmt = safe_load_file(path, what="checkpoint")
    except FileRefused as exc:  # garbage, truncated, unsafe or unreadable: one line naming the file
        raise type(exc)(f"{path}: cannot load the checkpoint: {getattr(exc, 'reason', exc)}") from None
    if fmt != "zip" or not isinstance(state, dict) or state.get("format") != FORMAT:
        raise FileRefused(f"{path}: not a relaydiff checkpoint (format {FORMAT})")
    try:
        state["config"] = json.loads(state["config"])
    except (TypeError, KeyError, ValueError, RecursionError) as exc:
        raise FileRefused(f"{path}: the checkpoint's config is not JSON text ({type(exc).__name__})") from None
    if not isinstance(state["config"], dict) or not isinstance(state.get("stages"), dict) or \
            not all(isinstance(d, dict) for d in state["stages"].values()) or type(state.get("step")) is not int:
        raise FileRefused(f"{path}: not a relaydiff checkpoint (no config, step or stages)")
    if str(torch.device(map_location)) != "cpu":
        state = _to_device(state, map_location)
    return state


def load_network(path: str, stage: int, ema: bool = True, device="cpu"):
    """(net, stage_config): the stage's EDMPrecond in eval mode without gradients, its EMA weights
    unless ema=False, and the STAGE dict of config.json (resolution, k, label_dim, network, loss).
    The config is checked against sane limits and against the saved tensors before anything is
    allocated (build_checked)."""
    state = load_checkpoint(path)
    key = str(stage)
    if key not in state["stages"]:
        raise ValueError(f"{resolve_path(path)} has no stage {stage} (has {sorted(state['stages'])})")
    where = f"{resolve_path(path)} stage {stage}"
    try:
        stage_config = state["config"]["stages"][key]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{where}: the checkpoint's config has no stage {stage}") from exc
    check_stage_config(stage_config, where)
    net = build_checked(stage_config["network"], state["stages"][key]["ema" if ema else "net"], where, device)
    return net.eval().requires_grad_(False), stage_config
