"""Training losses as small callable classes, in the style of NVlabs/edm `training/loss.py`.

All randomness comes from the counter-based generator of relay_kernels (SPEC section 4) keyed by a
per-image seed, so a loss value depends only on (image, seed): not on batch size, batch
composition, rank count or backend. Per image with N = C*H*W elements, counters [0, 2N) hold the
corruption noise (e, e') and counter 2N the noise-level draw.
"""

from __future__ import annotations

import torch

import relay_kernels as rk
from relay_kernels import reference

# Label dropout's draw: counter LABEL_DROPOUT_COUNTER of each image's stream, past the corruption
# noise [0, 2N) and the level draw 2N of any image size the loader accepts.
LABEL_DROPOUT_COUNTER = 1 << 48


def drop_labels(labels, p: float, seeds: torch.Tensor):
    """Classifier-free-guidance label dropout keyed by image: image b's labels are zeroed when
    Phi(z_b) < p, z_b the normal at LABEL_DROPOUT_COUNTER of its stream seeds[b]. The seeds follow
    the image's position in the global batch (training_loop.image_seeds), so the dropped images do
    not depend on the rank count, as the network's own per-rank torch.rand draw did."""
    if labels is None or not p:
        return labels
    z = rk.randn((labels.shape[0], 1), seeds, offset=LABEL_DROPOUT_COUNTER).reshape(-1).double()
    keep = torch.special.ndtr(z) >= p
    return labels * keep.to(labels.device, labels.dtype)[:, None]


def take_label_dropout(net) -> float:
    """The network's label-dropout probability, switched off inside the network (returned for
    drop_labels to apply instead); the saved network config keeps it."""
    p = 0.0
    for module in net.modules():
        if getattr(module, "label_dropout", 0):
            p, module.label_dropout = max(p, float(module.label_dropout)), 0
    return p


def _level_normal(images: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """One standard normal per image at counter 2N, shape [B]."""
    n = images[0].numel()
    return rk.randn((images.shape[0], 1), seeds, offset=2 * n).reshape(-1).to(images.device, torch.float64)


def _augment(augment_labels) -> dict:
    """The net call's augment_labels keyword (EDM's non-leaking augmentation, relaydiff.augment):
    images are augmented before the loss, which the labels tell the network; absent when there are none."""
    return {} if augment_labels is None else {"augment_labels": augment_labels}


class EDMLoss:
    """EDM loss (Karras et al. 2022, Eq. 2 and Table 1): ln sigma ~ N(P_mean, P_std^2),
    weight lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2.

    block_scale > 0 mixes block noise into the corruption, n = e + block_scale Block_k(e') (RDM
    Appendix C.2, "block noise in an end-to-end model"; e' at counters [N, 2N) as RelayLoss).
    """

    def __init__(self, P_mean=-1.2, P_std=1.2, sigma_data=0.5, block_scale=0.0, k=4):
        self.P_mean, self.P_std, self.sigma_data = P_mean, P_std, sigma_data
        self.block_scale, self.k = block_scale, k

    def __call__(self, net, images, seeds, labels=None, augment_labels=None):
        rnd = _level_normal(images, seeds)
        sigma = (rnd * self.P_std + self.P_mean).exp().to(torch.float32)
        weight = (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2
        n = rk.randn(tuple(images.shape), seeds, offset=0)
        if self.block_scale:
            n = n + self.block_scale * rk.block_noise(tuple(images.shape), self.k, seed=seeds, offset=images[0].numel())
        n = n.to(images.device, images.dtype)
        denoised = net(images + n * sigma[:, None, None, None], sigma, labels, **_augment(augment_labels))
        return weight[:, None, None, None] * (denoised - images) ** 2


class RelayLoss:
    """Relay-stage loss (RDM Eq. 7-8, SPEC section 5): x_t = patch_blur(x0, b) + sigma (e + beta
    Block_k(e')) with (sigma, b, weight) from the released trainer's draw, target x0."""

    def __init__(self, k=4, blur_sigma_max=3.0, block_scale=0.15, prob_length=0.93):
        self.k, self.blur_sigma_max = k, blur_sigma_max
        self.block_scale, self.prob_length = block_scale, prob_length

    def __call__(self, net, images, seeds, labels=None, augment_labels=None):
        u = torch.special.ndtr(_level_normal(images, seeds))  # u ~ U(0, 1)
        sigma, blur_sigma, weight = reference.relay_training_sigmas(u, self.blur_sigma_max, self.prob_length)
        sigma, blur_sigma, weight = (t.to(torch.float32) for t in (sigma, blur_sigma, weight))
        x_t = rk.relay_corrupt(images, sigma, blur_sigma, k=self.k, block_scale=self.block_scale,
                               seed=seeds, offset=0)
        denoised = net(x_t, sigma, labels, **_augment(augment_labels))
        return weight[:, None, None, None] * (denoised - images) ** 2
