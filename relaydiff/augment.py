"""EDM's non-leaking augmentation pipe (`--augment P`), with per-image keyed randomness.

Facts from NVlabs/edm (training/augment.py AugmentPipe, and train.py's `--augment`): the pipe runs
on the training batch before the noise is added, the loss's target is the augmented image, and the
network is told what was done through 9 augmentation labels (its `augment_dim` = 9 mapping), so it
learns to generate un-augmented images when the labels are zero. `--augment P` enables, each with
probability P per image: y-flip, isotropic scaling (log2 std 0.2), arbitrary rotation, anisotropic
scaling (log2 std 0.2, about a random axis with probability 0.5) and fractional translation (std
0.125 of the image size); the x-flip multiplier is 1e8, so every image is x-flipped with
probability 1/2 whatever P is. The geometric transforms resample through a 2x upsampled image with
the sym6 wavelet low-pass filter, as EDM does.

Unlike EDM (global torch RNG, one padding for the whole batch) every image's draw comes from the
counter-based generator keyed by its own seed, and each image is transformed on its own: an image's
augmentation depends only on (seed, step, its global-batch position), not on the batch it is in,
the rank count or the worker count.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import relay_kernels as rk

AUGMENT_DIM = 9
SEED_STREAM = 3  # the stage slot of training_loop.image_seeds for augmentation (1, 2: the stages' noise)
# EDM train.py: AugmentPipe(p=P, xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1).
EDM_MULTIPLIERS = dict(xflip=1e8, yflip=1.0, scale=1.0, rotate_frac=1.0, aniso=1.0, translate_frac=1.0)
SCALE_STD, ANISO_STD, ANISO_ROTATE_PROB, TRANSLATE_STD, ROTATE_MAX = 0.2, 0.2, 0.5, 0.125, 1.0

# The sym6 wavelet's low-pass decomposition filter (the filter EDM's pipe resamples with).
SYM6 = (0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
        0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
        -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148)

# Counters of each image's draws (standard normals; a uniform is a normal's CDF): 0-1 x-flip gate and
# coin, 2-3 y-flip, 4-5 scale (normal, gate), 6-7 rotation (uniform, gate), 8-11 anisotropy (normal,
# axis, gate, axis gate), 12-14 translation (two normals, gate).
_N_DRAWS = 15


def _mat(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def translate(tx, ty):
    return _mat([[1, 0, tx], [0, 1, ty], [0, 0, 1]])


def scale(sx, sy):
    return _mat([[sx, 0, 0], [0, sy, 0], [0, 0, 1]])


def rotate(theta):
    c, s = math.cos(theta), math.sin(theta)
    return _mat([[c, -s, 0], [s, c, 0], [0, 0, 1]])


class AugmentPipe:
    """images [N, C, H, W] (float, any device), seeds int64 [N] -> (augmented images, labels [N, 9]).

    p: the overall probability multiplier (`--augment P`); the per-transform multipliers default to
    EDM's `--augment` set (a test enables them one at a time).
    """

    def __init__(self, p: float, **multipliers):
        if not 0 <= p <= 1:
            raise ValueError(f"--augment must be in [0, 1], got {p}")
        unknown = set(multipliers) - set(EDM_MULTIPLIERS)
        if unknown:
            raise TypeError(f"unknown augmentations: {sorted(unknown)}")
        self.p = float(p)
        self.mult = {**EDM_MULTIPLIERS, **multipliers}

    def draw(self, seeds: torch.Tensor, height: int, width: int) -> list[dict]:
        """Per image: the flips, the inverse geometric matrix G_inv (output -> input pixel coordinates,
        centred) and the 9 labels, from that image's seed only."""
        normal = rk.randn((seeds.shape[0], _N_DRAWS), seeds.cpu(), dtype=torch.float64, device="cpu")
        uniform = torch.special.ndtr(normal)
        return [self._draw_one(z, u, height, width)
                for z, u in zip(normal.tolist(), uniform.tolist(), strict=True)]

    def _draw_one(self, z: list[float], u: list[float], height: int, width: int) -> dict:
        """One image's transforms from its normals z and uniforms u (counters: see _N_DRAWS)."""
        def on(name, gate):  # EDM: torch.rand() < multiplier * p
            return u[gate] < self.mult[name] * self.p

        # Labels only for the enabled transforms, as EDM (train.py's --augment enables all: 9 labels).
        xflip = int(on("xflip", 0) and u[1] < 0.5) if self.mult["xflip"] else 0
        yflip = int(on("yflip", 2) and u[3] < 0.5) if self.mult["yflip"] else 0
        labels = [float(v) for v, name in ((xflip, "xflip"), (yflip, "yflip")) if self.mult[name]]
        g_inv = torch.eye(3, dtype=torch.float64)
        if self.mult["scale"]:  # isotropic scaling, s = 2^(w std)
            w = z[4] if on("scale", 5) else 0.0
            s = 2 ** (w * SCALE_STD)
            g_inv = g_inv @ scale(1 / s, 1 / s)
            labels += [w]
        if self.mult["rotate_frac"]:  # rotation by w in (-pi, pi]
            w = (u[6] * 2 - 1) * math.pi * ROTATE_MAX if on("rotate_frac", 7) else 0.0
            g_inv = g_inv @ rotate(w)  # EDM: rotate2d_inv(-w)
            labels += [math.cos(w) - 1, math.sin(w)]
        if self.mult["aniso"]:  # anisotropic scaling along an axis rotated by r
            w = z[8] if on("aniso", 10) else 0.0
            r = (u[9] * 2 - 1) * math.pi if u[11] < ANISO_ROTATE_PROB else 0.0
            s = 2 ** (w * ANISO_STD)
            g_inv = g_inv @ rotate(-r) @ scale(1 / s, s) @ rotate(r)
            labels += [w * math.cos(r), w * math.sin(r)]
        if self.mult["translate_frac"]:  # translation by (w0 W, w1 H) * std
            w0, w1 = (z[12], z[13]) if on("translate_frac", 14) else (0.0, 0.0)
            g_inv = g_inv @ translate(-w0 * width * TRANSLATE_STD, -w1 * height * TRANSLATE_STD)
            labels += [w0, w1]
        return dict(xflip=xflip, yflip=yflip, g_inv=g_inv, labels=labels)

    @property
    def geometric(self) -> bool:
        return any(self.mult[n] for n in ("scale", "rotate_frac", "aniso", "translate_frac"))

    def __call__(self, images: torch.Tensor, seeds: torch.Tensor):
        if images.ndim != 4 or seeds.shape != (images.shape[0],):
            raise ValueError(f"AugmentPipe needs images [N, C, H, W] and seeds [N], got "
                             f"{tuple(images.shape)} and {tuple(seeds.shape)}")
        outs, labels = [], []
        for img, d in zip(images, self.draw(seeds, *images.shape[2:]), strict=True):
            if d["xflip"]:
                img = img.flip(2)
            if d["yflip"]:
                img = img.flip(1)
            if self.geometric:  # EDM resamples every image once any geometric transform is enabled
                img = transform(img, d["g_inv"])
            outs.append(img)
            labels.append(d["labels"])
        return torch.stack(outs), torch.tensor(labels, dtype=torch.float32, device=images.device)


def _filter(img: torch.Tensor, taps: torch.Tensor, dim: int, **conv) -> torch.Tensor:
    """A depthwise 1-D convolution of img [C, H, W] along dim (2: W, 1: H)."""
    c = img.shape[0]
    weight = taps.to(img.dtype).reshape(1, 1, 1, -1) if dim == 2 else taps.to(img.dtype).reshape(1, 1, -1, 1)
    return F.conv2d(img[None], weight.expand(c, 1, *weight.shape[2:]), groups=c, **conv)[0]


def _zero_stuff(img: torch.Tensor, dim: int) -> torch.Tensor:
    """Insert a zero after every sample along dim, dropping the last: length n -> 2n - 1."""
    stacked = torch.stack([img, torch.zeros_like(img)], dim=dim + 1).flatten(dim, dim + 1)
    return stacked.narrow(dim, 0, stacked.shape[dim] - 1)


def transform(img: torch.Tensor, g_inv: torch.Tensor) -> torch.Tensor:
    """Resample img [C, H, W] at G_inv (3x3, centred pixel coordinates, output -> input) as EDM's
    pipe does: reflect-pad by the margin the transformed corners need, upsample 2x with the sym6
    filter, bilinear grid_sample, filter and decimate back."""
    c, h, w = img.shape
    taps = torch.tensor(SYM6, dtype=torch.float64, device=img.device)
    pad = len(SYM6) // 4
    cx, cy = (w - 1) / 2, (h - 1) / 2
    corners = _mat([[-cx, -cy, 1], [cx, -cy, 1], [cx, cy, 1], [-cx, cy, 1]]).t()
    xy = (g_inv @ corners)[:2]  # where the output's corners come from
    need = torch.cat([-xy, xy]).max(dim=1).values + torch.tensor([pad * 2 - cx, pad * 2 - cy] * 2, dtype=torch.float64)
    need = need.clamp(min=0).minimum(torch.tensor([w - 1, h - 1] * 2, dtype=torch.float64))
    mx0, my0, mx1, my1 = (int(v) for v in need.ceil().tolist())
    img = F.pad(img[None], [mx0, mx1, my0, my1], mode="reflect")[0]
    g_inv = translate((mx0 - mx1) / 2, (my0 - my1) / 2) @ g_inv
    # 2x upsampling: zero-stuffing then the (time-reversed) low-pass filter along W, then H.
    up = taps.flip(0)
    img = _filter(_zero_stuff(img, 2), up, 2, padding=[0, (len(SYM6) + 1) // 2])
    img = _filter(_zero_stuff(img, 1), up, 1, padding=[(len(SYM6) + 1) // 2, 0])
    g_inv = scale(2, 2) @ g_inv @ scale(1 / 2, 1 / 2)
    g_inv = translate(-0.5, -0.5) @ g_inv @ translate(0.5, 0.5)
    # Sample the output (at 2x, with the filter's margin) in grid_sample's normalised coordinates.
    out_h, out_w = (h + pad * 2) * 2, (w + pad * 2) * 2
    g_inv = scale(2 / img.shape[2], 2 / img.shape[1]) @ g_inv @ scale(out_w / 2, out_h / 2)
    theta = g_inv[:2].to(img.device, img.dtype)[None]
    grid = F.affine_grid(theta, [1, c, out_h, out_w], align_corners=False)
    img = F.grid_sample(img[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    # Filter and decimate by 2 along W, then H, dropping the margin.
    img = _filter(img, taps, 2, stride=[1, 2], padding=[0, (len(SYM6) - 1) // 2])[:, :, pad:-pad]
    return _filter(img, taps, 1, stride=[2, 1], padding=[(len(SYM6) - 1) // 2, 0])[:, pad:-pad, :]
