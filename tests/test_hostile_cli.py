"""Hostile arguments and values (issue 19): each a one-line `error:` naming the argument or key, with
nothing written; the samplers' API refuses bad schedules; NaN never becomes black PNGs with exit 0;
convert refuses stages that do not make one cascade; compare survives a corrupted unit."""

import json
import math
import os
import struct
import sys
import zlib

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_cli_args import _exit  # noqa: E402
from test_sample_cli import _write_tiny_run  # noqa: E402

from relaydiff.compare import study as compare_study  # noqa: E402


def _cli(capsys, *args):
    from relaydiff import sample

    return _exit(capsys, sample.main, args)


@pytest.mark.parametrize("argv, names", [
    (["--rho", "0"], "--rho"), (["--rho", "1e-300"], "--rho"), (["--seeds", "0-999999999"], "--seeds"),
    (["--seeds", "5-2"], "--seeds"), (["--seeds", "99999999999"], "--seeds"),
    (["--grid-cols", "100000000"], "--grid-cols"), (["--grid", "-1"], "--grid"), (["--cfg", "1e308"], "--cfg"),
    (["--sigma-min", "nan"], "--sigma-min"), (["--sigma-max", "1e300"], "--sigma-max"),
    (["--sigma-min", "90", "--sigma-max", "1"], "--sigma-min/--sigma-max"),
])
def test_sample_hostile_arguments(tmp_path, capsys, argv, names):
    rc, err = _cli(capsys, "--run", tmp_path, "--outdir", tmp_path / "out", *argv)
    assert rc == 2 and err.count("\n") == 1 and names in err, err
    assert not (tmp_path / "out").exists()


def test_sample_outdir_naming_a_file(tmp_path, capsys):
    run, out = tmp_path / "run", tmp_path / "file"
    _write_tiny_run(run)
    out.write_text("mine")
    rc, err = _cli(capsys, "--run", run, "--outdir", out, "--seeds", "0", "--no-progress")
    assert rc == 2 and "--outdir" in err and "not a folder" in err and err.count("\n") == 1, err
    assert out.read_text() == "mine"


@pytest.mark.parametrize("bad", ["increasing", "non-monotone", "churn", "nan-churn", "inf-noise"])
def test_samplers_refuse_bad_schedules(bad):
    from relaydiff import sampling

    net = lambda x, sigma, class_labels=None: x * 0  # noqa: E731  (never called: refused first)
    sigmas = {"increasing": [1.0, 2.0, 0.0], "non-monotone": [3.0, 1.0, 2.0, 0.0]}.get(bad, [2.0, 1.0, 0.0])
    sigmas = torch.tensor(sigmas, dtype=torch.float64)
    kw = {"churn": {"s_churn": -1.0}, "nan-churn": {"s_churn": math.nan}, "inf-noise": {"s_noise": math.inf}}
    x = torch.zeros(1, 3, 4, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="strictly decreasing|s_churn|s_noise"):
        sampling.sample_edm(net, x, sigmas, disable=True, **kw.get(bad, {}))
    if bad in ("increasing", "non-monotone"):
        with pytest.raises(ValueError, match="strictly decreasing"):
            sampling.sample_relay(net, x, sigmas, disable=True, up_scale=2, k=2)


def _set_in_checkpoint(run, fn):
    from relaydiff.checkpoint import load_checkpoint

    state = load_checkpoint(str(run))
    fn(state)
    state["config"] = json.dumps(state["config"])
    torch.save(state, run / "checkpoint.pt")


@pytest.mark.parametrize("what", ["weights", "sigma_data"])
def test_nan_checkpoint_is_refused_naming_the_key(tmp_path, capsys, what):
    run = tmp_path / "run"
    _write_tiny_run(run)

    def poison(state):
        if what == "weights":
            sd = state["stages"]["1"]["ema"]
            sd[next(iter(sd))] = torch.full_like(next(iter(sd.values())), math.nan)
        else:
            state["config"]["stages"]["1"]["network"]["kwargs"]["sigma_data"] = math.nan

    _set_in_checkpoint(run, poison)
    rc, err = _cli(capsys, "--run", run, "--outdir", tmp_path / "out", "--seeds", "0", "--no-progress")
    assert rc != 0 and err.count("\n") == 1, err
    assert ("sigma_data must be a finite number" if what == "sigma_data" else "holds NaN") in err, err
    assert not list((tmp_path / "out").glob("*.png")) if (tmp_path / "out").exists() else True


@pytest.mark.parametrize("change", [{"resolution": 8}, {"label_dim": 5}])
def test_convert_refuses_stages_that_do_not_join(tmp_path, monkeypatch, change):
    from relaydiff import checkpoint, convert
    from relaydiff.networks import build_network

    run = tmp_path / "run"
    _write_tiny_run(run)  # stage 1 at 4 px, stage 2 at 16 px, k = 4, 3 classes
    before = (run / "checkpoint.pt").read_bytes(), (run / "config.json").read_bytes()
    spec = json.loads(json.dumps(checkpoint.load_checkpoint(str(run))["config"]["stages"]["2"]["network"]))
    res = change.get("resolution", 16)
    spec["kwargs"].update(img_resolution=res, label_dim=change.get("label_dim", 3))
    net = build_network(spec)
    info = {"path": "x.pt", "format": "rdm-pt", "key": "ema", "network": spec, "resolution": res,
            "img_channels": 3, "label_dim": spec["kwargs"]["label_dim"]}
    monkeypatch.setattr(convert, "import_network", lambda path, key: (net, info))
    rc = convert.main(["x.pt", "--stage", "2", "--outdir", str(run)])
    assert rc == 2
    assert ((run / "checkpoint.pt").read_bytes(), (run / "config.json").read_bytes()) == before


def test_compare_retrains_a_corrupted_unit(tmp_path, monkeypatch, capsys):
    compare = compare_study  # the study module holds the unit cache (relaydiff/compare/study.py)

    args = compare.parse_args(["--outdir", str(tmp_path), "--budget-kimg", "0.001", "--no-progress"])
    base = tmp_path / "units" / "edm"
    base.parent.mkdir()
    (base.with_suffix(".json")).write_text(json.dumps({"config": compare_study.unit_config(args), "stats": {}}))
    (base.with_suffix(".pt")).write_bytes(b"PK\x03\x04 truncated")
    trained = []
    monkeypatch.setattr(compare, "train_unit", lambda name, cfg, ds, dev, progress: trained.append(name)
                        or (torch.nn.Linear(1, 1), {"images": 0, "seconds": 0}))
    net, stats = compare_study.get_unit("edm", args, None, torch.device("cpu"))
    assert trained == ["edm"] and "retraining unit edm" in capsys.readouterr().err
    assert compare_study.load_state_dict(str(base.with_suffix(".pt")))  # the retrained unit was saved


@pytest.mark.parametrize("argv, text", [(["--device", "foo"], "--device"), (["--outdir", "FILE"], "not a folder")])
def test_compare_bad_device_or_outdir(tmp_path, capsys, argv, text):
    from relaydiff import compare

    (tmp_path / "FILE").write_text("x")
    argv = [a.replace("FILE", str(tmp_path / "FILE")) for a in argv]
    if "--outdir" not in argv:
        argv += ["--outdir", str(tmp_path / "out")]
    rc, err = _exit(capsys, compare.main, [*argv, "--budget-kimg", "1"])
    assert rc == 2 and text in err and err.startswith("error: ") and err.count("\n") == 1, err


def test_grid_is_limited_and_streamed(tmp_path):
    """write_grid tiles only the first `limit` images (later ones need not exist) into a valid PNG."""
    import PIL.Image

    from relaydiff import images

    rng = np.random.default_rng(0)
    tiles = [rng.integers(0, 256, (6, 5, 3), dtype=np.uint8) for _ in range(5)]
    paths = []
    for i, t in enumerate(tiles):
        images.save_png(t, str(tmp_path / f"{i}.png"))
        paths.append(str(tmp_path / f"{i}.png"))
    paths += [str(tmp_path / f"missing{i}.png") for i in range(10_000)]
    assert images.write_grid(paths, str(tmp_path / "grid.png"), cols=2, limit=5) == 5
    grid = np.asarray(PIL.Image.open(tmp_path / "grid.png"))
    assert grid.shape == (18, 10, 3)
    assert (grid[12:18, 0:5] == tiles[4]).all() and (grid[12:18, 5:10] == 0).all()
    assert sorted(os.listdir(tmp_path))[:1] == ["0.png"] and not [n for n in os.listdir(tmp_path) if ".tmp" in n]


@pytest.mark.parametrize("content", ["garbage", "huge", "mixed"])
def test_low_res_images_are_checked_before_decoding(tmp_path, content):
    import PIL.Image

    from relaydiff import sample

    folder = tmp_path / "low"
    folder.mkdir()
    PIL.Image.new("RGB", (4, 4)).save(folder / "000000.png")
    if content == "garbage":
        (folder / "000001.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    elif content == "huge":  # a PNG header claiming 100000 x 100000 pixels, a few bytes long
        ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
        chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
        (folder / "000001.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk)
    else:
        PIL.Image.new("RGB", (8, 8)).save(folder / "000001.png")
    with pytest.raises(ValueError, match="--low-res: .*000001.png"):
        sample.load_low_res(str(folder), [0, 1], 3, "cpu")
