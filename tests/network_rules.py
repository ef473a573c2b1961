"""EDM's state_dict naming rules (docs/NETWORKS.md) as plain functions, and helpers the network
tests share: the tests derive their expectations from these, never from relaydiff's modules."""

import math

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks: one thread is fastest, and on a busy machine extra threads spin in barriers
    (milliseconds per op become tens)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def song_layout(res, cin, cout_img, mc=128, channel_mult=(1, 2, 2, 2), num_blocks=4, attn_resolutions=(16,),
                encoder_type="standard", decoder_type="standard", **_):
    """[(section, name, kind, info)] in forward order for SongUNet."""
    out, skips, c, caux = [], [], cin, cin
    for level, mult in enumerate(channel_mult):
        r = res >> level
        if level == 0:
            out.append(("enc", f"{r}x{r}_conv", "conv", dict(cin=c, cout=mc, k=3)))
            c = mc
            skips.append(c)
        else:
            out.append(("enc", f"{r}x{r}_down", "block", dict(cin=c, cout=c, down=True, heads=0)))
            skips.append(c)
            if encoder_type == "skip":
                out.append(("enc", f"{r}x{r}_aux_down", "conv", dict(cin=caux, cout=caux, k=0, down=True)))
                out.append(("enc", f"{r}x{r}_aux_skip", "conv", dict(cin=caux, cout=c, k=1)))
            if encoder_type == "residual":
                out.append(("enc", f"{r}x{r}_aux_residual", "conv", dict(cin=caux, cout=c, k=3, down=True,
                                                                         fused=True)))
                caux = c
        for i in range(num_blocks):
            out.append(("enc", f"{r}x{r}_block{i}", "block", dict(cin=c, cout=mc * mult,
                                                                  heads=int(r in attn_resolutions))))
            c = mc * mult
            skips.append(c)
    for level, mult in reversed(list(enumerate(channel_mult))):
        r = res >> level
        if level == len(channel_mult) - 1:
            out.append(("dec", f"{r}x{r}_in0", "block", dict(cin=c, cout=c, heads=1)))
            out.append(("dec", f"{r}x{r}_in1", "block", dict(cin=c, cout=c, heads=0)))
        else:
            out.append(("dec", f"{r}x{r}_up", "block", dict(cin=c, cout=c, up=True, heads=0)))
        for i in range(num_blocks + 1):
            heads = int(i == num_blocks and r in attn_resolutions)
            out.append(("dec", f"{r}x{r}_block{i}", "block", dict(cin=c + skips.pop(), cout=mc * mult, heads=heads)))
            c = mc * mult
        if decoder_type == "skip" or level == 0:
            if decoder_type == "skip" and level < len(channel_mult) - 1:
                out.append(("dec", f"{r}x{r}_aux_up", "conv", dict(cin=cout_img, cout=cout_img, k=0, up=True)))
            out.append(("dec", f"{r}x{r}_aux_norm", "norm", dict(c=c)))
            out.append(("dec", f"{r}x{r}_aux_conv", "conv", dict(cin=c, cout=cout_img, k=3)))
    return out


def adm_layout(res, cin, cout_img, mc=192, channel_mult=(1, 2, 3, 4), num_blocks=3, attn_resolutions=(32, 16, 8),
               channels_per_head=64, **_):
    out, skips, c = [], [], cin
    for level, mult in enumerate(channel_mult):
        r = res >> level
        if level == 0:
            out.append(("enc", f"{r}x{r}_conv", "conv", dict(cin=c, cout=mc * mult, k=3)))
            c = mc * mult
        else:
            out.append(("enc", f"{r}x{r}_down", "block", dict(cin=c, cout=c, down=True, heads=0)))
        skips.append(c)
        for i in range(num_blocks):
            heads = (mc * mult) // channels_per_head if r in attn_resolutions else 0
            out.append(("enc", f"{r}x{r}_block{i}", "block", dict(cin=c, cout=mc * mult, heads=heads)))
            c = mc * mult
            skips.append(c)
    for level, mult in reversed(list(enumerate(channel_mult))):
        r = res >> level
        if level == len(channel_mult) - 1:
            out.append(("dec", f"{r}x{r}_in0", "block", dict(cin=c, cout=c, heads=c // channels_per_head)))
            out.append(("dec", f"{r}x{r}_in1", "block", dict(cin=c, cout=c, heads=0)))
        else:
            out.append(("dec", f"{r}x{r}_up", "block", dict(cin=c, cout=c, up=True, heads=0)))
        for i in range(num_blocks + 1):
            heads = (mc * mult) // channels_per_head if r in attn_resolutions else 0
            out.append(("dec", f"{r}x{r}_block{i}", "block", dict(cin=c + skips.pop(), cout=mc * mult, heads=heads)))
            c = mc * mult
    return out, c


def conv_keys(p, cin, cout, k, up=False, down=False, taps=2, bias=True, **_):
    keys = {}
    if k:
        keys[f"{p}.weight"] = (cout, cin, k, k)
        if bias:
            keys[f"{p}.bias"] = (cout,)
    if up or down:
        keys[f"{p}.resample_filter"] = (1, 1, taps, taps)
    return keys


def block_keys(p, cin, cout, emb, up=False, down=False, heads=0, adaptive=False, proj=False, taps=2):
    keys = {f"{p}.norm0.weight": (cin,), f"{p}.norm0.bias": (cin,),
            f"{p}.affine.weight": (cout * (2 if adaptive else 1), emb), f"{p}.affine.bias": (cout * (2 if adaptive
                                                                                                     else 1),),
            f"{p}.norm1.weight": (cout,), f"{p}.norm1.bias": (cout,)}
    keys.update(conv_keys(f"{p}.conv0", cin, cout, 3, up=up, down=down, taps=taps))
    keys.update(conv_keys(f"{p}.conv1", cout, cout, 3))
    if cin != cout or up or down:
        keys.update(conv_keys(f"{p}.skip", cin, cout, 1 if proj or cin != cout else 0, up=up, down=down, taps=taps))
    if heads:
        keys.update({f"{p}.norm2.weight": (cout,), f"{p}.norm2.bias": (cout,)})
        keys.update(conv_keys(f"{p}.qkv", cout, cout * 3, 1))
        keys.update(conv_keys(f"{p}.proj", cout, cout, 1))
    return keys


def expected_keys(model_type, res, img_channels=3, label_dim=0, augment_dim=0, **kw):
    """{key: shape} of EDMPrecond(res, img_channels, label_dim, model_type=..., **kw).state_dict()."""
    mc = kw.get("model_channels", 128 if model_type == "SongUNet" else 192)
    emb = mc * kw.get("channel_mult_emb", 4)
    keys = {}
    if model_type == "SongUNet":
        noise = mc * kw.get("channel_mult_noise", 1)
        taps = len(kw.get("resample_filter", (1, 1)))
        if kw.get("embedding_type", "positional") == "fourier":
            keys["model.map_noise.freqs"] = (noise // 2,)
        if label_dim:
            keys.update({"model.map_label.weight": (noise, label_dim), "model.map_label.bias": (noise,)})
        if augment_dim:
            keys["model.map_augment.weight"] = (noise, augment_dim)
        keys.update({"model.map_layer0.weight": (emb, noise), "model.map_layer0.bias": (emb,),
                     "model.map_layer1.weight": (emb, emb), "model.map_layer1.bias": (emb,)})
        for sec, name, kind, info in song_layout(res, img_channels, img_channels, mc=mc, **kw):
            p = f"model.{sec}.{name}"
            if kind == "conv":
                keys.update(conv_keys(p, taps=taps, **info))
            elif kind == "norm":
                keys.update({f"{p}.weight": (info["c"],), f"{p}.bias": (info["c"],)})
            else:
                keys.update(block_keys(p, emb=emb, proj=True, taps=taps, **info))
    else:
        if augment_dim:
            keys["model.map_augment.weight"] = (mc, augment_dim)
        keys.update({"model.map_layer0.weight": (emb, mc), "model.map_layer0.bias": (emb,),
                     "model.map_layer1.weight": (emb, emb), "model.map_layer1.bias": (emb,)})
        if label_dim:
            keys["model.map_label.weight"] = (emb, label_dim)
        layout, c = adm_layout(res, img_channels, img_channels, mc=mc, **kw)
        for sec, name, kind, info in layout:
            p = f"model.{sec}.{name}"
            keys.update(conv_keys(p, **info) if kind == "conv" else block_keys(p, emb=emb, adaptive=True, **info))
        keys.update({"model.out_norm.weight": (c,), "model.out_norm.bias": (c,)})
        keys.update(conv_keys("model.out_conv", c, img_channels, 3))
    return keys


def randomize(net, seed):
    """Random weights everywhere (the zero-init layers too), so every path reaches the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 / math.sqrt(max(p[0].numel(), 1)) if p.dim() > 1 else 0.3))
            if name.endswith("norm0.weight") or name.endswith("norm1.weight") or name.endswith("norm2.weight"):
                p.add_(1)
    return net
