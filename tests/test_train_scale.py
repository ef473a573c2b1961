"""Training at the paper's scale: presets, --dry-run, gradient accumulation, fp16 loss scaling,
channels_last, --compile, --transfer, kept snapshots, throughput/memory records (issue 23)."""

import functools
import json
import os
import resource

import pytest
import torch

from relaydiff import checkpoint, train, train_presets
from relaydiff.training_loop import training_loop

TINY = dict(resolution=8, k=4, batch=8, channels=8, channel_mult1="1", channel_mult2="1,2", attn_res="4",
            lr=3e-3, lr_rampup=5, log_every=1, snap_every=1000, grid_every=1000, preview_steps=4,
            progress=False)

# The paper's model sizes in millions of parameters (Teng et al. 2024, Table 4 "Model size" for the
# four 64 / 64->256 models, Table 5 for 256->512 and 256->1024), written out here, not read from the
# preset table, so a wrong preset cannot agree with itself.
PAPER_PARAMS_M = {"imagenet-64": 295, "imagenet-64-256": 553, "celebahq-64": 295, "celebahq-64-256": 553,
                  "celebahq-256-512": 558, "celebahq-256-1024": 562}


def _run(tmp_path, name="run", **kw):
    return training_loop(**{**TINY, "outdir": str(tmp_path / name), **kw})


def _main(capsys, *args):
    capsys.readouterr()
    rc = train.main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS_M))
def test_dry_run_of_each_preset_at_full_size(name, capsys, tmp_path, one_thread):
    """One JSON document on stdout, exit 0, the paper's parameter count (whole millions: the paper
    rounds the CelebA-HQ and Table 5 sizes and truncates the ImageNet ones, 295.9 M and 553.8 M),
    and no weights allocated (a 562 M-parameter net would add 2.2 GB to the peak RSS)."""
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rc, out, _ = _main(capsys, "--preset", name, "--data", tmp_path / "missing.zip", "--outdir", tmp_path / "run",
                       "--dry-run")
    grown_gib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 2**20
    assert rc == 0
    doc = json.loads(out)
    (stage,) = doc["stages"].values()
    millions = stage["parameters"] / 1e6
    assert PAPER_PARAMS_M[name] - 0.5 <= millions < PAPER_PARAMS_M[name] + 1, millions
    assert grown_gib < 0.5, grown_gib
    assert not os.path.exists(tmp_path / "run")  # nothing written
    opts = doc["options"]
    assert opts["lr"] == 1e-4 and opts["arch"] == "adm" and opts["attn_res"] == "32,16,8"
    # Training length: the paper's images (Table 4/5 "Training Images") at the preset's batch.
    mimg = {"imagenet-64": 2500, "imagenet-64-256": 1000, "celebahq-64": 70, "celebahq-64-256": 40,
            "celebahq-256-512": 15, "celebahq-256-1024": 11}[name]
    assert (opts["steps"] - 1) * opts["batch"] < mimg * 1e6 <= opts["steps"] * opts["batch"]
    kw = stage["network"]["kwargs"]
    assert kw["attn_resolutions"] == [32, 16, 8] and kw.get("channels_per_head", 64) == 64
    assert stage["label_dim"] == (1000 if name.startswith("imagenet") else 0)


def test_dry_run_checks_what_the_run_would_refuse_and_applies_augment(capsys, tmp_path):
    rc, _, err = _main(capsys, "--batch", 16, "--batch-gpu", 3, "--dry-run")
    assert rc == 2 and "--batch-gpu 3 does not divide the per-rank batch 16" in err and err.count("\n") == 1, err
    rc, out, _ = _main(capsys, "--preset", "celebahq-64-256", "--data", tmp_path / "d.zip", "--dry-run")
    doc = json.loads(out)  # the paper's augment 0.2 (Table 4) is a training option now: applied, labels to the net
    assert rc == 0 and doc["not_applied"] == {} and doc["options"]["augment"] == 0.2
    assert doc["stages"]["2"]["network"]["kwargs"]["augment_dim"] == 9


def test_preset_values_table_4(capsys, tmp_path):
    """Spot values of Table 4 / 5 per preset, and options beside a preset override it."""
    rc, out, _ = _main(capsys, "--preset", "celebahq-64-256", "--data", tmp_path / "d.zip", "--dry-run")
    opts, (stage,) = json.loads(out)["options"], json.loads(out)["stages"].values()
    assert (opts["dropout"], opts["blur_sigma_max"], opts["batch"], opts["fp16"]) == (0.2, 2.0, 1024, True)
    assert stage["network"]["kwargs"]["channel_mult"] == [1, 1, 2, 2, 4, 4] and stage["resolution"] == 256
    assert stage["loss"]["class_name"] == "RelayLoss" and stage["loss"]["kwargs"]["blur_sigma_max"] == 2.0
    rc, out, _ = _main(capsys, "--preset", "celebahq-256-512", "--data", tmp_path / "d.zip", "--dry-run")
    (stage,) = json.loads(out)["stages"].values()
    assert stage["network"]["kwargs"]["channel_mult"] == [0.5, 1, 1, 2, 2, 4, 4] and stage["k"] == 2
    assert stage["loss"]["kwargs"]["blur_sigma_max"] == 1.25
    rc, out, _ = _main(capsys, "--preset", "imagenet-64", "--data", tmp_path / "d.zip", "--dry-run",
                       "--batch", 512, "--dropout", 0.3, "--channels", 64)
    doc = json.loads(out)
    assert rc == 0 and doc["options"]["batch"] == 512 and doc["options"]["dropout"] == 0.3
    assert doc["options"]["steps"] == 2500 * 10**6 // 512 + 1  # the paper's images at the batch given
    assert doc["stages"]["1"]["network"]["kwargs"]["model_channels"] == 64
    assert doc["stages"]["1"]["resolution"] == 64 and doc["options"]["fp16"] is True
    # Every preset value has a source (docs/TRAINING.md's table is made of them).
    for name in train_presets.PRESETS:
        assert set(train_presets.preset_options(name)) <= set(train_presets.preset_sources(name)), name


def test_channel_multipliers_below_one(one_thread):
    """0.5 is allowed where model_channels * 0.5 is whole (EDM's U-Nets take the product as a count)."""
    from relaydiff.networks import build_network

    spec = {"class_name": "EDMPrecond", "kwargs": dict(img_resolution=8, img_channels=3, model_type="DhariwalUNet",
                                                       model_channels=8, channel_mult=[0.5, 1], num_blocks=1,
                                                       attn_resolutions=[], channels_per_head=4)}
    net = build_network(spec)
    assert net.model.enc["8x8_conv"].weight.shape[0] == 4
    checkpoint.check_stage_config({"network": spec}, where="t")
    with pytest.raises(ValueError, match="not a whole number of channels"):
        build_network({**spec, "kwargs": {**spec["kwargs"], "model_channels": 7}})


def test_batch_gpu_gives_the_unaccumulated_gradient(tmp_path, one_thread):
    """--batch-gpu 2 over a batch of 8 (4 passes): the same per-image noise, so the same losses and
    gradients as one pass to float rounding (dropout off: its masks are drawn per pass)."""
    kw = dict(steps=2, cond=False, dropout=0.0)
    whole = _run(tmp_path, "whole", **kw)
    split = _run(tmp_path, "split", batch_gpu=2, **kw)
    for s in ("1", "2"):
        assert split["losses"][s] == pytest.approx(whole["losses"][s], rel=1e-6, abs=0)
        for a, b in zip(whole["nets"][s].parameters(), split["nets"][s].parameters(), strict=True):
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("ls", ["dynamic", "64"])
def test_fp16_loss_scaling_trains_and_resumes_exactly(tmp_path, ls, one_thread):
    """fp16 autocast with the fused relay ops in the loss: finite losses near fp32's, the dynamic
    scaler's state saved with the checkpoint, so 2 + 2 steps equal 4."""
    ref = _run(tmp_path, "fp32", steps=1)
    full = _run(tmp_path, "full", steps=4, fp16=True, ls=ls)
    for s in ("1", "2"):
        assert all(torch.isfinite(torch.tensor(full["losses"][s])))
        assert full["losses"][s][0] == pytest.approx(ref["losses"][s][0], rel=2e-2)
    _run(tmp_path, "split", steps=2, fp16=True, ls=ls)
    rest = _run(tmp_path, "split", steps=4, fp16=True, ls=ls, resume=True)
    assert rest["losses"]["2"] == full["losses"]["2"][2:]
    state = checkpoint.load_checkpoint(str(tmp_path / "split"))
    assert ("scale" in state["stages"]["2"]["loss_scale"]) == (ls == "dynamic")


def test_loss_scales_give_the_fp32_gradient(tmp_path, one_thread):
    """The gradient the optimizer sees is unscaled: with a static --ls or the dynamic scaler, the
    gradients that fp16 can hold (here the output layer's; those behind EDM's near-zero initialised
    output convolution are ~1e-12 at the start and underflow, as in any fp16 training) are fp32's
    to fp16 rounding."""
    grads = {}
    for ls in ("fp32", "1", "1024", "dynamic"):
        kw = {} if ls == "fp32" else dict(fp16=True, ls=ls)
        net = _run(tmp_path, ls, steps=1, stage="1", grad_clip=0.0, **kw)["nets"]["1"]
        grads[ls] = {n: p.grad for n, p in net.named_parameters()}
    big = [n for n, g in grads["fp32"].items() if g.abs().max() > 1e-2]
    assert big
    for ls in ("1", "1024", "dynamic"):
        for n in big:
            ref = grads["fp32"][n]
            torch.testing.assert_close(grads[ls][n], ref, rtol=2e-2, atol=2e-3 * float(ref.abs().max()))


def test_channels_last_same_training(tmp_path, one_thread):
    a = _run(tmp_path, "a", steps=2)
    b = _run(tmp_path, "b", steps=2, channels_last=True)
    for s in ("1", "2"):
        assert b["losses"][s] == pytest.approx(a["losses"][s], rel=1e-5)


@pytest.mark.slow
def test_compile_same_training(tmp_path, one_thread, monkeypatch):
    """--compile traces the networks with TorchDynamo; aot_eager (no C++ codegen: inductor takes
    minutes on a 2-core CI machine) runs the captured forward and backward graphs."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    a = _run(tmp_path, "a", steps=2, stage="2")
    b = _run(tmp_path, "b", steps=2, stage="2", compile=True)
    assert b["losses"]["2"] == pytest.approx(a["losses"]["2"], rel=1e-5)


def test_transfer_from_a_run_and_a_released_file(tmp_path, monkeypatch, one_thread):
    # 16 px: checkpoint.check_stage_config wants stage 1's resolution (16 / k) to be at least k.
    monkeypatch.setitem(TINY, "resolution", 16)
    src = _run(tmp_path, "src", steps=2)
    # lr ~ 0: the transferred weights stay where they were put (Adam moves each by about lr).
    dst = _run(tmp_path, "dst", steps=1, lr=1e-12, transfer=str(tmp_path / "src"))
    for s in ("1", "2"):
        for a, b in zip(src["emas"][s].parameters(), dst["nets"][s].parameters(), strict=True):
            torch.testing.assert_close(b, a, rtol=0, atol=1e-9)
        assert dst["nets"][s].training  # trained on, from a fresh optimizer
    with pytest.raises(ValueError, match="--transfer .* does not have the shape"):
        _run(tmp_path, "wide", steps=1, channels=16, transfer=str(tmp_path / "src"))
    # Released files go through checkpoint.import_network (the safe importer, tested in
    # test_checkpoint_import.py); here it hands back the source run's stage-2 EMA.
    seen = []

    def fake_import(path, **kw):
        seen.append(path)
        return checkpoint.load_network(str(tmp_path / "src"), stage=2)

    monkeypatch.setattr(checkpoint, "import_network", fake_import)
    released = str(tmp_path / "network-snapshot-001000.pkl")
    with pytest.raises(ValueError, match="a released network is one stage"):
        _run(tmp_path, "both", steps=1, transfer=released)
    one = _run(tmp_path, "one", steps=1, stage="2", lr=1e-12, transfer=released)
    assert seen == [released]
    for a, b in zip(src["emas"]["2"].parameters(), one["nets"]["2"].parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-9)


def test_snapshots_kept_by_kimg_and_throughput_records(tmp_path, one_thread):
    out = _run(tmp_path, steps=4, batch=500, snap_every=2, stage="1", resolution=16)
    run = tmp_path / "run"
    names = sorted(n for n in os.listdir(run) if n.startswith("network-snapshot-"))
    assert names == ["network-snapshot-000001.pt", "network-snapshot-000002.pt"]
    net, cfg = checkpoint.load_network(str(run / names[-1]), stage=1)
    for a, b in zip(net.parameters(), out["emas"]["1"].parameters(), strict=True):
        assert torch.equal(a, b)
    first, _ = checkpoint.load_network(str(run / names[0]), stage=1)
    assert not torch.equal(next(first.parameters()), next(net.parameters()))
    for rec in _metrics(run):
        assert rec["img_per_s"] > 0 and rec["s_per_kimg"] == pytest.approx(1000 / rec["img_per_s"])
        assert rec["peak_mem_gib"] > 0


@pytest.mark.parametrize("args, message", [
    (["--fp16", "1", "--bf16", "1"], "--fp16 and --bf16 exclude each other"),
    (["--batch-gpu", "3"], "--batch-gpu 3 does not divide the per-rank batch 8"),
    (["--ls", "-2", "--fp16", "1"], "--ls must be 'dynamic' or a positive number"),
    (["--channel-mult2", "0.3,2", "--channels", "8"], "not a whole number of channels"),
])
def test_bad_scale_options_are_one_line_errors(tmp_path, capsys, args, message):
    flags = [a for key, v in TINY.items() for a in ("--" + key.replace("_", "-"), str(v))]
    rc, _, err = _main(capsys, *flags, "--outdir", tmp_path / "o", "--steps", 1, *args)
    assert rc == 2 and message in err and err.count("\n") == 1, err


def test_preset_cli_trains_resumes_and_reports_what_it_cannot_apply(tmp_path, capsys, one_thread):
    """A preset scaled down by options beside it trains; --resume with the same preset continues; a
    preset value of an option this relaydiff lacks is named on stderr (not dropped silently)."""
    small = ["--preset", "celebahq-64", "--data", "builtin", "--resolution", 16, "--channels", 8,
             "--channel-mult1", "1,2", "--attn-res", 2, "--num-blocks", 1, "--batch", 4, "--progress", 0,
             "--grid-every", 0, "--preview-steps", 2, "--outdir", tmp_path / "run"]
    rc, _, err = _main(capsys, *small, "--steps", 1)
    assert rc == 0, err
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["train"]
    assert (saved["dropout"], saved["lr"], saved["stage"], saved["channels"]) == (0.15, 1e-4, "1", 8)
    if "augment" not in saved:
        assert "--preset celebahq-64 sets augment=0.2, but this relaydiff has no --augment" in err
    rc, _, err = _main(capsys, *small, "--steps", 2, "--resume")
    assert rc == 0 and checkpoint.load_checkpoint(str(tmp_path / "run"))["step"] == 2, err
    rc, _, err = _main(capsys, *small, "--steps", 3, "--resume", "--dropout", 0.3)
    assert rc == 2 and "--dropout 0.3 given, but the run was started with --dropout 0.15" in err, err
