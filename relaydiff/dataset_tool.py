"""Prepare a training set in EDM's format: `python -m relaydiff.dataset_tool --source DIR|ZIP --dest OUT.zip|DIR
[--resolution WxH] [--transform center-crop|center-crop-wide] [--max-images N]`.

The output is what NVlabs/edm's `training/dataset.py` ImageFolderDataset (and so the RDM authors'
train.py, and relaydiff.train --data) reads, following EDM's `dataset_tool.py`: image i is stored
as an uncompressed PNG named `{i:08d}`'s first five digits / `img{i:08d}.png` (00000/img00000000.png,
...), in an uncompressed (stored) zip or a folder, with `dataset.json` = {"labels": [[name, label],
...]} when every image has a label (from the source's dataset.json or its class subfolders, see
relaydiff.image_files), else {"labels": null}. Images are read in the source's sorted name order.

Transforms (EDM's rules):
* none: resize (LANCZOS) to WxH when given; grayscale stays one channel.
* center-crop: the central min(h, w) square, then LANCZOS to WxH; RGB.
* center-crop-wide: the central round(W h / w) rows (of the source image), LANCZOS to WxH, pasted
  at the vertical centre of a black WxW canvas; images narrower than W or with fewer than H such
  rows are skipped (their numbers stay unused, as in EDM).
Every output must be square with a power-of-two side, and all alike (size and channels).

The output appears whole or not at all: a zip is written to a temporary and renamed at the end; a
folder is filled as a temporary sibling and renamed. An existing --dest is never overwritten
(a folder must be empty).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import sys
import tempfile
import zipfile

import numpy as np
import PIL.Image
import tqdm

from . import cli_args as cli
from .fileio import atomic_write
from .image_files import LABELS_NAME, ImageFiles

TRANSFORMS = ("center-crop", "center-crop-wide")
GRAY_MODES = ("1", "L", "LA")


def parse_resolution(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)[x,](\d+)", text.strip())
    if not m or not (1 <= int(m.group(1)) <= 16384 and 1 <= int(m.group(2)) <= 16384):
        raise argparse.ArgumentTypeError(f"expected WxH with sides in [1, 16384], e.g. 256x256, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def transform_image(img: PIL.Image.Image, transform: str | None, size: tuple[int, int] | None):
    """uint8 HxWxC array (C = 1 or 3) of the output image, or None when the transform skips it."""
    if transform is None:
        img = img.convert("L" if img.mode in GRAY_MODES else "RGB")
        if size is not None and img.size != size:
            img = img.resize(size, PIL.Image.LANCZOS)
        arr = np.asarray(img, dtype=np.uint8)
        return arr[:, :, None] if arr.ndim == 2 else arr
    width, height = size
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)  # EDM repeats a grayscale channel to RGB
    h, w = arr.shape[:2]
    if transform == "center-crop":
        crop = min(h, w)
        arr = arr[(h - crop) // 2:(h + crop) // 2, (w - crop) // 2:(w + crop) // 2]
        return np.asarray(PIL.Image.fromarray(arr, "RGB").resize((width, height), PIL.Image.LANCZOS))
    ch = int(np.round(width * h / w))  # center-crop-wide
    if w < width or ch < height:
        return None
    arr = arr[(h - ch) // 2:(h + ch) // 2]
    arr = np.asarray(PIL.Image.fromarray(arr, "RGB").resize((width, height), PIL.Image.LANCZOS))
    canvas = np.zeros([width, width, 3], dtype=np.uint8)
    canvas[(width - height) // 2:(width + height) // 2, :] = arr
    return canvas


def archive_name(idx: int) -> str:
    digits = f"{idx:08d}"
    return f"{digits[:5]}/img{digits}.png"


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    PIL.Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr, "L" if arr.shape[2] == 1 else "RGB").save(
        buf, format="png", compress_level=0, optimize=False)
    return buf.getvalue()


def _check(arr: np.ndarray, attrs: dict | None, name: str) -> dict:
    """The dataset's image attributes, checked on the first image and compared on the rest."""
    cur = {"width": arr.shape[1], "height": arr.shape[0], "channels": arr.shape[2]}
    if attrs is None:
        if cur["width"] != cur["height"]:
            raise ValueError(f"images must be square after the transform, got {cur['width']}x{cur['height']} "
                             f"(give --resolution WxW or --transform)")
        if cur["width"] & (cur["width"] - 1):
            raise ValueError(f"the image side must be a power of two after the transform, got {cur['width']}")
        return cur
    if cur != attrs:
        raise ValueError(f"{name}: {cur['width']}x{cur['height']}x{cur['channels']}, but the dataset's images are "
                         f"{attrs['width']}x{attrs['height']}x{attrs['channels']} (give --resolution)")
    return attrs


def convert(files: ImageFiles, write, *, transform=None, size=None, max_images=None, progress=True) -> dict:
    """Transform the images of `files` and hand each (archive name, bytes) to write, dataset.json
    last; returns {"written": n, "skipped": n, "labels": bool}."""
    total = len(files) if max_images is None else min(len(files), max_images)
    attrs, labels, skipped = None, [], 0
    for idx in tqdm.tqdm(range(total), disable=not progress, unit="img"):
        arr = transform_image(files.read(idx), transform, size)
        if arr is None:
            skipped += 1
            continue
        name = archive_name(idx)
        attrs = _check(arr, attrs, files.where(idx))
        write(name, _png(arr))
        labels.append([name, files.labels[idx]] if files.labels is not None else None)
    if not labels:
        raise ValueError(f"--source {files.path}: no image is at least {size[0]}x{size[1]} for center-crop-wide"
                         if skipped else f"--source {files.path}: no images to convert")
    meta = {"labels": labels if all(x is not None for x in labels) else None}
    write(LABELS_NAME, json.dumps(meta).encode())
    return {"written": len(labels), "skipped": skipped, "labels": meta["labels"] is not None}


def _write_zip(dest: str, files: ImageFiles, **kw) -> dict:
    result = {}

    def fill(f):
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as zf:
            result.update(convert(files, zf.writestr, **kw))

    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    atomic_write(dest, fill)
    return result


def _write_folder(dest: str, files: ImageFiles, **kw) -> dict:
    parent = os.path.dirname(os.path.abspath(dest))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="." + os.path.basename(os.path.abspath(dest)) + ".", suffix=".tmp", dir=parent)
    try:
        def write(name, data):
            path = os.path.join(tmp, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)

        result = convert(files, write, **kw)
        if os.path.isdir(dest):
            os.rmdir(dest)  # checked empty before; fails (rather than loses anything) if it filled since
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


def dataset_tool(source: str, dest: str, *, resolution=None, transform=None, max_images=None,
                 progress=True) -> dict:
    """Write `source`'s images to `dest` (.zip or a folder) in EDM's format; see the module doc."""
    if transform is not None and transform not in TRANSFORMS:
        raise ValueError(f"--transform must be one of {', '.join(TRANSFORMS)}, not {transform!r}")
    if transform is not None and resolution is None:
        raise ValueError(f"--transform {transform} needs --resolution WxH")
    if not dest:
        raise ValueError("--dest must not be empty")
    to_zip = dest.lower().endswith(".zip")
    if to_zip and os.path.exists(dest):
        raise FileExistsError(f"--dest {dest} exists: remove it or choose another name")
    if not to_zip and os.path.exists(dest) and (not os.path.isdir(dest) or os.listdir(dest)):
        raise FileExistsError(f"--dest {dest} exists and is not an empty folder")
    files = ImageFiles(source, what="--source")
    kw = dict(transform=transform, size=resolution, max_images=max_images, progress=progress)
    return (_write_zip if to_zip else _write_folder)(dest, files, **kw)


def main(argv=None) -> int:
    p = cli.Parser(prog="python -m relaydiff.dataset_tool", description=__doc__.splitlines()[0],
                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--source", required=True, help="image folder (recursive) or zip")
    p.add_argument("--dest", required=True, help="output .zip, or an empty or new folder")
    p.add_argument("--resolution", type=parse_resolution, default=None, metavar="WxH",
                   help="output size (default: the source's)")
    p.add_argument("--transform", choices=TRANSFORMS, default=None, help="crop before resizing (EDM's modes)")
    p.add_argument("--max-images", type=cli.positive_int, default=None, help="convert at most this many")
    p.add_argument("--progress", type=lambda t: t.lower() not in ("0", "false", "no", "off"), default=True,
                   metavar="BOOL", help="show the progress bar")
    args = p.parse_args(argv)
    try:
        result = dataset_tool(args.source, args.dest, resolution=args.resolution, transform=args.transform,
                              max_images=args.max_images, progress=args.progress)
    except (OSError, ValueError) as exc:
        print(f"relaydiff.dataset_tool: error: {exc}", file=sys.stderr)
        return 2
    skipped = f", {result['skipped']} skipped (too small)" if result["skipped"] else ""
    print(f"{args.dest}: {result['written']} images{skipped}, "
          f"{'with' if result['labels'] else 'no'} class labels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
