"""relaydiff.augment: EDM's augmentation pipe with per-image keyed draws.

The conventions follow NVlabs/edm training/augment.py (AugmentPipe.__call__): G_inv maps output to
input pixel coordinates (so rotate2d_inv(-w) = rotate2d(w) samples the input rotated by w), the 9
labels are [xflip, yflip, scale w, cos(rot) - 1, sin(rot), aniso w cos r, aniso w sin r, tx, ty],
and train.py's --augment sets xflip=1e8, yflip=scale=rotate_frac=aniso=translate_frac=1.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from relaydiff.augment import AUGMENT_DIM, AugmentPipe, rotate, scale, transform, translate

OFF = dict(xflip=0, yflip=0, scale=0, rotate_frac=0, aniso=0, translate_frac=0)


def _smooth(n=3, size=24, seed=0):
    """Band-limited images (the resampling filters pass them almost unchanged)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(n, 3, size // 6, size // 6, generator=g)
    return F.interpolate(low, size=size, mode="bicubic", align_corners=False)


def _blob(cx, cy, size=33):
    """A Gaussian spot at centred coordinates (cx, cy) (x right, y down), [1, size, size]."""
    c = (size - 1) / 2
    y, x = torch.meshgrid(torch.arange(size) - c, torch.arange(size) - c, indexing="ij")
    return torch.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * 1.5**2))[None].float()


def _centroid(img):
    c = (img.shape[-1] - 1) / 2
    y, x = torch.meshgrid(torch.arange(img.shape[-2]) - c, torch.arange(img.shape[-1]) - c, indexing="ij")
    w = img[0].clamp(min=0)
    return (w * x).sum().item() / w.sum().item(), (w * y).sum().item() / w.sum().item()


def test_labels_shape_and_keyed_by_image_seed_only():
    x = _smooth(5)
    seeds = torch.tensor([3, 9, 27, 81, 243])
    pipe = AugmentPipe(0.5)
    out, labels = pipe(x, seeds)
    assert out.shape == x.shape and labels.shape == (5, AUGMENT_DIM) and labels.dtype == torch.float32
    # Each image alone, in another batch or in another order: bit-identical (no batch-wide padding).
    for i in range(5):
        one, lab = pipe(x[i:i + 1], seeds[i:i + 1])
        assert torch.equal(one[0], out[i]) and torch.equal(lab[0], labels[i])
    rev, lab = pipe(x.flip(0), seeds.flip(0))
    assert torch.equal(rev, out.flip(0)) and torch.equal(lab, labels.flip(0))
    other = pipe(x, seeds + 1)[1]
    assert not torch.equal(other, labels)


def test_probability_zero_is_identity_up_to_resampling():
    x = _smooth(4)
    out, labels = AugmentPipe(0.0)(x, torch.arange(4))
    assert labels.abs().max() == 0
    assert (out - x).abs().max() < 1e-4  # EDM resamples even untransformed images; sym6 nearly restores them


def test_xflip_always_half_and_yflip_with_p():
    x = _smooth(1).expand(400, -1, -1, -1)
    out, labels = AugmentPipe(0.2, **{**OFF, "xflip": 1e8, "yflip": 1})(x, torch.arange(400))
    xf, yf = labels[:, 0], labels[:, 1]
    assert set(xf.tolist()) <= {0.0, 1.0} and abs(xf.mean().item() - 0.5) < 0.08  # xflip 1e8: whatever p is
    assert abs(yf.mean().item() - 0.1) < 0.05  # probability p, then a fair coin
    for i in range(40):
        want = x[i].flip(2) if xf[i] else x[i]
        want = want.flip(1) if yf[i] else want
        assert torch.equal(out[i], want)


def test_each_transform_fires_with_probability_p():
    labels = AugmentPipe(0.3)(_smooth(1, size=12).expand(500, -1, -1, -1), torch.arange(500))[1]
    for cols in ([2], [3, 4], [5, 6], [7, 8]):  # scale, rotation, anisotropy, translation
        fired = labels[:, cols].abs().sum(1) > 0
        assert abs(fired.float().mean().item() - 0.3) < 0.07, cols
    rot = labels[:, 3:5]
    assert torch.allclose((rot[:, 0] + 1) ** 2 + rot[:, 1] ** 2, torch.ones(500), atol=1e-5)


@pytest.mark.parametrize("what", ["translate_frac", "rotate_frac", "scale"])
def test_labels_describe_the_transform(what):
    """A spot off centre moves as its labels say: translation by (tx W, ty H) / 8, rotation by w
    (content turns by -w in x-right, y-down coordinates), isotropic scaling by 2^(0.2 w)."""
    d, size = 6.0, 33
    img = _blob(d, 0.0, size).expand(30, 3, -1, -1)
    out, labels = AugmentPipe(1.0, **{**OFF, what: 1})(img, torch.arange(30))
    for i in range(30):
        lab = labels[i].double()  # only this transform's labels
        if what == "translate_frac":
            want = (d + lab[0].item() * size * 0.125, lab[1].item() * size * 0.125)
        elif what == "rotate_frac":
            w = math.atan2(lab[1].item(), lab[0].item() + 1)
            want = (d * math.cos(w), -d * math.sin(w))
        else:
            want = (d * 2 ** (0.2 * lab[0].item()), 0.0)
        if max(abs(v) for v in want) > size / 2 - 5:
            continue  # the spot would leave the image
        got = _centroid(out[i])
        assert abs(got[0] - want[0]) < 0.3 and abs(got[1] - want[1]) < 0.3, (i, got, want)


def test_transform_matrix_conventions():
    x = _smooth(1)[0]
    assert (transform(x, translate(-2, 0)) - torch.roll(x, 2, 2))[:, :, 4:-4].abs().max() < 1e-4
    assert (transform(x, translate(0, 3)) - torch.roll(x, -3, 1))[:, 4:-4, :].abs().max() < 1e-4
    turned = transform(x, rotate(math.pi / 2))
    # sym6 is not symmetric, so a quarter turn is exact only up to the filters' phase (~3% of the range).
    assert (turned - torch.rot90(x, 1, (1, 2)))[:, 3:-3, 3:-3].abs().max() < 0.03 * x.abs().max() * 2
    assert (turned - torch.rot90(x, -1, (1, 2)))[:, 3:-3, 3:-3].abs().max() > 0.5
    big = transform(_blob(4.0, 0.0), scale(0.5, 0.5))  # output samples the input at half the radius
    assert abs(_centroid(big)[0] - 8.0) < 0.3


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"--augment must be in \[0, 1\]"):
        AugmentPipe(1.5)
    with pytest.raises(TypeError, match="unknown augmentations"):
        AugmentPipe(0.5, hue=1)
    with pytest.raises(ValueError, match="seeds"):
        AugmentPipe(0.5)(torch.zeros(2, 3, 8, 8), torch.zeros(3, dtype=torch.int64))
