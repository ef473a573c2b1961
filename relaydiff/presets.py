"""Sampler settings of the released RDM generation scripts, for `relaydiff.sample --preset NAME`.

Values from THUDM/RelayDiffusion (commit 6ee2d6f): `generate_celebahq.py` and `generate_imagenet.py`,
their click option defaults (what `torchrun ... generate_X.py --outdir ... --network_first ...
--network_second ...`, the command of the released README, runs) and, where the option is left
unset (sigma_min / sigma_max), the sampler function's default. Each value's source is named beside it.

Stage 1 keys are sample_edm's (sampling.sample_cascade stage1_kwargs), stage 2 keys are
sample_relay's (relay_kwargs; prob_length is the released `truncation_t`, k its `up_scale`).
"""

from __future__ import annotations

PRESETS = {
    "celebahq-256": {
        "source": "THUDM/RelayDiffusion generate_celebahq.py",
        "stage1": dict(
            num_steps=120,  # --num_steps_first default
            sigma_min=0.002,  # edm_sampler(sigma_min=0.002); --sigma_min_first unset
            sigma_max=80.0,  # edm_sampler(sigma_max=80); --sigma_max_first unset
            rho=7.0,  # --rho_first default
            # No churn: this script has no --S_churn option and edm_sampler's S_churn defaults to 0.
            S_churn=0.0,
            S_min=0.0,
            S_max=float("inf"),
            S_noise=1.0,
            # Its edm_sampler instead adds noise g = sde_scale * t_next at each Euler and Heun update.
            sde_scale=0.05,  # --sde_scale_first default
        ),
        "stage2": dict(
            num_steps=150,  # --num_steps_second default
            sigma_min=0.008,  # blur_sampler(sigma_min=0.008); --sigma_min_second unset
            sigma_max=80.0,  # blur_sampler(sigma_max=80); --sigma_max_second unset
            rho=7.0,  # --rho_second default
            truncation_sigma=0.95,  # --truncation_sigma_second default
            prob_length=1.05,  # --truncation_t_second default
            blur_sigma_max=2.0,  # --blur_sigma_max_second default
            s_noise=0.2,  # --s_noise_second default
            s_block=0.15,  # --s_block_second default
            k=4,  # --up_scale_second default (256 / 64)
            # Its blur_sampler's churn line draws one normal per step (weight 0 at S_churn=0) before
            # the net call: with --noise torch, relaydiff draws it too (docs/SAMPLING.md).
            churn_draw=True,
        ),
        "cfg": [1.0, 1.0],  # --cfg_scale_first, --cfg_scale_second defaults (no guidance)
        "seeds": "80000-109999",  # --seeds default (30k images, the FID sample)
        # img_enhance() applied to every saved PNG: PIL ImageEnhance contrast, brightness, colour.
        "enhance": dict(contrast=0.9, brightness=1.05, color=0.99),
        "class_rule": "seed-mod",  # labels eye(label_dim)[seed % label_dim] (unconditional here)
    },
    "imagenet-256": {
        "source": "THUDM/RelayDiffusion generate_imagenet.py",
        "stage1": dict(
            num_steps=256,  # --num_steps_first default
            sigma_min=0.002,  # edm_sampler(sigma_min=0.002); --sigma_min_first unset
            sigma_max=80.0,  # edm_sampler(sigma_max=80); --sigma_max_first unset
            rho=7.0,  # --rho_first default
            S_churn=40.0,  # --S_churn default
            S_min=0.05,  # --S_min default
            S_max=50.0,  # --S_max default
            S_noise=1.003,  # --S_noise default
        ),
        "stage2": dict(
            num_steps=200,  # --num_steps_second default
            sigma_min=0.008,  # blur_sampler(sigma_min=0.008); --sigma_min_second unset
            sigma_max=80.0,  # blur_sampler(sigma_max=80); --sigma_max_second unset
            rho=100.0,  # --rho_second default
            truncation_sigma=0.9,  # --truncation_sigma_second default
            prob_length=0.93,  # --truncation_t_second default
            blur_sigma_max=3.0,  # --blur_sigma_max_second default
            s_noise=0.2,  # --s_noise_second default
            s_block=0.15,  # --s_block_second default
            k=4,  # --up_scale_second default (256 / 64)
        ),
        "cfg": [1.0, 3.5],  # --cfg_scale_first, --cfg_scale_second defaults
        "seeds": "10000-59999",  # --seeds default (50k images, the FID sample)
        "enhance": dict(brightness=1.06),  # img_enhance(): PIL ImageEnhance.Brightness(1.06)
        "class_rule": "seed-mod",  # class_labels = eye(1000)[seed % 1000]
    },
}


def preset(name: str) -> dict:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name]
