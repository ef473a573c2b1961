"""Metric math on known cases and against transcriptions of the released evaluator: synthetic
features and images, no Inception weights.

The `_released_*` functions below transcribe the formulas of the RDM authors' evaluate.py
(THUDM/RelayDiffusion at 6ee2d6f, the functions named in each docstring; ADM's evaluator,
openai/guided-diffusion evaluations/evaluator.py, has the same IS and manifold estimator), kept in
their original loop structure so that relaydiff.metrics' rewrites (streamed covariance, merged
k-NN partitions) are checked against them to 1e-6 relative.
"""

from __future__ import annotations

import json
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F

from relaydiff import eval as rd_eval
from relaydiff import metrics


def test_frechet_distance_closed_form():
    mu1, mu2 = np.zeros(2), np.array([1.0, 2.0])
    s1, s2 = np.diag([1.0, 4.0]), np.diag([4.0, 9.0])
    # |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2 for commuting covariances = 5 + 1 + 1.
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(7.0, abs=1e-10)
    assert metrics.frechet_distance(mu2, s2, mu2, s2) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_closed_forms_non_commuting_and_1d():
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2 for variances s1^2, s2^2.
    assert metrics.frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4 + 1, rel=1e-12)
    # Rotating both covariances by the same orthogonal matrix leaves the distance unchanged, so a
    # non-diagonal pair gives the diagonal pair's 7.
    c, s = np.cos(0.7), np.sin(0.7)
    q = np.array([[c, -s], [s, c]])
    s1, s2 = q @ np.diag([1.0, 4.0]) @ q.T, q @ np.diag([4.0, 9.0]) @ q.T
    assert metrics.frechet_distance(np.zeros(2), s1, q @ np.array([1.0, 2.0]), s2) == pytest.approx(7.0, rel=1e-10)
    with pytest.raises(ValueError, match="do not match"):
        metrics.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_fid_from_features_identical_and_shifted():
    rng = np.random.RandomState(0)
    a = rng.randn(4000, 8)
    assert metrics.fid_from_features(a, a) == pytest.approx(0.0, abs=1e-6)
    b = rng.randn(4000, 8) * 2 + 0.5
    # Population value: 8 * 0.25 + 8 * (2 - 1)^2 = 10.
    assert metrics.fid_from_features(a, b) == pytest.approx(10.0, rel=0.05)


def test_kid_unbiased_near_zero_for_same_distribution():
    rng = np.random.RandomState(1)
    a, b = rng.randn(300, 16), rng.randn(300, 16)
    same = metrics.kernel_inception_distance(a, b, num_subsets=20, max_subset_size=200)
    shifted = metrics.kernel_inception_distance(a, b + 1.0, num_subsets=20, max_subset_size=200)
    assert abs(same) < 0.02 and shifted > 0.3


def test_sfid_features_are_the_released_nchw_flattening():
    spatial = torch.randn(3, 192, 17, 17)
    f = metrics.sfid_features(spatial)
    assert f.shape == (3, 2023) and f.dtype == torch.float64
    # evaluate.py calculate_activations: spatial[:, :7, :, :].reshape(N, -1), (channel, row, col) order.
    assert f[1, 17 * 17 * 2 + 17 * 5 + 3] == spatial[1, 2, 5, 3].double()


# ---------------------------------------------------------------- transcriptions of the released evaluate.py


def _released_stats(acts, batch_size=64):
    """evaluate.py calculate_inception_stats_from_activations (float64 sums over batches of 64)."""
    n, d = acts.shape
    mu, sigma = np.zeros(d), np.zeros((d, d))
    for i in range((n - 1) // batch_size + 1):
        b = np.asarray(acts[i * batch_size:(i + 1) * batch_size], dtype=np.float64)
        mu += b.sum(0)
        sigma += b.T @ b
    mu /= n
    sigma -= np.outer(mu, mu) * n
    sigma /= n - 1
    return mu, sigma


def _released_fid(mu, sigma, mu_ref, sigma_ref):
    """evaluate.py calculate_fid_from_inception_stats."""
    import scipy.linalg

    m = np.square(mu - mu_ref).sum()
    s = scipy.linalg.sqrtm(np.dot(sigma, sigma_ref))
    return float(np.real(m + np.trace(sigma + sigma_ref - s * 2)))


def _released_is(logits, split_size=5000):
    """evaluate.py calculate_inception_score_from_activations after the detector's output layer:
    softmax exp / sum exp in float64, then exp(mean KL) per split of split_size, averaged."""
    feats = np.asarray(logits, dtype=np.float32).astype(np.float64)
    preds = np.exp(feats) / np.sum(np.exp(feats), axis=-1)[..., None]
    scores = []
    for i in range(0, len(preds), split_size):
        part = preds[i:i + split_size]
        kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    return float(np.mean(scores))


def _released_dist(u, v):
    """evaluate.py _pairwise_distances."""
    d = np.square(u).sum(1).reshape(-1, 1) - 2 * np.matmul(u, v.T) + np.square(v).sum(1).reshape(1, -1)
    return np.max([d, np.zeros_like(d)], axis=0)


def _released_radii(f, row=10000, col=10000):
    """evaluate.py ManifoldEstimator.manifold_radii, nhood_sizes=(3,): a float32 [rows, N] distance
    buffer, then the 4th smallest (index 3) of each row by np.partition with kth=[0, 1, 2, 3]."""
    n = len(f)
    radii = np.zeros([n, 1], dtype=np.float32)
    buf = np.zeros([row, n], dtype=np.float32)
    for b1 in range(0, n, row):
        e1 = min(b1 + row, n)
        for b2 in range(0, n, col):
            e2 = min(b2 + col, n)
            buf[0:e1 - b1, b2:e2] = _released_dist(f[b1:e1], f[b2:e2])
        radii[b1:e1, :] = np.partition(buf[0:e1 - b1, :], np.arange(4), axis=1)[:, [3]]
    return radii


def _released_pr(ref, sample, row=10000, col=10000):
    """evaluate.py calculate_precision_recall_from_activations / ManifoldEstimator.evaluate_pr / _less_thans."""
    r1, r2 = _released_radii(ref, row, col), _released_radii(sample, row, col)
    s1 = np.zeros([len(ref), 1], dtype=bool)
    s2 = np.zeros([len(sample), 1], dtype=bool)
    for b1 in range(0, len(ref), row):
        for b2 in range(0, len(sample), col):
            d = _released_dist(ref[b1:b1 + row], sample[b2:b2 + col])[..., None]
            s1[b1:b1 + row] |= np.any(d <= r2[b2:b2 + col], axis=1)
            s2[b2:b2 + col] |= np.any(d <= r1[b1:b1 + row][:, None], axis=0)
    return float(np.mean(s2.astype(np.float64))), float(np.mean(s1.astype(np.float64)))


def _features(n, d, seed, shift=0.0, scale=1.0):
    rng = np.random.RandomState(seed)
    return rng.randn(n, d) @ (np.eye(d) + 0.3 * rng.randn(d, d)) * scale + shift


def test_fid_and_stats_match_released_transcription():
    a, b = _features(300, 24, 0), _features(250, 24, 1, shift=0.4, scale=1.3)
    mu, sigma = metrics.feature_stats(a)
    rmu, rsigma = _released_stats(a)
    np.testing.assert_allclose(mu, rmu, rtol=1e-12)
    np.testing.assert_allclose(sigma, rsigma, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(a, rowvar=False), rtol=1e-9, atol=1e-12)
    ours = metrics.fid_from_features(a, b)
    assert ours == pytest.approx(_released_fid(*_released_stats(a), *_released_stats(b)), rel=1e-6)
    # Sample and reference swapped: the trace of sqrtm(S1 S2) is symmetric, so is FID.
    assert metrics.fid_from_features(b, a) == pytest.approx(ours, rel=1e-6)


def test_fid_of_sampled_gaussians_approaches_closed_form():
    rng = np.random.RandomState(3)
    d = 6
    s1, s2 = np.diag(np.arange(1.0, d + 1)), np.diag(np.full(d, 2.0))
    mu2 = np.full(d, 0.5)
    a = rng.multivariate_normal(np.zeros(d), s1, size=20000)
    b = rng.multivariate_normal(mu2, s2, size=20000)
    exact = d * 0.25 + sum((np.sqrt(k) - np.sqrt(2.0)) ** 2 for k in range(1, d + 1))
    assert metrics.fid_from_features(a, b) == pytest.approx(exact, rel=0.03)


def test_inception_score_matches_released_transcription_and_closed_forms():
    rng = np.random.RandomState(4)
    logits = (rng.randn(12000, 50) * 3).astype(np.float32)  # 3 splits: 5000, 5000 and a short 2000
    assert metrics.inception_score(logits) == pytest.approx(_released_is(logits), rel=1e-6)
    assert metrics.inception_score(logits, split_size=700) == pytest.approx(_released_is(logits, 700), rel=1e-6)
    # Confident and balanced over C classes: IS -> C. The same prediction for every image: IS = 1.
    confident = np.full((400, 10), -40.0)
    confident[np.arange(400), np.arange(400) % 10] = 40.0
    assert metrics.inception_score(confident) == pytest.approx(10.0, rel=1e-9)
    assert metrics.inception_score(np.tile(rng.randn(1, 10), (50, 1))) == pytest.approx(1.0, abs=1e-12)


def test_manifold_radii_are_kth_neighbour_distances():
    f = _features(57, 5, 5)
    d = ((f[:, None] - f[None]) ** 2).sum(-1)
    brute = np.sort(d, axis=1)[:, 3]  # index 0 is the point itself
    np.testing.assert_allclose(metrics.manifold_radii(f), brute, rtol=1e-5)
    np.testing.assert_array_equal(metrics.manifold_radii(f), _released_radii(f)[:, 0])
    # Merging per column block (and splitting rows) gives the same float32 radii.
    np.testing.assert_array_equal(metrics.manifold_radii(f, row_batch=8, col_batch=5), _released_radii(f)[:, 0])


@pytest.mark.parametrize("blocks", [(10000, 10000), (13, 7)])
def test_precision_recall_matches_released_transcription(blocks):
    ref = _features(220, 16, 6)
    sample = _features(180, 16, 7, shift=0.3, scale=0.8)
    ours = metrics.precision_recall(ref, sample, row_batch=blocks[0], col_batch=blocks[1])
    released = _released_pr(ref, sample, *blocks)
    assert ours == pytest.approx(released, rel=1e-6)
    assert 0 < ours[0] < 1 and 0 < ours[1] < 1


def test_precision_recall_closed_cases():
    ref = _features(100, 8, 8)
    assert metrics.precision_recall(ref, ref) == (1.0, 1.0)
    assert metrics.precision_recall(ref, ref + 1000.0) == (0.0, 0.0)  # disjoint manifolds
    # Samples on a tight cluster inside the reference cloud: all precise, and they cover few references.
    tight = ref[:1] + 1e-3 * _features(50, 8, 9)
    precision, recall = metrics.precision_recall(ref, tight)
    assert precision == 1.0 and recall < 0.1
    with pytest.raises(ValueError, match="more than 3"):
        metrics.precision_recall(ref[:3], ref[:3])


def _pink_images(n, res, seed=0):
    """Images with a 1/f amplitude spectrum (natural-image-like), scaled into about [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    white = torch.randn(n, 3, res, res, generator=g, dtype=torch.float64)
    f = torch.sqrt(torch.fft.fftfreq(res)[:, None] ** 2 + torch.fft.fftfreq(res)[None, :] ** 2)
    spec = torch.fft.fft2(white) / f.clamp_min(1.0 / res)
    x = torch.fft.ifft2(spec).real
    return (x / x.std() * 0.4).clamp(-1, 1)


def test_rapsd_white_noise_flat_and_identical_zero():
    x = 0.3 * torch.randn(64, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    p = metrics.rapsd(x).mean(0)[1:]
    assert torch.allclose(p, torch.full_like(p, 0.09), rtol=0.1)
    assert metrics.rapsd_distance(x, x) == 0.0


def test_rapsd_blur_deficit_at_high_frequencies():
    x = _pink_images(16, 32)
    k = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64) / 4
    kernel = (k[:, None] * k[None]).expand(3, 1, 3, 3).contiguous()
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="circular"), kernel, groups=3)
    ratio = metrics.rapsd(blurred).mean(0) / metrics.rapsd(x).mean(0)
    assert ratio[1] > 0.95 and ratio[-1] < 0.1  # low frequencies kept, high ones lost
    assert (ratio[2:] <= ratio[1:-1] + 1e-9).all()  # monotone deficit
    assert metrics.rapsd_distance(x, blurred) > 0.2


def test_snr_curves_lower_at_higher_resolution_and_plot(tmp_path):
    x = _pink_images(8, 128)
    curves = metrics.snr_curves(x, [32, 128], sigma=0.5)
    f32, s32 = curves[32]
    f128, s128 = curves[128]
    assert f32[-1] == 16 and f128[-1] == 64  # cycles per image width
    # Same scene frequency, same noise: the 4x larger image keeps about 16x (12 dB) more SNR.
    for k in (2, 6, 12):
        assert s128[k - 1] > s32[k - 1] + 8
    path = metrics.plot_snr(curves, str(tmp_path / "snr.png"))
    img = PIL.Image.open(path)
    assert img.format == "PNG" and img.size[0] > 100


def test_swd_identical_zero_and_detects_blur():
    x = _pink_images(16, 32, seed=2)
    y = _pink_images(16, 32, seed=3)
    blurred = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="bilinear", align_corners=False)
    kw = dict(patches_per_image=64, dirs_per_repeat=64, repeats=2)
    same = metrics.sliced_wasserstein(x, x, **kw)
    assert len(same) == 2 and all(v == 0.0 for v in same)  # 32 -> 16 band, 16 low-pass
    other = metrics.sliced_wasserstein(x, y, **kw)
    blur = metrics.sliced_wasserstein(x, blurred, **kw)
    assert blur[0] > 2 * other[0]  # finest band: blur changes patch statistics, a new sample does not


def test_laplacian_pyramid_levels():
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    levels = metrics.laplacian_pyramid(x, min_res=16)
    assert [lv.shape[-1] for lv in levels] == [64, 32, 16]


def _write_folder(folder, images):
    folder.mkdir()
    arr = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i, a in enumerate(arr):
        PIL.Image.fromarray(a).save(folder / f"{i:06d}.png")


def test_eval_cli(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RELAYDIFF_CACHE", str(tmp_path / "cache"))  # no detector there
    x = _pink_images(8, 32, seed=4)
    _write_folder(tmp_path / "gen", x)
    _write_folder(tmp_path / "ref", x)
    PIL.Image.new("RGB", (64, 64)).save(tmp_path / "gen" / "grid.png")  # skipped by the loader

    def run(*a):
        capsys.readouterr()
        rc = rd_eval.main([str(v) for v in a])
        return rc, capsys.readouterr().err

    rc, err = run(
        "compare",
        "--gen",
        tmp_path / "gen",
        "--ref",
        tmp_path / "ref",
        "--metrics",
        "rapsd,swd",
        "--json",
        tmp_path / "m.json",
    )
    assert rc == 0, err
    res = json.loads((tmp_path / "m.json").read_text())
    assert res["num_sample"] == 8 and res["rapsd_distance"] == 0.0 and res["swd"] == 0.0
    rc, err = run("compare", "--gen", tmp_path / "gen", "--ref", tmp_path / "ref", "--metrics", "fid")
    assert rc == 2 and "weights-inception-2015-12-05-6726825d.pth" in err and str(tmp_path / "cache") in err
    rc, err = run(
        "snr", "--images", tmp_path / "ref", "--resolutions", "16,32", "--out", tmp_path / "snr.png"
    )
    assert rc == 0, err
    assert PIL.Image.open(tmp_path / "snr.png").format == "PNG"


def test_eval_cli_help_shows_defaults(capsys):
    with pytest.raises(SystemExit) as exc:
        rd_eval.parse_args(["compare", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert exc.value.code == 0 and "(default: fid,kid)" in out


def test_psd_plot_of_real_vs_generated(tmp_path):
    from relaydiff import metrics

    g = torch.Generator().manual_seed(0)
    real = torch.randn(4, 3, 32, 32, generator=g, dtype=torch.float64)
    blurred = torch.nn.functional.avg_pool2d(real, 3, stride=1, padding=1)
    curves = metrics.rapsd_curves({"real": real, "generated": blurred})
    assert curves["generated"][1][-1] < curves["real"][1][-1] - 0.5  # high frequencies lost
    path = metrics.plot_curves(curves, str(tmp_path / "psd.png"), "RAPSD", "log10 power")
    from PIL import Image

    assert Image.open(path).size[0] > 100


def test_eval_corrupt_image_is_a_usage_error_naming_the_file(tmp_path, capsys):
    _write_folder(tmp_path / "imgs", _pink_images(2, 16, seed=1))
    (tmp_path / "imgs" / "000009.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ValueError, match="000009.png"):
        rd_eval.load_images(str(tmp_path / "imgs"))
    capsys.readouterr()
    rc = rd_eval.main(["snr", "--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "snr.png")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("relaydiff.eval: error: ") and "000009.png" in err, err
    with zipfile.ZipFile(tmp_path / "set.zip", "w") as zf:
        zf.writestr("a/bad.png", b"not an image")
    with pytest.raises(ValueError, match=r"set\.zip:a/bad\.png"):
        rd_eval.load_images(str(tmp_path / "set.zip"))
