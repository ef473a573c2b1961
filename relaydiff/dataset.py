"""Datasets: uint8 CHW images in memory plus integer class labels (as NVlabs/edm `training/dataset.py`).

Sources (`open_dataset(data, resolution, seed)`):
* `builtin` (default): random square crops of scikit-image's bundled photographs (read straight
  from the files inside the installed wheel, no download), label = photo index. The crops are a
  function of the seed only.
* a folder of images (recursively); labels from `dataset.json` ({"labels": [[fname, label], ...]})
  when present, else from the first-level subfolder name, else none.
* an EDM-style zip: images plus an optional `dataset.json` in the same format.
Non-square images are center-cropped and every image is resized to `resolution`.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
import zlib

import numpy as np
import PIL.Image
import torch

from .extras import require

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")

# Colour photographs shipped inside the scikit-image wheel (skimage/data/*), so no pooch fetch.
BUILTIN_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg",
                  "retina.jpg", "motorcycle_left.png", "ihc.png")


class ImageDataset(torch.utils.data.Dataset):
    """images: uint8 [N, C, H, W]; labels: int64 [N] or None; label_dim: number of classes (0: none)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray | None, name: str):
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.labels = None if labels is None else torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.label_dim = 0 if labels is None else int(self.labels.max()) + 1
        self.name = name

    @property
    def resolution(self) -> int:
        return self.images.shape[-1]

    def __len__(self):
        return self.images.shape[0]

    def __getitem__(self, idx):
        label = -1 if self.labels is None else int(self.labels[idx])
        return self.images[idx], label

    def batch(self, indices: torch.Tensor):
        """(uint8 images [B,C,H,W], int64 labels [B] or None) for a tensor of indices."""
        labels = None if self.labels is None else self.labels[indices]
        return self.images[indices], labels


def _to_array(img: PIL.Image.Image, resolution: int) -> np.ndarray:
    img = img.convert("RGB")
    w, h = img.size
    s = min(w, h)
    img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    img = img.resize((resolution, resolution), PIL.Image.LANCZOS)
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def _decode(data: bytes | str, name: str) -> PIL.Image.Image:
    try:
        img = PIL.Image.open(data if isinstance(data, str) else io.BytesIO(data))
        img.load()
    except Exception as exc:  # PIL raises several types for bad files
        raise ValueError(f"cannot read image {name}: {exc}") from exc
    return img


# Class labels index a one-hot of label_dim = max label + 1 entries: bound them (as checkpoint.py
# bounds a loaded config's label_dim) so a typo cannot ask for terabytes.
MAX_LABEL = 999_999


def _labels_from_json(text: str, name: str) -> dict:
    """{file name: label} from dataset.json's {"labels": [[file name, int label], ...]} (or null)."""
    try:
        labels = json.loads(text).get("labels")
    except (json.JSONDecodeError, AttributeError) as exc:
        raise ValueError(f"{name}: not a valid dataset.json ({exc})") from exc
    if labels is None:
        return {}
    if not isinstance(labels, list):
        raise ValueError(f"{name}: \"labels\" must be a list of [file name, label] pairs, got {labels!r}")
    table = {}
    for entry in labels:
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)):
            raise ValueError(f"{name}: each label must be a [file name, label] pair, got {entry!r}")
        fname, lab = entry
        if isinstance(lab, bool) or not isinstance(lab, int) or not 0 <= lab <= MAX_LABEL:
            raise ValueError(f"{name}: the label of {fname} must be an int in [0, {MAX_LABEL}], got {lab!r}")
        table[fname.replace("\\", "/")] = lab
    return table


def builtin_dataset(resolution: int, num_images: int = 512, seed: int = 0,
                    min_frac: float = 0.5) -> ImageDataset:
    """Random square crops (side min_frac..1 of the short edge) of the bundled photographs."""
    skimage = require("skimage", "train", "--data builtin (scikit-image's bundled photographs)", "scikit-image")

    root = os.path.join(os.path.dirname(skimage.__file__), "data")
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, fname in enumerate(BUILTIN_PHOTOS):
        photo = _decode(os.path.join(root, fname), fname).convert("RGB")
        shrink = min(photo.size) / max(4 * resolution, 128)  # pre-shrink: crops resize 10x faster
        if shrink > 1:
            photo = photo.resize((round(photo.size[0] / shrink), round(photo.size[1] / shrink)),
                                 PIL.Image.LANCZOS)
        w, h = photo.size
        for _ in range(num_images // len(BUILTIN_PHOTOS)):
            s = int(min(w, h) * rng.uniform(min_frac, 1.0))
            x, y = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
            images.append(_to_array(photo.crop((x, y, x + s, y + s)), resolution))
            labels.append(label)
    return ImageDataset(np.stack(images), np.array(labels), "builtin")


def folder_dataset(path: str, resolution: int) -> ImageDataset:
    files = sorted(
        os.path.relpath(os.path.join(root, f), path).replace(os.sep, "/")
        for root, _, names in os.walk(path) for f in names if f.lower().endswith(IMAGE_EXTS)
    )
    if not files:
        raise ValueError(f"--data {path}: no images ({', '.join(IMAGE_EXTS)}) found")
    meta = os.path.join(path, "dataset.json")
    if os.path.isfile(meta):
        with open(meta) as f:
            table = _labels_from_json(f.read(), meta)
    else:
        classes = sorted({f.split("/")[0] for f in files if "/" in f})
        table = {f: classes.index(f.split("/")[0]) for f in files if "/" in f} if classes else {}
    images = [_to_array(_decode(os.path.join(path, f), os.path.join(path, f)), resolution) for f in files]
    return ImageDataset(np.stack(images), _label_array(files, table, path), os.path.basename(path))


def _read_member(zf: zipfile.ZipFile, member: str, path: str) -> bytes:
    try:
        return zf.read(member)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:  # bad CRC, truncated, ...
        raise ValueError(f"--data {path}: cannot read {member} ({exc})") from exc


def zip_dataset(path: str, resolution: int) -> ImageDataset:
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise ValueError(f"--data {path}: not a zip file ({exc})") from exc
    with zf:
        files = sorted(n for n in zf.namelist() if n.lower().endswith(IMAGE_EXTS))
        if not files:
            raise ValueError(f"--data {path}: no images ({', '.join(IMAGE_EXTS)}) in the zip")
        table = {}
        if "dataset.json" in zf.namelist():
            table = _labels_from_json(_read_member(zf, "dataset.json", path).decode(), f"{path}:dataset.json")
        images = [_to_array(_decode(_read_member(zf, f, path), f"{path}:{f}"), resolution) for f in files]
    return ImageDataset(np.stack(images), _label_array(files, table, path), os.path.basename(path))


def _label_array(files, table, path):
    if not table:
        return None
    missing = [f for f in files if f not in table]
    if missing:
        raise ValueError(f"{path}: dataset.json has no label for {missing[0]} ({len(missing)} missing)")
    return np.array([table[f] for f in files])


def open_dataset(data: str, resolution: int, seed: int = 0) -> ImageDataset:
    if data == "builtin":
        return builtin_dataset(resolution, seed=seed)
    if not os.path.exists(data):
        raise FileNotFoundError(f"--data {data}: no such file or directory "
                                "(use a folder, a .zip or 'builtin')")
    if os.path.isdir(data):
        return folder_dataset(data, resolution)
    return zip_dataset(data, resolution)


def global_indices(step: int, batch: int, size: int, seed: int) -> torch.Tensor:
    """Dataset indices of the global batch at `step`: positions step*batch.. of an endless stream of
    per-epoch permutations, each seeded by (seed, epoch). A function of (seed, step) only, so a
    resumed run and any rank count see the same images."""
    pos = torch.arange(step * batch, (step + 1) * batch)
    out = torch.empty(batch, dtype=torch.int64)
    for epoch in pos.div(size, rounding_mode="floor").unique().tolist():
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        perm = torch.randperm(size, generator=g)
        sel = pos.div(size, rounding_mode="floor") == epoch
        out[sel] = perm[pos[sel] % size]
    return out
