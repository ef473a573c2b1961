"""relaydiff.dataset: built-in crops, image folder, EDM zip, data order, bad inputs."""

import json
import os
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch

from relaydiff.dataset import builtin_dataset, global_indices, open_dataset


def _png(path, value, size=12):
    arr = np.full((size, size + 4, 3), value, dtype=np.uint8)  # non-square: center-cropped
    PIL.Image.fromarray(arr).save(path)


def test_builtin_deterministic_labels_are_photo_index():
    a = builtin_dataset(8, num_images=16, seed=3)
    b = builtin_dataset(8, num_images=16, seed=3)
    c = builtin_dataset(8, num_images=16, seed=4)
    assert a.images.shape == (16, 3, 8, 8) and a.images.dtype == torch.uint8
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert a.label_dim == 8 and a.labels.tolist() == [i // 2 for i in range(16)]


def test_folder_labels_from_subfolders_and_json(tmp_path):
    for cls, v in (("cat", 10), ("dog", 200)):
        os.makedirs(tmp_path / cls)
        for i in range(2):
            _png(tmp_path / cls / f"{i}.png", v)
    ds = open_dataset(str(tmp_path), 8)
    assert len(ds) == 4 and ds.images.shape == (4, 3, 8, 8) and ds.labels.tolist() == [0, 0, 1, 1]
    assert int(ds.images[0].float().mean()) == 10 and int(ds.images[3].float().mean()) == 200
    labels = [["cat/0.png", 3], ["cat/1.png", 2], ["dog/0.png", 1], ["dog/1.png", 0]]
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": labels}))
    assert open_dataset(str(tmp_path), 8).labels.tolist() == [3, 2, 1, 0]


def test_zip_dataset(tmp_path):
    src = tmp_path / "img.png"
    _png(src, 77)
    path = tmp_path / "data.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(3):
            zf.write(src, f"{i:05d}.png")
        zf.writestr("dataset.json", json.dumps({"labels": [[f"{i:05d}.png", i % 2] for i in range(3)]}))
    ds = open_dataset(str(path), 4)
    assert ds.images.shape == (3, 3, 4, 4) and ds.labels.tolist() == [0, 1, 0] and ds.label_dim == 2


def test_missing_path_and_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        open_dataset(str(tmp_path / "nope"), 8)
    _png(tmp_path / "good.png", 5)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="bad.png"):
        open_dataset(str(tmp_path), 8)
    path = tmp_path / "data.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("broken.jpg", b"\xff\xd8garbage")
    with pytest.raises(ValueError, match="broken.jpg"):
        open_dataset(str(path), 8)
    (tmp_path / "notzip.zip").write_bytes(b"plain")
    with pytest.raises(ValueError, match="not a zip"):
        open_dataset(str(tmp_path / "notzip.zip"), 8)


def test_global_indices_function_of_seed_and_step():
    a = torch.cat([global_indices(s, 4, 10, seed=1) for s in range(5)])  # two epochs of 10
    assert sorted(a[:10].tolist()) == list(range(10)) and sorted(a[10:].tolist()) == list(range(10))
    assert torch.equal(global_indices(3, 4, 10, seed=1), a[12:16])
    assert not torch.equal(global_indices(0, 4, 10, seed=2), a[:4])
