"""A pickle reader for the published EDM `.pkl` and RDM `.pt` checkpoints that runs no code from the file.

A pickle is a small program: every global it names is imported and may be called. The files this
reads are made by NVlabs/edm `training/training_loop.py` (`pickle.dump(dict(ema=..., ...))`) and
THUDM/RelayDiffusion `training/training_loop.py` (`torch.save(dict(ema=..., net=..., ...))`); their
modules are `@persistence.persistent_class` (NVlabs/edm `torch_utils/persistence.py`), so each pickles
as `_reconstruct_persistent_obj(meta)` with meta = {type: 'class', version, module_src (the whole
source file), class_name, state (the module's __dict__)}; torch's `ModuleDict` pickles as a plain
object; tensors as `torch._utils._rebuild_tensor_v2(storage, ...)`, their storages (in a plain pickle)
as `torch.storage._load_from_bytes(bytes)`, a nested torch.load.

`SafeUnpickler.find_class` answers only the globals in `ALLOWED` below, each with an inert or checked
stand-in: the persistence hook and the known class paths become records holding the saved state
(module_src is kept as text and never executed, no module is imported by name from the file), the
nested storage load is `torch.load(weights_only=True)`. Any other global raises `UnsafePickleError`
naming it. `load_file(path)` reads either format with this unpickler (torch.load is given it as its
pickle_module, so torch's default unpickler never sees the file).
"""

from __future__ import annotations

import collections
import io
import pickle
import types
import zipfile

import numpy as np
import torch

# torch.save's legacy (non-zip) format starts with this pickled int (torch/serialization.py MAGIC_NUMBER).
TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

# Class names of NVlabs/edm training/networks.py (THUDM/RelayDiffusion keeps the same ones).
EDM_CLASSES = ("EDMPrecond", "VPPrecond", "VEPrecond", "iDDPMPrecond", "SongUNet", "DhariwalUNet", "UNetBlock",
               "Linear", "Conv2d", "GroupNorm", "PositionalEmbedding", "FourierEmbedding")
TORCH_CONTAINERS = ("ModuleDict", "ModuleList", "Sequential")


class UnsafePickleError(pickle.UnpicklingError):
    """The file names a global (a function or class to import and call) that is not on the allowed list."""


# ---------------------------------------------------------------------------- inert records


class PersistentRecord:
    """Stands for `torch_utils.persistence._reconstruct_persistent_obj(meta)`: the class name and the
    saved state only. The embedded module source is never executed."""

    def __init__(self, meta):
        if not isinstance(meta, dict) or meta.get("type") != "class":
            raise UnsafePickleError(f"persistent object meta must be a dict with type 'class', got {_short(meta)}")
        name, state = meta.get("class_name"), meta.get("state")
        if not isinstance(name, str) or not isinstance(state, (dict, type(None))):
            raise UnsafePickleError(f"persistent object meta has class_name {_short(name)} and state {_short(state)}")
        self.module, self.class_name, self.state = "torch_utils.persistence", name, dict(state or {})
        self.version = meta.get("version")

    def __setstate__(self, state):
        raise UnsafePickleError(f"persistent object {self.class_name} given a second state")

    def __repr__(self):
        return f"<persistent {self.class_name}>"


class ObjectRecord:
    """A plainly pickled instance of an allowed class (a `training.networks` class or a torch container):
    `__new__` and BUILD only fill `state`; no method of the real class ever runs."""

    module = class_name = ""

    def __init__(self, *args, **kwargs):
        raise UnsafePickleError(f"{self.module}.{self.class_name}(...) called with arguments: not a plain object")

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots) from a class with __slots__
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict):
            raise UnsafePickleError(f"{self.module}.{self.class_name}: state is {_short(state)}, not a dict")
        self.state = state

    def __repr__(self):
        return f"<{self.module}.{self.class_name}>"


_RECORD_CLASSES: dict[tuple[str, str], type] = {}


def _record_class(module: str, name: str) -> type:
    """One ObjectRecord subclass per allowed class path (pickle's NEWOBJ needs a class to call __new__ on)."""
    key = (module, name)
    if key not in _RECORD_CLASSES:
        _RECORD_CLASSES[key] = type(name, (ObjectRecord,), {"module": module, "class_name": name, "state": None})
    return _RECORD_CLASSES[key]


class EasyDictRecord(dict):
    """dnnlib.util.EasyDict (a dict with attribute access) as a plain dict subclass."""

    def __setstate__(self, state):
        pass  # an EasyDict keeps its data in the dict itself; its __dict__ is empty


class DTypeRecord:
    """numpy.dtype(name, align, copy) for the numeric dtypes a numpy scalar may carry."""

    NAMES = ("b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8")

    def __init__(self, name, align=False, copy=False):
        if name not in self.NAMES:
            raise UnsafePickleError(f"numpy dtype {_short(name)} is not one of {', '.join(self.NAMES)}")
        self.name, self.byteorder = name, "="

    def __setstate__(self, state):
        order = state[1] if isinstance(state, tuple) and len(state) > 1 else "="
        if order not in ("<", ">", "|", "="):
            raise UnsafePickleError(f"numpy dtype byte order {_short(order)}")
        self.byteorder = order


def _numpy_scalar(dtype, data=None):
    """numpy.core.multiarray.scalar(dtype, bytes) -> the Python number (EDM records e.g. np.sqrt(0.5))."""
    if not isinstance(dtype, DTypeRecord) or not isinstance(data, bytes):
        raise UnsafePickleError(f"numpy scalar of {_short(dtype)} from {_short(data)}")
    real = np.dtype(dtype.name).newbyteorder("=" if dtype.byteorder == "|" else dtype.byteorder)
    if len(data) != real.itemsize:
        raise UnsafePickleError(f"numpy scalar of dtype {dtype.name} has {len(data)} bytes")
    return np.frombuffer(data, dtype=real)[0].item()


# ---------------------------------------------------------------------------- checked torch functions


def _is_shape(value) -> bool:
    return isinstance(value, (tuple, torch.Size)) and all(type(v) is int and v >= 0 for v in value)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    """torch._utils._rebuild_tensor_v2 once its arguments are checked: a real storage, int sizes, no
    hooks; Tensor.set_ then refuses a view that reaches past the storage's end."""
    if not isinstance(storage, (torch.storage.TypedStorage, torch.UntypedStorage)):
        raise UnsafePickleError(f"tensor rebuilt from {_short(storage)}, not a torch storage")
    if type(storage_offset) is not int or not _is_shape(size) or not _is_shape(stride) or len(size) != len(stride):
        raise UnsafePickleError(f"tensor with offset {_short(storage_offset)}, size {_short(size)}, "
                                f"stride {_short(stride)}")
    if not isinstance(requires_grad, bool) or (backward_hooks and len(backward_hooks)):
        raise UnsafePickleError("tensor saved with backward hooks")
    if metadata is not None and not (isinstance(metadata, dict)
                                     and all(isinstance(v, bool) for v in metadata.values())):
        raise UnsafePickleError(f"tensor metadata {_short(metadata)}")
    if isinstance(storage, torch.UntypedStorage):
        storage = torch.storage.TypedStorage(wrap_storage=storage, dtype=torch.uint8, _internal=True)
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, tuple(size), tuple(stride), False,
                                           collections.OrderedDict(), metadata)


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
    """A Parameter's data tensor (requires_grad, hooks and python attributes are not kept)."""
    if not isinstance(data, torch.Tensor) or (backward_hooks and len(backward_hooks)):
        raise UnsafePickleError(f"parameter rebuilt from {_short(data)} with hooks {_short(backward_hooks)}")
    return data


def _load_from_bytes(data):
    """torch.storage._load_from_bytes (how a storage reduces in a plain pickle), as a weights-only load."""
    if not isinstance(data, bytes):
        raise UnsafePickleError(f"storage bytes expected, got {_short(data)}")
    storage = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(storage, (torch.storage.TypedStorage, torch.UntypedStorage)):
        raise UnsafePickleError(f"nested storage load gave {_short(storage)}, not a storage")
    return storage


def _codecs_encode(text, encoding="utf-8"):
    """_codecs.encode(str, 'latin1'): how protocol 2 (torch.save's) writes a bytes object."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"_codecs.encode({_short(text)}, {_short(encoding)})")
    return text.encode("latin1")


def _reconstructor(cls, base, state):
    """copyreg._reconstructor(cls, object, None), protocol 0/1's way to make a plain object."""
    if not (isinstance(cls, type) and issubclass(cls, ObjectRecord)) or base is not object or state is not None:
        raise UnsafePickleError(f"copyreg._reconstructor({_short(cls)}, {_short(base)}, ...)")
    return cls.__new__(cls)


# (module, name) -> what find_class returns. Everything here is inert or checks its arguments.
ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "object"): object,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("_codecs", "encode"): _codecs_encode,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): PersistentRecord,
    ("dnnlib.util", "EasyDict"): EasyDictRecord,
    ("numpy", "dtype"): DTypeRecord,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    **{("training.networks", n): _record_class("training.networks", n) for n in EDM_CLASSES},
    **{("torch.nn.modules.container", n): _record_class("torch.nn.modules.container", n) for n in TORCH_CONTAINERS},
}
# Python 2 names that protocol 0-2 pickles may use (pickle's fix_imports).
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


class SafeUnpickler(pickle.Unpickler):
    """pickle.Unpickler whose find_class answers only ALLOWED; anything else is an UnsafePickleError.
    No persistent_load here: pickle then refuses persistent ids, and torch.load sets its own on the
    instance to read a torch file's storages."""

    def find_class(self, module, name):
        module = _PY2_MODULES.get(module, module)
        try:
            return ALLOWED[(module, name)]
        except (KeyError, TypeError):
            pass
        raise UnsafePickleError(f"refusing to load global {module}.{name}: it is not one of the classes and "
                                f"functions an EDM/RDM checkpoint needs, and nothing from the file is run")


def _pickle_module() -> types.ModuleType:
    """A module-like object for torch.load(pickle_module=...): torch subclasses its Unpickler (keeping
    our find_class) and reads the legacy format's headers with its load."""
    mod = types.ModuleType("relaydiff_safe_pickle")
    mod.Unpickler = SafeUnpickler
    mod.UnpicklingError = pickle.UnpicklingError
    mod.load = lambda f, **kw: SafeUnpickler(f, **kw).load()
    return mod


SAFE_PICKLE_MODULE = _pickle_module()


def load_file(path: str):
    """(object, format) for a pickle, a torch zip file or a legacy torch file, read with SafeUnpickler;
    format is 'pickle' or 'torch'. Tensors are on the CPU."""
    if zipfile.is_zipfile(path):
        return torch.load(path, map_location="cpu", pickle_module=SAFE_PICKLE_MODULE, weights_only=False,
                          mmap=True), "torch"
    with open(path, "rb") as f:
        obj = SafeUnpickler(f).load()
    if type(obj) is int and obj == TORCH_LEGACY_MAGIC:
        return torch.load(path, map_location="cpu", pickle_module=SAFE_PICKLE_MODULE, weights_only=False), "torch"
    return obj, "pickle"
