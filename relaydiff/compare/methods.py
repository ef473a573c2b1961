"""The methods of relaydiff.compare: which networks each trains (its "units"), how its budget is split,
how its sampler's steps are chosen to match a number of network evaluations (NFE), and how it samples.

Units: `stage1` (the low-res EDM model, shared by relay and both CDM variants: trained once, since
the same loss, seeds and budget would give the same weights), `relay2` (RelayLoss), `cdm_sr`
(CDMLoss), `lowdiff` (one LowDiffNet, low and high steps interleaved), `single` and `single_block`
(EDMLoss at full resolution without / with block noise). A cascade's budget B (images seen) is split
low_fraction B for its low-res stage and the rest for its high-res stage; single-stage models get B.
"""

from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F
import tqdm

from .. import sampling
from ..dataset import global_indices
from ..loss import EDMLoss, RelayLoss
from ..train_step import ema_update, mix_seed, optimizer_step
from ..training_loop import DEFAULTS as TRAIN_DEFAULTS
from ..training_loop import image_seeds
from .cdm import CDMLoss, sample_cdm
from .lowdiff import LowDiffLoss, LowDiffNet, sample_lowdiff
from .nets import Precond
from .single_stage import heun, heun_nfe, sample_single_stage

METHODS = ("single", "single_block", "cdm", "cdm_trunc", "lowdiff", "relay")
UNITS = {"single": ("single",), "single_block": ("single_block",), "cdm": ("stage1", "cdm_sr"),
         "cdm_trunc": ("stage1", "cdm_sr"), "lowdiff": ("lowdiff",), "relay": ("stage1", "relay2")}
UNIT_IDS = {"stage1": 1, "relay2": 2, "cdm_sr": 3, "lowdiff": 4, "single": 5, "single_block": 6}
LOW_UNITS = ("stage1",)


def _arch(cfg, low: bool) -> dict:
    mult = cfg["channel_mult_low"] if low else cfg["channel_mult_high"]
    return dict(model_channels=cfg["channels"], channel_mult=tuple(mult), num_blocks=cfg["num_blocks"],
                attn_resolutions=tuple(cfg["attn_res"]))


def build_unit(name: str, cfg: dict):
    """(net, step_loss) of a unit; step_loss(net, images, seeds, step) -> per-pixel losses."""
    res, k = cfg["resolution"], cfg["k"]
    if name == "stage1":
        loss = EDMLoss()
        return Precond(res // k, **_arch(cfg, True)), lambda n, x, s, i: loss(n, F.avg_pool2d(x, k), s)
    if name in ("single", "single_block"):
        loss = EDMLoss(block_scale=cfg["block_scale"] if name == "single_block" else 0.0, k=k)
        return Precond(res, **_arch(cfg, False)), lambda n, x, s, i: loss(n, x, s)
    if name == "relay2":
        loss = RelayLoss(k=k, block_scale=cfg["block_scale"])
        return Precond(res, **_arch(cfg, False)), lambda n, x, s, i: loss(n, x, s)
    if name == "cdm_sr":
        loss = CDMLoss(k=k, aug_max=cfg["aug_max"])
        return Precond(res, cond_channels=3, **_arch(cfg, False)), lambda n, x, s, i: loss(n, x, s)
    if name == "lowdiff":
        loss, f = LowDiffLoss(k=k, aug_max=cfg["aug_max"]), cfg["low_fraction"]
        net = LowDiffNet(res, k=k, feature_channels=cfg["channels"], outer_channels=cfg["channels"],
                         **_arch(cfg, True))
        # Step i is a low-res step when it completes another f-th of the steps (f of them in all).
        return net, lambda n, x, s, i: loss(n, x, s, stage="low" if int((i + 1) * f) > int(i * f) else "high")
    raise ValueError(f"unknown unit {name!r}")


def unit_budget(name: str, cfg: dict) -> tuple[int, float]:
    """(training steps, seconds) of a unit: its share of the per-method budget."""
    share = 1.0
    if name in ("stage1",):
        share = cfg["low_fraction"]
    elif name in ("relay2", "cdm_sr"):
        share = 1.0 - cfg["low_fraction"]
    steps = max(1, round(cfg["budget_kimg"] * 1000 * share / cfg["batch"])) if cfg["budget_kimg"] else None
    seconds = cfg["budget_minutes"] * 60 * share if cfg["budget_minutes"] else float("inf")
    return steps, seconds


def train_unit(name, cfg, dataset, device="cpu", progress=True):
    """Train one unit from scratch; returns (EMA net, stats dict). Deterministic for a kimg budget:
    batches from dataset.global_indices, noise from per-image streams keyed by (seed, step, position,
    unit), dropout RNG re-seeded each step (as training_loop), initialisation from (seed, unit): torch
    seeds its default generator randomly per process, so an unseeded init differs run to run."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(mix_seed(cfg["seed"], UNIT_IDS[name], 0x1417))
        net, step_loss = build_unit(name, cfg)
    net = net.to(device).train()
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=cfg["lr"], betas=(0.9, 0.999), eps=1e-8)
    max_steps, max_seconds = unit_budget(name, cfg)
    batch, seed, uid = cfg["batch"], cfg["seed"], UNIT_IDS[name]
    bar = tqdm.tqdm(total=max_steps, desc=f"train {name}", disable=not progress, dynamic_ncols=True, leave=False)
    step, seconds, last = 0, 0.0, float("nan")
    while (max_steps is None or step < max_steps) and seconds < max_seconds:
        t0 = time.perf_counter()
        torch.manual_seed(mix_seed(seed, step, uid, 7))
        images_u8, _ = dataset.batch(global_indices(step, batch, len(dataset), seed))
        images = images_u8.to(device, torch.float32) / 127.5 - 1
        seeds = image_seeds(seed, step, range(batch), uid, device)
        loss = step_loss(net, images, seeds, step).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        lr = cfg["lr"] * min(1.0, (step + 1) / TRAIN_DEFAULTS["lr_rampup"])  # linear warm-up
        optimizer_step(net, opt, lr, TRAIN_DEFAULTS["grad_clip"])  # training_loop's step (no loss scaling)
        step += 1
        ema_update(ema, net, step * batch, batch, TRAIN_DEFAULTS["ema_halflife_kimg"], TRAIN_DEFAULTS["ema_rampup"])
        last = float(loss.detach())
        seconds += time.perf_counter() - t0
        bar.update(1)
        bar.set_postfix(loss=f"{last:.4f}")
    bar.close()
    return ema, {"steps": step, "images": step * batch, "seconds": seconds, "final_loss": last}


# ---------------------------------------------------------------------------------------- NFE


def _stage_tables(method: str, cfg: dict, target: int):
    """[(steps, nfe)] choices of the low-res stage (None for single-stage methods) and the high-res one."""
    most = max(target, 2)
    heun_full = [(s, heun_nfe(s)) for s in range(1, most + 1)]
    if method in ("single", "single_block"):
        return None, heun_full
    if method in ("cdm_trunc", "lowdiff"):
        return [(s, heun_nfe(s, truncate=True)) for s in range(2, most + 2)], heun_full
    if method == "cdm":
        return heun_full, heun_full
    if method == "relay":
        relay = []
        for m in range(2, 40 * most):
            nfe = sampling.relay_nfe(m)
            if nfe > most:
                break
            if nfe >= 1 and (not relay or relay[-1][1] != nfe):
                relay.append((m, nfe))
        return heun_full, relay
    raise ValueError(f"unknown method {method!r}")


def match_nfe(method: str, target: int, cfg: dict, low_share: float = 0.5) -> dict:
    """Step counts whose total NFE is nearest target (ties: not above it, then the low-res stage
    nearest low_share of it). Returns {low_steps, high_steps, low_nfe, high_nfe, nfe}."""
    if target < 1:
        raise ValueError(f"--nfe must be >= 1, got {target}")
    low, high = _stage_tables(method, cfg, target)
    best = None
    for ls, ln in low if low is not None else [(0, 0)]:
        for hs, hn in high:
            total = ln + hn
            key = (abs(total - target), total > target, abs(ln - low_share * target))
            if best is None or key < best[0]:
                best = (key, dict(low_steps=ls, high_steps=hs, low_nfe=ln, high_nfe=hn, nfe=total))
    return best[1]


# ---------------------------------------------------------------------------------------- sampling


@torch.no_grad()
def sample_method(method: str, nets: dict, seeds, steps: dict, cfg: dict, device="cpu"):
    """Images [B, C, R, R] of a method for per-image seeds; returns (images, network calls made)."""
    counted = {u: sampling.CountCalls(n) for u, n in nets.items()}
    lo, hi = steps["low_steps"], steps["high_steps"]
    if method in ("single", "single_block"):
        bs = cfg["block_scale"] if method == "single_block" else 0.0
        x = sample_single_stage(counted[method], seeds, num_steps=hi, block_scale=bs, k=cfg["k"], device=device)
    elif method in ("cdm", "cdm_trunc"):
        x, _ = sample_cdm(counted["stage1"], counted["cdm_sr"], seeds, low_steps=lo, high_steps=hi,
                          cond_sigma=cfg["cond_sigma"], truncate=method == "cdm_trunc", device=device)
    elif method == "lowdiff":
        x, _ = sample_lowdiff(counted["lowdiff"], seeds, low_steps=lo, high_steps=hi, cond_sigma=cfg["cond_sigma"],
                              device=device)
    elif method == "relay":
        low = counted["stage1"]
        shape = (low.img_channels, low.img_resolution, low.img_resolution)
        seeds_t = sampling.as_seeds(seeds, device=device)
        x_low = heun(low, sampling.latents_from_seeds(seeds_t, shape, 0, device), num_steps=lo)
        x = sampling.sample_relay(counted["relay2"], x_low, sampling.get_sigmas_relay(hi, device=device), k=cfg["k"],
                                  s_block=cfg["block_scale"], seeds=seeds_t, offset=sampling.STAGE_STRIDE, disable=True)
    else:
        raise ValueError(f"unknown method {method!r}")
    return x, sum(c.nfe for c in counted.values())
