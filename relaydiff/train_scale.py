"""The scale features of relaydiff.train (docs/TRAINING.md): checks of the mixed-precision and
accumulation options, --transfer, the kept network snapshots, peak memory."""

from __future__ import annotations

import json
import os
import resource

import torch

from . import checkpoint as ckpt


def peak_memory_gib(device) -> float:
    """Peak memory so far in GiB: the CUDA allocator's peak on a GPU, else the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


SNAPSHOT_NAME = "network-snapshot-{kimg:06d}.pt"


def save_snapshot(run_dir, step, nimg, config, nets, emas) -> str:
    """RUN/network-snapshot-KKKKKK.pt (KKKKKK: thousands of images seen, EDM's naming): the networks
    and their EMAs at this point, kept beside the resumable checkpoint.pt (which is replaced at each
    save). The checkpoint format without optimizer state: checkpoint.load_network reads it. Saves
    less than 1 kimg apart share a name, the later replacing the earlier."""
    path = os.path.join(run_dir, SNAPSHOT_NAME.format(kimg=nimg // 1000))
    state = {"format": ckpt.FORMAT, "step": int(step), "config": json.dumps(config, indent=2),
             "stages": {s: {"net": nets[s].state_dict(), "ema": emas[s].state_dict()} for s in nets}, "rng": {}}
    ckpt.atomic_write(path, lambda f: torch.save(state, f))
    return path


def transfer_weights(path: str, nets: dict) -> None:
    """--transfer: start nets from trained weights (the optimizer starts afresh). path: a relaydiff run
    or checkpoint/snapshot (each stage's EMA), or a released EDM .pkl / RDM .pt read by the safe
    importer (checkpoint.import_network), which holds one network: then one stage must be trained."""
    relaydiff_run = os.path.isdir(path) or path.endswith(".pt") and _is_relaydiff_checkpoint(path)
    for s, net in nets.items():
        if relaydiff_run:
            source, _ = ckpt.load_network(path, stage=int(s))
        elif len(nets) > 1:
            raise ValueError(f"--transfer {path}: a released network is one stage; pass --stage 1 or --stage 2")
        else:
            source, _ = ckpt.import_network(path)
        want = {key: tuple(t.shape) for key, t in net.state_dict().items()}
        have = {key: tuple(t.shape) for key, t in source.state_dict().items()}
        if want != have:
            diff = sorted(key for key in want.keys() | have.keys() if want.get(key) != have.get(key))
            raise ValueError(f"--transfer {path}: its stage-{s} network does not have the shape of the one the "
                             f"options describe ({len(diff)} tensors differ, e.g. {diff[0]}: {have.get(diff[0])} "
                             f"there, {want.get(diff[0])} here); give the options it was trained with")
        with torch.no_grad():
            for key, value in source.state_dict().items():
                net.state_dict()[key].copy_(value)


def _is_relaydiff_checkpoint(path: str) -> bool:
    try:
        ckpt.load_checkpoint(path)
    except ValueError:
        return False  # not ours (or damaged): the released-file importer says which
    return True


def check_scale_options(opts: dict, batch_local: int) -> int:
    """The per-round batch (--batch-gpu; 0: the whole per-rank batch), after checking the options of
    mixed precision and accumulation."""
    if opts["fp16"] and opts["bf16"]:
        raise ValueError("--fp16 and --bf16 exclude each other: choose one")
    if str(opts["ls"]) != "dynamic":
        try:
            ok = float(opts["ls"]) > 0 and float(opts["ls"]) < float("inf")
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"--ls must be 'dynamic' or a positive number, not {opts['ls']!r}")
    batch_gpu = min(opts["batch_gpu"] or batch_local, batch_local)  # as EDM: at most the per-rank batch
    if batch_gpu < 1 or batch_local % batch_gpu:
        raise ValueError(f"--batch-gpu {opts['batch_gpu']} does not divide the per-rank batch {batch_local} "
                         f"(--batch {opts['batch']} over {opts['batch'] // batch_local} rank(s))")
    return batch_gpu
