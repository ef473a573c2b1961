"""Image files of a folder or an EDM-style zip, listed once and read one at a time.

The one reader of image collections: training datasets (relaydiff.dataset), the evaluation's
activations (relaydiff.eval) and the dataset tool all go through `ImageFiles`, so every image set
has the same names, order, labels and limits. Nothing is decoded until `read(i)` asks for it, so
memory does not grow with the number of images.

Layout rules (NVlabs/edm `training/dataset.py` ImageFolderDataset, which the RDM authors' code uses):
* names are paths relative to the folder or zip root with "/" separators, sorted;
* labels come from `dataset.json` ({"labels": [[name, int], ...]} or null) when present, else from the
  first-level subfolder (sorted subfolder names -> 0, 1, ...) when every image is in one and there
  are at least two (EDM's dataset_tool.py: one class folder is an unlabelled set), else none.

Limits (a crafted file is refused with a ValueError naming it, never decoded without bound): an
image may have at most MAX_IMAGE_PIXELS pixels, a zip member at most MAX_MEMBER_BYTES bytes unpacked
and a deflate ratio of at most MAX_DEFLATE_RATIO.
"""

from __future__ import annotations

import io
import json
import os
import stat
import warnings
import zipfile
import zlib

import PIL.Image

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
LABELS_NAME = "dataset.json"
MAX_IMAGE_PIXELS = 16384 * 16384  # far above ImageNet's and CelebA-HQ's 1024^2; PIL's own bomb check
MAX_MEMBER_BYTES = 1 << 30  # one zip member, unpacked
MAX_DEFLATE_RATIO = 1024  # PNG and JPEG do not deflate further; a ratio this high is a zip bomb
# Class labels index a one-hot of label_dim = max label + 1 entries: bounded so a typo cannot ask
# for terabytes (checkpoint.py bounds a loaded config's label_dim the same way).
MAX_LABEL = 999_999


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTS)


def labels_from_json(text: str, where: str) -> dict[str, int]:
    """{name: label} from dataset.json's {"labels": [[name, int label], ...]} (or null)."""
    try:
        labels = json.loads(text).get("labels")
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{where}: not a valid {LABELS_NAME} ({exc})") from exc
    if labels is None:
        return {}
    if not isinstance(labels, list):
        raise ValueError(f"{where}: \"labels\" must be a list of [file name, label] pairs, got {type(labels).__name__}")
    table = {}
    for entry in labels:
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)):
            raise ValueError(f"{where}: each label must be a [file name, label] pair, got {str(entry)[:80]}")
        name, lab = entry
        if isinstance(lab, bool) or not isinstance(lab, int) or not 0 <= lab <= MAX_LABEL:
            raise ValueError(f"{where}: the label of {name} must be an int in [0, {MAX_LABEL}], got {lab!r}")
        table[name.replace("\\", "/")] = lab
    return table


def decode_image(data: bytes, where: str) -> PIL.Image.Image:
    """A loaded PIL image, or ValueError naming `where` (corrupt, truncated, too large, not an image)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            img = PIL.Image.open(io.BytesIO(data))
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise ValueError(f"{img.width}x{img.height} pixels, over the limit of {MAX_IMAGE_PIXELS}")
            img.load()
    except Exception as exc:  # PIL raises many types for bad files (OSError, SyntaxError, ...)
        raise ValueError(f"{where}: not a readable image ({exc})") from exc
    return img


class ImageFiles:
    """The images of a folder (recursively) or a zip; `read(i)` decodes the i-th.

    top_level_first: when the folder/zip root holds images, use only those (relaydiff.sample's output
    has SEED.png at the top and stage1/ previews below); else every image below the root (class
    folders, the released generate.py's 000000/000000.png layout). skip: names for which it returns
    True are left out (e.g. grid*.png previews). Picklable: a DataLoader worker reopens the zip.
    """

    def __init__(self, path: str, *, what: str = "--data", top_level_first: bool = False, skip=None):
        self.path, self.what = path, what
        if not os.path.exists(path):
            raise FileNotFoundError(f"{what} {path}: no such file or directory")
        self.is_zip = not os.path.isdir(path)
        self._zip, self._zip_pid = None, None
        if self.is_zip:
            if not stat.S_ISREG(os.stat(path).st_mode):
                raise ValueError(f"{what} {path}: neither a folder nor a regular file")
            infos = {i.filename: i for i in self._zipfile().infolist() if not i.is_dir()}
            names = sorted(n for n in infos if is_image_name(n))
            labels_text = self._member(LABELS_NAME).decode("utf-8", "replace") if LABELS_NAME in infos else None
        else:
            names = sorted(
                os.path.relpath(os.path.join(root, f), path).replace(os.sep, "/")
                for root, _, files in os.walk(path) for f in files
                if is_image_name(f) and os.path.isfile(os.path.join(root, f))
            )
            meta = os.path.join(path, LABELS_NAME)
            labels_text = None
            if os.path.isfile(meta):
                with open(meta, "rb") as f:
                    labels_text = f.read(64 << 20).decode("utf-8", "replace")
        if skip is not None:
            names = [n for n in names if not skip(n)]
        if top_level_first and any("/" not in n for n in names):
            names = [n for n in names if "/" not in n]
        if not names:
            raise ValueError(f"{what} {path}: no images ({', '.join(IMAGE_EXTS)}) found")
        self.names = names
        where = f"{path}:{LABELS_NAME}" if self.is_zip else os.path.join(path, LABELS_NAME)
        self.labels = self._label_list(labels_from_json(labels_text, where) if labels_text is not None else None)

    def _label_list(self, table):
        """Per-image int labels (list) or None."""
        if table is None:  # no dataset.json: the first-level folder names, when every image has one
            if not all("/" in n for n in self.names):
                return None
            classes = sorted({n.split("/")[0] for n in self.names})
            if len(classes) < 2:
                return None
            index = {c: i for i, c in enumerate(classes)}
            return [index[n.split("/")[0]] for n in self.names]
        if not table:
            return None
        missing = [n for n in self.names if n not in table]
        if missing:
            raise ValueError(f"{self.what} {self.path}: {LABELS_NAME} has no label for {missing[0]} "
                             f"({len(missing)} missing)")
        return [table[n] for n in self.names]

    @property
    def label_dim(self) -> int:
        return 0 if self.labels is None else max(self.labels) + 1

    def __len__(self) -> int:
        return len(self.names)

    def where(self, i: int) -> str:
        return f"{self.path}:{self.names[i]}" if self.is_zip else os.path.join(self.path, self.names[i])

    def _zipfile(self) -> zipfile.ZipFile:
        if self._zip is None or self._zip_pid != os.getpid():  # a forked worker opens its own handle
            try:
                self._zip = zipfile.ZipFile(self.path)
            except (zipfile.BadZipFile, OSError) as exc:
                raise ValueError(f"{self.what} {self.path}: not a zip file ({exc})") from exc
            self._zip_pid = os.getpid()
        return self._zip

    def _member(self, name: str) -> bytes:
        info = self._zipfile().getinfo(name)
        if info.file_size > MAX_MEMBER_BYTES or info.file_size > MAX_DEFLATE_RATIO * max(info.compress_size, 1):
            raise ValueError(f"{self.what} {self.path}:{name}: {info.file_size} bytes unpacked from "
                             f"{info.compress_size}, over the limits ({MAX_MEMBER_BYTES} bytes, "
                             f"ratio {MAX_DEFLATE_RATIO})")
        try:
            with self._zipfile().open(info) as f:
                return f.read(MAX_MEMBER_BYTES + 1)[:MAX_MEMBER_BYTES]
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, OSError) as exc:
            raise ValueError(f"{self.what} {self.path}: cannot read {name} ({exc})") from exc

    def read_bytes(self, i: int) -> bytes:
        if self.is_zip:
            return self._member(self.names[i])
        full = os.path.join(self.path, self.names[i])
        try:
            if os.path.getsize(full) > MAX_MEMBER_BYTES:
                raise ValueError(f"{self.what} {full}: over {MAX_MEMBER_BYTES} bytes")
            with open(full, "rb") as f:
                return f.read()
        except OSError as exc:
            raise ValueError(f"{self.what} {full}: cannot read it ({exc.strerror})") from exc

    def read(self, i: int) -> PIL.Image.Image:
        """The i-th image, decoded (its own mode: convert as the caller needs)."""
        return decode_image(self.read_bytes(i), self.where(i))

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_zip"], state["_zip_pid"] = None, None
        return state

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None
