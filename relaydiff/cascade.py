"""The cascade: stage 1 (EDM) then each relay net in turn (`sample_cascade`), on the samplers of
`relaydiff.samplers` and the schedules and noise streams of `relaydiff.schedules`. Part of
`relaydiff.sampling`, which re-exports `sample_cascade`.
"""

from __future__ import annotations

import torch

from .samplers import CFGDenoiser, CountCalls, relay_up_scale, sample_edm, sample_relay
from .schedules import (
    STAGE_STRIDE,
    PerSeedGenerator,
    as_seeds,
    get_sigmas_karras,
    get_sigmas_relay,
    latents_from_seeds,
    randn_like_sampler,
)

_STAGE1_KEYS = ("num_steps", "sigma_min", "sigma_max", "rho", "S_churn", "S_min", "S_max", "S_noise", "sde_scale")
_RELAY_KEYS = ("num_steps", "sigma_min", "sigma_max", "rho", "truncation_sigma", "k", "s_noise", "s_block",
               "blur_sigma_max", "prob_length", "min_scale", "up_scale", "churn_draw")


def _split_kwargs(kwargs, allowed, what):
    kwargs = dict(kwargs or {})
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise TypeError(f"unknown {what} key(s) {unknown}; allowed: {', '.join(allowed)}")
    return kwargs


def _stage1(net, latents, labels, cfg, kw, seeds, callback, disable, rnd=None):
    kw = _split_kwargs(kw, _STAGE1_KEYS, "stage1_kwargs")
    sigmas = get_sigmas_karras(kw.pop("num_steps", 18), kw.pop("sigma_min", 0.002), kw.pop("sigma_max", 80.0),
                               kw.pop("rho", 7.0), net=net)
    churn = dict(s_churn=kw.pop("S_churn", 0.0), s_tmin=kw.pop("S_min", 0.0), s_tmax=kw.pop("S_max", float("inf")),
                 s_noise=kw.pop("S_noise", 1.0), sde_scale=kw.pop("sde_scale", 0.0))
    x = latents.to(torch.float64) * sigmas[0]
    extra = None if labels is None else {"class_labels": labels}
    noise = None if rnd is None else randn_like_sampler(rnd.randn_like, x)
    out = sample_edm(CFGDenoiser(net, cfg), x, sigmas, extra, callback, disable, seeds=seeds, offset=0,
                     noise_sampler=noise, **churn)
    # The released code hands stage 1's float64 result on to stage 2 as it is.
    return out if rnd is not None else out.to(latents.dtype)


def _relay_stage(net, x, labels, cfg, kw, seeds, offset, callback, disable, rnd=None):
    kw = _split_kwargs(kw, _RELAY_KEYS, "relay_kwargs")
    sigmas = get_sigmas_relay(kw.pop("num_steps", 40), kw.pop("sigma_min", 0.008), kw.pop("sigma_max", 80.0),
                              kw.pop("rho", 7.0), kw.pop("truncation_sigma", 0.9), net=net)
    extra = None if labels is None else {"class_labels": labels}
    noise = None
    if rnd is not None:  # the released blur_sampler runs in float64 and draws its noise in float64
        x = x.to(torch.float64)
        up = relay_up_scale(net, x, kw.get("up_scale"))
        noise = randn_like_sampler(rnd.randn_like, x.new_empty(*x.shape[:2], x.shape[2] * up, x.shape[3] * up))
    return sample_relay(CFGDenoiser(net, cfg), x, sigmas.to(x.device), extra, callback, disable, seeds=seeds,
                        offset=offset, noise_sampler=noise, **kw)


@torch.no_grad()
def sample_cascade(
    stage1_net,
    relay_nets,
    *,
    seeds,
    class_labels=None,
    cfg_scale=1.0,
    x_low=None,
    stage1_kwargs=None,
    relay_kwargs=None,
    device="cpu",
    callback=None,
    disable=None,
    noise="philox",
):
    """Stage 1 (EDM) then each relay net in turn (e.g. 64 -> 256 -> 1024), on sample_edm and sample_relay.

    stage1_net may be None when x_low (the low-resolution images) is given. stage1_kwargs keys:
    num_steps, sigma_min, sigma_max, rho (the schedule, clamped to the net's range), S_churn, S_min,
    S_max, S_noise (EDM's churn), sde_scale (the released CelebA-HQ stage-1 noise). relay_kwargs keys:
    num_steps, sigma_min, sigma_max, rho,
    truncation_sigma (the schedule), k, s_noise, s_block, blur_sigma_max, prob_length, min_scale,
    up_scale; one dict for every relay stage or a list with one per stage. cfg_scale is one number or
    one per stage (stage 1 first); guidance applies where it is > 1 (CFGDenoiser). Returns
    (outputs, nfe): the images after each stage run and the network evaluations each stage used.
    callback receives the sampler's dict plus `stage` (1 = the first relay stage, 0 = stage 1).
    Stage 1 draws latents at counters 0 .. N-1 and churn after them; relay stage j from counters
    (j + 1) * STAGE_STRIDE on.

    noise="torch" draws instead as the released THUDM/RelayDiffusion generate scripts do, so a seed
    gives the released script's image: one torch.Generator per seed on `device` (PerSeedGenerator),
    the latents first, then every normal of each stage in the released order (noise_sampler), stages
    computed and handed on in float64. Those streams depend on the device and the batch's seeds only
    through each image's own generator.
    """
    if noise not in ("philox", "torch"):
        raise ValueError(f"noise must be 'philox' or 'torch', not {noise!r}")
    relay_nets = list(relay_nets)
    n_stages = len(relay_nets) + (stage1_net is not None)
    if (stage1_net is None) == (x_low is None):
        raise ValueError("give exactly one of stage1_net and x_low")
    if isinstance(relay_kwargs, (list, tuple)):
        if len(relay_kwargs) != len(relay_nets):
            raise ValueError(f"{len(relay_kwargs)} relay_kwargs for {len(relay_nets)} relay nets")
        relay_kwargs = list(relay_kwargs)
    else:
        relay_kwargs = [relay_kwargs] * len(relay_nets)
    cfgs = list(cfg_scale) if isinstance(cfg_scale, (list, tuple)) else [cfg_scale] * n_stages
    if len(cfgs) != n_stages:
        raise ValueError(f"{len(cfgs)} cfg scales for {n_stages} stages")
    seeds = as_seeds(seeds, None if x_low is None else x_low.shape[0], device)

    def stage_cb(stage):
        return None if callback is None else (lambda d: callback(dict(d, stage=stage)))

    # Stage numbering (and so the noise streams) is the same whether or not stage 1 runs here, so
    # refining saved stage-1 images reproduces the cascade's relay noise.
    outputs, nfe = [], []
    rnd = PerSeedGenerator(seeds, device) if noise == "torch" else None
    if stage1_net is not None:
        net = CountCalls(stage1_net)
        shape = (net.img_channels, net.img_resolution, net.img_resolution)
        if rnd is None:
            latents = latents_from_seeds(seeds, shape, 0, device)
        else:
            latents = rnd.randn((seeds.numel(), *shape))
        x_low = _stage1(net, latents, class_labels, cfgs[0], stage1_kwargs, seeds, stage_cb(0), disable, rnd)
        outputs.append(x_low)
        nfe.append(net.nfe)
    x = x_low
    for j, relay_net in enumerate(relay_nets):
        net = CountCalls(relay_net)
        x = _relay_stage(net, x, class_labels, cfgs[len(outputs)], relay_kwargs[j], seeds, (j + 1) * STAGE_STRIDE,
                         stage_cb(j + 1), disable, rnd)
        outputs.append(x)
        nfe.append(net.nfe)
    return outputs, nfe
