"""relaydiff.safe_load: what it accepts (torch.save zip files and plain pickles, bit-exact), that no
torch loader is ever reached, and its documented limits (each made small here to be reached fast)."""

import io
import pickle

import pytest
import torch

from relaydiff import safe_load


def _state():
    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(3, 4)
    full = torch.arange(12.0).reshape(3, 4)
    return {"w": torch.randn(4, 5, generator=g), "t": full.t(), "row": full[1, 1:],  # strided views of one storage
            "h": torch.ones(3, dtype=torch.float16), "i": torch.arange(4), "b": torch.tensor([True, False]),
            "bf": torch.randn(2, 3, generator=g).bfloat16(), "d": torch.tensor(2.5, dtype=torch.float64),
            "i8": torch.tensor([[-3], [7]], dtype=torch.int8), "u8": torch.arange(5, dtype=torch.uint8)[::2],
            "i32": torch.ones(2, 2, 2, dtype=torch.int32), "e": torch.zeros(0), "sd": lin.state_dict(),
            "nested": {"x": [1, 2.5, "s", (3, None)], 7: {1, 2}}}


def _same(a, b):
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride() and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@pytest.mark.parametrize("fmt", ["zip", "legacy", "pickle"])
def test_loads_every_format_exactly_without_torch_load(tmp_path, monkeypatch, fmt):
    path = tmp_path / "f.pt"
    state = _state()
    if fmt == "zip":
        torch.save(state, path)
    elif fmt == "legacy":  # torch < 1.6's format (torch-fidelity's published Inception weights, 2020)
        torch.save(state, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(state, protocol=4))

    def never(*args, **kwargs):
        raise AssertionError("a torch loader was reached")

    for name in ("load",):
        monkeypatch.setattr(torch, name, never)
    monkeypatch.setattr(torch.jit, "load", never)
    monkeypatch.setattr(pickle, "Unpickler", never)  # the C unpickler is never used either
    obj, got = safe_load.load(str(path))
    assert got == fmt and _same(state, obj)
    if fmt != "pickle":  # torch.save writes a shared storage once (a plain pickle copies it per tensor)
        assert obj["t"].untyped_storage().data_ptr() == obj["row"].untyped_storage().data_ptr()


def test_legacy_state_dict_of_any_pickle_protocol_loads(tmp_path):
    """The detector path: load_state_dict of a legacy-format state_dict, protocol 2 (torch's default) or 4."""
    sd = torch.nn.Conv2d(3, 4, 3).state_dict()
    for protocol in (2, 4):
        path = tmp_path / f"p{protocol}.pth"
        torch.save(sd, path, _use_new_zipfile_serialization=False, pickle_protocol=protocol)
        got = safe_load.load_state_dict(str(path), what="--detector")
        assert got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) for k in sd)


def test_load_state_dict_refuses_non_flat_and_nan(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save({"a": torch.ones(2)}, path)
    assert torch.equal(safe_load.load_state_dict(str(path))["a"], torch.ones(2))
    torch.save({"a": {"b": torch.ones(2)}}, path)
    with pytest.raises(safe_load.FileRefused, match="not a state_dict"):
        safe_load.load_state_dict(str(path))
    torch.save({"a": torch.tensor([1.0, float("nan")])}, path)
    with pytest.raises(safe_load.FileRefused, match="tensor a holds NaN"):
        safe_load.load_state_dict(str(path), what="detector weights")


@pytest.mark.parametrize("limit, value, message", [
    ("MAX_OPCODES", 1000, "pickle opcodes"), ("MAX_DEPTH", 3, "nested deeper"),
    ("MAX_PICKLE_BYTES", 100, "data.pkl is"), ("MAX_ITEMS", 5, "entries in its containers"),
])
def test_each_limit_is_enforced(tmp_path, monkeypatch, limit, value, message):
    path = tmp_path / "f.pt"
    torch.save({"a": [[[[1]]]], "s": {1, 2, 3, 4, 5, 6}, "big": list(range(2000))}, path)
    safe_load.load(str(path))  # within the real limits
    monkeypatch.setattr(safe_load, limit, value)
    with pytest.raises(safe_load.FileRefused, match=message) as exc:
        safe_load.load(str(path))
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_tensor_bytes_are_bounded_by_the_file_size(tmp_path):
    """Views of one storage may not add up to more than 2 x the file's size + 1 MiB."""
    base = torch.zeros(1 << 17)  # 512 KiB
    path = tmp_path / "views.pt"
    torch.save({"views": [base] * 1 + [base[i:] for i in range(1, 8)]}, path)
    with pytest.raises(safe_load.FileTooLarge, match="2 x the file's size"):
        safe_load.load(str(path))


def test_nested_storage_is_read_once_when_memo_shared(tmp_path):
    """A plain pickle that names one tensor twice gets one tensor (memo), as pickle.dumps writes it."""
    t = torch.arange(6.0)
    path = tmp_path / "shared.pkl"
    path.write_bytes(pickle.dumps({"a": t, "b": t}))
    obj, _ = safe_load.load(str(path))
    assert obj["a"] is obj["b"] and torch.equal(obj["a"], t)


def test_trailing_bytes_after_a_plain_pickle_are_refused(tmp_path):
    path = tmp_path / "tail.pkl"
    buf = io.BytesIO()
    pickle.dump({"a": 1}, buf)
    path.write_bytes(buf.getvalue() + b"PK\x03\x04")
    with pytest.raises(safe_load.FileRefused, match="after the pickle's end"):
        safe_load.load(str(path))
