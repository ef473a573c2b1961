"""relaydiff training: loss falls, exact resume, DDP, checkpoints, CLI errors, fused vs reference."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import relay_kernels as rk
from relaydiff import checkpoint, distributed, train
from relaydiff.training_loop import training_loop

# 8x8 relay stage over a 2x2 first stage: a whole step takes milliseconds.
TINY = dict(resolution=8, k=4, batch=8, channels=8, channel_mult1="1", channel_mult2="1,2", attn_res="4",
            lr=3e-3, lr_rampup=5, log_every=1, snap_every=1000, grid_every=1000, preview_steps=4,
            progress=False)


def _run(tmp_path, name="run", **kw):
    return training_loop(**{**TINY, "outdir": str(tmp_path / name), **kw})


def _metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _flags(**opts):
    """Options as relaydiff.train command-line flags."""
    return [a for key, v in opts.items() for a in ("--" + key.replace("_", "-"), str(v))]


def _main(capsys, *args):
    """relaydiff.train.main in-process: (exit status, stderr)."""
    capsys.readouterr()
    rc = train.main([str(a) for a in args])
    return rc, capsys.readouterr().err


@pytest.mark.slow
def test_loss_falls(tmp_path):
    out = _run(tmp_path, stage="1", steps=150, batch=16)
    losses = np.array(out["losses"]["1"])
    assert losses[-30:].mean() < 0.75 * losses[:10].mean(), losses


def test_exact_resume_and_checkpoint(tmp_path):
    full = _run(tmp_path, "full", steps=6)
    first = _run(tmp_path, "split", steps=3)
    assert first["step"] == 3
    rest = _run(tmp_path, "split", steps=6, resume=True)
    for s in ("1", "2"):
        assert first["losses"][s] + rest["losses"][s] == full["losses"][s]
        for a, b in zip(full["emas"][s].parameters(), rest["emas"][s].parameters(), strict=True):
            assert torch.equal(a, b)
    assert [m["loss2"] for m in _metrics(tmp_path / "split")] == full["losses"]["2"]
    # load_network: the EMA net, eval mode, from a run dir or the file; weights_only loading.
    net, cfg = checkpoint.load_network(str(tmp_path / "full"), stage=2)
    assert cfg["resolution"] == 8 and cfg["k"] == 4 and not net.training
    assert torch.equal(next(net.parameters()), next(full["emas"]["2"].parameters()))
    raw = checkpoint.load_checkpoint(str(tmp_path / "full" / "checkpoint.pt"))
    assert raw["step"] == 6 and set(raw["stages"]) == {"1", "2"}
    assert os.path.isfile(tmp_path / "full" / "grid.png")
    assert not [f for f in os.listdir(tmp_path / "full") if f.endswith(".tmp")]
    with pytest.raises(FileExistsError, match="--resume"):
        _run(tmp_path, "full", steps=8)


def test_cli_resume_takes_the_saved_options(tmp_path, capsys):
    """`--outdir RUN --resume --steps N` alone continues RUN exactly, with its saved options."""
    assert _main(capsys, *_flags(**TINY), "--outdir", tmp_path / "full", "--steps", 6)[0] == 0
    assert _main(capsys, *_flags(**TINY), "--outdir", tmp_path / "split", "--steps", 3)[0] == 0
    # --snap-every differs from the saved 1000: an operational option may change.
    rc, err = _main(capsys, "--outdir", tmp_path / "split", "--resume", "--steps", 6, "--snap-every", 2)
    assert rc == 0, err
    full, split = _metrics(tmp_path / "full"), _metrics(tmp_path / "split")
    assert [m["step"] for m in split] == list(range(1, 7))
    assert [(m["loss1"], m["loss2"]) for m in split] == [(m["loss1"], m["loss2"]) for m in full]
    a, b = (checkpoint.load_checkpoint(str(tmp_path / d)) for d in ("full", "split"))
    assert b["step"] == 6 and b["config"]["stages"] == a["config"]["stages"]
    for key, v in a["stages"]["2"]["ema"].items():
        assert torch.equal(v, b["stages"]["2"]["ema"][key]), key


def test_cli_resume_refuses_a_changed_option(tmp_path, capsys):
    run = tmp_path / "run"
    assert _main(capsys, *_flags(**TINY), "--outdir", run, "--steps", 2)[0] == 0
    rc, err = _main(capsys, "--outdir", run, "--resume", "--steps", 3, "--batch", 4)
    assert rc == 2 and "--batch 4 given, but the run was started with --batch 8" in err, err
    assert checkpoint.load_checkpoint(str(run))["step"] == 2
    # The saved value given again is no change (as is the same list written differently).
    rc, err = _main(capsys, "--outdir", run, "--resume", "--steps", 3, "--batch", 8, "--channel-mult2", "1, 2")
    assert rc == 0 and checkpoint.load_checkpoint(str(run))["step"] == 3, err
    rc, err = _main(capsys, "--outdir", run, "--resume", "--steps", 2)  # --steps may not go back
    assert rc == 2 and "--steps 2 is below the step of" in err, err


def test_resume_takes_the_options_from_the_checkpoint_not_a_stale_config(tmp_path, capsys):
    """checkpoint.pt is written before config.json: a crash between the two leaves the new checkpoint
    beside the old config.json, and --resume must continue from the checkpoint's own options."""
    run = tmp_path / "run"
    assert _main(capsys, *_flags(**TINY), "--outdir", run, "--steps", 2)[0] == 0
    cfg = json.loads((run / "config.json").read_text())
    cfg["train"]["batch"] = 4  # what an older config.json of another run could say
    (run / "config.json").write_text(json.dumps(cfg))
    rc, err = _main(capsys, "--outdir", run, "--resume", "--steps", 3)
    assert rc == 0, err
    assert checkpoint.load_checkpoint(str(run))["config"]["train"]["batch"] == TINY["batch"]
    assert json.loads((run / "config.json").read_text())["train"]["batch"] == TINY["batch"]


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, capsys):
    _run(tmp_path, steps=1)
    path = tmp_path / "run" / "checkpoint.pt"
    good = path.read_bytes()
    for bad in (b"garbage bytes", good[: len(good) // 2], b""):
        path.write_bytes(bad)
        with pytest.raises(ValueError, match="checkpoint.pt: cannot load the checkpoint"):
            checkpoint.load_checkpoint(str(path))
    rc, err = _main(capsys, "--outdir", tmp_path / "run", "--resume", "--steps", 2)
    assert rc == 2 and str(path) in err and "Traceback" not in err, err


def test_cli_bad_device_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    rc, err = _main(capsys, "--outdir", tmp_path / "o", "--device", "gpu")
    assert rc == 2 and "'gpu' is not a torch device" in err and err.count("\n") == 1, err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rc, err = _main(capsys, "--outdir", tmp_path / "o", "--device", "cuda:0")
    assert rc == 2 and "--device cuda:0: CUDA is not available" in err and err.count("\n") == 1, err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    rc, err = _main(capsys, "--outdir", tmp_path / "o", "--device", "cuda:3")
    assert rc == 2 and "--device cuda:3: only 1 CUDA device(s) here" in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["022", "027"])
def test_written_files_respect_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = checkpoint.save_checkpoint(str(tmp_path), 0, {"train": {}, "stages": {}}, {})
    finally:
        os.umask(old)
    for p in (path, tmp_path / checkpoint.CONFIG_NAME):
        assert os.stat(p).st_mode & 0o777 == 0o666 & ~umask, p


def test_resume_drops_a_partly_written_metrics_line(tmp_path):
    _run(tmp_path, steps=3)
    path = tmp_path / "run" / "metrics.jsonl"
    with open(path, "a") as f:
        f.write('{"step": 4, "kimg": 0.0')  # killed mid-write
    _run(tmp_path, steps=5, resume=True)
    assert [m["step"] for m in _metrics(tmp_path / "run")] == [1, 2, 3, 4, 5]
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + "not json\n" + "".join(lines[1:]))
    with pytest.raises(ValueError, match="metrics.jsonl: line 2"):
        _run(tmp_path, steps=6, resume=True)


def test_zero_intervals_mean_never(tmp_path):
    out = _run(tmp_path, steps=2, log_every=0, snap_every=0, grid_every=0)
    assert out["step"] == 2 and [m["step"] for m in _metrics(tmp_path / "run")] == [2]
    assert checkpoint.load_checkpoint(str(tmp_path / "run"))["step"] == 2


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, outdir, result_dir, extra=None):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    out = training_loop(**{**TINY, "outdir": outdir, "steps": 4, "device": "cpu", "dropout": 0.1, **(extra or {})})
    state = {s: n.state_dict() for s, n in out["nets"].items()}
    torch.save({"nets": state, "losses": out["losses"]}, os.path.join(result_dir, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_ranks_identical_and_match_single_process(tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path / "ddp"), str(tmp_path)), nprocs=2)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for s in ("1", "2"):
        for key, v in r0["nets"][s].items():
            assert torch.equal(v, r1["nets"][s][key]), key
    # The first step's loss (zero-initialised output layer, so dropout cannot matter yet) is the
    # single-process one: same global batch, same per-image noise, mean over ranks.
    single = _run(tmp_path, "single", steps=1, device="cpu", dropout=0.1)
    assert r0["losses"]["2"][0] == pytest.approx(single["losses"]["2"][0], rel=1e-4)


@pytest.mark.slow
def test_ddp_with_batch_gpu_matches_single_process(tmp_path):
    """2 ranks x 2 accumulation passes of 2 images (DDP syncing on the last pass) train as one process
    on the whole batch of 8, to float rounding (dropout off: its masks are drawn per pass)."""
    extra = dict(steps=2, dropout=0.0, cond=False, batch_gpu=2)
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path / "ddp"), str(tmp_path), extra), nprocs=2)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    single = _run(tmp_path, "single", steps=2, device="cpu", dropout=0.0, cond=False)
    for s in ("1", "2"):
        assert r0["losses"][s] == pytest.approx(single["losses"][s], rel=1e-5)
        for key, v in single["nets"][s].state_dict().items():
            torch.testing.assert_close(r0["nets"][s][key], v, rtol=1e-4, atol=1e-6)


def test_bad_inputs(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        _run(tmp_path, data=str(tmp_path / "missing_dir"), steps=1)
    bad = tmp_path / "imgs"
    bad.mkdir()
    (bad / "corrupt.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match="corrupt.png"):
        _run(tmp_path, data=str(bad), steps=1)
    with pytest.raises(ValueError, match="not a multiple of k"):
        _run(tmp_path, resolution=10, steps=1)
    with pytest.raises(FileNotFoundError, match="--resume"):
        _run(tmp_path, "fresh", resume=True, steps=1)
    monkeypatch.setattr(distributed, "get_world_size", lambda: 3)
    with pytest.raises(ValueError, match="not divisible by the number of ranks"):
        _run(tmp_path, steps=1)


def test_cli_help_and_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train.main(["--help"])
    text = capsys.readouterr().out
    assert "--resume" in text and "(default: both)" in text and "--device" in text
    assert train.main(["--data", str(tmp_path / "nothing"), "--outdir", str(tmp_path / "o")]) == 2
    assert "nothing" in capsys.readouterr().err


@pytest.mark.slow
def test_sigterm_saves_and_resume_finishes(tmp_path):
    outdir = tmp_path / "sig"
    args = [sys.executable, "-m", "relaydiff.train", "--outdir", str(outdir), "--steps", "100000",
            "--resolution", "8", "--batch", "4", "--channels", "8", "--channel-mult1", "1",
            "--channel-mult2", "1,2", "--log-every", "1", "--progress", "false"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while not (outdir / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 128 + signal.SIGTERM, out
    saved = checkpoint.load_checkpoint(str(outdir))["step"]
    assert saved >= 1 and _metrics(outdir)[-1]["step"] == saved
    # Resume with only the run directory and a new end: the saved options do the rest.
    args = ["--outdir", str(outdir), "--resume", "--steps", str(saved + 3)]
    done = subprocess.run([sys.executable, "-m", "relaydiff.train", *args], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert checkpoint.load_checkpoint(str(outdir))["step"] == saved + 3
    assert [m["step"] for m in _metrics(outdir)] == list(range(1, saved + 4))


def _fused_available():
    try:
        rk.set_backend("cpu")
        rk.patch_blur(torch.zeros(1, 1, 4, 4), torch.zeros(1))
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means the fused CPU backend is missing
        return f"fused CPU backend unavailable: {exc}"
    finally:
        rk.set_backend("auto")


@pytest.mark.slow
def test_fused_and_reference_backends_train_the_same(tmp_path):
    reason = _fused_available()
    if reason:
        pytest.skip(reason)
    curves = {}
    try:
        for name in ("cpu", "reference"):
            rk.set_backend(name)
            curves[name] = np.array(_run(tmp_path, name, stage="2", steps=200, batch=4)["losses"]["2"])
    finally:
        rk.set_backend("auto")
    # Same seed, same noise (the generator is bit-compatible): the curves agree while rounding
    # differences stay small, and their smoothed shapes agree throughout.
    np.testing.assert_allclose(curves["cpu"][:20], curves["reference"][:20], rtol=1e-3)
    smooth = lambda c: np.convolve(c, np.ones(20) / 20, mode="valid")  # noqa: E731
    np.testing.assert_allclose(smooth(curves["cpu"]), smooth(curves["reference"]), rtol=0.1)


def test_bf16_autocast_runs(tmp_path):
    out = _run(tmp_path, steps=2, bf16=True, stage="2")
    assert all(np.isfinite(out["losses"]["2"]))


def _leave_temporaries(run_dir):
    """What kill -9 during atomic_write leaves (0 B and partial), next to files that are not ours."""
    ours = [".checkpoint.pt.a1b2c3d4.tmp", ".checkpoint.pt.zz_9y8x7.tmp", ".metrics.jsonl.abcdefgh.tmp",
            ".grid-000004.png.k2j3h4g5.tmp"]
    for i, name in enumerate(ours):
        (run_dir / name).write_bytes(b"PK\x03\x04partial" * i)
    foreign = [".checkpoint.pt.a1b2c3d4.tmp.keep", "notes.tmp", ".other.pt.a1b2c3d4.tmp", "checkpoint.pt.bak"]
    for name in foreign:
        (run_dir / name).write_bytes(b"mine")
    return ours, foreign


def _tiny_cli(outdir, steps, *extra):
    return [sys.executable, "-m", "relaydiff.train", "--outdir", str(outdir), "--steps", str(steps),
            "--resolution", "8", "--batch", "4", "--channels", "8", "--channel-mult1", "1", "--channel-mult2",
            "1,2", "--log-every", "1", "--grid-every", "0", "--preview-steps", "2", "--progress", "false",
            *extra]


@pytest.mark.slow
def test_sigkill_before_first_checkpoint_then_fresh_start(tmp_path):
    """kill -9 before any checkpoint, then the same command again: the new run starts anew (its
    metrics are its own, not appended to the killed run's) and our stale temporaries are removed."""
    outdir = tmp_path / "killed"
    proc = subprocess.Popen(_tiny_cli(outdir, 100000, "--snap-every", "0"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(_metrics_lines(outdir)) < 3:
        time.sleep(0.1)
    proc.kill()
    proc.wait(timeout=60)
    assert len(_metrics_lines(outdir)) >= 3 and not (outdir / "checkpoint.pt").exists()
    ours, foreign = _leave_temporaries(outdir)
    out = _run(tmp_path, "killed", steps=2, resolution=8, batch=4, channels=8, channel_mult1="1",
               channel_mult2="1,2", preview_steps=2, grid_every=0)
    assert out["step"] == 2
    assert [m["step"] for m in _metrics(outdir)] == [1, 2]
    names = set(os.listdir(outdir))
    assert not names & set(ours) and set(foreign) <= names
    assert not [n for n in names if n.endswith(".tmp") and n not in foreign]


def test_resume_removes_stale_temporaries(tmp_path):
    _run(tmp_path, "r", steps=2)
    ours, foreign = _leave_temporaries(tmp_path / "r")
    out = _run(tmp_path, "r", steps=3, resume=True)
    assert out["step"] == 3
    names = set(os.listdir(tmp_path / "r"))
    assert not names & set(ours) and set(foreign) <= names and "checkpoint.pt" in names


def _metrics_lines(run_dir):
    try:
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            return [ln for ln in f if ln.endswith("\n")]
    except FileNotFoundError:
        return []
