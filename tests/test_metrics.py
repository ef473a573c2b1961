"""Metric math on known cases: synthetic features and images, no Inception weights."""

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


def test_sfid_features_shape():
    spatial = torch.randn(3, 768, 17, 17)
    assert metrics.sfid_features(spatial).shape == (3, 7 * 17 * 17)


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


def test_load_inception_missing_file_explains(tmp_path):
    with pytest.raises(FileNotFoundError, match="inception-2015-12-05"):
        metrics.load_inception(str(tmp_path / "missing.pt"))
    with pytest.raises(FileNotFoundError, match="--inception"):
        metrics.load_inception(None)


def test_inception_features_with_torchscript_stub(tmp_path):
    class Stub(torch.nn.Module):
        def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
            return x.float().mean(dim=(2, 3)) / 255

    path = tmp_path / "stub.pt"
    torch.jit.script(Stub()).save(str(path))
    det = metrics.load_inception(str(path))
    gray = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)
    assert metrics.inception_features(det, gray, batch=2).shape == (5, 3)  # grayscale -> RGB
    rgb = torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    res = rd_eval.compare(rgb, rgb, ["fid", "kid"], str(path), kid_subsets=5)
    assert abs(res["fid"]) < 1e-6 and abs(res["kid"]) < 1e-3


def test_sfid_with_torchscript_stub(tmp_path):
    class Spatial(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.avg_pool2d(x.float() / 255, 2).repeat(1, 3, 1, 1)  # [N, 9, h/2, w/2]

    path = tmp_path / "spatial.pt"
    torch.jit.script(Spatial()).save(str(path))
    g = torch.Generator().manual_seed(1)
    rgb = torch.randint(0, 256, (30, 3, 4, 4), dtype=torch.uint8, generator=g)
    det = metrics.load_sfid_detector(str(path))
    assert metrics.spatial_features(det, rgb, batch=7).shape == (30, 7 * 2 * 2)  # first 7 channels
    same = rd_eval.compare(rgb, rgb, ["sfid"], sfid_detector=str(path))
    shifted = rd_eval.compare(rgb, (rgb // 2), ["sfid"], sfid_detector=str(path))
    assert abs(same["sfid"]) < 1e-6 and shifted["sfid"] > 1e-3
    with pytest.raises(FileNotFoundError, match="mixed_6/conv"):
        rd_eval.compare(rgb, rgb, ["sfid"])


def _write_folder(folder, images):
    folder.mkdir()
    arr = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i, a in enumerate(arr):
        PIL.Image.fromarray(a).save(folder / f"{i:06d}.png")


def test_eval_cli(tmp_path, capsys):
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
    assert res["num_gen"] == 8 and res["rapsd_distance"] == 0.0 and res["swd"] == 0.0
    rc, err = run("compare", "--gen", tmp_path / "gen", "--ref", tmp_path / "ref", "--metrics", "fid")
    assert rc == 1 and "inception-2015-12-05" in err
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
