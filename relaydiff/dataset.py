"""Training datasets (uint8 CHW images plus integer class labels, as NVlabs/edm `training/dataset.py`)
and the rank's batch of each training step.

Sources (`open_dataset(data, resolution, seed, cache=False, xflip=False)`):
* `builtin` (default): random square crops of scikit-image's bundled photographs (read straight
  from the files inside the installed wheel, no download), label = photo index. The crops are a
  function of the seed only; always in memory (512 small crops).
* a folder of images or an EDM-style zip (images plus `dataset.json` labels), listed by
  relaydiff.image_files.ImageFiles (labels from dataset.json or the class subfolders). By default
  each image is decoded when a batch asks for it, so memory does not grow with the images; with
  cache=True (`--cache`) all are decoded once into RAM at start.
Every image is converted to RGB, center-cropped to a square and resized (LANCZOS) to `resolution`,
which leaves a relaydiff.dataset_tool output of that size untouched.

xflip (`--xflip`): EDM's dataset x-flips: the dataset doubles, index raw_len + i being image i
mirrored, so which copy a step uses comes from `global_indices` like the image itself.
"""

from __future__ import annotations

import os
import signal

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from .augment import SEED_STREAM, AugmentPipe
from .extras import require
from .image_files import ImageFiles, decode_image

# Colour photographs shipped inside the scikit-image wheel (skimage/data/*), so no pooch fetch.
BUILTIN_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg",
                  "retina.jpg", "motorcycle_left.png", "ihc.png")


class _Images(torch.utils.data.Dataset):
    """What the datasets share: len (doubled by xflip), labels, label_dim, batch(indices)."""

    def __init__(self, raw_len: int, labels, name: str, resolution: int, xflip: bool):
        self.raw_len, self.name, self.xflip = raw_len, name, bool(xflip)
        self.labels = None if labels is None else torch.as_tensor(np.asarray(labels, dtype=np.int64))
        self.label_dim = 0 if self.labels is None else int(self.labels.max()) + 1
        self.resolution = resolution

    def __len__(self):
        return self.raw_len * (2 if self.xflip else 1)

    def _raw_images(self, raw: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def batch(self, indices: torch.Tensor):
        """(uint8 images [B,C,H,W], int64 labels [B] or None) for a tensor of dataset indices."""
        indices = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= len(self)):
            raise IndexError(f"dataset {self.name}: index out of range [0, {len(self)})")
        raw = indices % self.raw_len
        images = self._raw_images(raw)
        flip = indices >= self.raw_len
        if bool(flip.any()):
            images[flip] = images[flip].flip(-1)
        return images, (None if self.labels is None else self.labels[raw])

    def __getitem__(self, idx):
        images, labels = self.batch(torch.tensor([idx]))
        return images[0], (-1 if labels is None else int(labels[0]))


class ImageDataset(_Images):
    """Decoded images in memory: uint8 [N, C, H, W] (`.images`); labels int [N] or None."""

    def __init__(self, images: np.ndarray, labels, name: str, xflip: bool = False):
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        super().__init__(self.images.shape[0], labels, name, self.images.shape[-1], xflip)

    def _raw_images(self, raw):
        return self.images[raw]


class LazyImageDataset(_Images):
    """The images of an ImageFiles collection, decoded and resized when a batch asks for them.
    Picklable (ImageFiles reopens its zip in each DataLoader worker)."""

    def __init__(self, files: ImageFiles, resolution: int, xflip: bool = False):
        self.files = files
        super().__init__(len(files), files.labels, os.path.basename(os.path.normpath(files.path)), resolution, xflip)

    def image(self, i: int) -> np.ndarray:
        return to_array(self.files.read(i), self.resolution)

    def _raw_images(self, raw):
        return torch.from_numpy(np.stack([self.image(i) for i in raw.tolist()]))


def to_array(img: PIL.Image.Image, resolution: int) -> np.ndarray:
    """uint8 [3, resolution, resolution]: RGB, center-cropped to a square, LANCZOS-resized."""
    img = img.convert("RGB")
    w, h = img.size
    s = min(w, h)
    img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    img = img.resize((resolution, resolution), PIL.Image.LANCZOS)  # PIL returns a copy when the size matches
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))


def builtin_dataset(resolution: int, num_images: int = 512, seed: int = 0,
                    min_frac: float = 0.5, xflip: bool = False) -> ImageDataset:
    """Random square crops (side min_frac..1 of the short edge) of the bundled photographs."""
    skimage = require("skimage", "train", "--data builtin (scikit-image's bundled photographs)", "scikit-image")

    root = os.path.join(os.path.dirname(skimage.__file__), "data")
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, fname in enumerate(BUILTIN_PHOTOS):
        with open(os.path.join(root, fname), "rb") as f:
            photo = decode_image(f.read(), os.path.join(root, fname)).convert("RGB")
        shrink = min(photo.size) / max(4 * resolution, 128)  # pre-shrink: crops resize 10x faster
        if shrink > 1:
            photo = photo.resize((round(photo.size[0] / shrink), round(photo.size[1] / shrink)),
                                 PIL.Image.LANCZOS)
        w, h = photo.size
        for _ in range(num_images // len(BUILTIN_PHOTOS)):
            s = int(min(w, h) * rng.uniform(min_frac, 1.0))
            x, y = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
            images.append(to_array(photo.crop((x, y, x + s, y + s)), resolution))
            labels.append(label)
    return ImageDataset(np.stack(images), np.array(labels), "builtin", xflip=xflip)


def cached_dataset(files: ImageFiles, resolution: int, xflip: bool = False) -> ImageDataset:
    """Every image decoded once into one preallocated uint8 array (no list-then-stack copy)."""
    lazy = LazyImageDataset(files, resolution)
    images = np.empty((len(files), 3, resolution, resolution), dtype=np.uint8)
    for i in range(len(files)):
        images[i] = lazy.image(i)
    return ImageDataset(images, files.labels, lazy.name, xflip=xflip)


def open_dataset(data: str, resolution: int, seed: int = 0, *, cache: bool = False, xflip: bool = False):
    """The training set `data` ('builtin', a folder or a zip) at `resolution`; see the module doc."""
    if data == "builtin":
        return builtin_dataset(resolution, seed=seed, xflip=xflip)
    if not os.path.exists(data):
        raise FileNotFoundError(f"--data {data}: no such file or directory "
                                "(use a folder, a .zip or 'builtin')")
    files = ImageFiles(data, what="--data")
    if cache:
        return cached_dataset(files, resolution, xflip=xflip)
    dataset = LazyImageDataset(files, resolution, xflip=xflip)
    dataset.image(0)  # a wrong --data fails now, not at the first step
    return dataset


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


# ------------------------------------------------------------------------------- training batches


class _StepImages(torch.utils.data.Dataset):
    """Item `step`: (step, uint8 images, labels) of this rank's share of that step's global batch.
    A DataLoader worker builds whole steps; a bad image comes back as its message (re-raised as a
    one-line ValueError in the training process, not as a worker traceback)."""

    def __init__(self, dataset, batch: int, seed: int, rank: int, local: int):
        self.dataset, self.batch, self.seed, self.rank, self.local = dataset, batch, seed, rank, local

    def __getitem__(self, step):
        idx = global_indices(step, self.batch, len(self.dataset), self.seed)
        try:
            images, labels = self.dataset.batch(idx[self.rank * self.local:(self.rank + 1) * self.local])
        except ValueError as exc:
            return step, str(exc), None
        return step, images, labels


def _worker_init(_):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the training process's: it saves and stops


class TrainingBatches:
    """`batches(step)` -> (images float32 [B,C,H,W] in [-1, 1] on device, one-hot labels [B, label_dim]
    or None, augmentation labels [B, 9] or None): this rank's share of step's global batch.

    workers > 0 decode steps start..steps-1 ahead in that many DataLoader workers (in order, so the
    batches are identical to workers=0). augment > 0: EDM's pipe (relaydiff.augment) on the device,
    each image keyed by image_seeds(seed, step, its global position, augment.SEED_STREAM, device).
    """

    def __init__(self, dataset, *, batch, seed, steps, device, label_dim, start=0, rank=0, world=1,
                 workers=0, augment=0.0, image_seeds=None):
        self.local = batch // world
        self.positions = range(rank * self.local, (rank + 1) * self.local)
        self.seed, self.device, self.label_dim, self.image_seeds = seed, device, label_dim, image_seeds
        self.pipe = AugmentPipe(augment) if augment else None
        if self.pipe is not None and image_seeds is None:
            raise ValueError("augmentation needs the per-image seed function (image_seeds)")
        self.steps = _StepImages(dataset, batch, seed, rank, self.local)
        self._loader = None
        if workers and steps > start:
            self._loader = iter(torch.utils.data.DataLoader(
                self.steps, batch_size=None, sampler=range(start, steps), num_workers=workers,
                pin_memory=device.type == "cuda", worker_init_fn=_worker_init))

    def __call__(self, step: int):
        if self._loader is not None:
            got, images, labels = next(self._loader)
            if got != step:
                raise RuntimeError(f"data loader out of step: asked for step {step}, it has {got}")
        else:
            _, images, labels = self.steps[step]
        if isinstance(images, str):
            raise ValueError(images)
        images = images.to(self.device, torch.float32, non_blocking=True) / 127.5 - 1
        onehot = F.one_hot(labels, self.label_dim).float().to(self.device) if self.label_dim else None
        augment_labels = None
        if self.pipe is not None:
            seeds = self.image_seeds(self.seed, step, self.positions, SEED_STREAM, self.device)
            images, augment_labels = self.pipe(images, seeds)
        return images, onehot, augment_labels

    def close(self):
        """Stop the workers (they would otherwise prefetch until garbage collection)."""
        self._loader = None  # the DataLoader iterator shuts its workers down when it is freed
