"""Importing the published EDM `.pkl` / RDM `.pt` checkpoint formats (relaydiff.importer) safely.

The checkpoints are made in a subprocess from test-written stand-ins of EDM's code: a
`training/networks.py` whose classes carry EDM's names (built on relaydiff's classes, recording
their constructor arguments) and a `torch_utils/persistence.py` whose decorator pickles instances as
`_reconstruct_persistent_obj(meta)` in EDM's meta layout (NVlabs/edm torch_utils/persistence.py).
They are loaded in another process without that directory on sys.path, which must give the same
outputs and never import those modules.
"""

import json
import os
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The networks here are tiny: one intra-op thread is fastest, and on a loaded 2-core machine several
# threads per tiny convolution cost 10x more.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


PERSISTENCE_PY = '''
"""Test stand-in for NVlabs/edm torch_utils/persistence.py: the same pickled form, saving only."""
import inspect
import sys


def _reconstruct_persistent_obj(meta):
    raise RuntimeError("the test stand-in only saves")


def persistent_class(orig_class):
    src = inspect.getsource(sys.modules[orig_class.__module__])

    class Decorator(orig_class):
        def __reduce__(self):
            fields = list(super().__reduce__())
            fields += [None] * max(3 - len(fields), 0)
            meta = dict(type="class", version=6, module_src=src, class_name=orig_class.__name__, state=fields[2])
            return (_reconstruct_persistent_obj, (meta,), None)

    Decorator.__name__ = Decorator.__qualname__ = orig_class.__name__
    Decorator.__module__ = orig_class.__module__
    return Decorator
'''

NETWORKS_PY = '''
"""Test stand-in for EDM's training/networks.py: EDM's class names on relaydiff's classes.
EDM_PERSISTENT=1 decorates them as EDM does (persistent_class), else they pickle as plain objects."""
import os

import relaydiff.networks as rn
from torch_utils import persistence

NAMES = ("EDMPrecond", "VPPrecond", "VEPrecond", "SongUNet", "DhariwalUNet", "UNetBlock", "Linear", "Conv2d",
         "GroupNorm", "PositionalEmbedding", "FourierEmbedding")


def _recording_init(base):
    def __init__(self, *args, **kwargs):
        base.__init__(self, *args, **kwargs)
        self._init_args, self._init_kwargs = args, dict(kwargs)
    return __init__


for _name in NAMES:
    _base = getattr(rn, _name)
    _cls = type(_name, (_base,), {"__module__": __name__, "__init__": _recording_init(_base)})
    _cls.__qualname__ = _name
    if os.environ.get("EDM_PERSISTENT") == "1":
        _cls = persistence.persistent_class(_cls)
    globals()[_name] = _cls


def as_edm(net):
    """Give every submodule of a relaydiff net this module's class of the same name."""
    for module in net.modules():
        if type(module).__module__ != __name__ and type(module).__name__ in NAMES:
            module.__class__ = globals()[type(module).__name__]
    return net
'''

# Builds the checkpoints and the reference outputs in the folder argv[1]: first with the classes
# decorated as EDM's (persistent), then, after reloading the module without the decorator, plain.
MAKE_PY = '''
import importlib, os, pickle, sys
import numpy as np
import torch
sys.path.insert(0, sys.argv[1])
os.environ["EDM_PERSISTENT"] = "1"
from training import networks as edm

torch.manual_seed(0)
out = sys.argv[1]
small = dict(model_channels=8, channel_mult=[1, 2], num_blocks=1, dropout=0.0)


def make(cls, **kwargs):
    net = edm.as_edm(getattr(edm, cls)(**kwargs)).eval()
    with torch.no_grad():  # random weights everywhere (zero-initialised convolutions included)
        for p in net.parameters():
            p.normal_(0, 0.2)
    return net


def reference(net, name, label_dim):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, net.img_resolution, net.img_resolution, generator=g)
    sigma = torch.tensor([0.3, 4.0])
    labels = torch.eye(label_dim)[[0, 2]] if label_dim else None
    with torch.no_grad():
        refs[name] = dict(x=x, sigma=sigma, labels=labels, out=net(x, sigma, labels))


refs = {}
# EDM snapshot: pickle.dump of a dict whose 'ema' is persistent; numpy floats recorded as EDM's code does.
net1 = make("EDMPrecond", img_resolution=4, img_channels=3, label_dim=3, sigma_data=np.float64(0.5),
            model_type="DhariwalUNet", attn_resolutions=[2], channels_per_head=8, **small)
with open(os.path.join(out, "stage1.pkl"), "wb") as f:
    pickle.dump(dict(ema=net1, loss_fn=None, augment_pipe=None, dataset_kwargs=dict(path="x.zip")), f)
reference(net1, "stage1.pkl", 3)
# RDM training state: torch.save of dict(optimizer_state, step, ema, net), persistent modules.
net2 = make("EDMPrecond", img_resolution=16, img_channels=3, label_dim=3, model_type="DhariwalUNet",
            attn_resolutions=[8], channels_per_head=8, eff_attn=True, **small)
opt = torch.optim.Adam(net2.parameters())
torch.save(dict(optimizer_state=opt.state_dict(), step=1000, ema=net2, net=net2), os.path.join(out, "stage2.pt"))
reference(net2, "stage2.pt", 3)
# A plainly pickled module tree (no persistence decorator): NCSN++-style SongUNet in VEPrecond.
os.environ["EDM_PERSISTENT"] = "0"
edm = importlib.reload(edm)
net3 = make("VEPrecond", img_resolution=8, img_channels=3, label_dim=0, model_type="SongUNet",
            embedding_type="fourier", channel_mult_noise=2, encoder_type="residual",
            resample_filter=[1, 3, 3, 1], attn_resolutions=[4], **small)
torch.save(dict(ema=net3, step=5), os.path.join(out, "songunet.pt"))
reference(net3, "songunet.pt", 0)
# Plain pickles that recorded no constructor arguments: the importer reads them off the module tree.
net4 = make("EDMPrecond", img_resolution=8, img_channels=3, label_dim=3, model_type="DhariwalUNet",
            attn_resolutions=[4], channels_per_head=4, augment_dim=2, **small)
for name, net in (("songunet-derived.pt", net3), ("adm-derived.pt", net4)):
    for module in net.modules():
        module.__dict__.pop("_init_args", None), module.__dict__.pop("_init_kwargs", None)
    torch.save(dict(ema=net), os.path.join(out, name))
    reference(net, name, net.label_dim)
torch.save(refs, os.path.join(out, "refs.pt"))
print("made")
'''

# Loads every file in a process without the stand-ins on sys.path; prints JSON results.
LOAD_PY = '''
import json, os, sys
import torch
from relaydiff import convert
from relaydiff.checkpoint import import_network, load_network
folder = sys.argv[1]
refs = torch.load(os.path.join(folder, "refs.pt"))
result = {}
for name, ref in refs.items():
    net, info = import_network(os.path.join(folder, name))
    with torch.no_grad():
        out = net(ref["x"], ref["sigma"], ref["labels"])
    result[name] = dict(diff=(out - ref["out"]).abs().max().item(), scale=ref["out"].abs().max().item(),
                        cls=type(net).__name__, format=info["format"], network=info["network"])
    if "derived" in name:
        continue
    run = os.path.join(folder, "run-" + name)
    assert convert.main([os.path.join(folder, name), "--stage", "2" if "stage2" in name else "1", "--outdir", run]) == 0
    conv, stage_cfg = load_network(run, 2 if "stage2" in name else 1)
    with torch.no_grad():
        out_conv = conv(ref["x"], ref["sigma"], ref["labels"])
    result[name].update(conv_diff=(out_conv - ref["out"]).abs().max().item(), stage_cfg=stage_cfg)
result["modules"] = sorted(m for m in sys.modules if m.split(".")[0] in ("training", "torch_utils", "dnnlib"))
print(json.dumps(result))
'''


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """Folder with stage1.pkl (EDM snapshot), stage2.pt (RDM training state), songunet.pt (plain
    pickled modules) and the reference outputs of the nets that made them."""
    folder = tmp_path_factory.mktemp("released")
    for rel, text in (("torch_utils/__init__.py", ""), ("torch_utils/persistence.py", PERSISTENCE_PY),
                      ("training/__init__.py", ""), ("training/networks.py", NETWORKS_PY)):
        os.makedirs(folder / os.path.dirname(rel), exist_ok=True)
        (folder / rel).write_text(textwrap.dedent(text))
    env = {**os.environ, **ONE_THREAD, "PYTHONPATH": REPO}
    r = subprocess.run([sys.executable, "-c", MAKE_PY, str(folder)], capture_output=True, text=True, env=env,
                       cwd=folder, timeout=300)
    assert r.returncode == 0 and "made" in r.stdout, r.stderr[-3000:]
    return folder


def test_import_same_outputs_in_a_clean_process(released, tmp_path):
    """Each format loads without the stand-ins importable, gives the original outputs, and the
    convert -> load_network round trip gives them too."""
    env = {**os.environ, **ONE_THREAD, "PYTHONPATH": REPO}
    r = subprocess.run([sys.executable, "-c", LOAD_PY, str(released)], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res.pop("modules") == []  # nothing named training / torch_utils / dnnlib was imported
    assert set(res) == {"stage1.pkl", "stage2.pt", "songunet.pt", "songunet-derived.pt", "adm-derived.pt"}
    for name, got in res.items():
        assert got["scale"] > 0.1, name  # the reference outputs are not trivially zero
        assert got["diff"] <= 1e-6 * got["scale"] and got.get("conv_diff", 0) <= 1e-6 * got["scale"], (name, got)
    # Derived from the module tree: the same architecture as recorded (SongUNet), and ADM's options.
    derived = res["songunet-derived.pt"]["network"]["kwargs"]
    recorded = res["songunet.pt"]["network"]["kwargs"]
    assert {k: derived[k] for k in recorded} == {k: v for k, v in recorded.items()}, (derived, recorded)
    adm = res["adm-derived.pt"]["network"]["kwargs"]
    assert (adm["augment_dim"], adm["channels_per_head"], adm["attn_resolutions"]) == (2, 4, [4])
    assert res["stage1.pkl"]["format"] == "edm-pkl" and res["stage2.pt"]["format"] == "rdm-pt"
    assert res["songunet.pt"]["cls"] == "VEPrecond" and res["songunet.pt"]["network"]["kwargs"]["encoder_type"] == \
        "residual"
    assert res["stage1.pkl"]["network"]["kwargs"]["sigma_data"] == 0.5  # the numpy scalar, as a float
    assert res["stage2.pt"]["network"]["kwargs"]["eff_attn"] is True
    assert res["stage2.pt"]["stage_cfg"]["k"] == 4 and res["stage2.pt"]["stage_cfg"]["loss"]["class_name"] == \
        "RelayLoss"


def test_import_raw_net_and_missing_key(released, one_thread):
    from relaydiff.importer import import_network

    net, info = import_network(str(released / "stage2.pt"), key="net")
    assert info["key"] == "net" and type(net).__name__ == "EDMPrecond" and not net.training
    with pytest.raises(ValueError, match="has no 'net' network"):
        import_network(str(released / "stage1.pkl"), key="net")


# ---------------------------------------------------------------------------- refusals


class _RunsCommand:
    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return (self.fn, (self.arg,))


@pytest.mark.parametrize("how", ["os.system", "builtins.exec", "torch.save"])
def test_command_in_reduce_is_refused(tmp_path, how):
    """A pickle whose __reduce__ would run a command is refused with its name; the command never runs."""
    from relaydiff.importer import import_network
    from relaydiff.safe_unpickle import UnsafePickleError

    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    if how == "builtins.exec":
        payload, name = _RunsCommand(exec, f"open({str(marker)!r}, 'w').write('ran')"), "builtins.exec"
    else:
        payload, name = _RunsCommand(os.system, f"touch {marker}"), f"{os.system.__module__}.system"
    if how == "torch.save":
        torch.save({"ema": payload}, path)
    else:
        path.write_bytes(pickle.dumps({"ema": payload}))
    with pytest.raises(UnsafePickleError, match=name.replace(".", r"\.")) as exc:
        import_network(str(path))
    assert str(path) in str(exc.value)
    assert not marker.exists()


def test_embedded_module_source_never_runs(tmp_path, monkeypatch):
    """A persistent object whose module_src writes a file: the source is not executed, and the
    class it names (not one of EDM's) is refused by name."""
    import types

    from relaydiff.importer import import_network

    def _reconstruct_persistent_obj(meta):
        raise AssertionError("never called: only pickled")

    # A module of that name exists only while pickling, so pickle can name the function.
    for name in ("torch_utils", "torch_utils.persistence"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj = _reconstruct_persistent_obj

    marker = tmp_path / "marker"
    src = f"open({str(marker)!r}, 'w').write('ran')\nclass EvilNet: pass\n"
    meta = dict(type="class", version=6, module_src=src, class_name="EvilNet", state={})

    class Persistent:
        def __reduce__(self):
            return (_reconstruct_persistent_obj, (meta,))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"ema": Persistent()}))
    monkeypatch.undo()
    with pytest.raises(ValueError, match="EvilNet"):
        import_network(str(path))
    assert not marker.exists() and "torch_utils" not in sys.modules


def test_unknown_class_is_refused_by_name(tmp_path):
    from relaydiff.importer import import_network
    from relaydiff.safe_unpickle import UnsafePickleError

    path = tmp_path / "unknown.pkl"
    path.write_bytes(b"\x80\x02}X\x03\x00\x00\x00emactraining.networks\nEvilUNet\n)\x81s.")
    with pytest.raises(UnsafePickleError, match=r"training\.networks\.EvilUNet"):
        import_network(str(path))


def test_truncated_and_non_dict_files(released, tmp_path):
    from relaydiff.importer import import_network

    data = (released / "stage1.pkl").read_bytes()
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        import_network(str(cut))
    lst = tmp_path / "list.pkl"
    lst.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(ValueError, match="not the dict"):
        import_network(str(lst))


# ---------------------------------------------------------------------------- sampling the files


def _settings(*argv):
    from relaydiff import sample

    args = sample.parse_args(["--network-first", "a.pkl", "--network-second", "b.pt", "--outdir", "o", *argv])
    cfgs = [{"stage": 1}, {"stage": 2, "k": 4}]
    return (args, *sample.sampler_settings(args, cfgs), sample.output_settings(args))


def test_presets_resolve_to_the_released_settings():
    """The values of THUDM/RelayDiffusion generate_imagenet.py / generate_celebahq.py (option defaults)."""
    args, s1, (s2,), cfgs, (rule, enhance) = _settings("--preset", "imagenet-256")
    assert s1 == dict(num_steps=256, sigma_min=0.002, sigma_max=80.0, rho=7.0, S_churn=40.0, S_min=0.05, S_max=50.0,
                      S_noise=1.003)
    assert s2 == dict(num_steps=200, sigma_min=0.008, sigma_max=80.0, rho=100.0, truncation_sigma=0.9,
                      prob_length=0.93, blur_sigma_max=3.0, s_noise=0.2, s_block=0.15, k=4)
    assert cfgs == [1.0, 3.5] and rule == "seed-mod" and enhance == {"brightness": 1.06}
    assert args.seeds[0] == 10000 and len(args.seeds) == 50000
    args, s1, (s2,), cfgs, (rule, enhance) = _settings("--preset", "celebahq-256")
    assert s1["num_steps"] == 120 and s1["S_churn"] == 0.0 and s1["rho"] == 7.0 and s1["sde_scale"] == 0.05
    assert (s2["num_steps"], s2["truncation_sigma"], s2["prob_length"], s2["blur_sigma_max"], s2["rho"]) == \
        (150, 0.95, 1.05, 2.0, 7.0)
    assert cfgs == [1.0, 1.0] and enhance == dict(contrast=0.9, brightness=1.05, color=0.99)
    assert args.seeds[0] == 80000 and len(args.seeds) == 30000


def test_explicit_options_override_the_preset():
    args, s1, (s2,), cfgs, (rule, enhance) = _settings(
        "--preset", "imagenet-256", "--steps", "10,20", "--rho", "5,9", "--cfg", "2", "--S-churn", "0",
        "--s-noise", "0.1", "--prob-length", "0.8", "--seeds", "0-3", "--no-enhance", "--class-rule", "random")
    assert s1["num_steps"] == 10 and s1["rho"] == 5 and s1["S_churn"] == 0 and s1["S_noise"] == 1.003
    assert s2["num_steps"] == 20 and s2["rho"] == 9 and s2["s_noise"] == 0.1 and s2["prob_length"] == 0.8
    assert s2["blur_sigma_max"] == 3.0 and cfgs == [2.0, 2.0]
    assert args.seeds == [0, 1, 2, 3] and enhance is None and rule == "random"
    _, s1, (s2,), cfgs, (rule, enhance) = _settings()  # no preset: relaydiff's defaults
    assert s1 == dict(num_steps=18) and s2["num_steps"] == 40 and cfgs == [1.0, 1.0] and enhance is None


def test_sample_cli_needs_one_source(tmp_path, capsys):
    from relaydiff import sample

    for argv in (["--outdir", str(tmp_path)], ["--run", "r", "--network-first", "a", "--outdir", str(tmp_path)]):
        with pytest.raises(SystemExit) as exc:
            sample.parse_args(argv)
        assert exc.value.code == 2
    assert "--network-first" in capsys.readouterr().err


def test_sample_released_files_end_to_end(released, tmp_path, capsys, one_thread):
    """relaydiff.sample straight from the .pkl (stage 1, 4 px) and .pt (relay, 16 px) files with a preset."""
    import numpy as np
    import PIL.Image

    from relaydiff import sample

    out = tmp_path / "out"
    argv = ["--network-first", released / "stage1.pkl", "--network-second", released / "stage2.pt", "--preset",
            "imagenet-256", "--steps", "2,4", "--seeds", "0-1", "--batch", "2", "--outdir", out, "--no-progress"]
    rc = sample.main([str(a) for a in argv])
    assert rc == 0, capsys.readouterr().err
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == ["000000.png", "000001.png", "grid.png"]
    img = np.asarray(PIL.Image.open(out / "000001.png"))
    assert img.shape == (16, 16, 3) and img.std() > 0
    assert np.asarray(PIL.Image.open(out / "stage1" / "000001.png")).shape == (4, 4, 3)
    # --noise torch: the released scripts' generator streams, reproducible and not the Philox image.
    runs = []
    for name in ("torch_a", "torch_b"):
        rc = sample.main([str(a) for a in argv[:-3]] + ["--outdir", str(tmp_path / name), "--no-progress",
                                                         "--noise", "torch"])
        assert rc == 0, capsys.readouterr().err
        runs.append(np.asarray(PIL.Image.open(tmp_path / name / "000001.png")))
    assert np.array_equal(runs[0], runs[1]) and not np.array_equal(runs[0], img)
