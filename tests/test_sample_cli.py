"""The `python -m relaydiff.sample` command: its arguments, runs written in the checkpoint format,
refining saved stage-1 images, and one-line errors for bad runs, configs and devices."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_sampling import B_MAX, S_BLOCK, K

REPO = Path(__file__).resolve().parents[1]


def test_sample_cli_help_shows_defaults(capsys):
    from relaydiff import sample

    with pytest.raises(SystemExit) as exc:
        sample.parse_args(["--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and "--stages" in out and "(default: both)" in out


def test_sample_cli_missing_run_dir(tmp_path, capsys):
    rc, err = _cli(capsys, "--run", tmp_path / "nope", "--outdir", tmp_path / "out", "--seeds", "0-1")
    assert rc != 0 and "nope" in err


@pytest.mark.slow
def test_sample_cli_end_to_end(tmp_path):
    """Train a tiny two-stage run from the CLI, then sample it from the CLI."""
    run = tmp_path / "run"

    def module(name, *args):  # python -m relaydiff.<name> from the repository root
        done = subprocess.run([sys.executable, "-m", f"relaydiff.{name}", *map(str, args)], cwd=REPO,
                              capture_output=True, text=True, timeout=300, env=dict(os.environ))
        assert done.returncode == 0, done.stderr[-2000:]

    module("train", "--steps", 4, "--batch", 4, "--resolution", 16, "--channels", 8, "--snap-every", 4,
           "--grid-every", 4, "--preview-steps", 2, "--progress", "false", "--outdir", run)
    out = tmp_path / "samples"
    module("sample", "--run", run, "--stages", "both", "--steps", 4, "--seeds", "0-3", "--batch", 2, "--outdir", out)
    assert len(list(out.glob("*.png"))) >= 4


def _write_tiny_run(run, label_dim=3):
    """An untrained two-stage run in the checkpoint format (plumbing test; no training needed)."""
    ckpt = pytest.importorskip("relaydiff.checkpoint", reason="relaydiff.checkpoint is not present yet")
    from relaydiff.networks import build_network

    def stage(s, res):
        net = dict(
            class_name="EDMPrecond",
            kwargs=dict(
                img_resolution=res,
                img_channels=3,
                label_dim=label_dim,
                model_type="SongUNet",
                model_channels=8,
                channel_mult=[1],
                attn_resolutions=[],
            ),
        )
        loss = dict(
            class_name="RelayLoss" if s == 2 else "EDMLoss",
            kwargs=dict(k=K, blur_sigma_max=B_MAX, block_scale=S_BLOCK) if s == 2 else {},
        )
        return dict(stage=s, resolution=res, img_channels=3, label_dim=label_dim, k=K, network=net, loss=loss)

    config = {"train": {}, "k": K, "stages": {"1": stage(1, 16 // K), "2": stage(2, 16)}}  # as training makes
    stages = {}
    for s in ("1", "2"):
        sd = build_network(config["stages"][s]["network"]).state_dict()
        stages[s] = {"net": sd, "ema": sd, "optimizer": {}}
    ckpt.save_checkpoint(str(run), 0, config, stages)


def _cli(capsys, *args):
    """relaydiff.sample.main in-process (a subprocess per call would re-import torch): (rc, stderr)."""
    from relaydiff import sample

    capsys.readouterr()
    rc = sample.main([str(a) for a in args])
    return rc, capsys.readouterr().err


def test_sample_cli_untrained_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    _write_tiny_run(run)
    out = tmp_path / "out"
    rc, err = _cli(capsys, "--run", run, "--stages", "both", "--steps", "2,3", "--cfg", "1.5", "--seeds", "0-4",
                   "--batch", "3", "--outdir", out, "--no-progress")
    assert rc == 0, err
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == [f"{s:06d}.png" for s in range(5)] + ["grid.png"]
    import PIL.Image

    assert PIL.Image.open(out / "000003.png").size == (16, 16)
    assert PIL.Image.open(out / "stage1" / "000003.png").size == (4, 4)
    assert PIL.Image.open(out / "grid.png").size == (48, 32)
    # Same seed, other batch size: same image.
    out2 = tmp_path / "out2"
    rc, err = _cli(capsys, "--run", run, "--stages", "both", "--steps", "2,3", "--cfg", "1.5", "--seeds", "3",
                   "--batch", "1", "--outdir", out2, "--no-progress")
    assert rc == 0, err
    assert (out / "000003.png").read_bytes() == (out2 / "000003.png").read_bytes()
    # Refine saved stage-1 images with the relay stage alone.
    out3 = tmp_path / "out3"
    rc, err = _cli(capsys, "--run", run, "--stages", "second", "--low-res", out / "stage1", "--steps", "3", "--seeds",
                   "2-3", "--outdir", out3, "--no-progress")
    assert rc == 0, err
    assert PIL.Image.open(out3 / "000003.png").size == (16, 16)
    rc, err = _cli(capsys, "--run", run, "--stages", "second", "--low-res", out / "stage1", "--seeds", "9", "--outdir",
                   out3, "--no-progress")
    assert rc != 0 and "000009.png" in err
    rc, err = _cli(capsys, "--run", run, "--class", "7", "--steps", "2", "--seeds", "0", "--outdir", out3,
                   "--no-progress")
    assert rc != 0 and "--class 7" in err
    rc, err = _cli(capsys, "--run", run, "--steps", "3,4,5", "--seeds", "0", "--outdir", out3, "--no-progress")
    assert rc != 0 and "--steps" in err


def _write_low_res(folder, seeds, size):
    import PIL.Image

    folder.mkdir()
    for s in seeds:
        PIL.Image.new("RGB", (size, size), (200, 30, 90)).save(folder / f"{s:06d}.png")


def test_sample_cli_low_res_must_be_resolution_over_k(tmp_path, capsys):
    run = tmp_path / "run"
    _write_tiny_run(run)  # relay net: 16px from 4px inputs (k=4)
    args = ["--run", run, "--stages", "second", "--steps", "2", "--seeds", "0", "--outdir", tmp_path / "out",
            "--no-progress", "--low-res"]
    for size in (16, 8):  # the net's own size (it used to run with up_scale 1), and a multiple but not 16 / k
        _write_low_res(tmp_path / f"low{size}", [0], size)
        rc, err = _cli(capsys, *args, tmp_path / f"low{size}")
        assert rc != 0 and f"{size}px images" in err and "from 4px inputs (k=4)" in err, err
    assert not (tmp_path / "out" / "000000.png").exists()
    _write_low_res(tmp_path / "low4", [0], 4)
    rc, err = _cli(capsys, *args, tmp_path / "low4")
    assert rc == 0, err


def test_sample_cli_corrupt_checkpoint_names_the_file(tmp_path, capsys):
    run = tmp_path / "run"
    _write_tiny_run(run)
    (run / "checkpoint.pt").write_bytes(b"\x00garbage, not a checkpoint")
    rc, err = _cli(capsys, "--run", run, "--seeds", "0", "--outdir", tmp_path / "out", "--no-progress")
    assert rc != 0 and str(run / "checkpoint.pt") in err and "corrupt" in err, err


def test_sample_cli_bad_device_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    _write_tiny_run(run)
    args = ["--run", run, "--seeds", "0", "--outdir", tmp_path / "out", "--no-progress", "--device"]
    rc, err = _cli(capsys, *args, "gpu")
    assert rc == 2 and "'gpu' is not a torch device" in err and err.count("\n") == 1, err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("cuda", "cuda:1"):
        rc, err = _cli(capsys, *args, name)
        assert rc == 2 and f"--device {name}: CUDA is not available" in err and err.count("\n") == 1, err


def _rewrite_config(run, stage, **kwargs):
    """Change stage's network kwargs in a saved run's checkpoint (the tensors stay as they are)."""
    import json

    state = torch.load(run / "checkpoint.pt", weights_only=True)
    config = json.loads(state["config"])
    config["stages"][stage]["network"]["kwargs"].update(kwargs)
    state["config"] = json.dumps(config)
    torch.save(state, run / "checkpoint.pt")


@pytest.mark.parametrize("field, value, message", [
    ("model_channels", 12, r"network\.kwargs\.model_channels does not match the saved weights: "
                           r"model\.enc\.16x16_conv\.weight is \[8, 3, 3, 3\] in the checkpoint but \[12, 3, 3, 3\]"),
    ("label_dim", 5, "label_dim"),
    ("num_blocks", 2, "missing"),
    ("model_channels", 10**9, r"network\.kwargs\.model_channels must be an int in \[1, 8192\]"),
    ("channel_mult", [1] * 100, "channel_mult"),
    ("model_channels", "8", "model_channels must be an int"),
    ("nonsense", 1, "config field network: "),
])
def test_sample_cli_config_not_matching_weights(tmp_path, capsys, field, value, message):
    run = tmp_path / "run"
    _write_tiny_run(run)
    _rewrite_config(run, "2", **{field: value})
    rc, err = _cli(capsys, "--run", run, "--seeds", "0", "--outdir", tmp_path / "out", "--no-progress")
    assert rc == 2 and err.count("\n") == 1, err
    assert "stage 2: " in err and __import__("re").search(message, err), err
    assert not (tmp_path / "out" / "000000.png").exists()


@pytest.mark.skipif(sys.platform != "linux", reason="uses RLIMIT_AS to bound the child's memory")
def test_sample_cli_huge_config_fails_before_allocating(tmp_path):
    """model_channels=8000 (under the sane limit) on a tiny checkpoint (tens of GB if built): refused from the meta
    build's shapes, in a child limited to 8 GB of address space (so a regression cannot exhaust
    the machine)."""
    run = tmp_path / "run"
    _write_tiny_run(run)
    _rewrite_config(run, "1", model_channels=8000)
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30)); "
            "from relaydiff import sample; sys.exit(sample.main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", code, "--run", str(run), "--seeds", "0", "--outdir",
                           str(tmp_path / "out"), "--no-progress"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "stage 1: config field network.kwargs.model_channels does not match" in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
