"""Hostile files: every class of issue 19 crafted here, and seeded random corruptions of valid files
of both formats, loaded in a subprocess under a wall-clock timeout and a 2 GiB address-space limit
(tests/load_sandbox.py). Each must be refused with one documented error naming the file (or, for a
corruption that leaves a valid file, load), and no marker file may appear: nothing in a file runs
or writes."""

import io
import json
import os
import pickle
import random
import struct
import subprocess
import sys
import tarfile
import zipfile

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SANDBOX = os.path.join(REPO, "tests", "load_sandbox.py")
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _run_sandbox(tmp_path, cases, timeout=90):
    spec, out = tmp_path / "cases.json", tmp_path / "out.json"
    spec.write_text(json.dumps(cases))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    r = subprocess.run([sys.executable, SANDBOX, str(spec), str(out), REPO], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=timeout)  # a hang fails here, not CI
    assert r.returncode == 0, r.stderr[-3000:]
    assert "RAN" not in r.stdout + r.stderr, "code from a file ran"
    return json.loads(out.read_text()), r.stdout + r.stderr


# ---------------------------------------------------------------------------- crafted pickles

def _g(module, name):  # GLOBAL opcode
    return b"c" + f"{module}\n{name}\n".encode()


def _str(s):  # BINUNICODE
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _tup(values):  # a tuple of small ints / strs, protocol 2 opcodes
    return b"(" + b"".join(_int(v) for v in values) + b"t"


def _int(v):
    if isinstance(v, str):
        return _str(v)
    return b"J" + struct.pack("<i", v) if -2**31 <= v < 2**31 else b"\x8a\x08" + struct.pack("<q", v)  # LONG1


def _tensor_pkl(numel, offset, size, stride, build=None, legacy=False, view=b"N"):
    """data.pkl of {'t': _rebuild_tensor_v2(storage '0' of numel floats, offset, size, stride)}; legacy:
    the persistent id has legacy's sixth item, view_metadata (`view`, None unless given)."""
    storage = b"(" + _str("storage") + _g("torch", "FloatStorage") + _str("0") + _str("cpu") + _int(numel) \
        + (view if legacy else b"") + b"tQ"
    args = b"(" + storage + _int(offset) + _tup(size) + _tup(stride) + b"\x89" + _g("collections", "OrderedDict") \
        + b")Rt"
    tensor = _g("torch._utils", "_rebuild_tensor_v2") + args + b"R"
    if build is not None:
        tensor += build + b"b"
    return b"\x80\x02}" + _str("t") + tensor + b"s."


def _torch_zip(path, pkl, storages=None, deflate_pkl=False, extra=()):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pkl, zipfile.ZIP_DEFLATED if deflate_pkl else zipfile.ZIP_STORED)
        z.writestr("archive/byteorder", b"little")
        for key, data in (storages or {}).items():
            z.writestr(f"archive/data/{key}", data)
        for name, data in extra:
            z.writestr(name, data)
        z.writestr("archive/version", b"3\n")


def _legacy_pickle(obj_pkl, keys=("0",), count=1, data=b"\0\0\0\0", little=True):
    """A legacy torch.save file (torch/serialization.py _legacy_save's layout) of obj_pkl, then
    the key list and one storage of `count` elements holding `data`."""
    dump = lambda o: pickle.dumps(o, protocol=2)  # noqa: E731
    return dump(LEGACY_MAGIC) + dump(1001) + dump({"protocol_version": 1001, "little_endian": little}) + obj_pkl \
        + dump(list(keys)) + struct.pack("<q", count) + data


def _legacy_files(put):
    """Crafted legacy-format files, each refused for the reason LEGACY_EXPECTED names."""
    data16 = bytes(64)
    ok = _tensor_pkl(16, 0, (16,), (1,), legacy=True)
    put("legacy-count.pt", _legacy_pickle(ok, count=15, data=data16))
    put("legacy-short.pt", _legacy_pickle(ok, count=16, data=data16[:60]))
    put("legacy-trailing.pt", _legacy_pickle(ok, count=16, data=data16 + b"PK\x03\x04"))
    put("legacy-keys.pt", _legacy_pickle(ok, keys=("1",), count=16, data=data16))
    put("legacy-big-endian.pt", _legacy_pickle(ok, count=16, data=data16, little=False))
    put("legacy-view.pt", _legacy_pickle(_tensor_pkl(16, 0, (16,), (1,), legacy=True, view=_tup(("1", 0, 64))),
                                         count=16, data=data16))
    put("legacy-huge-count.pt", _legacy_pickle(_tensor_pkl(1 << 40, 0, (4,), (1,), legacy=True), count=1 << 40,
                                               data=data16))
    for name, (offset, size, stride) in {"legacy-overlap.pt": (0, (4, 4), (1, 1)),
                                         "legacy-out-of-storage.pt": (0, (5, 4), (4, 1)),
                                         "legacy-offset-out.pt": (100, (2,), (1,))}.items():
        put(name, _legacy_pickle(_tensor_pkl(16, offset, size, stride, legacy=True), count=16, data=data16))
    put("legacy-build-tensor.pt", _legacy_pickle(_tensor_pkl(16, 0, (16,), (1,), build=_tup((0, 1 << 20)),
                                                             legacy=True), count=16, data=data16))
    put("legacy-os-system.pt", _legacy_pickle(b"\x80\x02" + _g("os", "system") + b"(" + _str("echo RAN") + b"tR."))
    put("legacy-zip-storage-id.pt", _legacy_pickle(_tensor_pkl(16, 0, (16,), (1,)), count=16, data=data16))
    nested = io.BytesIO()
    torch.save(torch.storage.TypedStorage(4), nested, _use_new_zipfile_serialization=False)
    blob = nested.getvalue()
    put("legacy-nested.pt", _legacy_pickle(b"\x80\x02" + _g("torch.storage", "_load_from_bytes") + b"(B"
                                           + struct.pack("<I", len(blob)) + blob + b"tR."))


LEGACY_EXPECTED = {"legacy-count.pt": "element count does not match", "legacy-short.pt": "claims",
                   "legacy-trailing.pt": "after the last legacy storage", "legacy-keys.pt": "key list",
                   "legacy-big-endian.pt": "big-endian", "legacy-view.pt": "storage view",
                   "legacy-huge-count.pt": "storage records claim", "legacy-overlap.pt": "overlapping",
                   "legacy-out-of-storage.pt": "past its storage", "legacy-offset-out.pt": "past its storage",
                   "legacy-build-tensor.pt": "BUILD onto a Tensor", "legacy-os-system.pt": "os.system",
                   "legacy-zip-storage-id.pt": "legacy storage record", "legacy-nested.pt": "nested inside another"}


def crafted_files(d, marker):
    """{name: path} of one file per attack class of issue 19."""
    d.mkdir(exist_ok=True)
    files = {}

    def put(name, data):
        files[name] = str(d / name)
        (d / name).write_bytes(data)

    # Code: a TorchScript archive renamed .pt whose __setstate__ would print RAN and write the marker.
    ts = d / "torchscript.pt"
    torch.jit.save(torch.jit.script(_ScriptedSetstate()), str(ts))
    files["torchscript.pt"] = str(ts)
    # Files written: a legacy-format file whose pickle BUILDs dump_patches onto an allowed class and
    # names a module container whose "patch" torch's legacy loader would write at the marker's path.
    evil = b"\x80\x02" + _g("torch.nn.modules.container", "ModuleDict") + b"}" + _str("dump_patches") + b"\x88sb" \
        + b"(" + _str("module") + _g("torch.nn.modules.container", "ModuleDict") + _str(str(marker)) \
        + _str("RAN = 1\n") + b"tQ."
    put("legacy-build.pt", _legacy_pickle(evil))
    _legacy_files(put)
    # Hang: a tar-format file with a FIFO member, and a FIFO itself.
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("storages")
        info.type = tarfile.FIFOTYPE
        tar.addfile(info)
    put("tar-fifo.pt", buf.getvalue())
    os.mkfifo(d / "fifo.pt")
    files["fifo.pt"] = str(d / "fifo.pt")
    files["dev-zero"] = "/dev/zero"
    files["folder.pt"] = str(d)
    # Memory: stride-0, overlapping, out-of-storage and too-big-storage tensor records.
    data16 = bytes(64)
    for name, (numel, offset, size, stride) in {
            "stride0.pt": (16, 0, (65536, 65536), (0, 0)), "overlap.pt": (16, 0, (4, 4), (1, 1)),
            "out-of-storage.pt": (16, 0, (5, 4), (4, 1)), "offset-out.pt": (16, 100, (2,), (1,)),
            "negative-stride.pt": (16, 8, (4,), (-1,)), "huge-storage.pt": (1 << 40, 0, (4,), (1,))}.items():
        _torch_zip(d / name, _tensor_pkl(numel, offset, size, stride), {"0": data16})
        files[name] = str(d / name)
    _torch_zip(d / "build-tensor.pt", _tensor_pkl(16, 0, (16,), (1,), build=_tup((0, 1 << 20))), {"0": data16})
    files["build-tensor.pt"] = str(d / "build-tensor.pt")
    # Memory: a deflated data.pkl that inflates 1000x (a zip bomb), and a zip that lies about it.
    bomb = b"\x80\x02" + b"N0" * (20 << 20) + b"N."
    _torch_zip(d / "zip-bomb.pt", bomb, deflate_pkl=True)
    files["zip-bomb.pt"] = str(d / "zip-bomb.pt")
    _torch_zip(d / "torchscript-members.pt", _tensor_pkl(16, 0, (16,), (1,)), {"0": data16},
               extra=[("archive/constants.pkl", b"\x80\x02)."), ("archive/code/__torch__.py", b"RAN")])
    files["torchscript-members.pt"] = str(d / "torchscript-members.pt")
    _torch_zip(d / "extra-member.pt", _tensor_pkl(16, 0, (16,), (1,)), {"0": data16},
               extra=[("archive/../../evil.py", b"RAN")])
    files["extra-member.pt"] = str(d / "extra-member.pt")
    # Memory: a 1 MB string referenced 1000 times through the memo, each encoded to new bytes; and a
    # storage shared by 1000 full-size views; and a big list copied into 1000 sets.
    big = b"\x80\x02" + _str("x" * (1 << 20)) + b"q\x00(" + (_g("_codecs", "encode") + b"(h\x00" + _str("latin1")
                                                             + b"tR") * 1000 + b"l."
    put("memo-string.pkl", big)
    put("memo-views.pkl", _memo_views())
    lst = b"\x80\x02](" + b"K\x00" * 100_000 + b"eq\x00(" + (_g("builtins", "set") + b"(h\x00tR") * 1000 + b"l."
    put("memo-sets.pkl", lst)
    # Nesting and cycles; records that claim more bytes than the file has; a huge frame.
    put("deep.pkl", b"\x80\x02" + b"(" * 100_000 + b"l" * 100_000 + b".")
    put("cycle.pkl", b"\x80\x02]q\x00h\x00a.")
    # A 1M-deep tuple used as a dict key (hashing it recursed in C and crashed the process), and a
    # 200k-deep frozenset chain (x = frozenset([x]) through the memo).
    put("deep-tuple-key.pkl", b"\x80\x02}N" + b"\x85" * 1_000_000 + b"Ns.")
    step = b"h\x00(h\x01l\x85Rq\x01\x30"
    put("deep-frozenset.pkl", b"\x80\x02" + _g("builtins", "frozenset") + b"q\x00\x30Nq\x01\x30" + step * 200_000
        + b"}h\x01Ns.")
    put("claims-huge-string.pkl", b"\x80\x04\x8d" + struct.pack("<Q", 1 << 62) + b"x")
    put("huge-frame.pkl", b"\x80\x04\x95" + struct.pack("<Q", 1 << 62) + b"N.")
    put("os-system.pkl", b"\x80\x02" + _g("os", "system") + b"(" + _str(f"echo RAN > {marker}") + b"tR.")
    put("builtins-exec.pt", b"\x80\x02" + _g("builtins", "exec") + b"(" + _str(f"open({str(marker)!r},'w')")
        + b"tR.")
    put("empty.pt", b"")
    put("text.pt", b"hello, not a checkpoint\n")
    return files


def _memo_views():
    """A plain pickle of a list of the same 1 MiB storage rebuilt 1000 times as full views."""
    raw = io.BytesIO()  # what torch.storage's __reduce__ pickles: a legacy torch.save of the storage
    torch.save(torch.storage.TypedStorage(1 << 18), raw, _use_new_zipfile_serialization=False)
    raw = raw.getvalue()
    blob = b"B" + struct.pack("<I", len(raw)) + raw
    storage = _g("torch.storage", "_load_from_bytes") + b"(" + blob + b"tRq\x07"
    view = _g("torch._utils", "_rebuild_tensor_v2") + b"(h\x07" + _int(0) + _tup((1 << 18,)) + _tup((1,)) \
        + b"\x89" + _g("collections", "OrderedDict") + b")RtR"
    return b"\x80\x02(" + storage + b"0" + view * 1000 + b"l."


class _ScriptedSetstate(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.x = torch.ones(1)

    def forward(self, x):
        return x + self.x

    @torch.jit.export
    def __getstate__(self):
        return (self.x, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool]):
        print("RAN __setstate__")
        self.x = state[0]
        self.training = state[1]


# Each crafted file's refusal by safe_load names this reason (so each class is stopped where it should be).
EXPECTED = {"torchscript.pt": "TorchScript", "legacy-build.pt": "BUILD onto a type", "tar-fifo.pt": "tar archive",
            "fifo.pt": "not a regular file", "dev-zero": "not a regular file", "folder.pt": "not a regular file",
            "stride0.pt": "stride 0", "overlap.pt": "overlapping", "out-of-storage.pt": "past its storage",
            "offset-out.pt": "past its storage", "negative-stride.pt": "stride (-1,)",
            "huge-storage.pt": "does not match a data member", "build-tensor.pt": "BUILD onto a Tensor",
            "zip-bomb.pt": "inflates", "torchscript-members.pt": "TorchScript", "extra-member.pt": "not part of",
            "memo-string.pkl": "2 x the file's size", "memo-views.pkl": "2 x the file's size",
            "memo-sets.pkl": "entries in its containers", "deep.pkl": "nested deeper", "cycle.pkl": "cycle",
            "deep-tuple-key.pkl": "nested deeper", "deep-frozenset.pkl": "nested deeper",
            "claims-huge-string.pkl": "claims", "huge-frame.pkl": "claims", "os-system.pkl": "os.system",
            "builtins-exec.pt": "builtins.exec", "empty.pt": "not a torch.save zip", "text.pt": "not a torch.save zip",
            **LEGACY_EXPECTED}


def test_every_crafted_class_is_refused(tmp_path):
    marker = tmp_path / "marker"
    files = crafted_files(tmp_path / "files", marker)
    entries = ("safe_load", "import_network", "load_checkpoint")
    cases = [{"path": p, "entry": e} for p in files.values() for e in entries]
    report, _ = _run_sandbox(tmp_path, cases)
    bad = [r for r in report["results"] if r["outcome"] == "loaded" or not r["documented"] or not r["names_file"]]
    assert not bad, json.dumps(bad, indent=1)[:4000]
    assert not marker.exists()
    reasons = {name: r["message"] for name, r in zip(files, report["results"][::3], strict=True)}
    for name, why in EXPECTED.items():
        assert why in reasons[name], (name, reasons[name])
    assert report["peak_rss_kib"] < 1_500_000
    print(f"crafted: {len(cases)} cases, {report['seconds']:.1f} s, peak RSS {report['peak_rss_kib'] // 1024} MiB")


def _valid_files(d):
    """A relaydiff-style checkpoint (zip), an EDM-style plain pickle and a legacy-format state_dict, small."""
    from relaydiff.checkpoint import save_checkpoint

    lin = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GroupNorm(2, 4))
    opt = torch.optim.Adam(lin.parameters())
    lin(torch.ones(1, 3, 5, 5)).sum().backward()
    opt.step()
    save_checkpoint(str(d / "run"), 3, {"stages": {}}, {"1": {"net": lin.state_dict(), "ema": lin.state_dict(),
                                                            "optimizer": opt.state_dict()}},
                    rng={"torch": torch.get_rng_state()[:64]})
    pkl = d / "edm.pkl"
    pkl.write_bytes(pickle.dumps({"ema": lin.state_dict(), "augment_pipe": None, "step": 7}))
    legacy = d / "legacy.pth"  # torch-fidelity's detector weights' format: tensors sharing storages too
    torch.save({**lin.state_dict(), "w_t": lin[0].weight.data.flatten()[1::3]}, legacy,
               _use_new_zipfile_serialization=False)
    return str(d / "run" / "checkpoint.pt"), str(pkl), str(legacy)


def _corrupt(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    how = rng.choice(["flip", "flip", "truncate", "insert", "delete", "zero-run", "splice"])
    if how == "flip":
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif how == "truncate":
        del b[rng.randrange(1, len(b)):]
    elif how == "insert":
        i = rng.randrange(len(b))
        b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    elif how == "delete":
        i = rng.randrange(len(b))
        del b[i:i + rng.randint(1, 16)]
    elif how == "zero-run":
        i = rng.randrange(len(b))
        n = rng.randint(1, 64)
        b[i:i + n] = bytes(len(b[i:i + n]))
    else:
        i, j = sorted(rng.randrange(len(b)) for _ in range(2))
        b[i:i] = b[j:j + 32]
    return bytes(b)


@pytest.mark.parametrize("count", [150])
def test_random_corruptions_load_or_are_refused(tmp_path, count):
    zip_path, pkl_path, legacy_path = _valid_files(tmp_path)
    rng = random.Random(19)
    cases = []
    sources = ((zip_path, "load_checkpoint"), (pkl_path, "safe_load"), (legacy_path, "safe_load"))
    for src, entry in sources:
        data = open(src, "rb").read()
        cases.append({"path": src, "entry": entry})  # the valid file itself loads
        for i in range(count):
            path = tmp_path / f"{os.path.basename(src)}.{i}"
            path.write_bytes(_corrupt(data, rng))
            cases.append({"path": str(path), "entry": entry})
    report, _ = _run_sandbox(tmp_path, cases)
    results = report["results"]
    valid = results[::count + 1]
    assert all(r["outcome"] == "loaded" for r in valid), valid
    bad = [r for r in results if not r["documented"] or (r["outcome"] != "loaded" and not r["names_file"])]
    assert not bad, json.dumps(bad[:5], indent=1)
    refused = sum(r["outcome"] != "loaded" for r in results)
    assert refused > count * len(sources) // 2  # the corruptions are real: most are refused
    print(f"fuzz: {len(results)} cases, {refused} refused, {report['seconds']:.1f} s, "
          f"peak RSS {report['peak_rss_kib'] // 1024} MiB")
