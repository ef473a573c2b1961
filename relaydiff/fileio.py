"""Files written so that a crash at any point leaves the old file or the whole new one, never a part.

Every file relaydiff writes (checkpoints, JSON, PNGs, .npz) goes through `atomic_write`: the data is
written to a temporary in the destination's folder, fsynced, then moved into place with os.replace.
"""

from __future__ import annotations

import json
import os
import tempfile


def _umask_mode() -> int:
    """The mode open() gives a new file (0o666 less the umask); os.umask only reads by setting."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str, write) -> None:
    """write(f) into a temporary in path's folder, then rename it to path: path is either the old file
    or the whole new one. An OSError (disk full, read-only folder) names path, not the temporary."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write {path}: {exc.strerror}") from exc
    try:
        # mkstemp makes the file 0600; the renamed file should get the usual mode, as open() would.
        os.chmod(tmp, _umask_mode())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno is not None:
            raise OSError(exc.errno, f"cannot write {path}: {exc.strerror}") from exc
        raise


def append_line(path: str, line: str) -> None:
    """Append one line to path; if the write fails (disk full) the file is cut back to its old end,
    so no partial record is left."""
    data = (line + "\n").encode()
    with open(path, "ab") as f:
        end = f.tell()
        try:
            f.write(data)
            f.flush()
        except OSError as exc:
            f.truncate(end)
            raise OSError(exc.errno, f"cannot write {path}: {exc.strerror}") from exc


def save_json(path: str, obj) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2).encode()))
