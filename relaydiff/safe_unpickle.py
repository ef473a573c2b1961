"""A pickle reader for the published EDM `.pkl` and RDM `.pt` checkpoints that runs no code from the file.

A pickle is a small program: every global it names is imported and may be called. The files this
reads are made by NVlabs/edm `training/training_loop.py` (`pickle.dump(dict(ema=..., ...))`) and
THUDM/RelayDiffusion `training/training_loop.py` (`torch.save(dict(ema=..., net=..., ...))`); their
modules are `@persistence.persistent_class` (NVlabs/edm `torch_utils/persistence.py`), so each pickles
as `_reconstruct_persistent_obj(meta)` with meta = {type: 'class', version, module_src (the whole
source file), class_name, state (the module's __dict__)}; torch's `ModuleDict` pickles as a plain
object; tensors as `torch._utils._rebuild_tensor_v2(storage, ...)`, their storages (in a plain pickle)
as `torch.storage._load_from_bytes(bytes)`, a nested torch.load.

`ALLOWED` below is the one list of globals a file may name, each answered with an inert or checked
stand-in: the persistence hook and the known class paths become records holding the saved state
(module_src is kept as text and never executed, no module is imported by name from the file);
tensors are views checked before they are made (`check_tensor_record`) of storages that
relaydiff.safe_load read itself. Any other global raises `UnsafePickleError` naming it. The loader
(pickle parsing, file formats, limits) is relaydiff/safe_load.py; the functions here charge what
they allocate to its current load (`current_load()`), so a memo-referenced record cannot multiply
memory.
"""

from __future__ import annotations

import collections
import contextvars
import pickle

import numpy as np
import torch

# torch.save's legacy (non-zip) format starts with this pickled int (torch/serialization.py MAGIC_NUMBER).
TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

# Class names of NVlabs/edm training/networks.py (THUDM/RelayDiffusion keeps the same ones).
EDM_CLASSES = ("EDMPrecond", "VPPrecond", "VEPrecond", "iDDPMPrecond", "SongUNet", "DhariwalUNet", "UNetBlock",
               "Linear", "Conv2d", "GroupNorm", "PositionalEmbedding", "FourierEmbedding")
TORCH_CONTAINERS = ("ModuleDict", "ModuleList", "Sequential")


class FileRefused(ValueError):
    """A file relaydiff will not load (wrong format, corrupt, unsafe); the message names it and why."""


class FileTooLarge(FileRefused):
    """A file whose contents exceed one of safe_load's documented limits (docs/SECURITY.md)."""


class UnsafePickleError(FileRefused, pickle.UnpicklingError):
    """The file names a global (a function or class to import and call) that is not on the allowed list."""


# The load in progress (a safe_load._Load): its charge_bytes / charge_items bound what the
# functions below allocate, and its legacy_storage reads a nested storage.
CURRENT_LOAD: contextvars.ContextVar = contextvars.ContextVar("relaydiff_safe_load")


def current_load():
    try:
        return CURRENT_LOAD.get()
    except LookupError:
        raise UnsafePickleError("the allowed pickle functions run only inside relaydiff.safe_load") from None


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
        current_load().charge_items(len(state or {}))
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
        if self.state is not None:
            raise UnsafePickleError(f"{self.module}.{self.class_name} given a second state")
        if isinstance(state, tuple) and len(state) == 2 and all(isinstance(p, (dict, type(None))) for p in state):
            # (dict, slots) from a class with __slots__
            current_load().charge_items(len(state[0] or {}) + len(state[1] or {}))
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

# The dtypes a tensor may have: torch's storage class names (how a file names them) -> dtype.
STORAGE_DTYPES = {"FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
                  "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
                  "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
                  "BoolStorage": torch.bool}
MAX_DIMS = 16


class StorageType:
    """torch.<X>Storage as named in a persistent id: only its dtype; nothing of torch's class runs."""

    def __init__(self, name):
        self.name, self.dtype = name, STORAGE_DTYPES[name]
        self.itemsize = torch.empty(0, dtype=self.dtype).element_size()

    def __call__(self, *args, **kwargs):
        raise UnsafePickleError(f"torch.{self.name}(...) called: storages come only from the file's records")

    def __repr__(self):
        return f"torch.{self.name}"


class StorageRecord:
    """A storage safe_load read itself: `flat` is a 1-D CPU tensor of its elements."""

    def __init__(self, flat: torch.Tensor):
        self.flat = flat


def _is_shape(value) -> bool:
    return isinstance(value, (tuple, list)) and len(value) <= MAX_DIMS and \
        all(type(v) is int and 0 <= v < 2**62 for v in value)


def check_tensor_record(numel: int, offset, size, stride) -> int:
    """The bytes-free checks of a tensor view of a storage of `numel` elements: int sizes, strides
    of at least 1 on every dimension longer than 1 (no stride 0), no two elements at one place, the
    last element inside the storage. Returns the view's element count; UnsafePickleError otherwise."""
    if type(offset) is not int or not _is_shape(size) or not _is_shape(stride) or len(size) != len(stride) \
            or offset < 0:
        raise UnsafePickleError(f"tensor record with offset {_short(offset)}, size {_short(size)}, "
                                f"stride {_short(stride)}")
    count = 1
    for n in size:
        count *= n
    if count == 0:
        return 0
    reach = 0  # the largest element index the view reaches, relative to offset
    for st, n in sorted((st, n) for n, st in zip(size, stride, strict=True) if n > 1):
        if st <= reach:  # stride 0, or this dimension steps onto elements the smaller ones reach
            raise UnsafePickleError(f"tensor record of size {list(size)} has strides {list(stride)}: "
                                    f"stride 0 or overlapping elements")
        reach += st * (n - 1)
    if offset + reach >= numel:
        raise UnsafePickleError(f"tensor record of size {list(size)}, stride {list(stride)}, offset {offset} "
                                f"reaches past its storage of {numel} elements")
    return count


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    """torch._utils._rebuild_tensor_v2 once its arguments are checked: a storage safe_load read, a
    checked view (check_tensor_record), no hooks; the view's bytes are charged to the load."""
    if not isinstance(storage, StorageRecord):
        raise UnsafePickleError(f"tensor rebuilt from {_short(storage)}, not a storage of the file")
    count = check_tensor_record(storage.flat.numel(), storage_offset, size, stride)
    if not isinstance(requires_grad, bool) or (backward_hooks and len(backward_hooks)):
        raise UnsafePickleError("tensor saved with backward hooks")
    if metadata:
        raise UnsafePickleError(f"tensor metadata {_short(metadata)}")
    current_load().charge_bytes(count * storage.flat.element_size(), "tensor views")
    return storage.flat.as_strided(tuple(size), tuple(stride), storage_offset)


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
    """A Parameter's data tensor (requires_grad, hooks and python attributes are not kept)."""
    if not isinstance(data, torch.Tensor) or (backward_hooks and len(backward_hooks)):
        raise UnsafePickleError(f"parameter rebuilt from {_short(data)} with hooks {_short(backward_hooks)}")
    return data


def _load_from_bytes(data):
    """torch.storage._load_from_bytes (how a storage reduces in a plain pickle): a nested legacy
    torch.save of one storage, parsed by safe_load itself."""
    if not isinstance(data, bytes):
        raise UnsafePickleError(f"storage bytes expected, got {_short(data)}")
    return current_load().legacy_storage(data)


def _codecs_encode(text, encoding="utf-8"):
    """_codecs.encode(str, 'latin1'): how protocol 2 (torch.save's) writes a bytes object."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"_codecs.encode({_short(text)}, {_short(encoding)})")
    current_load().charge_bytes(len(text), "bytes objects")  # a memo-referenced str may be encoded often
    return text.encode("latin1")


def _collection(kind):
    """set / frozenset / OrderedDict of a list or tuple (how protocol 2 pickles them), charged per item."""

    def make(items=()):
        if not isinstance(items, (list, tuple)):
            raise UnsafePickleError(f"{kind.__name__}({_short(items)}): not a list")
        current_load().charge_items(len(items))
        made = kind(items)
        if kind is frozenset:  # hashable, so its nesting is bounded now (safe_load._Load.nest)
            current_load().nest(made)
        return made

    make.__name__ = kind.__name__
    return make


def _reconstructor(cls, base, state):
    """copyreg._reconstructor(cls, object, None), protocol 0/1's way to make a plain object."""
    if not (isinstance(cls, type) and issubclass(cls, ObjectRecord)) or base is not object or state is not None:
        raise UnsafePickleError(f"copyreg._reconstructor({_short(cls)}, {_short(base)}, ...)")
    return cls.__new__(cls)


# (module, name) -> what find_class returns. Everything here is inert or checks its arguments.
ALLOWED = {
    ("collections", "OrderedDict"): _collection(collections.OrderedDict),
    ("builtins", "set"): _collection(set),
    ("builtins", "frozenset"): _collection(frozenset),
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
    **{("torch", n): StorageType(n) for n in STORAGE_DTYPES},
}
# Python 2 names that protocol 0-2 pickles may use (pickle's fix_imports).
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def find_global(module, name):
    """What a file's global module.name stands for: ALLOWED's stand-in, else an UnsafePickleError."""
    module = _PY2_MODULES.get(module, module)
    try:
        return ALLOWED[(module, name)]
    except (KeyError, TypeError):
        pass
    raise UnsafePickleError(f"refusing to load global {str(module)[:80]}.{str(name)[:80]}: it is not one of the "
                            f"classes and functions an EDM/RDM checkpoint needs, and nothing from the file is run")
