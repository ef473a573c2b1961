"""The FID Inception-v3 detector: torch-fidelity's architecture and state_dict names, the TF1 resize,
determinism across batch sizes, and loading that runs no code from the file.

Runs on a random-weight detector saved as the published file is laid out (tests/detector_files.py).
Where torch-fidelity is installed (`pip install --no-deps torch-fidelity`), its
FeatureExtractorInceptionV3 is the oracle; its package __init__ imports torchvision, which cannot be
imported here, so the test loads its feature-extractor modules under a bare package stub instead.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pickle
import sys
import types

import pytest
import torch
from detector_files import write_random_detector

from relaydiff import inception


@pytest.fixture(scope="module")
def detector_file(tmp_path_factory):
    return write_random_detector(tmp_path_factory.mktemp("detector") / inception.WEIGHTS_NAME)


def _images(n, size=(3, 21, 26), seed=0):
    return torch.randint(0, 256, (n, *size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _torch_fidelity_module(monkeypatch, name):
    spec = importlib.util.find_spec("torch_fidelity")  # locates the package without running its __init__
    if spec is None:
        pytest.skip("torch-fidelity is not installed (pip install --no-deps torch-fidelity)")
    stub = types.ModuleType("torch_fidelity")
    stub.__path__ = list(spec.submodule_search_locations)
    for key in [k for k in sys.modules if k.startswith("torch_fidelity")]:
        monkeypatch.delitem(sys.modules, key)
    monkeypatch.setitem(sys.modules, "torch_fidelity", stub)
    module = importlib.import_module(f"torch_fidelity.{name}")
    for key in [k for k in sys.modules if k.startswith("torch_fidelity.")]:
        monkeypatch.setitem(sys.modules, key, sys.modules[key])  # removed again at teardown
    return module


def test_state_dict_names_are_torch_fidelitys(one_thread, monkeypatch, detector_file):
    ours = inception.load_detector(detector_file)
    tf = _torch_fidelity_module(monkeypatch, "feature_extractor_inceptionv3")
    theirs = tf.FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits"],
                                            feature_extractor_weights_path=detector_file)
    assert set(theirs.state_dict()) == set(ours.state_dict())
    spatial = []
    theirs.Mixed_6d.branch1x1.register_forward_hook(lambda _m, _i, out: spatial.append(out.clone()))
    x = _images(2)
    with torch.no_grad():
        pool, s = ours(x)
        their_pool, their_logits = theirs(x)
    torch.testing.assert_close(pool, their_pool, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s, spatial[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.logits(pool), their_logits, rtol=1e-5, atol=1e-5)


def test_resize_is_tensorflow1_bilinear(monkeypatch):
    x = torch.tensor([[[[0.0, 10.0], [20.0, 30.0]]]])
    # TF1 resize_bilinear, align_corners=False: source = dest * in/out = 0, 0.5, 1, 1.5 (clamped edge).
    expect_row = torch.tensor([0.0, 5.0, 10.0, 10.0])
    out = inception.resize_bilinear_tf1(x, 4)[0, 0]
    torch.testing.assert_close(out[0], expect_row)
    torch.testing.assert_close(out[:, 0], expect_row * 2)
    tf = _torch_fidelity_module(monkeypatch, "interpolate_compat_tensorflow")
    y = torch.rand(2, 3, 37, 23, generator=torch.Generator().manual_seed(1)) * 255
    theirs = tf.interpolate_bilinear_2d_like_tensorflow1x(y, size=(299, 299), align_corners=False)
    torch.testing.assert_close(inception.resize_bilinear_tf1(y, 299), theirs, rtol=0, atol=0)


def test_shapes_and_determinism_across_batch_sizes(one_thread, detector_file):
    det = inception.load_detector(detector_file)
    x = _images(3)
    with torch.no_grad():
        pool, spatial = det(x)
        singles = [det(x[i : i + 1]) for i in range(3)]
        gray_pool, _ = det(x[:1, :1])
    assert pool.shape == (3, 2048) and spatial.shape == (3, 192, 17, 17) and pool.dtype == torch.float32
    assert pool.std() > 0.1  # calibrated random weights: features are not vanishingly small
    torch.testing.assert_close(torch.cat([p for p, _ in singles]), pool, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.cat([s for _, s in singles]), spatial, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(gray_pool, det(x[:1, :1].repeat(1, 3, 1, 1))[0])  # grayscale -> RGB
    with pytest.raises(ValueError, match="uint8"):
        det(x.float())


def test_missing_file_says_what_to_fetch_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("RELAYDIFF_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError) as exc:
        inception.load_detector(None)
    msg = str(exc.value)
    assert inception.WEIGHTS_URL in msg and os.path.join(str(tmp_path / "cache"), inception.WEIGHTS_NAME) in msg
    assert "--detector" in msg and "\n" not in msg


def test_wrong_state_dict_is_refused_naming_the_file(tmp_path, detector_file):
    state = torch.load(detector_file, weights_only=True)
    del state["fc.bias"]
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"partial\.pth: not the FID Inception-v3 state_dict .*fc\.bias"):
        inception.load_detector(str(path))


class _WritesMarker:
    """Unpickling this object would create the marker file (a file carrying code)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_torchscript_and_code_carrying_files_are_refused(tmp_path):
    marker = tmp_path / "ran.txt"

    class Scripted(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.path = str(marker)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

        @torch.jit.export
        def __getstate__(self) -> tuple[str, bool]:
            return (self.path, self.training)

        @torch.jit.export
        def __setstate__(self, state: tuple[str, bool]) -> None:
            self.path = state[0]
            self.training = state[1]
            torch.save(torch.zeros(1), self.path)  # runs when torch.jit.load restores the module

    script_path = tmp_path / "detector_script.pt"
    torch.jit.script(Scripted()).save(str(script_path))
    assert not marker.exists()
    pickle_path = tmp_path / "detector_code.pkl"
    torch.save({"fc.weight": torch.zeros(1), "x": _WritesMarker(str(marker))}, pickle_path)
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump(_WritesMarker(str(marker)), f)
    for path in (script_path, pickle_path, tmp_path / "plain.pkl"):
        with pytest.raises(ValueError, match="--detector"):
            inception.load_detector(str(path))
        assert not marker.exists(), path
    with pytest.raises(ValueError, match="not a regular file"):
        inception.load_detector(str(tmp_path))
