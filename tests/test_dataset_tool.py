"""relaydiff.dataset_tool: EDM's output format, the transforms' crop rules, labels, atomic output,
and that relaydiff's training dataset reads what it writes.

Facts follow NVlabs/edm dataset_tool.py: names `{idx_str[:5]}/img{idx_str}.png` with idx_str =
f"{idx:08d}" (main's loop), uncompressed PNGs in a ZIP_STORED archive (open_dest), dataset.json
{"labels": [[name, label], ...] or null} (the end of main), center_crop / center_crop_wide in
make_transform.
"""

import json
import os
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch

from relaydiff import dataset_tool
from relaydiff.dataset import open_dataset


def _gradient(h, w):
    """An RGB image whose pixels all differ (so a crop's position is visible)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], axis=2).astype(np.uint8)


def _source(root):
    """Two class folders of non-square images of different sizes, one grayscale."""
    shapes = {"cats/a.png": (20, 30), "cats/b.png": (32, 24), "dogs/c.png": (30, 40), "dogs/d.png": (40, 40)}
    for name, (h, w) in shapes.items():
        os.makedirs(root / os.path.dirname(name), exist_ok=True)
        img = PIL.Image.fromarray(_gradient(h, w))
        (img.convert("L") if name.endswith("b.png") else img).save(root / name)
    return str(root), shapes


def _main(*args):
    return dataset_tool.main([str(a) for a in args] + ["--progress", "0"])


def test_zip_in_edm_format_read_by_training(tmp_path):
    src, shapes = _source(tmp_path / "src")
    dest = tmp_path / "out" / "data.zip"
    assert _main("--source", src, "--dest", dest, "--resolution", "16x16", "--transform", "center-crop") == 0
    with zipfile.ZipFile(dest) as zf:
        names = sorted(zf.namelist())
        assert names == ["00000/img00000000.png", "00000/img00000001.png", "00000/img00000002.png",
                         "00000/img00000003.png", "dataset.json"]
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}
        meta = json.loads(zf.read("dataset.json"))
        first = PIL.Image.open(zf.open("00000/img00000000.png"))
        assert first.size == (16, 16) and first.mode == "RGB"
    assert meta == {"labels": [[n, lab] for n, lab in zip(names[:4], [0, 0, 1, 1], strict=True)]}
    ds = open_dataset(str(dest), 16)
    images, labels = ds.batch(torch.arange(4))
    assert labels.tolist() == [0, 0, 1, 1] and images.shape == (4, 3, 16, 16)
    # The rule for cats/a.png (20x30): the central 20x20 square, LANCZOS to 16x16.
    want = PIL.Image.fromarray(_gradient(20, 30)[:, 5:25]).resize((16, 16), PIL.Image.LANCZOS)
    assert torch.equal(images[0], torch.from_numpy(np.asarray(want).copy()).permute(2, 0, 1))
    assert _main("--source", src, "--dest", dest) == 2  # never overwrites


def test_center_crop_wide_letterboxes_and_skips_small(tmp_path):
    src, _ = _source(tmp_path / "src")
    out = tmp_path / "wide"
    assert _main("--source", src, "--dest", out, "--resolution", "32x16", "--transform", "center-crop-wide") == 0
    # Inputs narrower than 32 (cats/a 30 wide, cats/b 24 wide) are skipped; their numbers stay unused.
    assert sorted(os.listdir(out / "00000")) == ["img00000002.png", "img00000003.png"]
    img = np.asarray(PIL.Image.open(out / "00000" / "img00000003.png"))  # dogs/d: 40x40
    assert img.shape == (32, 32, 3) and img[:8].max() == 0 and img[24:].max() == 0
    rows = round(32 * 40 / 40)  # EDM: round(W h / w) source rows, centred, resized to WxH
    want = PIL.Image.fromarray(_gradient(40, 40)[(40 - rows) // 2:(40 + rows) // 2]).resize((32, 16), PIL.Image.LANCZOS)
    assert np.array_equal(img[8:24], np.asarray(want))
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labels"] == [["00000/img00000002.png", 1], ["00000/img00000003.png", 1]]


def test_plain_resize_keeps_grayscale_and_checks_uniformity(tmp_path):
    gray = tmp_path / "gray"
    os.makedirs(gray)
    for i in range(3):
        PIL.Image.fromarray(_gradient(8, 8)[:, :, 0]).save(gray / f"{i}.png")
    assert _main("--source", gray, "--dest", tmp_path / "g.zip", "--max-images", 2) == 0
    with zipfile.ZipFile(tmp_path / "g.zip") as zf:
        assert PIL.Image.open(zf.open("00000/img00000001.png")).mode == "L"
        assert json.loads(zf.read("dataset.json")) == {"labels": None}
        assert len(zf.namelist()) == 3  # --max-images 2, plus dataset.json
    src, _ = _source(tmp_path / "src")
    assert _main("--source", src, "--dest", tmp_path / "x.zip") == 2  # sizes differ without --resolution
    assert _main("--source", src, "--dest", tmp_path / "y.zip", "--resolution", "24x24") == 2  # not a power of two
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.zip", "gray", "src"]  # no output, no temporaries


@pytest.mark.parametrize("dest", ["out.zip", "outdir"])
def test_unreadable_image_is_one_line_error_and_leaves_nothing(tmp_path, capsys, dest):
    src, _ = _source(tmp_path / "src")
    (tmp_path / "src" / "dogs" / "e.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    capsys.readouterr()
    assert _main("--source", src, "--dest", tmp_path / dest, "--resolution", "16x16",
                 "--transform", "center-crop") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dogs/e.png: not a readable image" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no partial output, no temporaries


def test_bad_options(tmp_path, capsys):
    src, _ = _source(tmp_path / "src")
    os.makedirs(tmp_path / "full")
    (tmp_path / "full" / "keep.txt").write_text("mine")
    assert _main("--source", src, "--dest", tmp_path / "full", "--resolution", "16x16") == 2
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    assert "not an empty folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        _main("--source", src, "--dest", tmp_path / "o.zip", "--resolution", "16")
    assert exc.value.code == 2 and "expected WxH" in capsys.readouterr().err
    assert _main("--source", src, "--dest", tmp_path / "o.zip", "--transform", "center-crop") == 2
    assert "needs --resolution" in capsys.readouterr().err
    assert _main("--source", tmp_path / "missing", "--dest", tmp_path / "o.zip") == 2
    assert "--source" in capsys.readouterr().err
