"""relaydiff.image_files.ImageFiles: listing, labels, the zip/folder agreement and the decoding limits."""

import json
import os
import pickle
import zipfile

import numpy as np
import PIL.Image
import pytest

from relaydiff import image_files
from relaydiff.image_files import ImageFiles


def _png(path, value=0, size=(6, 5)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    PIL.Image.fromarray(np.full((size[1], size[0], 3), value, dtype=np.uint8)).save(path)


def _zip_of(folder, dest):
    with zipfile.ZipFile(dest, "w") as zf:
        for root, _, names in os.walk(folder):
            for n in names:
                full = os.path.join(root, n)
                zf.write(full, os.path.relpath(full, folder).replace(os.sep, "/"))
    return str(dest)


def test_folder_and_zip_list_the_same_sorted_names_and_class_labels(tmp_path):
    src = tmp_path / "src"
    for name, v in (("dog/b.png", 1), ("cat/x.JPG", 2), ("cat/a.png", 3), ("dog/sub/c.png", 4)):
        if name.endswith(".JPG"):
            os.makedirs(src / "cat", exist_ok=True)
            PIL.Image.new("RGB", (4, 4), (v, v, v)).save(src / name, format="JPEG")
        else:
            _png(src / name, v)
    (src / "cat" / "notes.txt").write_text("not an image")
    folder, packed = ImageFiles(str(src)), ImageFiles(_zip_of(src, tmp_path / "s.zip"))
    for files in (folder, packed):
        assert files.names == ["cat/a.png", "cat/x.JPG", "dog/b.png", "dog/sub/c.png"]
        assert files.labels == [0, 0, 1, 1] and files.label_dim == 2 and len(files) == 4
        assert files.read(0).size == (6, 5) and files.read(0).getpixel((0, 0)) == (3, 3, 3)
    assert folder.where(2) == os.path.join(str(src), "dog/b.png")
    assert packed.where(2) == f"{tmp_path / 's.zip'}:dog/b.png"


def test_label_rules(tmp_path):
    _png(tmp_path / "one" / "only" / "a.png")
    _png(tmp_path / "one" / "only" / "b.png")
    assert ImageFiles(str(tmp_path / "one")).labels is None  # one class folder: unlabelled (EDM's rule)
    _png(tmp_path / "mixed" / "top.png")
    _png(tmp_path / "mixed" / "c1" / "a.png")
    _png(tmp_path / "mixed" / "c2" / "a.png")
    assert ImageFiles(str(tmp_path / "mixed")).labels is None  # not every image in a class folder
    meta = tmp_path / "mixed" / "dataset.json"
    meta.write_text(json.dumps({"labels": [["c1/a.png", 5], ["c2/a.png", 0], ["top.png", 2]]}))
    files = ImageFiles(str(tmp_path / "mixed"))
    assert files.labels == [5, 0, 2] and files.label_dim == 6
    meta.write_text(json.dumps({"labels": None}))
    assert ImageFiles(str(tmp_path / "mixed")).labels is None
    meta.write_text(json.dumps({"labels": [["c1/a.png", 1]]}))
    with pytest.raises(ValueError, match=r"no label for c2/a.png \(2 missing\)"):
        ImageFiles(str(tmp_path / "mixed"))
    for bad, why in (("{", "not a valid dataset.json"), ('{"labels": 3}', "must be a list"),
                     ('{"labels": [["top.png", -1]]}', "must be an int"),
                     ('{"labels": [["top.png", true]]}', "must be an int"), ('{"labels": [[1, 2]]}', "pair")):
        meta.write_text(bad)
        with pytest.raises(ValueError, match=why):
            ImageFiles(str(tmp_path / "mixed"))


def test_top_level_first_and_skip(tmp_path):
    for name in ("0.png", "1.png", "grid.png", "stage1/0.png"):
        _png(tmp_path / name)
    assert ImageFiles(str(tmp_path)).names == ["0.png", "1.png", "grid.png", "stage1/0.png"]
    files = ImageFiles(str(tmp_path), top_level_first=True, skip=lambda n: n.startswith("grid"))
    assert files.names == ["0.png", "1.png"]


def test_picklable_and_reopens_its_zip(tmp_path):
    _png(tmp_path / "d" / "a.png", 9)
    files = ImageFiles(_zip_of(tmp_path / "d", tmp_path / "d.zip"))
    files.read(0)
    copy = pickle.loads(pickle.dumps(files))
    assert copy._zip is None and copy.read(0).getpixel((0, 0)) == (9, 9, 9)
    files.close()
    assert files.read(0).getpixel((1, 1)) == (9, 9, 9)  # reopened on demand


def test_bad_inputs_are_named(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="--data .*nope: no such file"):
        ImageFiles(str(tmp_path / "nope"))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(ValueError, match="no images"):
        ImageFiles(str(tmp_path / "empty"), what="--source")
    (tmp_path / "plain.zip").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a zip file"):
        ImageFiles(str(tmp_path / "plain.zip"))
    _png(tmp_path / "imgs" / "big.png", size=(40, 30))
    (tmp_path / "imgs" / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    files = ImageFiles(str(tmp_path / "imgs"), what="--ref")
    with pytest.raises(ValueError, match=r"--ref|junk\.png: not a readable image"):
        files.read(1)
    monkeypatch.setattr(image_files, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ValueError, match=r"big\.png: not a readable image \(40x30 pixels, over the limit"):
        files.read(0)


def test_zip_bomb_member_refused(tmp_path):
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.png", b"\0" * (4 << 20))  # deflates about 1000:1 and more
    files = ImageFiles(str(path))
    with pytest.raises(ValueError, match=r"a\.png: 4194304 bytes unpacked from \d+, over the limits"):
        files.read(0)
