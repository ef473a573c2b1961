"""Bad command-line arguments, bad dataset files and unwritable outputs (issue 12 item 5): each is a
one-line error naming the option or file, exit status 2, and nothing half-written."""

import errno
import io
import json
import os
import zipfile

import numpy as np
import PIL.Image
import pytest

from relaydiff import checkpoint, fileio, sample, train
from relaydiff import eval as rd_eval

TINY = ["--resolution", "8", "--batch", "4", "--channels", "8", "--channel-mult1", "1", "--channel-mult2", "1,2",
        "--attn-res", "4", "--preview-steps", "2", "--progress", "false", "--log-every", "1"]


def _exit(capsys, main, argv):
    """(exit status, stderr) of a CLI main, whether it returns or exits through argparse."""
    capsys.readouterr()
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:
        rc = exc.code
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("argv, names", [
    (["--batch", "0"], "--batch"), (["--batch", "-3"], "--batch"), (["--k", "0"], "--k"),
    (["--k", "-4"], "--k"), (["--threads", "-1"], "--threads"), (["--steps", "0"], "--steps"),
    (["--steps", "-5"], "--steps"), (["--resolution", "0"], "--resolution"), (["--lr", "nan"], "--lr"),
    (["--channel-mult2", "1,0"], "--channel-mult2"), (["--attn-res", "x"], "--attn-res"),
    (["--prob-length", "0"], "--prob-length"), (["--dropout", "1"], "--dropout"), (["--seed", "-1"], "--seed"),
])
def test_train_bad_arguments(tmp_path, capsys, argv, names):
    out = tmp_path / "run"
    rc, err = _exit(capsys, train.main, ["--outdir", out, *argv])
    assert rc == 2 and err.count("\n") == 1 and f"argument {names}" in err, err
    assert not out.exists()  # nothing written (no config, no grid from untrained nets)


@pytest.mark.parametrize("argv, names", [
    (["--steps", "-5"], "--steps"), (["--steps", "0,3"], "--steps"), (["--batch", "0"], "--batch"),
    (["--s-noise", "1"], "--s-noise"), (["--grid-cols", "0"], "--grid-cols"), (["--cfg", "inf"], "--cfg"),
])
def test_sample_bad_arguments(tmp_path, capsys, argv, names):
    rc, err = _exit(capsys, sample.main, ["--run", tmp_path, "--outdir", tmp_path / "out", *argv])
    assert rc == 2 and err.count("\n") == 1 and f"argument {names}" in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, names", [
    (["snr", "--images", "x", "--resolutions", "0"], "--resolutions"),
    (["snr", "--images", "x", "--resolutions", "64,-2"], "--resolutions"),
    (["snr", "--images", "x", "--max-images", "0"], "--max-images"),
    (["compare", "--gen", "a", "--ref", "b", "--batch", "0"], "--batch"),
])
def test_eval_bad_arguments(tmp_path, capsys, argv, names):
    rc, err = _exit(capsys, rd_eval.main, argv)
    assert rc == 2 and err.count("\n") == 1 and f"argument {names}" in err, err


def _png(color) -> bytes:
    buf = io.BytesIO()
    PIL.Image.fromarray(np.full((8, 8, 3), color, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _zip(path, labels, corrupt=None):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for i in range(2):
            zf.writestr(f"img{i}.png", _png(40 * i))
        if labels is not None:
            zf.writestr("dataset.json", json.dumps(labels))
    if corrupt:  # flip a byte inside the stored member: its CRC no longer matches
        data = bytearray(path.read_bytes())
        at = data.index(b"IDAT") + 6
        data[at] ^= 0xFF
        path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("labels, message", [
    ({"labels": 5}, "must be a list"),
    ({"labels": [["img0.png", None], ["img1.png", 0]]}, "label of img0.png must be an int"),
    ({"labels": [["img0.png", -1], ["img1.png", 0]]}, r"must be an int in \[0, 999999\], got -1"),
    ({"labels": [["img0.png", 10**12], ["img1.png", 0]]}, "got 1000000000000"),
    ({"labels": [["img0.png", 1.5], ["img1.png", 0]]}, "got 1.5"),
    ({"labels": [["img0.png", "3"], ["img1.png", 0]]}, "got '3'"),
    ({"labels": [["img0.png"], ["img1.png", 0]]}, "pair"),
    (None, "cannot read img"),
])
def test_train_bad_dataset_file(tmp_path, capsys, labels, message):
    data = _zip(tmp_path / "data.zip", labels or {"labels": None}, corrupt=labels is None)
    out = tmp_path / "run"
    rc, err = _exit(capsys, train.main, ["--outdir", out, "--data", data, "--steps", "1", *TINY])
    assert rc == 2 and err.count("\n") == 1 and str(data) in err and __import__("re").search(message, err), err
    assert not out.exists()


def _fail_writes(monkeypatch, code):
    """Every write of a run file fails with OSError(code): the disk is full (ENOSPC) or the folder is
    read-only (EROFS; tests run as root, for whom chmod does not make a folder read-only)."""
    real_mkstemp = fileio.tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        if code == errno.EROFS:
            raise OSError(code, os.strerror(code), kwargs.get("dir"))
        fd, path = real_mkstemp(*args, **kwargs)
        return fd, path

    class FullFile(io.FileIO):
        def write(self, data):
            super().write(bytes(data)[: len(data) // 2])  # part of it lands, then the disk is full
            raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fileio.tempfile, "mkstemp", mkstemp)
    if code == errno.ENOSPC:
        monkeypatch.setattr(fileio.os, "fdopen", lambda fd, mode: FullFile(fd, "wb"))


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_train_unwritable_outdir(tmp_path, capsys, monkeypatch, code):
    out = tmp_path / "run"
    _fail_writes(monkeypatch, code)
    rc, err = _exit(capsys, train.main, ["--outdir", out, "--steps", "1", *TINY])
    assert rc == 2 and err.count("\n") == 1, err
    assert f"cannot write {out / 'config.json'}: {os.strerror(code)}" in err, err
    assert os.listdir(out) == []  # no temporary, no partial file


def test_metrics_append_on_a_full_disk_leaves_no_partial_record(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    checkpoint.append_line(str(path), '{"step": 1}')

    class Full:
        """A file whose write lands 5 bytes, then finds the disk full."""

        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def __getattr__(self, name):
            return getattr(self.f, name)

        def write(self, data):
            self.f.write(data[:5])
            self.f.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fileio, "open", lambda p, mode: Full(open(p, mode)), raising=False)
    with pytest.raises(OSError, match=f"cannot write {path}: No space left on device"):
        checkpoint.append_line(str(path), '{"step": 2}')
    assert path.read_text() == '{"step": 1}\n'
