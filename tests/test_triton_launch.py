"""How the Triton launchers launch: device, grid, caches under CUDA-graph capture (no kernel runs).

The launches are caught by relay_kernels.triton.aot's recorder, so these run on the CPU in
milliseconds; what the kernels compute is tested in test_<op>.py.
"""

import contextlib

import pytest
import torch

pytest.importorskip("triton")

import relay_kernels.functional as functional  # noqa: E402
from relay_kernels.triton import aot, block_noise, common, patch_dct, relay_fused  # noqa: E402


def _launchers(device):
    """One call of every launcher on [2, 1, 16, 16] float32 tensors on `device`."""
    def img():
        return torch.zeros(2, 1, 16, 16, device=device)

    seed = torch.arange(2, device=device)
    w = torch.ones(2, 1, 4, 4, device=device)
    scale = torch.ones(2, device=device)
    return {
        "patch_dct": lambda: patch_dct.patch_dct(img(), 4, False),
        "block_filter": lambda: block_noise.block_filter(img(), 4, False),
        "noise plain": lambda: block_noise.noise(seed, [2, 1, 16, 16], 0, 0, torch.float32),
        "noise block": lambda: block_noise.noise(seed, [2, 1, 16, 16], 0, 4, torch.float32),
        "relay_fused seeded": lambda: relay_fused.relay_fused([img()], w, scale, 0.5, 4, seed, 0, None, None),
        "relay_fused given": lambda: relay_fused.relay_fused([img()], w, scale, 0.5, 4, None, 0, img(), img()),
    }


def _meta(launch, cfg):
    return {**dict(zip(launch.kernel.arg_names, launch.args, strict=False)), **launch.kwargs, **cfg.kwargs}


def test_plain_noise_grid_fits_cuda_limits():
    """70,000 samples: the batch must not sit on grid.y (at most 65,535 on CUDA)."""
    seed = torch.arange(70_000)
    with aot.recording() as rec:
        block_noise.noise(seed, [70_000, 3], 0, 0, torch.float32)
    (launch,) = rec.launches
    for cfg in launch.kernel.configs:
        aot._check_grid(launch, _meta(launch, cfg))
        grid = launch.grid(_meta(launch, cfg))
        assert grid[0] * cfg.kwargs["BLOCK"] >= 70_000  # every sample still has its programs


@pytest.mark.parametrize("name", list(_launchers("cpu")))
def test_grids_fit_cuda_limits(name):
    with aot.recording() as rec:
        _launchers("cpu")[name]()
    assert rec.launches
    for launch in rec.launches:
        for cfg in launch.kernel.configs:
            aot._check_grid(launch, _meta(launch, cfg))


@pytest.mark.parametrize("name", list(_launchers("cpu")))
def test_launch_enters_the_tensors_device(name, monkeypatch):
    """Tensors on cuda:1 launch with cuda:1 entered (Triton takes the current device and stream).

    Fake tensors stand in for cuda:1 and torch.cuda.device is replaced by a recorder, so this
    runs without a GPU."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    entered = []

    @contextlib.contextmanager
    def fake_device(device):
        entered.append(torch.device(device))
        try:
            yield
        finally:
            entered.pop()

    seen = []

    class Recorder:
        def __call__(self, kernel):
            outer = self

            class Bound:
                def __getitem__(self, grid):
                    return lambda *a, **k: outer.launch()

            return Bound()

        def launch(self):
            seen.append(list(entered))

    monkeypatch.setattr(torch.cuda, "device", fake_device)
    for mod in (block_noise, patch_dct, relay_fused):
        monkeypatch.setattr(mod, "wrap_triton", Recorder())
    for mod in (patch_dct, relay_fused):  # the real basis indexes, which CPU torch refuses on cuda
        monkeypatch.setattr(mod, "basis_for", lambda x, k: torch.zeros(k, k, device=x.device))
    with FakeTensorMode(allow_non_fake_inputs=True):
        _launchers("cuda:1")[name]()
    assert seen == [[torch.device("cuda:1")]]


def test_capture_probe_only_for_cuda(monkeypatch):
    def probe():
        raise AssertionError("probed for a CPU tensor")

    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", probe)
    assert functional.stream_capturing(torch.device("cpu")) is False
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert functional.stream_capturing(torch.device("cuda", 0)) is True
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    assert functional.stream_capturing(torch.device("cuda", 0)) is False


def test_caches_not_filled_while_capturing(monkeypatch):
    """A tensor made during CUDA-graph capture holds its values only after a replay: the
    frequency-squares and DCT-basis caches must not keep one."""
    from relay_kernels import reference

    monkeypatch.setattr(functional, "_FREQUENCY_SQUARES", {})
    monkeypatch.setattr(common, "_BASIS", {})
    monkeypatch.setattr(functional, "stream_capturing", lambda device: True)
    monkeypatch.setattr(common, "stream_capturing", lambda device: True)
    x = torch.randn(1, 1, 8, 8)
    assert functional._cached_frequency_squares(4, torch.float32, x.device) is None
    torch.testing.assert_close(common.basis_for(x, 4), common.dct_basis(4, torch.float32, x.device),
                               rtol=0, atol=0)
    assert functional._FREQUENCY_SQUARES == {} and common._BASIS == {}

    monkeypatch.setattr(functional, "stream_capturing", lambda device: False)
    monkeypatch.setattr(common, "stream_capturing", lambda device: False)
    lam = functional._cached_frequency_squares(4, torch.float32, x.device)
    torch.testing.assert_close(lam, reference.frequency_squares(4, torch.float32, x.device), rtol=0, atol=0)
    assert functional._cached_frequency_squares(4, torch.float32, x.device) is lam
    assert common.basis_for(x, 4) is common.basis_for(x, 4)
    assert len(functional._FREQUENCY_SQUARES) == 1 and len(common._BASIS) == 1
