"""Checkpoints: state_dicts of tensors plus a JSON config, never pickled code.

On-disk layout of a run directory (`python -m relaydiff.train --outdir RUN`):

    RUN/config.json        the run's config (JSON): {"train": {CLI options}, "k": 4,
                           "stages": {"1": STAGE, "2": STAGE}} for the stages trained, where
                           STAGE = {"stage": 1|2, "resolution": int, "img_channels": 3,
                           "label_dim": int, "k": int, "network": {"class_name": "EDMPrecond",
                           "kwargs": {...}}, "loss": {"class_name": "EDMLoss"|"RelayLoss", "kwargs": {...}}}
    RUN/checkpoint.pt      the latest training state (torch.save of a dict; load with weights_only=True):
                           {"format": FORMAT, "step": int (steps finished), "config": config.json's text,
                            "stages": {"1": {"net": sd, "ema": sd, "optimizer": sd}, "2": {...}},
                            "rng": {"torch": uint8 tensor, "cuda": [uint8 tensors]}}
    RUN/metrics.jsonl      one JSON object per logged step (step, loss per stage, lr, images/s, ...)
    RUN/grid-NNNNNN.png    preview grids (rows: real images, stage-1 samples, relay outputs); grid.png
                           is the final one.

Every file is written to a temporary name in RUN and moved into place with os.replace, so a crash
never leaves a partial checkpoint behind.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile

import torch

from .networks import build_network

FORMAT = "relaydiff-checkpoint-v1"
CHECKPOINT_NAME = "checkpoint.pt"
CONFIG_NAME = "config.json"


def _umask_mode() -> int:
    """The mode open() gives a new file (0o666 less the umask); os.umask only reads by setting."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _atomic_write(path: str, write) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        # mkstemp makes the file 0600; the renamed file should get the usual mode, as open() would.
        os.chmod(tmp, _umask_mode())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_json(path: str, obj) -> None:
    _atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2).encode()))


def save_checkpoint(run_dir: str, step: int, config: dict, stages: dict, rng: dict | None = None) -> str:
    """Write RUN/config.json and RUN/checkpoint.pt atomically. stages: {"1": {"net": sd, "ema": sd,
    "optimizer": sd}, ...} (state_dicts). Returns the checkpoint path."""
    os.makedirs(run_dir, exist_ok=True)
    text = json.dumps(config, indent=2)
    save_json(os.path.join(run_dir, CONFIG_NAME), config)
    state = {"format": FORMAT, "step": int(step), "config": text,
             "stages": {str(s): d for s, d in stages.items()}, "rng": rng or {}}
    path = os.path.join(run_dir, CHECKPOINT_NAME)
    _atomic_write(path, lambda f: torch.save(state, f))
    return path


def resolve_path(path: str) -> str:
    """A run directory or a checkpoint file -> the checkpoint file."""
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    return path


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """The checkpoint dict (see the layout above) with "config" parsed to a dict."""
    path = resolve_path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError, OSError, ValueError) as exc:
        # Garbage, truncated or unreadable: name the file instead of torch.load's traceback.
        why = exc.strerror if isinstance(exc, PermissionError) else f"corrupt or truncated ({type(exc).__name__})"
        raise ValueError(f"{path}: cannot load the checkpoint: {why}") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path}: not a relaydiff checkpoint (format {FORMAT})")
    state["config"] = json.loads(state["config"])
    return state


def load_network(path: str, stage: int, ema: bool = True, device="cpu"):
    """(net, stage_config): the stage's EDMPrecond in eval mode without gradients, its EMA weights
    unless ema=False, and the STAGE dict of config.json (resolution, k, label_dim, network, loss)."""
    state = load_checkpoint(path)
    key = str(stage)
    if key not in state["stages"]:
        raise ValueError(f"{resolve_path(path)} has no stage {stage} (has {sorted(state['stages'])})")
    stage_config = state["config"]["stages"][key]
    net = build_network(stage_config["network"])
    net.load_state_dict(state["stages"][key]["ema" if ema else "net"])
    return net.eval().requires_grad_(False).to(device), stage_config
