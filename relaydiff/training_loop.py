"""Training loop for both RDM stages, after NVlabs/edm `training/training_loop.py`.

Stage 1 is a plain EDM model at resolution / k trained with EDMLoss; stage 2 is the relay stage at
full resolution trained with RelayLoss. With stage 'both' each step trains both nets on the same
global batch (stage 1 sees it average-pooled by k).

Determinism: everything random in a step is a function of (seed, step): the batch indices
(`dataset.global_indices`), the per-image generator seeds (`image_seeds`, keyed by the image's
position in the *global* batch, so the rank count does not change the noise), label dropout drawn
from those same per-image streams (`loss.drop_labels`), and the torch RNG used by --dropout
(re-seeded each step from (seed, step, rank); the one draw that depends on the rank count). A
resumed run therefore reproduces an uninterrupted one exactly.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import signal
import threading
import time

import torch
import torch.nn.functional as F
import tqdm

from . import checkpoint as ckpt
from . import distributed as dist_util
from . import sampling
from .augment import AUGMENT_DIM
from .dataset import TrainingBatches, open_dataset
from .images import write_row_grid
from .loss import EDMLoss, RelayLoss, drop_labels, take_label_dropout
from .networks import ARCH_PRESETS, build_network
from .train_scale import check_scale_options, peak_memory_gib, save_snapshot, transfer_weights
from .train_step import LossScale, ema_update, mix_seed, optimizer_step, parse_numbers

DEFAULTS = dict(
    outdir="runs/relaydiff", data="builtin", resolution=32, k=4, stage="both", steps=600, batch=16,
    lr=2e-3, lr_rampup=50, grad_clip=1.0, ema_halflife_kimg=500.0, ema_rampup=0.05, bf16=False,
    seed=0, device="auto", resume=False, cond=True, label_dropout=0.1, arch="ddpmpp", channels=16,
    channel_mult1="1,2", channel_mult2="1,2,2", attn_res="8", num_blocks=1, dropout=0.0, blur_sigma_max=3.0,
    block_scale=0.15, prob_length=0.93, log_every=10,
    snap_every=200, grid_every=200, preview_steps=18, progress=True, threads=1,
    workers=0, cache=False, xflip=False, augment=0.0,  # the data pipeline (relaydiff.dataset)
    batch_gpu=0, fp16=False, ls="dynamic", compile=False, channels_last=False, transfer="",
)


def image_seeds(seed: int, step: int, positions, stage: int, device) -> torch.Tensor:
    """Generator seed of each image from (seed, step, position in the global batch, stage)."""
    return torch.tensor([mix_seed(seed, step, p, stage) for p in positions], dtype=torch.int64, device=device)


def stage_configs(opts: dict, label_dim: int) -> dict:
    """The STAGE entries of config.json (see checkpoint.py) for the stages to train."""
    k, res = opts["k"], opts["resolution"]
    if res % k:
        raise ValueError(f"--resolution {res} is not a multiple of k={k}")
    wanted = {"1": [1], "2": [2], "both": [1, 2]}.get(str(opts["stage"]))
    if wanted is None:
        raise ValueError(f"--stage must be 1, 2 or both, not {opts['stage']!r}")
    out = {}
    for s in wanted:
        stage_res = res // k if s == 1 else res
        mult = parse_numbers(opts[f"channel_mult{s}"])
        if stage_res % (2 ** (len(mult) - 1)):
            raise ValueError(f"stage {s} resolution {stage_res} is not divisible by 2^{len(mult) - 1} "
                             f"(--channel-mult{s} {opts[f'channel_mult{s}']} has {len(mult)} levels)")
        if opts["arch"] not in ARCH_PRESETS:
            raise ValueError(f"--arch must be one of {sorted(ARCH_PRESETS)}, not {opts['arch']!r}")
        # EDM's preset for --arch, scaled down by --channels, --channel-multN, --num-blocks, --attn-res.
        net = dict(img_resolution=stage_res, img_channels=3, label_dim=label_dim, sigma_data=0.5,
                   **ARCH_PRESETS[opts["arch"]], model_channels=opts["channels"], channel_mult=mult,
                   num_blocks=opts["num_blocks"], attn_resolutions=parse_numbers(opts["attn_res"]),
                   dropout=opts["dropout"],
                   label_dropout=opts["label_dropout"] if label_dim else 0.0)
        if opts["augment"]:  # EDM's 9 augmentation labels (relaydiff.augment) condition the network
            net["augment_dim"] = AUGMENT_DIM
        if net["model_type"] == "DhariwalUNet" and opts["channels"] < 64:
            net["channels_per_head"] = opts["channels"]  # EDM's 64 would leave narrow blocks without attention
        if s == 1:
            loss = {"class_name": "EDMLoss", "kwargs": dict(P_mean=-1.2, P_std=1.2, sigma_data=0.5)}
        else:
            loss = {"class_name": "RelayLoss", "kwargs": dict(
                k=k, blur_sigma_max=opts["blur_sigma_max"], block_scale=opts["block_scale"],
                prob_length=opts["prob_length"])}
        out[str(s)] = dict(stage=s, resolution=stage_res, img_channels=3, label_dim=label_dim, k=k,
                           network={"class_name": "EDMPrecond", "kwargs": net}, loss=loss)
    return out


def _build_loss(spec: dict):
    cls = {"EDMLoss": EDMLoss, "RelayLoss": RelayLoss}[spec["class_name"]]
    return cls(**spec["kwargs"])


# ---------------------------------------------------------------------------------------- preview


@torch.no_grad()
def _preview_samples(net1, net2, labels, x_low, seed, opts):
    """(stage-1 samples or None, relay outputs or None) in [-1, 1] for the preview grid.

    x_low (the real images pooled by k) is relayed when there is no stage-1 net.
    """
    n, dev = labels.shape[0] if labels is not None else x_low.shape[0], x_low.device
    seeds = torch.arange(seed, seed + n, dtype=torch.int64, device=dev)
    relay_kw = dict(k=opts["k"], s_block=opts["block_scale"], blur_sigma_max=opts["blur_sigma_max"],
                    prob_length=opts["prob_length"])
    low = None
    if net1 is not None:
        latents = sampling.latents_from_seeds(seeds, tuple(x_low.shape[1:]), device=dev)
        sig1 = sampling.get_sigmas_karras(opts["preview_steps"], net=net1, device=dev)
        low = sampling.sample_edm(sampling.CFGDenoiser(net1), latents.double() * sig1[0], sig1,
                                  {"class_labels": labels}, disable=True, seeds=seeds).float().clamp(-1, 1)
    high = None
    if net2 is not None:
        high = sampling.sample_relay(sampling.CFGDenoiser(net2), low if low is not None else x_low,
                                     sampling.get_sigmas_relay(40, net=net2, device=dev),
                                     {"class_labels": labels}, disable=True, seeds=seeds,
                                     offset=sampling.STAGE_STRIDE, **relay_kw)
    return low, high


# ---------------------------------------------------------------------------------------- training


class _StopFlag:
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint at the end of the step and returns."""

    def __init__(self):
        self.signum, self._old = None, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def _truncate_metrics(path, step):
    """Keep the records up to the checkpoint's step. Records are appended a line at a time, so a
    kill can leave the last line partly written (no newline yet): it is dropped. Any other
    unreadable line is an error, not something to silently lose."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.readlines()
    if lines and not lines[-1].endswith("\n"):
        lines.pop()
    keep = []
    for i, ln in enumerate(lines, 1):
        if not ln.strip():
            continue
        try:
            rec_step = json.loads(ln)["step"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: line {i} is not a metrics record ({exc}); fix or remove it") from exc
        if rec_step <= step:
            keep.append(ln)
    ckpt.atomic_write(path, lambda f: f.write("".join(keep).encode()))


# The files a run writes (checkpoint.py's layout), and the temporaries atomic_write makes for them:
# "." + name + "." + mkstemp's 8 random characters + ".tmp". A kill -9 mid-write leaves one behind.
_RUN_FILES = re.compile(r"(checkpoint\.pt|config\.json|metrics\.jsonl|grid(-\d{6,})?\.png)")
_TEMPORARY = re.compile(r"\.(" + _RUN_FILES.pattern + r"|network-snapshot-\d{6,}\.pt)\.[a-z0-9_]{8}\.tmp")


def _remove_stale_temporaries(run_dir) -> list[str]:
    """Delete the temporaries a killed run left in run_dir (ours only, by their exact naming
    pattern); only one process trains in a run directory, so none of them is being written."""
    removed = []
    for name in sorted(os.listdir(run_dir)) if os.path.isdir(run_dir) else []:
        if _TEMPORARY.fullmatch(name) and os.path.isfile(os.path.join(run_dir, name)):
            os.unlink(os.path.join(run_dir, name))
            removed.append(name)
    return removed


def _remove_previous_run(run_dir) -> list[str]:
    """A fresh start (no checkpoint) in a folder where a run was killed before its first checkpoint:
    that run's metrics.jsonl and grids would otherwise mix with this one's (records appended to the
    old ones). Nothing there can be resumed, so the new run replaces them."""
    removed = []
    for name in sorted(os.listdir(run_dir)) if os.path.isdir(run_dir) else []:
        if name != ckpt.CONFIG_NAME and _RUN_FILES.fullmatch(name):
            os.unlink(os.path.join(run_dir, name))
            removed.append(name)
    return removed


def _every(step, interval):
    """step is a multiple of a positive interval; an interval of 0 means never."""
    return interval > 0 and step % interval == 0


def training_loop(**overrides) -> dict:
    """Train; returns {"step": steps finished, "interrupted": signal number or None, "losses":
    {stage: [per-step losses of this process's run]}, "nets"/"emas": {stage: module}}."""
    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown options: {sorted(unknown)}")
    opts = {**DEFAULTS, **overrides}
    if opts["threads"]:
        torch.set_num_threads(opts["threads"])
    device = dist_util.resolve_device(opts["device"])
    dist_util.init(device)
    device = dist_util.local_device(device)
    rank, world = dist_util.get_rank(), dist_util.get_world_size()
    if opts["batch"] % world:
        raise ValueError(f"--batch {opts['batch']} is not divisible by the number of ranks ({world})")
    batch_local = opts["batch"] // world
    batch_gpu = check_scale_options(opts, batch_local)
    run_dir = opts["outdir"]
    ckpt_path = os.path.join(run_dir, ckpt.CHECKPOINT_NAME)
    if opts["resume"] and not os.path.isfile(ckpt_path):
        raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
    if not opts["resume"] and os.path.isfile(ckpt_path):
        raise FileExistsError(f"{ckpt_path} exists: pass --resume to continue it, or choose another --outdir")

    dataset = open_dataset(opts["data"], opts["resolution"], seed=opts["seed"], cache=opts["cache"],
                           xflip=opts["xflip"])
    label_dim = dataset.label_dim if opts["cond"] else 0
    stages = stage_configs(opts, label_dim)
    # Every option but resume is saved: `--resume` alone takes them back from config.json (train.py).
    train_opts = {key: v for key, v in opts.items() if key != "resume"}
    config = {"train": train_opts, "k": opts["k"], "stages": stages}

    torch.manual_seed(opts["seed"])
    memory_format = torch.channels_last if opts["channels_last"] else torch.contiguous_format
    nets, emas, opts_, losses_fn, scales = {}, {}, {}, {}, {}
    for s, sc in stages.items():
        nets[s] = build_network(sc["network"]).to(device, memory_format=memory_format).train()
    if opts["transfer"] and not opts["resume"]:
        transfer_weights(opts["transfer"], nets)
    for s, sc in stages.items():
        emas[s] = copy.deepcopy(nets[s]).eval().requires_grad_(False)
        opts_[s] = torch.optim.Adam(nets[s].parameters(), lr=opts["lr"], betas=(0.9, 0.999), eps=1e-8)
        losses_fn[s] = _build_loss(sc["loss"])
        scales[s] = LossScale(opts["ls"], device.type, enabled=bool(opts["fp16"]))
    label_p = {s: take_label_dropout(n) for s, n in nets.items()}  # applied per image: drop_labels
    # A transferred network is already trained: its EMA averages over the whole half-life from the
    # start (EDM's train.py sets ema_rampup_ratio=None with --transfer).
    ema_rampup = None if opts["transfer"] else opts["ema_rampup"]

    start = 0
    if opts["resume"]:
        state = ckpt.load_checkpoint(ckpt_path, map_location=device)
        for s, saved in state["config"].get("stages", {}).items():
            ckpt.check_network_family(saved.get("network") if isinstance(saved, dict) else None,
                                      where=f"{ckpt_path} stage {s}")
        if state["config"]["stages"] != json.loads(json.dumps(stages)):
            raise ValueError(f"{ckpt_path}: its stages/networks differ from the options given")
        for s in stages:
            nets[s].load_state_dict(state["stages"][s]["net"])
            emas[s].load_state_dict(state["stages"][s]["ema"])
            opts_[s].load_state_dict(state["stages"][s]["optimizer"])
            scales[s].load_state_dict(state["stages"][s].get("loss_scale", {}))
        torch.set_rng_state(state["rng"]["torch"].cpu())
        start = state["step"]
        if opts["steps"] < start:
            raise ValueError(f"--steps {opts['steps']} is below the step of {ckpt_path} ({start})")
        if rank == 0:
            _truncate_metrics(os.path.join(run_dir, "metrics.jsonl"), start)
            dist_util.print0(f"resuming {run_dir} at step {start}")

    ids = [device.index] if device.type == "cuda" else None
    ddp = {s: torch.nn.parallel.DistributedDataParallel(n, device_ids=ids) if world > 1 else n
           for s, n in nets.items()}
    # The compiled forward is used for training only; nets[s] (the same parameters) is what is saved.
    forward = {s: torch.compile(n) if opts["compile"] else n for s, n in ddp.items()}

    # Fixed preview inputs: evenly spaced dataset images, so classes vary along the row.
    n_prev = min(8, len(dataset))
    prev_idx = torch.linspace(0, len(dataset) - 1, n_prev).round().long()
    prev_u8, prev_lab = dataset.batch(prev_idx)
    prev_real = prev_u8.to(device, torch.float32) / 127.5 - 1
    prev_labels = F.one_hot(prev_lab, label_dim).float().to(device) if label_dim else None

    def state_dicts():
        return {s: {"net": nets[s].state_dict(), "ema": emas[s].state_dict(),
                    "optimizer": opts_[s].state_dict(), "loss_scale": scales[s].state_dict()} for s in stages}

    def save(step, snapshot=False):
        if rank == 0:
            ckpt.save_checkpoint(run_dir, step, config, state_dicts(), rng={"torch": torch.get_rng_state()})
            if snapshot:
                save_snapshot(run_dir, step, step * opts["batch"], config, nets, emas)
        dist_util.barrier()

    def grid(step, final=False):
        if rank != 0:
            return
        x_low = F.avg_pool2d(prev_real, opts["k"])
        low, high = _preview_samples(emas.get("1"), emas.get("2"), prev_labels, x_low, opts["seed"], opts)
        rows = [prev_real] + [r for r in (low, high) if r is not None]
        write_row_grid(os.path.join(run_dir, f"grid-{step:06d}.png"), rows, opts["resolution"])
        if final:
            write_row_grid(os.path.join(run_dir, "grid.png"), rows, opts["resolution"])

    if rank == 0:
        stale = _remove_stale_temporaries(run_dir)
        if stale:
            dist_util.print0(f"{run_dir}: removed {len(stale)} temporary file(s) left by a killed run")
        old = [] if opts["resume"] else _remove_previous_run(run_dir)
        if old:
            dist_util.print0(f"{run_dir}: no checkpoint there, so starting anew: removed the previous run's "
                             f"{', '.join(old)}")
        os.makedirs(run_dir, exist_ok=True)
        ckpt.save_json(os.path.join(run_dir, ckpt.CONFIG_NAME), config)
        n_params = {s: sum(p.numel() for p in n.parameters()) for s, n in nets.items()}
        dist_util.print0(f"{run_dir}: dataset {dataset.name} ({len(dataset)} images, {label_dim} classes), "
                         f"stages {list(stages)} params {n_params}, {world} rank(s) on {device}")
    amp_dtype = torch.float16 if opts["fp16"] else torch.bfloat16
    autocast = torch.autocast(device.type, dtype=amp_dtype, enabled=bool(opts["fp16"] or opts["bf16"]))
    rounds = batch_local // batch_gpu  # gradient accumulation rounds per step
    steps, k, seed = opts["steps"], opts["k"], opts["seed"]
    history = {s: [] for s in stages}
    metrics_path = os.path.join(run_dir, "metrics.jsonl")
    bar = tqdm.tqdm(total=steps, initial=start, disable=rank != 0 or not opts["progress"], dynamic_ncols=True)
    img_rate, step = None, start
    batches = TrainingBatches(dataset, batch=opts["batch"], seed=seed, steps=steps, device=device,
                              label_dim=label_dim, start=start, rank=rank, world=world, workers=opts["workers"],
                              augment=opts["augment"], image_seeds=image_seeds)
    with _StopFlag() as stop:
        while step < steps:
            t0 = time.perf_counter()
            torch.manual_seed(mix_seed(seed, step, rank, 7))  # dropout of this step
            positions = range(rank * batch_local, (rank + 1) * batch_local)
            images, onehot, augment_labels = batches(step)  # this rank's share of the global batch
            images = images.contiguous(memory_format=memory_format)
            lr = opts["lr"] * min(1.0, (step + 1) / max(opts["lr_rampup"], 1))  # linear warm-up
            step_loss = {}
            for s in stages:
                x_all = F.avg_pool2d(images, k) if s == "1" else images
                seeds_all = image_seeds(seed, step, positions, int(s), device)
                labels_all = drop_labels(onehot, label_p[s], seeds_all)
                opts_[s].zero_grad(set_to_none=True)
                total = torch.zeros((), device=device)
                for r in range(rounds):  # each round's mean loss weighted 1/rounds: the batch's mean
                    part = slice(r * batch_gpu, (r + 1) * batch_gpu)
                    sync = r == rounds - 1 or world == 1
                    with (contextlib.nullcontext() if sync else ddp[s].no_sync()), autocast:
                        loss = losses_fn[s](forward[s], x_all[part], seeds_all[part],
                                            None if labels_all is None else labels_all[part],
                                            augment_labels=None if augment_labels is None else augment_labels[part],
                                            ).float().mean() / rounds
                    scales[s].backward(loss)
                    total += loss.detach()
                optimizer_step(nets[s], opts_[s], lr, opts["grad_clip"], scales[s])
                ema_update(emas[s], nets[s], (step + 1) * opts["batch"], opts["batch"], opts["ema_halflife_kimg"],
                           ema_rampup)
                step_loss[s] = total
            step += 1
            vals = torch.stack([step_loss[s].float() for s in stages])
            if world > 1:
                torch.distributed.all_reduce(vals)
                vals /= world
            vals = vals.tolist()
            for s, v in zip(stages, vals, strict=True):
                history[s].append(v)
            rate = opts["batch"] / max(time.perf_counter() - t0, 1e-9)
            img_rate = rate if img_rate is None else 0.9 * img_rate + 0.1 * rate
            bar.update(1)
            shown = {f"loss{s}": f"{v:.4f}" for s, v in zip(stages, vals, strict=True)}
            peak = peak_memory_gib(device)
            bar.set_postfix({**shown, "img/s": f"{img_rate:.1f}", "s/kimg": f"{1000 / img_rate:.1f}",
                             "peak": f"{peak:.2f}GiB"})
            if rank == 0 and (_every(step, opts["log_every"]) or step == steps):
                rec = {"step": step, "kimg": step * opts["batch"] / 1000, "lr": lr, "img_per_s": img_rate,
                       "s_per_kimg": 1000 / img_rate, "peak_mem_gib": peak,
                       **{f"loss{s}": v for s, v in zip(stages, vals, strict=True)}}
                ckpt.append_line(metrics_path, json.dumps(rec))
            stopping = dist_util.any_flag(stop.signum is not None, device)
            snapshot = _every(step, opts["snap_every"]) or step == steps
            if stopping or snapshot:
                save(step, snapshot=snapshot and not stopping)
            if _every(step, opts["grid_every"]) and step < steps and not stopping:
                grid(step)
            if stopping:
                break
    batches.close()
    bar.close()
    if stop.signum is None:
        grid(step, final=True)
    if stop.signum is not None:
        dist_util.print0(f"\nstopped by signal {stop.signum} after step {step}; "
                         f"checkpoint saved to {ckpt_path}")
    return {"step": step, "interrupted": stop.signum, "losses": history, "nets": nets, "emas": emas,
            "rank": rank}
