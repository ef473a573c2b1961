"""`relaydiff.eval activations` and `calc` end to end on a random-weight detector: the released
evaluate.py's .npz layout and batch split, EDM's mu/sigma files, torchrun, and .npz files that
are refused before numpy allocates or unpickles anything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch
from detector_files import write_random_detector

from relaydiff import activations as acts
from relaydiff import eval as rd_eval
from relaydiff import inception, metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def detector_file(tmp_path_factory):
    return write_random_detector(tmp_path_factory.mktemp("detector") / inception.WEIGHTS_NAME)


def _write_images(folder, n, seed, layout="released"):
    """released: generate.py --subdirs' 000000/000000.png; relaydiff: SEED.png plus stage1/ previews."""
    rng = np.random.RandomState(seed)
    arrays = [rng.randint(0, 256, (20, 20, 3), dtype=np.uint8) for _ in range(n)]
    for i, a in enumerate(arrays):
        path = folder / (f"{i // 1000:06d}/{i:06d}.png" if layout == "released" else f"{i:06d}.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        PIL.Image.fromarray(a).save(path)
    if layout == "relaydiff":
        (folder / "stage1").mkdir()
        PIL.Image.fromarray(arrays[0][:10, :10]).save(folder / "stage1" / "000000.png")
    PIL.Image.new("RGB", (40, 40)).save(folder / "grid.png")  # a preview: left out
    return np.stack(arrays)


def _run(capsys, *argv):
    capsys.readouterr()
    rc = rd_eval.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_rank_batches_split_as_released():
    # evaluate.py calculate_activations: num_batches = ((N - 1) // (B * W) + 1) * W, arange(N).tensor_split,
    # rank r takes batches r::W.
    n, batch, world = 11, 3, 2
    num = ((n - 1) // (batch * world) + 1) * world
    released = torch.arange(n).tensor_split(num)
    for rank in range(world):
        ours = acts.rank_batches(n, batch, rank, world)
        assert [b.tolist() for b in ours] == [b.tolist() for b in released[rank::world]]
    every = torch.cat([b for r in range(world) for b in acts.rank_batches(n, batch, r, world)])
    assert sorted(every.tolist()) == list(range(n)) and max(len(b) for b in released) <= batch


def test_activations_layout_order_and_batch_invariance(one_thread, tmp_path, capsys, detector_file):
    images = _write_images(tmp_path / "gen", 4, seed=0)
    dest = tmp_path / "gen.npz"
    rc, out, err = _run(capsys, "activations", "--data", tmp_path / "gen", "--dest", dest, "--detector",
                        detector_file, "--device", "cpu", "--batch", 3, "--workers", 0)
    assert rc == 0, err
    with np.load(dest, allow_pickle=False) as npz:
        assert npz.files == ["feat", "s_feat"]
        feat, s_feat = npz["feat"], npz["s_feat"]
    assert feat.shape == (4, 2048) and s_feat.shape == (4, 2023) and feat.dtype == s_feat.dtype == np.float64
    det = inception.load_detector(detector_file)
    with torch.no_grad():
        pool, spatial = det(torch.from_numpy(images[[2]]).permute(0, 3, 1, 2))
    np.testing.assert_allclose(feat[2], pool[0].double().numpy(), rtol=1e-5, atol=1e-6)  # rows in name order
    np.testing.assert_allclose(s_feat[2], spatial[0, :7].reshape(-1).double().numpy(), rtol=1e-5, atol=1e-6)
    again = rd_eval.set_activations(str(tmp_path / "gen"), detector_file, batch=1)
    np.testing.assert_allclose(again["feat"], feat, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(again["s_feat"], s_feat, rtol=1e-5, atol=1e-6)


def test_calc_end_to_end_and_edm_statistics(one_thread, tmp_path, capsys, detector_file):
    _write_images(tmp_path / "gen", 4, seed=1, layout="relaydiff")
    _write_images(tmp_path / "ref", 5, seed=2)
    for name in ("gen", "ref"):
        rc, _, err = _run(capsys, "activations", "--data", tmp_path / name, "--dest", tmp_path / f"{name}.npz",
                          "--detector", detector_file, "--device", "cpu", "--no-progress")
        assert rc == 0, err
    rc, out, err = _run(capsys, "calc", "--sample", tmp_path / "gen.npz", "--ref", tmp_path / "ref.npz",
                        "--detector", detector_file, "--device", "cpu", "--json", tmp_path / "m.json")
    assert rc == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    assert json.loads((tmp_path / "m.json").read_text()) == res
    assert set(res) == {"num_sample", "num_ref", "fid", "sfid", "is", "precision", "recall"}
    assert res["num_sample"] == 4 and res["num_ref"] == 5  # the stage1/ preview and grid.png left out
    g, r = acts.read_set(str(tmp_path / "gen.npz")), acts.read_set(str(tmp_path / "ref.npz"))
    assert res["fid"] > 0 and res["sfid"] > 0  # the formulas themselves: tests/test_metrics.py
    assert (res["precision"], res["recall"]) == metrics.precision_recall(r["feat"], g["feat"])
    logits = inception.load_detector(detector_file).logits(torch.from_numpy(g["feat"]).float()).detach()
    assert res["is"] == pytest.approx(metrics.inception_score(logits.numpy()), rel=1e-6) and res["is"] > 1
    # EDM's fid-refs/*.npz holds only mu and sigma: FID from them equals FID from the features.
    mu, sigma = metrics.feature_stats(r["feat"])
    np.savez(tmp_path / "edm-ref.npz", mu=mu, sigma=sigma)
    rc, out, err = _run(capsys, "calc", "--sample", tmp_path / "gen.npz", "--ref", tmp_path / "edm-ref.npz",
                        "--metrics", "fid")
    assert rc == 0, err
    assert json.loads(out)["fid"] == pytest.approx(res["fid"], rel=1e-6)
    rc, _, err = _run(capsys, "calc", "--sample", tmp_path / "gen.npz", "--ref", tmp_path / "edm-ref.npz",
                      "--metrics", "pr")
    assert rc == 2 and "feat" in err and err.count("\n") == 1


def test_compare_is_the_two_steps(one_thread, tmp_path, capsys, detector_file):
    _write_images(tmp_path / "gen", 4, seed=3)
    _write_images(tmp_path / "ref", 4, seed=4)
    rc, out, err = _run(capsys, "compare", "--gen", tmp_path / "gen", "--ref", tmp_path / "ref", "--metrics",
                        "kid,pr,rapsd", "--detector", detector_file, "--device", "cpu")
    assert rc == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    g = rd_eval.set_activations(str(tmp_path / "gen"), detector_file)
    r = rd_eval.set_activations(str(tmp_path / "ref"), detector_file)
    step = rd_eval.calc(g, r, ["kid", "pr"])
    assert res["kid"] == pytest.approx(step["kid"], rel=1e-6) and res["recall"] == step["recall"]
    assert res["rapsd_distance"] > 0 and res["num_sample"] == 4


def test_failed_activations_leave_the_old_file(one_thread, tmp_path, capsys, detector_file):
    _write_images(tmp_path / "gen", 2, seed=5)
    (tmp_path / "gen" / "000000" / "000009.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    dest = tmp_path / "old.npz"
    dest.write_bytes(b"old")
    rc, _, err = _run(capsys, "activations", "--data", tmp_path / "gen", "--dest", dest, "--detector",
                      detector_file, "--device", "cpu", "--workers", 1)
    assert rc == 2 and err.strip().splitlines()[-1].startswith("error: ") and "000009.png" in err, err
    assert dest.read_bytes() == b"old" and sorted(os.listdir(tmp_path)) == ["gen", "old.npz"]


def test_crafted_npz_refused(tmp_path):
    np.savez(tmp_path / "obj.npz", feat=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(ValueError, match="object arrays are refused"):
        acts.read_set(str(tmp_path / "obj.npz"))
    # A header claiming 10^12 float64 rows in a few bytes: refused before numpy allocates.
    header = np.lib.format.header_data_from_array_1_0(np.zeros((2, 2)))
    header["shape"] = (10 ** 12, 2048)
    with zipfile.ZipFile(tmp_path / "big.npz", "w") as zf, zf.open("feat.npy", "w") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(b"\0" * 64)
    with pytest.raises(ValueError, match="does not hold"):
        acts.read_set(str(tmp_path / "big.npz"))
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="not an .npz"):
        acts.read_set(str(tmp_path / "text.npz"))
    np.savez(tmp_path / "other.npz", arr_0=np.zeros(3))
    with pytest.raises(ValueError, match="holds none of feat"):
        acts.read_set(str(tmp_path / "other.npz"))
    np.savez(tmp_path / "nan.npz", feat=np.full((3, 4), np.nan))
    with pytest.raises(ValueError, match="finite"):
        acts.read_set(str(tmp_path / "nan.npz"))


def test_torchrun_two_ranks_equal_one(one_thread, tmp_path, detector_file):
    # Each rank runs one intra-op thread (OMP_NUM_THREADS=1 below); the 1-rank reference does too
    # (one_thread), since a convolution's float32 sums depend on how its work is split over threads.
    images = tmp_path / "gen"
    _write_images(images, 5, seed=6)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    base = ["activations", "--data", str(images), "--detector", detector_file, "--device", "cpu", "--batch", "2",
            "--workers", "0", "--no-progress"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "relaydiff.eval"]
    run = subprocess.run(cmd + base + ["--dest", str(tmp_path / "two.npz")], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    one = rd_eval.set_activations(str(images), detector_file, batch=2)
    two = acts.read_set(str(tmp_path / "two.npz"))
    np.testing.assert_allclose(two["feat"], one["feat"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(two["s_feat"], one["s_feat"], rtol=1e-5, atol=1e-6)
