"""relaydiff.networks: EDM's U-Nets and preconditioners.

The expected state_dict keys and shapes come from the naming rules of docs/NETWORKS.md, written out
in tests/network_rules.py (never read from the modules); tests/test_network_forward.py checks the
numerics against an independent functional forward.
"""

import itertools
import json
import math

import pytest
import torch
from network_rules import block_keys, expected_keys, one_thread, randomize  # noqa: F401 (one_thread: autouse fixture)

from relaydiff import checkpoint
from relaydiff.layers import UNetBlock
from relaydiff.networks import (
    ARCH_PRESETS,
    DhariwalUNet,
    EDMPrecond,
    SongUNet,
    VEPrecond,
    VPPrecond,
    build_network,
    iDDPMPrecond,
)


def _shapes(net):
    return {key: tuple(t.shape) for key, t in net.state_dict().items()}


def _check_keys(net, model_type, res, **kw):
    want, have = expected_keys(model_type, res, **kw), _shapes(net)
    assert have == want, sorted(set(want) ^ set(have))[:6]


# ------------------------------------------------------------------ state_dict keys per option

SONG_OPTIONS = list(itertools.product(["positional", "fourier"], ["standard", "skip", "residual"],
                                      ["standard", "skip"], [[1, 1], [1, 3, 3, 1]], [1, 2]))


@pytest.mark.parametrize("i, options", list(enumerate(SONG_OPTIONS)))
def test_songunet_option_keys_and_shapes(i, options):
    embedding_type, encoder_type, decoder_type, resample_filter, channel_mult_noise = options
    # Vary the rest along the list: attention on/off at each level, labels, augment labels, depth.
    kw = dict(model_channels=8, channel_mult=[1, 2, 2], num_blocks=1 + i % 2, attn_resolutions=[[], [8], [4, 2]][i % 3],
              embedding_type=embedding_type, encoder_type=encoder_type, decoder_type=decoder_type,
              resample_filter=resample_filter, channel_mult_noise=channel_mult_noise, channel_mult_emb=2 + i % 3)
    label_dim, augment_dim = (0, 3, 5)[i % 3], (0, 9)[i // 3 % 2]
    torch.manual_seed(i)
    net = EDMPrecond(8, 3, label_dim=label_dim, augment_dim=augment_dim, model_type="SongUNet", **kw).eval()
    _check_keys(net, "SongUNet", 8, label_dim=label_dim, augment_dim=augment_dim, **kw)
    x = torch.randn(2, 3, 8, 8)
    aug = torch.randn(2, augment_dim) if augment_dim else None
    assert net(x, torch.tensor([0.5, 2.0]), augment_labels=aug).shape == x.shape


@pytest.mark.parametrize("label_dim, augment_dim, attn, num_blocks, mult, cph", [
    (0, 0, [], 1, [1], 64), (4, 0, [8], 2, [1, 2], 4), (0, 9, [4], 1, [2, 1, 2], 8),
    (10, 9, [8, 4, 2], 1, [1, 2, 3], 2),
])
def test_dhariwalunet_option_keys_and_shapes(label_dim, augment_dim, attn, num_blocks, mult, cph):
    kw = dict(model_channels=8, channel_mult=mult, num_blocks=num_blocks, attn_resolutions=attn, channels_per_head=cph)
    net = EDMPrecond(8, 3, label_dim=label_dim, augment_dim=augment_dim, model_type="DhariwalUNet", **kw).eval()
    _check_keys(net, "DhariwalUNet", 8, label_dim=label_dim, augment_dim=augment_dim, **kw)
    x = torch.randn(2, 3, 8, 8)
    assert net(x, torch.tensor([0.5, 2.0]), torch.tensor([0, 1]) if label_dim else None).shape == x.shape


def test_edm_default_sizes_from_the_rules():
    """The naming rules at EDM's full sizes give the parameter counts of EDM's models (ADM ImageNet-64:
    295.9 M; DDPM++ CIFAR-10: 55.7 M); the small builds above show the modules follow the same rules."""
    def count(keys):
        return sum(math.prod(shape) for key, shape in keys.items() if not key.endswith(("resample_filter", "freqs")))

    assert round(count(expected_keys("DhariwalUNet", 64, label_dim=1000)) / 1e6, 1) == 295.9
    assert round(count(expected_keys("SongUNet", 32, model_channels=128, channel_mult=[2, 2, 2])) / 1e6, 1) == 55.7


def test_weight_init():
    """EDM's init modes and their use: ADM kaiming_uniform * sqrt(1/3) (zero for conv1/proj/out_conv),
    DDPM++ xavier_uniform (conv1/proj/aux_conv * 1e-5, qkv * sqrt(0.2)); the meta device draws nothing."""
    from relaydiff.networks import weight_init

    torch.manual_seed(0)
    fan_in, fan_out = 300, 200
    bounds = {"xavier_uniform": math.sqrt(6 / (fan_in + fan_out)), "kaiming_uniform": math.sqrt(3 / fan_in)}
    stds = {"xavier_normal": math.sqrt(2 / (fan_in + fan_out)), "kaiming_normal": math.sqrt(1 / fan_in)}
    for mode, bound in bounds.items():
        w = weight_init([400, 300], mode, fan_in, fan_out)
        assert 0.99 * bound < w.abs().max() <= bound and abs(w.std() / (bound / math.sqrt(3)) - 1) < 0.02
    for mode, std in stds.items():
        assert abs(weight_init([400, 300], mode, fan_in, fan_out).std() / std - 1) < 0.02
    with pytest.raises(ValueError, match="unknown init mode 'he'"):
        weight_init([2], "he", 1, 1)
    with torch.device("meta"):
        assert weight_init([3, 4], "xavier_uniform", 4, 3).is_meta

    adm = DhariwalUNet(8, 3, 3, model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4],
                       channels_per_head=8)
    for name, p in adm.named_parameters():
        if name.startswith(("out_conv", "dec.4x4_in0.proj")) or ".conv1." in name:
            assert not p.any(), name
    w = adm.enc["8x8_conv"].weight
    assert w.abs().max() <= 1 / math.sqrt(27) and adm.enc["8x8_conv"].bias.abs().max() <= 1 / math.sqrt(27)
    song = SongUNet(8, 3, 3, model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4])
    conv1 = song.enc["8x8_block0"].conv1.weight
    assert 0 < conv1.abs().max() <= 1e-5 * math.sqrt(6 / (72 + 72))
    qkv = song.dec["4x4_in0"].qkv.weight
    assert qkv.abs().max() <= math.sqrt(0.2) * math.sqrt(6 / (16 + 48)) and not song.enc["8x8_conv"].bias.any()


def test_unetblock_options():
    """adaptive_scale doubles the affine output; resample_proj turns the resampling skip into a 1x1 conv;
    num_heads overrides channels_per_head; the zero-init conv1/proj make a fresh block the identity plus skip."""
    for adaptive, proj in itertools.product([True, False], [True, False]):
        blk = UNetBlock(8, 8, 16, down=True, attention=True, channels_per_head=4, adaptive_scale=adaptive,
                        resample_proj=proj)
        want = block_keys("b", 8, 8, 16, down=True, heads=2, adaptive=adaptive, proj=proj)
        assert {f"b.{k}": tuple(v.shape) for k, v in blk.state_dict().items()} == want
        assert blk.num_heads == 2
    assert UNetBlock(8, 16, 4, attention=True, num_heads=4).num_heads == 4
    assert UNetBlock(8, 16, 4, attention=False, num_heads=4).num_heads == 0
    x, emb = torch.randn(2, 8, 4, 4), torch.randn(2, 4)
    torch.testing.assert_close(UNetBlock(8, 8, 4, attention=True, num_heads=2)(x, emb), x)


# ------------------------------------------------------------------ preconditioning


class _Probe(torch.nn.Module):
    """Stands in for the U-Net: records its inputs and returns a fixed F(x)."""

    def __init__(self, f_x):
        super().__init__()
        self.f_x, self.seen = f_x, {}

    def forward(self, x, noise_labels, class_labels=None, **kw):
        self.seen = dict(x=x, noise=noise_labels, labels=class_labels, **kw)
        return self.f_x.to(x.dtype)


def test_edm_precond_coefficients():
    net = EDMPrecond(4, 3, label_dim=2, sigma_data=0.7, model_type="SongUNet", model_channels=8, channel_mult=[1],
                     num_blocks=1, attn_resolutions=[])
    f_x = torch.randn(2, 3, 4, 4)
    net.model = _Probe(f_x)
    x, sigma = torch.randn(2, 3, 4, 4), torch.tensor([0.1, 5.0])
    d = net(x, sigma, torch.tensor([1, 0]), augment_labels=torch.ones(2, 9))
    s = sigma[:, None, None, None]
    c_skip, c_out, c_in = 0.49 / (s**2 + 0.49), s * 0.7 / (s**2 + 0.49).sqrt(), 1 / (s**2 + 0.49).sqrt()
    torch.testing.assert_close(d, c_skip * x + c_out * f_x)
    torch.testing.assert_close(net.model.seen["x"], c_in * x)
    torch.testing.assert_close(net.model.seen["noise"], sigma.log() / 4)
    torch.testing.assert_close(net.model.seen["labels"], torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    assert net.model.seen["augment_labels"].shape == (2, 9)  # **model_kwargs reach the model
    net(x, 1.0)  # a Python sigma; no labels: zeros [1, label_dim], as in EDM
    assert torch.equal(net.model.seen["labels"], torch.zeros(1, 2))
    assert net.sigma_min == 0 and net.sigma_max == float("inf")


def test_vp_ve_precond_coefficients():
    x, sigma, f_x = torch.randn(2, 3, 4, 4), torch.tensor([0.5, 3.0]), torch.randn(2, 3, 4, 4)
    s = sigma[:, None, None, None]
    kw = dict(model_channels=8, channel_mult=[1], num_blocks=1, attn_resolutions=[])
    vp, ve = VPPrecond(4, 3, **kw), VEPrecond(4, 3, **kw)
    for net in (vp, ve):
        net.model = _Probe(f_x)
    torch.testing.assert_close(vp(x, sigma), x - s * f_x)
    torch.testing.assert_close(vp.model.seen["x"], x / (s**2 + 1).sqrt())
    t = vp.sigma_inv(sigma)
    torch.testing.assert_close(vp.sigma(t), sigma)
    torch.testing.assert_close(vp.model.seen["noise"], 999 * t)
    assert math.isclose(vp.sigma_max, math.sqrt(math.exp(0.5 * 19.9 + 0.1) - 1), rel_tol=1e-6)
    torch.testing.assert_close(ve(x, sigma), x + s * f_x)
    torch.testing.assert_close(ve.model.seen["noise"], (0.5 * sigma).log())
    assert (ve.sigma_min, ve.sigma_max) == (0.02, 100)


def test_round_sigma():
    net = EDMPrecond(4, 3, model_type="SongUNet", model_channels=8, channel_mult=[1], num_blocks=1)
    s = torch.tensor([0.3, 7.0])
    assert torch.equal(net.round_sigma(s), s) and torch.equal(net.round_sigma(2.5), torch.tensor(2.5))
    iddpm = iDDPMPrecond(4, 3, model_channels=8, channel_mult=[1], num_blocks=1, attn_resolutions=[], M=50)
    u = iddpm.u
    assert u.shape == (51,) and u[50] == 0 and bool((u[:-1] > u[1:]).all())
    assert iddpm.sigma_min == float(u[49]) and iddpm.sigma_max == float(u[0])
    probe = torch.stack([u[3] * 1.001, u[10] * 0.999, u[49]])
    torch.testing.assert_close(iddpm.round_sigma(probe), u[[3, 10, 49]])
    assert iddpm.round_sigma(probe, return_index=True).tolist() == [3, 10, 49]
    assert iddpm.model.out_conv.weight.shape[0] == 6  # mean and variance channels
    assert iddpm(torch.randn(1, 3, 4, 4), torch.tensor([1.0])).shape == (1, 3, 4, 4)


def test_use_fp16_runs_float32_on_cpu():
    """EDM casts to float16 only on CUDA: on the CPU use_fp16 gives exactly the float32 result."""
    kw = dict(model_type="SongUNet", model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4])
    torch.manual_seed(0)
    a = randomize(EDMPrecond(8, 3, **kw), 1).eval()
    b = EDMPrecond(8, 3, use_fp16=True, **kw).eval()
    b.load_state_dict(a.state_dict())
    x, sigma = torch.randn(2, 3, 8, 8), torch.tensor([0.5, 2.0])
    out = b(x, sigma)
    assert out.dtype == torch.float32 and torch.equal(out, a(x, sigma))
    assert torch.equal(b(x, sigma, force_fp32=True), out)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_use_fp16_on_cuda():
    kw = dict(model_type="DhariwalUNet", model_channels=64, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4])
    a = randomize(EDMPrecond(8, 3, **kw), 1).eval().cuda()
    b = EDMPrecond(8, 3, use_fp16=True, **kw).eval().cuda()
    b.load_state_dict(a.state_dict())
    x, sigma = torch.randn(2, 3, 8, 8, device="cuda"), torch.tensor([0.5, 2.0], device="cuda")
    with torch.no_grad():
        ref, half = a(x, sigma), b(x, sigma)
    assert half.dtype == torch.float32 and not torch.equal(half, ref)
    torch.testing.assert_close(half, ref, rtol=2e-2, atol=2e-2 * ref.abs().max().item())


def test_class_labels_dropout():
    torch.manual_seed(0)
    net = EDMPrecond(8, 3, label_dim=5, label_dropout=1.0, model_type="DhariwalUNet", model_channels=8,
                     channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], channels_per_head=8, dropout=0)
    net = randomize(net, 0)
    net.eval()
    x, sigma, labels = torch.randn(2, 3, 8, 8), torch.ones(2), torch.tensor([1, 4])
    a = net(x, sigma, labels)
    assert not torch.allclose(a, net(x, sigma, torch.tensor([2, 0])))
    net.train()  # label_dropout=1: every label dropped -> the unconditional model
    torch.testing.assert_close(net(x, sigma, labels), net(x, sigma, None))


# ------------------------------------------------------------------ build_network and old configs


@pytest.mark.parametrize("class_name", ["EDMPrecond", "VPPrecond", "VEPrecond"])
@pytest.mark.parametrize("arch", sorted(ARCH_PRESETS))
def test_build_network_json_roundtrip(class_name, arch):
    kwargs = dict(img_resolution=8, img_channels=3, label_dim=2, **ARCH_PRESETS[arch], model_channels=8,
                  channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.0)
    if arch == "adm":
        kwargs["channels_per_head"] = 8
    spec = json.loads(json.dumps({"class_name": class_name, "kwargs": kwargs}))
    torch.manual_seed(0)
    a = randomize(build_network(spec), 0).eval()
    torch.manual_seed(1)
    b = build_network(spec).eval()
    assert type(a).__name__ == class_name and type(a.model).__name__ == kwargs["model_type"]
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(a(x, torch.ones(2), torch.tensor([0, 1])), b(x, torch.ones(2), torch.tensor([0, 1])))


def test_build_network_errors():
    with pytest.raises(ValueError, match="unknown network class 'Nope'"):
        build_network({"class_name": "Nope", "kwargs": {"model_type": "SongUNet"}})
    with pytest.raises(ValueError, match="model_type must be one of"):
        build_network({"class_name": "EDMPrecond", "kwargs": dict(img_resolution=8, img_channels=3,
                                                                  model_type="UNet")})
    with pytest.raises(ValueError, match="encoder_type must be one of"):
        build_network({"kwargs": dict(img_resolution=8, img_channels=3, model_type="SongUNet", encoder_type="x")})
    with pytest.raises(ValueError, match="GroupNorm: 18 channels"):
        build_network({"kwargs": dict(img_resolution=8, img_channels=3, model_type="SongUNet", model_channels=18)})


OLD_SPEC = {"class_name": "EDMPrecond", "kwargs": dict(
    img_resolution=8, img_channels=3, label_dim=0, sigma_data=0.5, model_channels=8, channel_mult=[1, 2],
    num_blocks=1, attn_resolutions=[4], dropout=0.0, label_dropout=0.0, embedding_type="positional")}
OLD_KEYS = ["model.map_layer0.weight", "model.conv_in.weight", "model.enc.0.conv0.weight", "model.mid.0.norm0.weight",
            "model.conv_out.weight"]


def test_old_relaydiff_network_refused(tmp_path):
    message = "network family changed to EDM's.*must be retrained"
    with pytest.raises(ValueError, match=message):
        build_network(OLD_SPEC)
    with pytest.raises(ValueError, match=message):
        build_network({"class_name": "EDMPrecond", "kwargs": {**OLD_SPEC["kwargs"], "model_type": "SongUNet",
                                                              "num_heads": 2}})
    # Old weights under a new-looking config, and a whole old run through load_network.
    new_spec = {"class_name": "EDMPrecond", "kwargs": {**OLD_SPEC["kwargs"], "model_type": "SongUNet"}}
    old_sd = {key: torch.zeros(1) for key in OLD_KEYS}
    with pytest.raises(ValueError, match="here: .*" + message):
        checkpoint.build_checked(new_spec, old_sd, "here")
    stage = dict(stage=1, resolution=8, img_channels=3, label_dim=0, k=4, network=OLD_SPEC,
                 loss={"class_name": "EDMLoss", "kwargs": {}})
    checkpoint.save_checkpoint(str(tmp_path), 10, {"train": {}, "k": 4, "stages": {"1": stage}},
                               {"1": {"net": old_sd, "ema": old_sd, "optimizer": {}}})
    with pytest.raises(ValueError, match="stage 1: .*" + message):
        checkpoint.load_network(str(tmp_path), stage=1)


def test_build_checked_names_the_field():
    kwargs = {k: v for k, v in OLD_SPEC["kwargs"].items() if k != "embedding_type"}
    spec = {"class_name": "EDMPrecond", "kwargs": {**kwargs, "model_type": "DhariwalUNet", "channels_per_head": 8}}
    sd = build_network(spec).state_dict()
    net = checkpoint.build_checked(spec, sd, "here")
    assert _shapes(net) == _shapes(build_network(spec))
    wider = {**spec, "kwargs": {**spec["kwargs"], "model_channels": 12, "channels_per_head": 4}}
    message = r"model_channels does not match.*model\.enc\.8x8_conv\.weight is \[8, 3, 3, 3\]"
    with pytest.raises(ValueError, match=message):
        checkpoint.build_checked(wider, sd, "here")
    with pytest.raises(ValueError, match="missing"):
        checkpoint.build_checked({**spec, "kwargs": {**kwargs, "model_type": "SongUNet"}}, sd, "here")


def test_resuming_an_old_run_is_refused(tmp_path):
    from relaydiff.training_loop import training_loop

    stage = dict(stage=1, resolution=2, img_channels=3, label_dim=8, k=4, network=OLD_SPEC,
                 loss={"class_name": "EDMLoss", "kwargs": {}})
    old_sd = {key: torch.zeros(1) for key in OLD_KEYS}
    checkpoint.save_checkpoint(str(tmp_path), 5, {"train": {}, "k": 4, "stages": {"1": stage}},
                               {"1": {"net": old_sd, "ema": old_sd, "optimizer": {}}})
    with pytest.raises(ValueError, match="checkpoint.pt stage 1: .*network family changed to EDM's"):
        training_loop(outdir=str(tmp_path), resume=True, resolution=8, stage="1", channels=8, channel_mult1="1",
                      progress=False)


@pytest.mark.parametrize("arch", sorted(ARCH_PRESETS))
def test_training_builds_each_arch(tmp_path, arch):
    """--arch: EDM's preset, scaled down by the size options, trains a step and saves its kwargs."""
    from relaydiff.training_loop import training_loop

    out = training_loop(outdir=str(tmp_path), arch=arch, resolution=8, k=4, steps=1, batch=4, channels=8,
                        channel_mult1="1", channel_mult2="1,2", attn_res="4", preview_steps=2, progress=False)
    net = checkpoint.load_network(str(tmp_path), stage=2)[1]["network"]
    kwargs = net["kwargs"]
    assert {k: kwargs[k] for k in ARCH_PRESETS[arch]} == ARCH_PRESETS[arch]
    assert (kwargs["model_channels"], kwargs["channel_mult"], kwargs["attn_resolutions"]) == (8, [1, 2], [4])
    assert type(out["nets"]["2"].model).__name__ == ARCH_PRESETS[arch]["model_type"]
    if arch == "adm":  # narrow blocks still attend: heads of channels_per_head = --channels
        assert out["nets"]["2"].model.dec["4x4_in0"].num_heads == 2
