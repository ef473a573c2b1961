"""relaydiff.dataset: built-in crops, image folder, EDM zip, data order, bad inputs, the streaming
pipeline (lazy vs cached, xflip, DataLoader workers, rank split, augmentation in the batches)."""

import json
import os
import pickle
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch

from relaydiff.dataset import LazyImageDataset, TrainingBatches, builtin_dataset, global_indices, open_dataset
from relaydiff.training_loop import image_seeds, training_loop


def _png(path, value, size=12):
    arr = np.full((size, size + 4, 3), value, dtype=np.uint8)  # non-square: center-cropped
    PIL.Image.fromarray(arr).save(path)


def test_builtin_deterministic_labels_are_photo_index():
    a = builtin_dataset(8, num_images=16, seed=3)
    b = builtin_dataset(8, num_images=16, seed=3)
    c = builtin_dataset(8, num_images=16, seed=4)
    assert a.images.shape == (16, 3, 8, 8) and a.images.dtype == torch.uint8
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert a.label_dim == 8 and a.labels.tolist() == [i // 2 for i in range(16)]


def test_folder_labels_from_subfolders_and_json(tmp_path):
    for cls, v in (("cat", 10), ("dog", 200)):
        os.makedirs(tmp_path / cls)
        for i in range(2):
            _png(tmp_path / cls / f"{i}.png", v)
    ds = open_dataset(str(tmp_path), 8)
    images = ds.batch(torch.arange(4))[0]
    assert len(ds) == 4 and images.shape == (4, 3, 8, 8) and ds.labels.tolist() == [0, 0, 1, 1]
    assert int(images[0].float().mean()) == 10 and int(images[3].float().mean()) == 200
    labels = [["cat/0.png", 3], ["cat/1.png", 2], ["dog/0.png", 1], ["dog/1.png", 0]]
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": labels}))
    assert open_dataset(str(tmp_path), 8).labels.tolist() == [3, 2, 1, 0]


def test_zip_dataset(tmp_path):
    src = tmp_path / "img.png"
    _png(src, 77)
    path = tmp_path / "data.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(3):
            zf.write(src, f"{i:05d}.png")
        zf.writestr("dataset.json", json.dumps({"labels": [[f"{i:05d}.png", i % 2] for i in range(3)]}))
    for cache in (False, True):
        ds = open_dataset(str(path), 4, cache=cache)
        assert ds.batch(torch.arange(3))[0].shape == (3, 3, 4, 4)
        assert ds.labels.tolist() == [0, 1, 0] and ds.label_dim == 2


def test_missing_path_and_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        open_dataset(str(tmp_path / "nope"), 8)
    _png(tmp_path / "good.png", 5)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    for cache in (False, True):  # the lazy dataset reads its first image at open, the rest when asked
        with pytest.raises(ValueError, match="bad.png"):
            open_dataset(str(tmp_path), 8, cache=cache).batch(torch.arange(2))
    path = tmp_path / "data.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("broken.jpg", b"\xff\xd8garbage")
    with pytest.raises(ValueError, match="broken.jpg"):
        open_dataset(str(path), 8)
    (tmp_path / "notzip.zip").write_bytes(b"plain")
    with pytest.raises(ValueError, match="not a zip"):
        open_dataset(str(tmp_path / "notzip.zip"), 8)


def test_global_indices_function_of_seed_and_step():
    a = torch.cat([global_indices(s, 4, 10, seed=1) for s in range(5)])  # two epochs of 10
    assert sorted(a[:10].tolist()) == list(range(10)) and sorted(a[10:].tolist()) == list(range(10))
    assert torch.equal(global_indices(3, 4, 10, seed=1), a[12:16])
    assert not torch.equal(global_indices(0, 4, 10, seed=2), a[:4])


def _folder(root, n=12, size=(10, 14)):
    """n random non-square PNGs in two class folders."""
    rng = np.random.default_rng(0)
    for i in range(n):
        os.makedirs(root / f"c{i % 2}", exist_ok=True)
        PIL.Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / f"c{i % 2}" / f"{i:03d}.png")
    return str(root)


def test_lazy_equals_cached_and_holds_no_pixels(tmp_path):
    data = _folder(tmp_path / "d", size=(64, 64))
    lazy, cached = open_dataset(data, 16), open_dataset(data, 16, cache=True)
    assert isinstance(lazy, LazyImageDataset) and not hasattr(lazy, "images")
    a, la = lazy.batch(torch.tensor([5, 0, 11, 5]))
    b, lb = cached.batch(torch.tensor([5, 0, 11, 5]))
    assert torch.equal(a, b) and torch.equal(la, lb) and a.is_contiguous()
    # What a DataLoader worker receives carries names and labels, not images (12 x 64x64x3 bytes).
    assert len(pickle.dumps(lazy)) < 4000 < 12 * 64 * 64 * 3


def test_xflip_doubles_with_mirrored_copies(tmp_path):
    data = _folder(tmp_path / "d")
    for cache in (False, True):
        ds = open_dataset(data, 8, cache=cache, xflip=True)
        assert len(ds) == 24 and ds.label_dim == 2
        images, labels = ds.batch(torch.tensor([3, 15]))
        assert torch.equal(images[1], images[0].flip(-1)) and labels[0] == labels[1]
        assert not torch.equal(images[0], images[0].flip(-1))
    assert len(builtin_dataset(8, num_images=16, xflip=True)) == 32
    with pytest.raises(IndexError, match="out of range"):
        ds.batch(torch.tensor([24]))


def _batches(ds, **kw):
    return TrainingBatches(ds, **{**dict(batch=4, seed=3, steps=4, device=torch.device("cpu"), label_dim=2,
                                         image_seeds=image_seeds), **kw})


def test_batches_same_for_workers_and_ranks(tmp_path, one_thread):
    ds = open_dataset(_folder(tmp_path / "d"), 8, xflip=True)
    plain = _batches(ds, augment=0.5)
    ahead = _batches(ds, augment=0.5, workers=2, start=1)
    halves = [_batches(ds, augment=0.5, rank=r, world=2) for r in (0, 1)]
    for step in (1, 2, 3):
        want = plain(step)
        got = ahead(step)
        split = [h(step) for h in halves]
        for i in range(3):  # images, one-hot labels, augmentation labels
            assert torch.equal(got[i], want[i])
            assert torch.equal(torch.cat([split[0][i], split[1][i]]), want[i])
        assert want[0].shape == (4, 3, 8, 8) and want[2].shape == (4, 9)
        assert want[0].dtype == torch.float32 and want[1].sum(1).eq(1).all()
    ahead.close()
    assert _batches(ds)(1)[2] is None  # no augmentation: no labels for it
    with pytest.raises(RuntimeError, match="out of step"):
        _batches(ds, workers=1)(2)  # its workers start at step 0


def test_bad_image_in_a_worker_is_one_line_error(tmp_path):
    data = tmp_path / "d"
    _folder(data, n=4)
    (data / "c1" / "zz.png").write_bytes(b"\x89PNG broken")
    ds = open_dataset(str(data), 8)
    batches = _batches(ds, batch=5, workers=1, steps=1)
    with pytest.raises(ValueError, match=r"zz\.png: not a readable image") as err:
        batches(0)
    assert "\n" not in str(err.value) and "Traceback" not in str(err.value)


TINY = dict(resolution=8, k=4, batch=8, channels=8, channel_mult1="1", channel_mult2="1,2", attn_res="4",
            lr=3e-3, lr_rampup=5, log_every=1, snap_every=1000, grid_every=1000, preview_steps=4,
            progress=False, steps=3)


def _weights(out):
    return {f"{s}.{k}": v for s, net in out["nets"].items() for k, v in net.state_dict().items()}


def test_training_is_bit_identical_for_workers_and_cache(tmp_path, one_thread):
    data = _folder(tmp_path / "d")
    runs = {}
    for name, kw in (("w0", {}), ("w2", dict(workers=2)), ("cache", dict(cache=True)),
                     ("aug0", dict(augment=0.4, xflip=True)), ("aug2", dict(augment=0.4, xflip=True, workers=2))):
        runs[name] = _weights(training_loop(**TINY, data=data, outdir=str(tmp_path / name), **kw))
    for a, b in (("w0", "w2"), ("w0", "cache"), ("aug0", "aug2")):
        assert runs[a].keys() == runs[b].keys()
        assert all(torch.equal(runs[a][k], runs[b][k]) for k in runs[a]), (a, b)
    # --augment gives both stages EDM's 9-dim augmentation mapping, and it trains.
    for s in ("1", "2"):
        assert runs["aug0"][f"{s}.model.map_augment.weight"].shape[1] == 9
        assert f"{s}.model.map_augment.weight" not in runs["w0"]
    assert not torch.equal(runs["aug0"]["2.model.map_augment.weight"],
                           _initial_weights(tmp_path, data)["2.model.map_augment.weight"])


def _initial_weights(tmp_path, data):
    """The same run's networks before any step (steps=1 with lr 0 leaves them at initialisation)."""
    out = training_loop(**{**TINY, "steps": 1, "lr": 1e-30}, data=data, outdir=str(tmp_path / "init"),
                        augment=0.4, xflip=True)
    return _weights(out)


def test_resume_may_change_workers_and_cache_not_augment(tmp_path, capsys, one_thread):
    from relaydiff import train

    data, out = _folder(tmp_path / "d"), str(tmp_path / "run")
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()] + ["--data", data, "--outdir", out]
    assert train.main(flags + ["--steps", "2"]) == 0
    assert train.main(["--outdir", out, "--resume", "--steps", "3", "--workers", "1", "--cache", "true"]) == 0
    capsys.readouterr()
    assert train.main(["--outdir", out, "--resume", "--steps", "4", "--augment", "0.3"]) == 2
    assert "--augment 0.3 given, but the run was started with --augment 0.0" in capsys.readouterr().err
