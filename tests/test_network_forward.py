"""relaydiff's U-Nets against an independent forward written with torch.nn.functional alone, from
the same weights: pins the skip scales, GroupNorm groups and eps, the attention head layout, the
embeddings and the resampling filters (docs/NETWORKS.md). Also AttentionOp's gradient and RDM's eff_attn."""

import math

import pytest
import torch
import torch.nn.functional as F
from network_rules import adm_layout, one_thread, randomize, song_layout  # noqa: F401 (one_thread: autouse fixture)

from relaydiff.layers import AttentionOp, GroupNorm, UNetBlock
from relaydiff.networks import ARCH_PRESETS, EDMPrecond


def _filter(taps):
    f = torch.tensor(taps, dtype=torch.float64)
    return torch.outer(f, f) / f.sum() ** 2


def _down(x, taps):
    if list(taps) == [1, 1]:
        return F.avg_pool2d(x, 2)
    c, f = x.shape[1], _filter(taps).to(x.dtype)
    pad = (len(taps) - 1) // 2
    return F.conv2d(F.pad(x, [pad] * 4), f.expand(c, 1, *f.shape), stride=2, groups=c)


def _up(x, taps):
    if list(taps) == [1, 1]:
        return F.interpolate(x, scale_factor=2, mode="nearest")
    # Zero insertion, then the filter (times 4 to keep the mean), cropped like a transposed conv.
    n, c, h, w = x.shape
    z = x.new_zeros(n, c, 2 * h, 2 * w)
    z[:, :, ::2, ::2] = x
    k, pad = len(taps), (len(taps) - 1) // 2
    f = 4 * _filter(taps).to(x.dtype)
    z = F.pad(z, [k - 1 - pad, k - 2 - pad] * 2)
    return F.conv2d(z, f.expand(c, 1, *f.shape), groups=c)


def functional_unet(sd, model_type, x, noise_labels, class_labels, res, augment_labels=None, **kw):
    """Forward of the U-Net (without the preconditioning) from its state_dict with F.* only."""
    sd = {k[len("model."):]: v.double() for k, v in sd.items() if k.startswith("model.")}
    x, noise_labels = x.double(), noise_labels.double()
    song = model_type == "SongUNet"
    taps = kw.get("resample_filter", [1, 1]) if song else [1, 1]
    eps, skip_scale = (1e-6, math.sqrt(0.5)) if song else (1e-5, 1.0)

    def lin(v, p):
        return F.linear(v, sd[f"{p}.weight"], sd.get(f"{p}.bias"))

    def gn(v, p, e=eps):
        return F.group_norm(v, min(32, v.shape[1] // 4), sd[f"{p}.weight"], sd[f"{p}.bias"], e)

    def conv(v, p, up=False, down=False, fused=False):
        w, b = sd.get(f"{p}.weight"), sd.get(f"{p}.bias")
        if fused:  # conv first (padded by both halves), then the filter's stride-2 decimation
            v = F.conv2d(v, w, padding=w.shape[-1] // 2 + (len(taps) - 1) // 2)
            f = _filter(taps)
            return F.conv2d(v, f.expand(v.shape[1], 1, *f.shape), stride=2, groups=v.shape[1]) + b[:, None, None]
        v = _up(v, taps) if up else _down(v, taps) if down else v
        return v if w is None else F.conv2d(v, w, b, padding=w.shape[-1] // 2)

    def block(v, emb, p, cin, cout, heads, up=False, down=False):
        h = conv(F.silu(gn(v, f"{p}.norm0")), f"{p}.conv0", up, down)
        params = lin(emb, f"{p}.affine")[:, :, None, None]
        if song:
            h = F.silu(gn(h + params, f"{p}.norm1"))
        else:
            scale, shift = params[:, :cout], params[:, cout:]
            h = F.silu(gn(h, f"{p}.norm1") * (1 + scale) + shift)
        h = conv(h, f"{p}.conv1")
        v = (h + (conv(v, f"{p}.skip", up, down) if f"{p}.skip.weight" in sd or f"{p}.skip.resample_filter" in sd
                  else v)) * skip_scale
        if heads:
            n, c, hh, ww = v.shape
            # qkv channels as [heads, channels per head, (q, k, v)]; tokens flattened row-major.
            qkv = conv(gn(v, f"{p}.norm2"), f"{p}.qkv").reshape(n, heads, c // heads, 3, hh * ww)
            q, k, val = qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2]
            att = torch.softmax(torch.einsum("nhcq,nhck->nhqk", q, k) / math.sqrt(c // heads), dim=-1)
            a = torch.einsum("nhqk,nhck->nhcq", att, val).reshape(n, c, hh, ww)
            v = (conv(a, f"{p}.proj") + v) * skip_scale
        return v

    mc = kw.get("model_channels")
    # Noise embedding.
    if song and kw.get("embedding_type", "positional") == "fourier":
        arg = noise_labels[:, None] * (2 * math.pi * sd["map_noise.freqs"])[None]
        emb = torch.cat([arg.sin(), arg.cos()], dim=1)  # SongUNet swaps the halves to [sin, cos]
    else:
        half = mc * kw.get("channel_mult_noise", 1) // 2 if song else mc // 2
        freqs = (1 / 10000) ** (torch.arange(half, dtype=torch.float64) / (half - (1 if song else 0)))
        arg = noise_labels[:, None] * freqs[None]
        emb = torch.cat([arg.sin(), arg.cos()] if song else [arg.cos(), arg.sin()], dim=1)
    if song:
        if class_labels is not None:
            emb = emb + lin(class_labels.double() * math.sqrt(class_labels.shape[1]), "map_label")
        if augment_labels is not None:
            emb = emb + lin(augment_labels.double(), "map_augment")
        emb = F.silu(lin(F.silu(lin(emb, "map_layer0")), "map_layer1"))
        layout = song_layout(res, x.shape[1], x.shape[1], mc=mc, **kw)
    else:
        if augment_labels is not None:
            emb = emb + lin(augment_labels.double(), "map_augment")
        emb = lin(F.silu(lin(emb, "map_layer0")), "map_layer1")
        if class_labels is not None:
            emb = emb + lin(class_labels.double(), "map_label")
        emb = F.silu(emb)
        layout, _ = adm_layout(res, x.shape[1], x.shape[1], mc=mc, **kw)

    skips, aux = [], x
    for _, name, kind, info in [e for e in layout if e[0] == "enc"]:
        p = f"enc.{name}"
        if name.endswith("aux_down"):
            aux = conv(aux, p, down=True)
        elif name.endswith("aux_skip"):
            x = skips[-1] = x + conv(aux, p)
        elif name.endswith("aux_residual"):
            x = skips[-1] = aux = (x + conv(aux, p, fused=True)) / math.sqrt(2)
        else:
            x = conv(x, p) if kind == "conv" else block(x, emb, p, **info)
            skips.append(x)
    out = tmp = None
    for _, name, _, info in [e for e in layout if e[0] == "dec"]:
        p = f"dec.{name}"
        if name.endswith("aux_up"):
            out = conv(out, p, up=True)
        elif name.endswith("aux_norm"):
            tmp = gn(x, p, 1e-6)
        elif name.endswith("aux_conv"):
            tmp = conv(F.silu(tmp), p)
            out = tmp if out is None else tmp + out
        else:
            if x.shape[1] != info["cin"]:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb, p, **info)
    if song:
        return out
    return conv(F.silu(gn(x, "out_norm")), "out_conv")


FUNCTIONAL_CASES = {
    "adm": ("DhariwalUNet", dict(model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4],
                                 channels_per_head=4, label_dim=3, augment_dim=2)),
    "ddpmpp": ("SongUNet", dict(ARCH_PRESETS["ddpmpp"], model_channels=8, channel_mult=[1, 2], num_blocks=1,
                                attn_resolutions=[4], label_dim=3, augment_dim=2)),
    "ncsnpp": ("SongUNet", dict(ARCH_PRESETS["ncsnpp"], model_channels=8, channel_mult=[1, 2, 2], num_blocks=1,
                                attn_resolutions=[4], decoder_type="skip", label_dim=0)),
    "skip-encoder": ("SongUNet", dict(ARCH_PRESETS["ddpmpp"], model_channels=8, channel_mult=[1, 2], num_blocks=2,
                                      attn_resolutions=[8], encoder_type="skip", resample_filter=[1, 3, 3, 1])),
}


@pytest.mark.parametrize("case", list(FUNCTIONAL_CASES))
def test_functional_forward_agrees(case):
    model_type, kw = FUNCTIONAL_CASES[case]
    kw = {k: v for k, v in kw.items() if k != "model_type"}
    label_dim, augment_dim = kw.pop("label_dim", 0), kw.pop("augment_dim", 0)
    net = EDMPrecond(8, 3, label_dim=label_dim, augment_dim=augment_dim, model_type=model_type, dropout=0, **kw)
    net = randomize(net, 0).eval().double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    noise = torch.tensor([-1.3, 0.7], dtype=torch.float64)
    labels = F.one_hot(torch.tensor([2, 0]), label_dim).double() if label_dim else None
    aug = torch.randn(2, augment_dim, generator=g, dtype=torch.float64) if augment_dim else None
    with torch.no_grad():
        have = net.model(x, noise, labels, augment_labels=aug)
    want = functional_unet(net.state_dict(), model_type, x, noise, labels, 8, augment_labels=aug, **kw)
    assert have.shape == (2, 3, 8, 8) and want.abs().max() > 0.1
    # The modules compute attention weights in float32 (AttentionOp), the rest in float64.
    torch.testing.assert_close(have, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


def test_functional_forward_is_sensitive():
    """test_functional_forward_agrees would notice a wrong GroupNorm eps or head layout: each changes the
    output by far more than its tolerance (1e-5 of the largest output)."""
    net = randomize(EDMPrecond(8, 3, model_type="SongUNet", model_channels=8, channel_mult=[1], num_blocks=1,
                                attn_resolutions=[8], dropout=0), 0).eval().double()
    with torch.no_grad():
        net.model.enc["8x8_conv"].bias.zero_()  # with a small input the first GroupNorm sees a variance near eps
    x = 1e-3 * torch.randn(1, 3, 8, 8, dtype=torch.float64)
    noise = torch.tensor([0.3], dtype=torch.float64)
    with torch.no_grad():
        base = net.model(x, noise, None)
        for blk in (m for m in net.modules() if isinstance(m, GroupNorm)):
            blk.eps = 1e-5
        wrong_eps = net.model(x, noise, None)
    assert (base - wrong_eps).abs().max() > 1e-3 * base.abs().max()
    adm = randomize(EDMPrecond(8, 3, model_type="DhariwalUNet", model_channels=8, channel_mult=[1], num_blocks=1,
                                attn_resolutions=[8], channels_per_head=4), 0).eval().double()
    with torch.no_grad():
        two_heads = adm.model(x * 1e3, noise, None)
        for m in adm.modules():
            if isinstance(m, UNetBlock) and m.num_heads:
                m.num_heads = 1
        one_head = adm.model(x * 1e3, noise, None)
    assert (two_heads - one_head).abs().max() > 1e-3 * two_heads.abs().max()


def test_attention_op_gradient():
    q, k = torch.randn(2, 4, 5, dtype=torch.float64, requires_grad=True), torch.randn(2, 4, 6, dtype=torch.float64,
                                                                                       requires_grad=True)
    w = AttentionOp.apply(q, k)
    ref = torch.softmax(torch.einsum("ncq,nck->nqk", q, k) / 2, dim=2)
    torch.testing.assert_close(w, ref.float().double(), rtol=1e-6, atol=1e-7)
    g = torch.randn_like(w)
    dq, dk = torch.autograd.grad((w * g).sum(), (q, k))
    rq, rk = torch.autograd.grad((ref * g).sum(), (q, k))
    torch.testing.assert_close(dq, rq, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dk, rk, rtol=1e-5, atol=1e-6)


def test_eff_attn_matches_attention_op():
    """RDM's eff_attn option: the same attention through a fused kernel."""
    a = randomize(UNetBlock(16, 16, 4, attention=True, num_heads=2), 0).eval()
    b = UNetBlock(16, 16, 4, attention=True, num_heads=2, eff_attn=True).eval()
    b.load_state_dict(a.state_dict())
    x, emb = torch.randn(2, 16, 4, 4), torch.randn(2, 4)
    torch.testing.assert_close(a(x, emb), b(x, emb), rtol=1e-5, atol=1e-5)
