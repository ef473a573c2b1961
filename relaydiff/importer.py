"""Rebuild relaydiff networks from the published EDM `.pkl` and RDM `.pt` checkpoints.

    net, info = import_network("edm-imagenet-64x64-cond-adm.pkl")     # EDM network snapshot
    net, info = import_network("ckpts/imagenet_second_stage.pt")        # RDM training state

The file is read by `safe_load.load`, which runs nothing from it: the network under `ema`
(or `net`) comes back as inert records of EDM's class names with their saved state. From the
record of the preconditioning wrapper (EDMPrecond / VPPrecond / VEPrecond / iDDPMPrecond) this takes the
constructor arguments the EDM persistence decorator recorded (`_init_args`, `_init_kwargs`; for a
plainly pickled module without them, the wrapper's attributes of the same names and the U-Net's
recorded arguments), checks them against netspec.py's limits, builds relaydiff's class of the same
name on the meta device, compares every tensor name and shape with the file's, and loads the weights
with load_state_dict(strict=True). `info` holds the JSON network spec (what convert.py saves).
"""

from __future__ import annotations

import inspect
import os

import torch

from . import networks
from .netspec import build_checked, check_stage_config
from .safe_load import FileRefused
from .safe_load import load as safe_load_file
from .safe_unpickle import EDM_CLASSES, TORCH_CONTAINERS, ObjectRecord, PersistentRecord

# EDM's default model_type per wrapper (NVlabs/edm training/networks.py), for a record without one.
PRECONDS = {"EDMPrecond": "DhariwalUNet", "VPPrecond": "SongUNet", "VEPrecond": "SongUNet",
            "iDDPMPrecond": "DhariwalUNet"}
MODELS = ("SongUNet", "DhariwalUNet")
# The U-Net kwargs the wrapper passes itself (EDM: img_resolution, in_channels=img_channels, ...).
INTERFACE = ("img_resolution", "in_channels", "out_channels", "label_dim")
TREE_CLASSES = frozenset(EDM_CLASSES) | frozenset(TORCH_CONTAINERS)
MAX_DEPTH = 16  # EDM's module trees are 4 deep (wrapper, U-Net, ModuleDict, block, layer)


def _record_name(record) -> str:
    if isinstance(record, PersistentRecord):
        return record.class_name
    if isinstance(record, ObjectRecord):
        return f"{record.module}.{record.class_name}"
    return type(record).__name__


def _plain(value, where: str, depth: int = 0):
    """A recorded constructor argument as JSON-able data (lists, dicts with str keys, numbers, str)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if depth > MAX_DEPTH:
        raise ValueError(f"{where}: a recorded constructor argument is nested deeper than {MAX_DEPTH}")
    if isinstance(value, (list, tuple)):
        return [_plain(v, where, depth + 1) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _plain(v, where, depth + 1) for k, v in value.items()}
    raise ValueError(f"{where}: a recorded constructor argument is {type(value).__name__}, not plain data")


def _signature_names(class_name: str) -> list[str]:
    params = inspect.signature(getattr(networks, class_name).__init__).parameters.values()
    return [p.name for p in params if p.name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD]


def _recorded_kwargs(record, class_name: str, where: str):
    """The record's EDM-persistence constructor arguments as one kwargs dict, or None if not recorded."""
    kwargs, args = record.state.get("_init_kwargs"), record.state.get("_init_args")
    if kwargs is None:
        return None
    if not isinstance(kwargs, dict) or not isinstance(args, (tuple, list, type(None))):
        raise ValueError(f"{where}: {class_name}'s recorded constructor arguments are not a tuple and a dict")
    names = _signature_names(class_name)
    if len(args or ()) > len(names):
        raise ValueError(f"{where}: {class_name} was built with {len(args)} positional arguments")
    out = dict(zip(names, args or (), strict=False))
    out.update(kwargs)
    return _plain(out, where)


def network_spec(top, where: str) -> dict:
    """{"class_name", "kwargs"} for build_network from the wrapper's record (see the module docstring)."""
    name = top.class_name
    if name not in PRECONDS:
        raise ValueError(f"{where}: the network is a {_record_name(top)}; relaydiff imports "
                         f"{', '.join(PRECONDS)} (NVlabs/edm's preconditioning wrappers)")
    model = top.state.get("_modules", {}).get("model")
    if not isinstance(model, (PersistentRecord, ObjectRecord)) or model.class_name not in MODELS:
        raise ValueError(f"{where}: {name}.model is a {_record_name(model)}, not one of {', '.join(MODELS)}")
    kwargs = _recorded_kwargs(top, name, where)
    if kwargs is None:  # a plain pickle without recorded arguments: the wrapper's own attributes
        kwargs = {n: _plain(top.state[n], where) for n in _signature_names(name) if n in top.state}
        kwargs["model_type"] = model.class_name
        inner = _recorded_kwargs(model, model.class_name, where)
        if inner is None:
            inner = derive_model_kwargs(model, where)
        kwargs.update({k: v for k, v in inner.items() if k not in INTERFACE})
    kwargs.setdefault("model_type", PRECONDS[name])
    if kwargs["model_type"] != model.class_name:
        raise ValueError(f"{where}: {name} records model_type={kwargs['model_type']!r} but holds a "
                         f"{model.class_name}")
    return {"class_name": name, "kwargs": kwargs}


# ---------------------------------------------------------------------------- U-Net kwargs from a module tree


def _sub(record, name: str, where: str):
    sub = (record.state.get("_modules") or {}).get(name)
    if sub is not None and not isinstance(sub, (PersistentRecord, ObjectRecord)):
        raise ValueError(f"{where}: submodule {name} is a {type(sub).__name__}")
    return sub


def _weight(record, where: str, what: str) -> tuple:
    weight = (record.state.get("_parameters") or {}).get("weight") if record is not None else None
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"{where}: {what} has no weight tensor to read the architecture from")
    return tuple(weight.shape)


def _int_attr(record, name: str, where: str, default=None):
    value = record.state.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}: {record.class_name}.{name} is {value!r}, not a number")
    return value


def derive_model_kwargs(model, where: str) -> dict:
    """SongUNet / DhariwalUNet kwargs of a plainly pickled U-Net that recorded none, from its module
    names (EDM's '<res>x<res>_conv|_down|_block<i>|_aux_*' in enc/dec), tensor shapes and attributes."""
    enc, dec = _sub(model, "enc", where), _sub(model, "dec", where)
    if enc is None or dec is None:
        raise ValueError(f"{where}: {model.class_name} has no enc/dec ModuleDicts to read the architecture from")
    blocks, order = {}, []  # resolution -> [block records] in the encoder, resolutions from the top
    for key, sub in (enc.state.get("_modules") or {}).items():
        res = int(key.split("x", 1)[0]) if key.split("x", 1)[0].isdigit() else None
        if res is None:
            raise ValueError(f"{where}: encoder module name {key!r} is not EDM's '<res>x<res>_...'")
        if res not in blocks:
            blocks[res] = []
            order.append(res)
        if "_block" in key:
            blocks[res].append(sub)
    layer0 = _weight(_sub(model, "map_layer0", where), where, "map_layer0")  # [emb_channels, noise_channels]
    if model.class_name == "DhariwalUNet":
        model_channels = layer0[1]
    else:
        model_channels = _weight(_sub(enc, f"{order[0]}x{order[0]}_conv", where), where, "the first conv")[0]
    heads = [(_int_attr(b, "num_heads", where, 0), _int_attr(b, "out_channels", where))
             for res in order for b in blocks[res]]
    augment = _sub(model, "map_augment", where)
    first = blocks[order[0]][0] if blocks[order[0]] else None
    if first is None:
        raise ValueError(f"{where}: {model.class_name} has no encoder blocks")
    kw = dict(model_channels=model_channels, channel_mult_emb=layer0[0] // model_channels,
              num_blocks=len(blocks[order[0]]),
              channel_mult=[_int_attr(blocks[r][0], "out_channels", where) // model_channels for r in order],
              attn_resolutions=[r for r in order if any(_int_attr(b, "num_heads", where, 0) for b in blocks[r])],
              augment_dim=_weight(augment, where, "map_augment")[1] if augment is not None else 0,
              dropout=_int_attr(first, "dropout", where, 0.0),
              label_dropout=_int_attr(model, "label_dropout", where, 0))
    if "eff_attn" in first.state:  # THUDM/RelayDiffusion's blocks record it
        kw["eff_attn"] = bool(first.state["eff_attn"])
    if model.class_name == "DhariwalUNet":
        per_head = {c // h for h, c in heads if h}
        if len(per_head) > 1:
            raise ValueError(f"{where}: attention blocks use different head widths {sorted(per_head)}")
        kw["channels_per_head"] = per_head.pop() if per_head else 64
        return kw
    names = list((enc.state.get("_modules") or {})) + list((dec.state.get("_modules") or {}))
    noise = _sub(model, "map_noise", where)
    fourier = noise is not None and noise.class_name == "FourierEmbedding"
    kw.update(embedding_type="fourier" if fourier else "positional", channel_mult_noise=layer0[1] // model_channels,
              encoder_type="residual" if any("aux_residual" in n for n in names)
              else "skip" if any("aux_skip" in n for n in names) else "standard",
              decoder_type="skip" if any("aux_up" in n for n in names) else "standard")
    down = _sub(enc, f"{order[1]}x{order[1]}_down", where) if len(order) > 1 else None
    conv = _sub(down, "conv0", where) if down is not None else None
    filt = (conv.state.get("_buffers") or {}).get("resample_filter") if conv is not None else None
    if isinstance(filt, torch.Tensor) and filt.dim() == 4:
        rows = filt[0, 0].double().sum(1)  # f f^T / sum(f)^2 -> f / sum(f), then scaled to start at 1
        kw["resample_filter"] = [int(round(v)) for v in (rows / rows[0]).tolist()]
    return kw


def state_dict_of(record, where: str, prefix: str = "", out=None, depth: int = 0) -> dict:
    """The state_dict a module tree of records holds: parameters, persistent buffers, submodules."""
    out = {} if out is None else out
    here = prefix[:-1] or "the network"
    if not isinstance(record, (PersistentRecord, ObjectRecord)) or record.class_name not in TREE_CLASSES:
        raise ValueError(f"{where}: {here} is a {_record_name(record)}, not one of EDM's network classes "
                         f"({', '.join(sorted(TREE_CLASSES))})")
    if depth > MAX_DEPTH:
        raise ValueError(f"{where}: modules nested deeper than {MAX_DEPTH} at {here}")
    state = record.state or {}
    skip = state.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        entries = state.get(group) or {}
        if not isinstance(entries, dict):
            raise ValueError(f"{where}: {here}.{group} is {type(entries).__name__}, not a dict")
        for key, tensor in entries.items():
            if tensor is None or (group == "_buffers" and key in skip):
                continue
            if not isinstance(tensor, torch.Tensor):
                raise ValueError(f"{where}: {prefix}{key} is {type(tensor).__name__}, not a tensor")
            out[prefix + key] = tensor
    modules = state.get("_modules") or {}
    if not isinstance(modules, dict):
        raise ValueError(f"{where}: {here}._modules is {type(modules).__name__}, not a dict")
    for key, sub in modules.items():
        if sub is not None:
            state_dict_of(sub, where, f"{prefix}{key}.", out, depth + 1)
    return out


def read_checkpoint(path: str):
    """(dict, format) of a published checkpoint file; format 'edm-pkl' or 'rdm-pt'. Refusals name the file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint file {path}")
    data, kind = safe_load_file(path, what="checkpoint file")  # refusals name the file and the reason
    if not isinstance(data, dict):
        raise FileRefused(f"{path}: holds a {type(data).__name__}, not the dict of an EDM .pkl or RDM .pt file")
    return data, ("edm-pkl" if kind == "pickle" else "rdm-pt")


def import_network(path: str, *, key: str = "ema", device="cpu"):
    """(net, info): the network under `key` ('ema', or 'net' in an RDM training state) rebuilt as
    relaydiff's class of the same name, weights loaded strictly, in eval mode without gradients.
    info: {"path", "format", "key", "network": spec for build_network, "resolution", "img_channels",
    "label_dim"}."""
    data, fmt = read_checkpoint(path)
    if key not in data:
        raise ValueError(f"{path}: has no {key!r} network (keys: {sorted(map(str, data))})")
    where = f"{path} [{key}]"
    top = data[key]
    if not isinstance(top, (PersistentRecord, ObjectRecord)):
        raise ValueError(f"{where}: is a {type(top).__name__}, not a pickled network")
    spec = network_spec(top, where)
    check_stage_config({"network": spec}, where)  # sane sizes before anything is built
    state_dict = state_dict_of(top, where)
    net = build_checked(spec, state_dict, where, device)
    kw = spec["kwargs"]
    info = {"path": path, "format": fmt, "key": key, "network": spec, "resolution": kw["img_resolution"],
            "img_channels": kw.get("img_channels", 3), "label_dim": kw.get("label_dim", 0)}
    return net.eval().requires_grad_(False), info
