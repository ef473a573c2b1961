"""The one image writer of relaydiff: uint8 conversion, atomic PNGs, a streamed grid and row grids.

`quantize` is the one float-to-uint8 rule, the released THUDM/RelayDiffusion / NVlabs/edm generate.py
rule `(x * 127.5 + 128).clip(0, 255).to(torch.uint8)`; `to_uint8` is it in HWC layout for PNGs. Every
PNG goes through fileio.atomic_write, so a crash or a full disk leaves no 0-byte or truncated PNG
under its final name. `write_grid` tiles at most `limit` PNG files (sample's --grid N, default
GRID_LIMIT) and streams one row of tiles at a time into the PNG (its own encoder: IHDR, IDAT chunks
from one zlib stream, IEND), so its memory is one row of tiles whatever the number of images.
`write_row_grid` is the small in-memory grid of a few rows of tensors (the training previews: real
images, stage-1 samples, relay outputs; the comparison's grids).
"""

from __future__ import annotations

import math
import struct
import zlib

import numpy as np
import PIL.Image
import PIL.ImageEnhance
import torch

from .fileio import atomic_write

GRID_LIMIT = 64  # images in a grid by default (sample --grid)
ROW_GRID_TILE = 96  # write_row_grid enlarges tiles by a whole factor to about this many pixels (viewable)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def quantize(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float -> uint8 of the same shape (the released generate.py rounding), on the CPU."""
    return (x * 127.5 + 128).clip(0, 255).to(torch.uint8).cpu()


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] NCHW -> uint8 NHWC (quantize's rule)."""
    return quantize(x).permute(0, 2, 3, 1).numpy()


def row_tile_size(resolution: int) -> int:
    """The displayed tile size of write_row_grid for images of `resolution` px."""
    return resolution * max(1, ROW_GRID_TILE // resolution)


def write_row_grid(path: str, rows, resolution: int) -> None:
    """One PNG, written atomically, of rows of images: rows is a list of [n, C, h, w] tensors, uint8 or
    float in [-1, 1] (quantize), each image resized (nearest) to resolution px, then enlarged by a
    whole factor to row_tile_size(resolution) so a 16 px preview is viewable."""
    tiles = []
    for r in rows:
        r = r if r.dtype == torch.uint8 else quantize(r.float())
        r = torch.nn.functional.interpolate(r.cpu(), size=(resolution, resolution), mode="nearest")
        tiles.append(torch.cat(list(r), dim=2))  # [C, res, n * res]
    img = torch.cat(tiles, dim=1).permute(1, 2, 0).numpy()
    scale = row_tile_size(resolution) // resolution
    save_png(np.kron(img, np.ones((scale, scale, 1), dtype=np.uint8)), path)


def save_png(arr: np.ndarray, path: str, enhance: dict | None = None) -> None:
    """Write one HWC uint8 image atomically; enhance = {"contrast", "brightness", "color": factor}
    applies PIL's ImageEnhance in that order, as the released generate_*.py img_enhance() does."""
    img = PIL.Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    for name in ("contrast", "brightness", "color"):
        if enhance and name in enhance:
            img = getattr(PIL.ImageEnhance, name.capitalize())(img).enhance(enhance[name])
    atomic_write(path, lambda f: img.save(f, format="PNG"))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _read_tile(path: str, shape) -> np.ndarray:
    with PIL.Image.open(path) as im:
        arr = np.asarray(im.convert("L" if shape[2] == 1 else "RGB"))
    arr = arr.reshape(arr.shape[0], arr.shape[1], -1)
    if arr.shape != shape:
        raise ValueError(f"grid: {path} is {arr.shape[1]}x{arr.shape[0]}x{arr.shape[2]}, the first image "
                         f"{shape[1]}x{shape[0]}x{shape[2]}")
    return arr


def write_grid(paths, out_path: str, cols: int | None = None, limit: int = GRID_LIMIT) -> int:
    """Tile the first `limit` PNGs of paths (cols per row, default about sqrt(n)) into out_path,
    written atomically and streamed a row of tiles at a time. Returns the number of images tiled."""
    paths = list(paths)[:limit]
    if not paths:
        return 0
    with PIL.Image.open(paths[0]) as im:  # the grid's tile shape and mode are the first image's
        h, w, c = im.height, im.width, 1 if im.mode in ("L", "1") else 3
    shape = (h, w, c)
    cols = max(1, min(cols or math.ceil(math.sqrt(len(paths))), len(paths)))
    rows = math.ceil(len(paths) / cols)

    def write(f):
        f.write(PNG_SIGNATURE)
        f.write(_chunk(b"IHDR", struct.pack(">IIBBBBB", cols * w, rows * h, 8, 0 if c == 1 else 2, 0, 0, 0)))
        z = zlib.compressobj(6)
        for r in range(rows):
            band = np.zeros((h, cols * w, c), dtype=np.uint8)
            for j, path in enumerate(paths[r * cols:(r + 1) * cols]):
                band[:, j * w:(j + 1) * w] = _read_tile(path, shape)
            raw = np.concatenate([np.zeros((h, 1), np.uint8), band.reshape(h, -1)], axis=1)  # filter 0 per line
            data = z.compress(raw.tobytes())
            if data:
                f.write(_chunk(b"IDAT", data))
        f.write(_chunk(b"IDAT", z.flush()))
        f.write(_chunk(b"IEND", b""))

    atomic_write(out_path, write)
    return len(paths)
