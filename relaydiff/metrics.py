"""Sample-quality metrics: the RDM / ADM evaluator's FID, sFID, IS, precision and recall, KID, and
weight-free spectral metrics.

* `feature_stats`, `frechet_distance`, `inception_score`, `precision_recall`: the formulas of the RDM
  authors' `evaluate.py` (THUDM/RelayDiffusion; ADM's evaluator, openai/guided-diffusion
  `evaluations/evaluator.py`, computed in numpy float64 as the RDM script does), on feature arrays:
  testable on synthetic features. The detector that makes the features is `relaydiff.inception`.
* `kernel_inception_distance`: StyleGAN3 `metrics/kernel_inception_distance.py` math.
* `rapsd`, `rapsd_distance`: radially averaged power spectral density (RDM Appendix D) and the mean
  absolute log10 gap between two sets' RAPSDs.
* `snr_curves`, `plot_snr`: per-frequency signal-to-noise ratio of images under the same noise at
  several resolutions (RDM Figure 2): at the same noise a higher resolution keeps a higher SNR.
* `sliced_wasserstein`: ProGAN's SWD on 7x7 patches of a Laplacian pyramid, per level.

Images are float tensors in [-1, 1], NCHW, unless a function says uint8.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------- FID, sFID, IS, P/R, KID


def feature_stats(features, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of [N, D] features in float64, accumulated over row batches as
    evaluate.py's calculate_inception_stats_from_activations (and EDM's fid.py): sum x and sum x x^T,
    then sigma = (sum x x^T - N mu mu^T) / (N - 1). Streams: memory O(D^2), not O(N D) extra."""
    f = np.asarray(features)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need [N >= 2, D] features, got shape {f.shape}")
    n, d = f.shape
    total, outer = np.zeros(d), np.zeros((d, d))
    for i in range(0, n, batch):
        x = f[i : i + batch].astype(np.float64)
        total += x.sum(0)
        outer += x.T @ x
    mu = total / n
    return mu, (outer - np.outer(mu, mu) * n) / (n - 1)


def trace_sqrt_product(sigma, sigma_ref) -> float:
    """tr((S S_ref)^(1/2)) for covariances (symmetric PSD): S S_ref is similar to the PSD matrix
    S^(1/2) S_ref S^(1/2), so the trace of its principal square root is the sum of the square roots of
    that matrix's eigenvalues. The same number as the real part of tr(scipy.linalg.sqrtm(S @ S_ref)),
    which the released code takes, from two symmetric eigendecompositions: always finite, and about 7x
    faster at D = 2048 (sqrtm takes about a minute there on one core when S is singular, N < D)."""
    w, v = np.linalg.eigh(sigma)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root @ sigma_ref @ root
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum())


def frechet_distance(mu, sigma, mu_ref, sigma_ref) -> float:
    """|mu - mu_ref|^2 + tr(S + S_ref - 2 (S S_ref)^(1/2)) (evaluate.py's calculate_fid_from_inception_stats;
    EDM's fid.py and ADM's evaluator compute the same)."""
    mu, mu_ref = np.atleast_1d(mu).astype(np.float64), np.atleast_1d(mu_ref).astype(np.float64)
    sigma, sigma_ref = np.atleast_2d(sigma).astype(np.float64), np.atleast_2d(sigma_ref).astype(np.float64)
    if mu.shape != mu_ref.shape or sigma.shape != sigma_ref.shape or sigma.shape != mu.shape * 2:
        raise ValueError(f"statistics do not match: mu {mu.shape} vs {mu_ref.shape}, sigma {sigma.shape} vs "
                         f"{sigma_ref.shape}")
    m = np.square(mu - mu_ref).sum()
    return float(m + np.trace(sigma) + np.trace(sigma_ref) - 2 * trace_sqrt_product(sigma, sigma_ref))


def fid_from_features(feats, feats_ref) -> float:
    return frechet_distance(*feature_stats(feats), *feature_stats(feats_ref))


def softmax64(logits) -> np.ndarray:
    """Row softmax in float64 (max subtracted: the same value as evaluate.py's exp / sum exp, without
    its overflow for logits above ~709)."""
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def inception_score(logits, split_size: int = 5000) -> float:
    """Inception Score from [N, classes] logits: mean over consecutive splits of split_size images (the
    last may be shorter) of exp(mean_i KL(p(y|x_i) || p(y))), p(y) the split's mean prediction
    (evaluate.py's calculate_inception_score_from_activations, after improved-gan's model.py)."""
    preds = softmax64(logits)
    if preds.ndim != 2 or len(preds) < 1:
        raise ValueError(f"need [N >= 1, classes] logits, got shape {preds.shape}")
    scores = []
    for i in range(0, len(preds), split_size):
        part = preds[i : i + split_size]
        kl = part * (np.log(part) - np.log(part.mean(0, keepdims=True)))
        scores.append(np.exp(kl.sum(1).mean()))
    return float(np.mean(scores))


def pairwise_sq_distances(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """|u_i - v_j|^2 as |u|^2 - 2 u.v + |v|^2 clamped at 0, in the features' dtype (evaluate.py)."""
    d = np.square(u).sum(1)[:, None] - 2 * (u @ v.T) + np.square(v).sum(1)[None, :]
    return np.maximum(d, 0)


def manifold_radii(features, k: int = 3, row_batch: int = 10000, col_batch: int = 10000) -> np.ndarray:
    """Squared distance of each feature vector to its k-th nearest neighbour (itself at distance 0
    counts as the 0-th), float32, as evaluate.py's ManifoldEstimator.manifold_radii (distances stored in
    float32). The k + 1 smallest are merged per column block, so memory is rows x (cols + k + 1),
    not rows x N; the k-th smallest of the union, hence each radius, is the same."""
    f = np.asarray(features)
    n = len(f)
    if n <= k:
        raise ValueError(f"precision/recall with k = {k} needs more than {k} feature vectors, got {n}")
    radii = np.zeros(n, dtype=np.float32)
    for r0 in range(0, n, row_batch):
        rows = f[r0 : r0 + row_batch]
        best = np.empty((len(rows), 0), dtype=np.float32)
        for c0 in range(0, n, col_batch):
            d = pairwise_sq_distances(rows, f[c0 : c0 + col_batch]).astype(np.float32)
            merged = np.concatenate([best, d], axis=1)
            best = np.partition(merged, k, axis=1)[:, : k + 1] if merged.shape[1] > k + 1 else merged
        radii[r0 : r0 + len(rows)] = np.partition(best, k, axis=1)[:, k]
    return radii


def precision_recall(feats_ref, feats_sample, k: int = 3, row_batch: int = 10000,
                     col_batch: int = 10000) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) with ADM's manifold estimator, k = 3:
    precision = share of samples inside some reference vector's k-NN ball, recall = share of
    references inside some sample's ball (evaluate.py's evaluate_pr: float64 distances compared
    with the float32 radii, in the same row/column blocks)."""
    ref, sample = np.asarray(feats_ref), np.asarray(feats_sample)
    if ref.ndim != 2 or sample.ndim != 2 or ref.shape[1] != sample.shape[1]:
        raise ValueError(f"precision/recall needs two [N, D] feature sets, got {ref.shape} and {sample.shape}")
    radii_ref = manifold_radii(ref, k, row_batch, col_batch)
    radii_sample = manifold_radii(sample, k, row_batch, col_batch)
    ref_in = np.zeros(len(ref), dtype=bool)  # covered by a sample ball: recall
    sample_in = np.zeros(len(sample), dtype=bool)  # covered by a reference ball: precision
    for r0 in range(0, len(ref), row_batch):
        r1 = r0 + row_batch
        for c0 in range(0, len(sample), col_batch):
            c1 = c0 + col_batch
            d = pairwise_sq_distances(ref[r0:r1], sample[c0:c1])
            ref_in[r0:r1] |= (d <= radii_sample[None, c0:c1]).any(1)
            sample_in[c0:c1] |= (d <= radii_ref[r0:r1, None]).any(0)
    return float(sample_in.mean()), float(ref_in.mean())


def kernel_inception_distance(feats_gen, feats_real, num_subsets=100, max_subset_size=1000, seed=0) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3, averaged over subsets."""
    x_all = np.asarray(feats_gen, dtype=np.float64)
    y_all = np.asarray(feats_real, dtype=np.float64)
    d = x_all.shape[1]
    m = min(x_all.shape[0], y_all.shape[0], max_subset_size)
    if m < 2:
        raise ValueError("KID needs at least 2 feature vectors per set")
    rng = np.random.RandomState(seed)
    t = 0.0
    for _ in range(num_subsets):
        x = x_all[rng.choice(x_all.shape[0], m, replace=False)]
        y = y_all[rng.choice(y_all.shape[0], m, replace=False)]
        a = (x @ x.T / d + 1) ** 3 + (y @ y.T / d + 1) ** 3
        b = (x @ y.T / d + 1) ** 3
        t += (a.sum() - np.diag(a).sum()) / (m - 1) - b.sum() * 2 / m
    return float(t / num_subsets / m)


def sfid_features(spatial: torch.Tensor, channels: int = 7) -> torch.Tensor:
    """sFID features (Nash et al. 2021): the first 7 channels of Inception's mixed_6/conv map [N, C, h, w],
    flattened in (channel, row, column) order as evaluate.py flattens its NCHW map, float64."""
    return spatial[:, :channels].reshape(spatial.shape[0], -1).to(torch.float64)


# ---------------------------------------------------------------------------- spectra


def _radial_bins(h: int, w: int, device=None):
    fy = torch.fft.fftfreq(h, device=device)[:, None] * h
    fx = torch.fft.fftfreq(w, device=device)[None, :] * w
    r = torch.sqrt(fy**2 + fx**2).round().long()
    n_bins = min(h, w) // 2 + 1
    return r.clamp(max=n_bins), n_bins  # bin n_bins collects the corners and is dropped


def rapsd(images: torch.Tensor) -> torch.Tensor:
    """Radially averaged power spectral density per image: [N, min(H, W)//2 + 1] over integer radii.

    Power |FFT|^2 / (H W) of each channel (mean removed), averaged over channels and over the
    frequencies whose radius rounds to each integer (cycles per image). White noise of variance s^2
    has a flat RAPSD of s^2 (DC bin excluded).
    """
    x = images.to(torch.float64)
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    power = (torch.fft.fft2(x, norm="ortho").abs() ** 2).mean(1)  # [N, H, W]
    r, n_bins = _radial_bins(*x.shape[-2:], device=x.device)
    flat = power.flatten(1)
    idx = r.flatten()[None].expand_as(flat)
    sums = torch.zeros(flat.shape[0], n_bins + 1, dtype=flat.dtype, device=flat.device).scatter_add_(
        1, idx, flat
    )
    counts = torch.bincount(r.flatten(), minlength=n_bins + 1).to(flat.dtype)
    return (sums / counts)[:, :n_bins]


def rapsd_distance(images_a: torch.Tensor, images_b: torch.Tensor, eps=1e-12) -> float:
    """Mean over radii >= 1 of |log10 RAPSD_a - log10 RAPSD_b| of the set-averaged spectra."""
    pa, pb = rapsd(images_a).mean(0)[1:], rapsd(images_b).mean(0)[1:]
    return float((torch.log10(pa + eps) - torch.log10(pb + eps)).abs().mean())


def snr_curves(images: torch.Tensor, resolutions, sigma: float):
    """{resolution: (frequency in cycles per image width, SNR in dB)} for images resized to each resolution.

    Gaussian noise of std sigma adds power sigma^2 at every frequency (orthonormal FFT), so SNR(f) =
    RAPSD(f) / sigma^2. At the same sigma and the same frequency of the depicted scene, a higher
    resolution has a higher SNR (for natural spectra by about the ratio of pixel counts): noise that
    destroys a 64x64 image leaves the low frequencies of its 256x256 version intact, the observation
    behind RDM's Figure 2 and its relay stages.
    """
    curves = {}
    for res in resolutions:
        x = images.to(torch.float64)
        mode = "area" if x.shape[-1] >= res else "bicubic"
        x = F.interpolate(x, size=(res, res), mode=mode)
        p = rapsd(x).mean(0)[1:]
        freq = torch.arange(1, p.numel() + 1, dtype=torch.float64)
        curves[int(res)] = (freq.numpy(), (10 * torch.log10(p / sigma**2)).numpy())
    return curves


def plot_snr(curves: dict, path: str, title: str = "SNR vs frequency") -> str:
    """Write SNR curves ({resolution: (f, dB)}) as a PNG."""
    return plot_curves({f"{res}x{res}": c for res, c in curves.items()}, path, title, "SNR (dB)")


def rapsd_curves(sets: dict) -> dict:
    """{name: (frequency, log10 RAPSD)} of each image set's mean spectrum (DC excluded)."""
    out = {}
    for name, images in sets.items():
        p = rapsd(images).mean(0)[1:]
        out[name] = (torch.arange(1, p.numel() + 1, dtype=torch.float64).numpy(), torch.log10(p + 1e-12).numpy())
    return out


def plot_curves(curves: dict, path: str, title: str, ylabel: str) -> str:
    """Write {label: (x, y)} curves as a PNG: matplotlib when installed, else a plain PIL chart."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return _plot_pil(curves, path, title, ylabel)
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for label, (f, y) in curves.items():
        ax.plot(f, y, label=label)
    ax.set_xlabel("frequency (cycles per image width)")
    ax.set_xscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


_COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def _plot_pil(curves: dict, path: str, title: str, ylabel: str) -> str:
    from PIL import Image, ImageDraw, ImageFont

    w, h, left, right, top, bottom = 640, 440, 60, 20, 30, 45
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    # Pillow's default FreeType font draws a space 2 px wide, so titles read as one word; its
    # bitmap font (Pillow >= 10.1) spaces words as a chart needs.
    draw.font = ImageFont.load_default_imagefont() if hasattr(ImageFont, "load_default_imagefont") else None
    xs = np.concatenate([c[0] for c in curves.values()])
    ys = np.concatenate([c[1] for c in curves.values()])
    ys = ys[np.isfinite(ys)]
    x0, x1 = 0.0, float(xs.max())
    step = 10 if ys.max() - ys.min() > 10 else 1
    y0, y1 = math.floor(ys.min() / step) * step, math.ceil(ys.max() / step) * step
    y1 = y1 if y1 > y0 else y0 + step

    def px(x, y):
        return (
            left + (x - x0) / (x1 - x0) * (w - left - right),
            top + (y1 - y) / (y1 - y0) * (h - top - bottom),
        )

    draw.rectangle([left, top, w - right, h - bottom], outline="black")
    for k in range(6):  # ticks
        xv, yv = x0 + (x1 - x0) * k / 5, y0 + (y1 - y0) * k / 5
        gx, _ = px(xv, y0)
        _, gy = px(x0, yv)
        draw.line([gx, h - bottom, gx, h - bottom + 4], fill="black")
        draw.text((gx - 12, h - bottom + 6), f"{xv:.0f}", fill="black")
        draw.line([left - 4, gy, left, gy], fill="black")
        draw.text((5, gy - 6), f"{yv:.3g}", fill="black")
    draw.text((left + 150, h - 15), "frequency (cycles per image width)", fill="black")
    draw.text((5, 8), ylabel, fill="black")
    draw.text((left + 200, 8), title, fill="black")
    for n, (label, (f, snr)) in enumerate(curves.items()):
        color = _COLORS[n % len(_COLORS)]
        pts = [px(a, b) for a, b in zip(f, snr, strict=False) if np.isfinite(b)]
        if len(pts) > 1:
            draw.line(pts, fill=color, width=2)
        ly = top + 10 + 16 * n
        draw.line([w - right - 110, ly + 6, w - right - 85, ly + 6], fill=color, width=3)
        draw.text((w - right - 80, ly), str(label), fill="black")
    img.save(path)
    return path


# ---------------------------------------------------------------------------- sliced Wasserstein


def _gaussian_kernel(channels, dtype, device):
    k1 = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=dtype, device=device) / 16
    return (k1[:, None] * k1[None, :]).expand(channels, 1, 5, 5).contiguous()


def _pyr_down(x):
    k = _gaussian_kernel(x.shape[1], x.dtype, x.device)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), k, groups=x.shape[1])[..., ::2, ::2]


def _pyr_up(x):
    up = torch.zeros(*x.shape[:2], x.shape[2] * 2, x.shape[3] * 2, dtype=x.dtype, device=x.device)
    up[..., ::2, ::2] = x * 4
    k = _gaussian_kernel(x.shape[1], x.dtype, x.device)
    return F.conv2d(F.pad(up, (2, 2, 2, 2), mode="reflect"), k, groups=x.shape[1])


def laplacian_pyramid(x: torch.Tensor, min_res: int = 16) -> list[torch.Tensor]:
    """Band-pass levels from full resolution down to min_res; the last level is the low-pass residual."""
    levels = []
    while x.shape[-1] > min_res and x.shape[-1] % 2 == 0:
        down = _pyr_down(x)
        levels.append(x - _pyr_up(down))
        x = down
    levels.append(x)
    return levels


def _descriptors(level, patches_per_image, patch_size, gen):
    n, c, h, w = level.shape
    p = patch_size
    ys = torch.randint(0, h - p + 1, (n, patches_per_image), generator=gen)
    xs = torch.randint(0, w - p + 1, (n, patches_per_image), generator=gen)
    off = torch.arange(p)
    rows = (ys[..., None] + off)[..., :, None].expand(n, patches_per_image, p, p)
    cols = (xs[..., None] + off)[..., None, :].expand(n, patches_per_image, p, p)
    bidx = torch.arange(n)[:, None, None, None].expand_as(rows)
    patches = level.permute(0, 2, 3, 1)[bidx, rows, cols]  # [n, P, p, p, c]
    return patches.reshape(-1, p * p, c)


def _swd(a, b, dirs_per_repeat, repeats, gen):
    total = 0.0
    for _ in range(repeats):
        dirs = torch.randn(a.shape[1], dirs_per_repeat, generator=gen, dtype=a.dtype)
        dirs = dirs / dirs.norm(dim=0, keepdim=True)
        pa, _ = (a @ dirs).sort(0)
        pb, _ = (b @ dirs).sort(0)
        total += float((pa - pb).abs().mean())
    return total / repeats


def sliced_wasserstein(
    images_a,
    images_b,
    patches_per_image=128,
    patch_size=7,
    dirs_per_repeat=128,
    repeats=4,
    min_res=16,
    seed=0,
) -> list[float]:
    """SWD x 1e3 per Laplacian-pyramid level (full resolution first) between two equally sized sets."""
    n = min(images_a.shape[0], images_b.shape[0])
    a, b = images_a[:n].to(torch.float64).cpu(), images_b[:n].to(torch.float64).cpu()
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"image shapes differ: {tuple(a.shape[1:])} vs {tuple(b.shape[1:])}")
    out = []
    for la, lb in zip(laplacian_pyramid(a, min_res), laplacian_pyramid(b, min_res), strict=False):
        p = min(patch_size, la.shape[-1])
        # The same patch positions in both sets, so identical sets give exactly zero.
        da = _descriptors(la, patches_per_image, p, torch.Generator().manual_seed(seed))
        db = _descriptors(lb, patches_per_image, p, torch.Generator().manual_seed(seed))
        # Per-channel normalization as ProGAN, but with statistics pooled over both sets: ProGAN's
        # per-set normalization would hide a change of contrast in a band, which blur is.
        both = torch.cat([da, db])
        mean, std = both.mean(dim=(0, 1)), both.std(dim=(0, 1)).clamp_min(1e-8)
        da, db = ((d - mean) / std for d in (da, db))
        da, db = da.reshape(da.shape[0], -1), db.reshape(db.shape[0], -1)
        out.append(_swd(da, db, dirs_per_repeat, repeats, torch.Generator().manual_seed(seed + 1)) * 1e3)
    return out
