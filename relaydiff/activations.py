"""Detector activations of an image set, in the layout of the RDM authors' `evaluate.py activations`.

An activations file is an uncompressed `.npz` with `feat` [N, 2048] (Inception pool features) and
`s_feat` [N, 2023] (the first 7 channels of `mixed_6/conv`, [N, 7, 17, 17] flattened in NCHW
order), both float64, rows in the image set's sorted-name order: exactly the keys, shapes and order
the released script writes, so its files and ours are interchangeable. `read_set` also reads EDM's
`fid-refs/*.npz` (`mu`, `sigma`: enough for FID) and ADM reference batches' `mu` / `sigma`.

Images are read one batch at a time (relaydiff.image_files.ImageFiles), so memory grows only with
the features. Under torchrun the batches are split across ranks as evaluate.py splits them and
rank 0 gathers and writes. Files are read with allow_pickle=False after their members' sizes are
checked, so a crafted .npz can neither run code nor allocate more than MAX_NPZ_BYTES.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np
import torch
import torch.distributed as dist
import tqdm

from . import distributed, metrics
from .fileio import atomic_write
from .image_files import ImageFiles
from .safe_load import check_regular_file

FEATURE_DIM, SPATIAL_DIM = 2048, 7 * 17 * 17
MAX_NPZ_BYTES = 64 << 30  # per file: 64 GiB holds the features of ~2M images
MAX_NPZ_RATIO = 1024  # an inflation ratio above this is a zip bomb, not float features
KNOWN_KEYS = ("feat", "s_feat", "mu", "sigma")


def _is_preview(name: str) -> bool:
    return os.path.basename(name).lower().startswith("grid")


def open_images(path: str, what: str = "--data") -> ImageFiles:
    """A sample folder (relaydiff.sample's SEED.png, or the released generate.py's 000000/000000.png),
    an image folder or an EDM zip; grid*.png previews and relaydiff.sample's stage1/ are left out."""
    return ImageFiles(path, what=what, top_level_first=True, skip=_is_preview)


class _Images(torch.utils.data.Dataset):
    """uint8 [3, H, W] tensors of an ImageFiles (or of a uint8 [N, C, H, W] tensor), one size for all."""

    def __init__(self, source, max_images=None):
        self.source, self.n = source, min(len(source), max_images or len(source))
        self.size = tuple(self[0].shape[1:]) if not torch.is_tensor(source) else tuple(source.shape[2:])

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if torch.is_tensor(self.source):
            x = self.source[i]
            return x.repeat(3, 1, 1) if x.shape[0] == 1 else x
        img = np.asarray(self.source.read(i).convert("RGB"))
        if hasattr(self, "size") and img.shape[:2] != self.size:
            raise ValueError(f"{self.source.where(i)}: {img.shape[1]}x{img.shape[0]} pixels, but the set's first "
                             f"image is {self.size[1]}x{self.size[0]} (evaluate.py batches one size)")
        return torch.from_numpy(img.copy()).permute(2, 0, 1)


def rank_batches(n: int, batch: int, rank: int = 0, world: int = 1) -> list[torch.Tensor]:
    """This rank's batches of indices: arange(n) cut into a multiple of `world` near-equal batches of at
    most `batch`, dealt round-robin (evaluate.py's calculate_activations)."""
    num = ((n - 1) // (batch * world) + 1) * world
    return list(torch.arange(n).tensor_split(num)[rank::world])


@torch.no_grad()
def compute(source, detector, *, batch: int = 64, device="cpu", workers: int = 0, progress: bool = True,
            max_images: int | None = None):
    """(feat [N, 2048], s_feat [N, 2023]) float64 numpy arrays of an ImageFiles or uint8 tensor, in
    index order. Under torchrun every rank computes its batches; rank 0 returns the whole set, the
    other ranks (None, None)."""
    data = _Images(source, max_images)
    if len(data) < 2:
        raise ValueError(f"need at least 2 images to compute statistics, found {len(data)}")
    rank, world = distributed.get_rank(), distributed.get_world_size()
    batches = [b for b in rank_batches(len(data), batch, rank, world) if len(b)]
    loader = torch.utils.data.DataLoader(data, batch_sampler=batches, num_workers=workers)
    idx, feats, s_feats = [], [], []
    for ids, images in zip(batches, tqdm.tqdm(loader, unit="batch", disable=not progress or rank != 0),
                           strict=True):
        pool, spatial = detector(images.to(device))
        feats.append(pool.to(torch.float64).cpu().numpy())
        s_feats.append(metrics.sfid_features(spatial).cpu().numpy())
        idx.append(ids.numpy())
    # A rank can have no batch at all (fewer images than ranks x 1): it sends empty arrays.
    part = (np.concatenate(idx or [np.zeros(0, dtype=np.int64)]), np.concatenate(feats or [np.zeros((0, FEATURE_DIM))]),
            np.concatenate(s_feats or [np.zeros((0, SPATIAL_DIM))]))
    if world > 1:
        parts = [None] * world if rank == 0 else None
        dist.gather_object(part, parts, dst=0)
        if rank != 0:
            return None, None
    else:
        parts = [part]
    feat = np.zeros((len(data), FEATURE_DIM))
    s_feat = np.zeros((len(data), SPATIAL_DIM))
    for ids, f, s in parts:
        feat[ids], s_feat[ids] = f, s
    return feat, s_feat


def write(path: str, feat: np.ndarray, s_feat: np.ndarray) -> None:
    """The released layout (np.savez: feat, s_feat), written atomically."""
    atomic_write(path, lambda f: np.savez(f, feat=feat, s_feat=s_feat))


def _check_members(path: str, what: str) -> None:
    """Refuse before numpy reads: not a zip, a member too large or too deflated, pickled objects."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"{what} {path}: not an .npz file ({exc})") from exc
    with zf:
        infos = zf.infolist()
        total = sum(i.file_size for i in infos)
        if total > MAX_NPZ_BYTES:
            raise ValueError(f"{what} {path}: {total} bytes unpacked, over the limit of {MAX_NPZ_BYTES}")
        for info in infos:
            if info.file_size > MAX_NPZ_RATIO * max(info.compress_size, 1):
                raise ValueError(f"{what} {path}: member {info.filename} inflates {info.compress_size} bytes to "
                                 f"{info.file_size} (a ratio over {MAX_NPZ_RATIO})")
            with zf.open(info) as f:
                try:
                    version = np.lib.format.read_magic(f)
                    if version not in ((1, 0), (2, 0)):
                        raise ValueError(f".npy format version {version}")
                    read_header = getattr(np.lib.format, f"read_array_header_{version[0]}_0")
                    shape, _, dtype = read_header(f)
                except (ValueError, OSError, SyntaxError, EOFError) as exc:
                    raise ValueError(f"{what} {path}: member {info.filename} is not a .npy array ({exc})") from exc
            if dtype.hasobject or int(np.prod(shape, dtype=np.int64)) * dtype.itemsize > info.file_size:
                raise ValueError(f"{what} {path}: member {info.filename} claims {dtype} {shape}, which it does not "
                                 "hold (object arrays are refused)")


def read_set(path: str, what: str = "--ref") -> dict[str, np.ndarray]:
    """The known arrays of an activations or statistics .npz (feat, s_feat, mu, sigma), checked."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} {path}: no such file")
    check_regular_file(path, what)
    _check_members(path, what)
    with np.load(path, allow_pickle=False) as npz:
        out = {k: np.asarray(npz[k]) for k in KNOWN_KEYS if k in npz.files}
    if not out:
        raise ValueError(f"{what} {path}: holds none of {', '.join(KNOWN_KEYS)} (keys: {', '.join(npz.files)})")
    for key in ("feat", "s_feat"):
        if key in out and (out[key].ndim != 2 or len(out[key]) < 2):
            raise ValueError(f"{what} {path}: {key} must be [N >= 2, D], got shape {out[key].shape}")
    if ("mu" in out) != ("sigma" in out) or ("mu" in out and (
            out["mu"].ndim != 1 or out["sigma"].shape != out["mu"].shape * 2)):
        raise ValueError(f"{what} {path}: mu and sigma must come together as [D] and [D, D]")
    for key, value in out.items():
        if not np.issubdtype(value.dtype, np.floating) or not np.isfinite(value).all():
            raise ValueError(f"{what} {path}: {key} must hold finite floats")
    return out
