"""Loading files a user gave or downloaded: parsed before they are trusted (docs/SECURITY.md).

`load(path, what=...)` -> (object, format) is the one loader of every file relaydiff reads that
holds tensors: its checkpoints (`checkpoint.load_checkpoint`), the published EDM `.pkl` / RDM `.pt`
files (`importer`), comparison units and detector weights (`load_state_dict`). No torch or pickle
loading machinery sees the file:

- the format is decided from the first bytes: the zip format torch.save writes, or a plain pickle
  (protocol 2-5); a pickle whose first object is torch's magic number is torch's legacy (pre-1.6,
  non-zip) torch.save format, read by `_Load.legacy` (the nested storages of a plain pickle are
  read by it too). TorchScript archives, torch < 0.4's tar format, and anything else are refused
  with what the file is; so is anything that is not a regular file (FIFO, device, folder);
- a zip must have exactly torch.save's layout (PREFIX/data.pkl, PREFIX/data/<n>, version and
  byteorder records), tensor data stored, data.pkl at most MAX_PICKLE_BYTES and MAX_INFLATION
  times its compressed size;
- the pickle is run by a pure-Python unpickler (`_Unpickler`) whose globals are safe_unpickle.ALLOWED
  alone, that counts opcodes (MAX_OPCODES), refuses BUILD onto anything but the inert records,
  extension codes, out-of-band buffers and text persistent ids, and never reads past the data;
- a legacy file must have exactly _legacy_save's layout (protocol 1001, little-endian, storage
  records without view metadata, a key list naming exactly the storages the pickle named, each
  storage's count matching its record, nothing after the last); a storage is allocated only once
  the bytes all its file's storages claim fit in what is left of the file;
- every storage is read by this module (its bytes must match its record), every tensor view is
  checked before it is made (safe_unpickle.check_tensor_record), and the bytes of all tensors and
  bytes objects the load makes are bounded by 2 x the file's size + 1 MiB;
- the loaded object graph may not be nested deeper than MAX_DEPTH or contain a reference cycle.

Refusals are `FileRefused` (a ValueError), `FileTooLarge` (a FileRefused) or `UnsafePickleError`
(a FileRefused and a pickle.UnpicklingError), each one line naming the file and the reason.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import re
import stat
import zipfile

import torch

from .safe_unpickle import (
    CURRENT_LOAD,
    TORCH_LEGACY_MAGIC,
    DTypeRecord,
    EasyDictRecord,
    FileRefused,
    FileTooLarge,
    ObjectRecord,
    PersistentRecord,
    StorageRecord,
    StorageType,
    UnsafePickleError,
    find_global,
)

__all__ = ["FileRefused", "FileTooLarge", "UnsafePickleError", "check_regular_file", "load", "load_state_dict",
           "check_finite"]

MAX_PICKLE_BYTES = 256 << 20  # a zip's data.pkl (relaydiff's are ~100 KB, RDM's released ~1 MB)
MAX_INFLATION = 100  # a deflated member may inflate to at most this many times its compressed size
MAX_OPCODES = 5_000_000  # pickle opcodes, so objects made (a released RDM .pt has ~300k)
MAX_ITEMS = 5_000_000  # entries copied into sets, dicts and records by the allowed functions
MAX_DEPTH = 100  # nesting of the loaded containers (a training state is ~10 deep)
MAX_MEMBERS = 1_000_000  # zip members
BYTES_SLACK = 1 << 20  # tensors and bytes made: at most 2 x file size + this

_TENSOR_DATA = re.compile(r"data/(\d+)")
_META_MEMBERS = ("byteorder", "version", ".format_version", ".storage_alignment", ".data/version",
                 ".data/serialization_id")
_TORCHSCRIPT_HINT = ("relaydiff loads no TorchScript (loading one runs its code); save the module's "
                     "state_dict() with torch.save instead")


def check_regular_file(path: str, what: str) -> None:
    """A FileRefused unless path is an existing regular file (not a FIFO, device or folder)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise _named(FileRefused, what, path, f"cannot read it ({exc.strerror})") from exc
    if not stat.S_ISREG(st.st_mode):
        raise _named(FileRefused, what, path, "not a regular file")


def _open_regular(path: str, what: str):
    """The file opened for reading, without blocking on a FIFO, and checked regular once open."""
    check_regular_file(path, what)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise _named(FileRefused, what, path, f"cannot read it ({exc.strerror})") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped after the stat above
        os.close(fd)
        raise _named(FileRefused, what, path, "not a regular file")
    return os.fdopen(fd, "rb")


class _Reader:
    """A file-like view of `size` bytes of f that refuses any read past them (a record that claims
    more bytes than the file has left is corrupt, and is never allocated)."""

    def __init__(self, f, size: int):
        self.f, self.left = f, size

    def _take(self, n: int) -> int:
        if n < 0 or n > self.left:
            raise FileRefused(f"a pickle record claims {n} bytes, {self.left} are left: corrupt or truncated")
        self.left -= n
        return n

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(self._take(n))
        return data

    def readinto(self, buf) -> int:
        return self.f.readinto(memoryview(buf)[: self._take(len(buf))])

    def readline(self) -> bytes:
        line = self.f.readline(min(self.left, 1 << 16))
        self.left -= len(line)
        return line


def _refuse(op_name):
    def handler(self):
        raise UnsafePickleError(f"pickle opcode {op_name} is not allowed")

    return handler


class _Opcodes(dict):
    """pickle's opcode table; a byte that is no opcode is a corrupt file, said so."""

    def __missing__(self, code):
        raise FileRefused(f"corrupt or truncated (byte 0x{code:02x} is not a pickle opcode)")


class _Unpickler(pickle._Unpickler):
    """pickle's pure-Python unpickler, restricted: ALLOWED globals only, opcodes counted, BUILD only
    onto the inert records, persistent ids only through the load's storages."""

    dispatch = _Opcodes(pickle._Unpickler.dispatch)

    def __init__(self, reader: _Reader, load: _Load, persistent_load=None):
        super().__init__(reader)
        self._load, self._persistent = load, persistent_load

    def find_class(self, module, name):
        return find_global(module, name)

    def persistent_load(self, pid):
        if self._persistent is None:
            raise UnsafePickleError("a plain pickle with persistent ids")
        return self._persistent(pid)

    def _build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, (ObjectRecord, PersistentRecord, EasyDictRecord, DTypeRecord)):
            inst.__setstate__(state)
        elif type(inst) is not collections.OrderedDict or not isinstance(state, dict):
            # OrderedDict: a state_dict's _metadata, dropped. Anything else (a tensor's set_) is refused.
            raise UnsafePickleError(f"pickle BUILD onto a {type(inst).__name__}")


def _onto(kind, where, op):
    """op, once the object it adds to (stack[where], or below the mark for where=None) is a `kind`:
    no item is ever set on a tensor or a record."""
    def handler(self):
        try:
            target = self.metastack[-1][-1] if where is None else self.stack[where]
        except IndexError:
            target = None
        if not isinstance(target, kind):
            raise UnsafePickleError(f"pickle adds items to a {type(target).__name__}")
        op(self)

    return handler


def _nested(op):
    """op (a tuple-making opcode), then the new tuple's nesting checked: hashing a tuple recurses in
    C without a guard, so a 1M-deep tuple used as a dict key would crash the process."""
    def handler(self):
        op(self)
        self._load.nest(self.stack[-1])

    return handler


for _name in ("TUPLE", "TUPLE1", "TUPLE2", "TUPLE3"):
    _code = getattr(pickle, _name)[0]
    _Unpickler.dispatch[_code] = _nested(_Unpickler.dispatch[_code])
for _name, _kind, _where in (("SETITEM", dict, -3), ("SETITEMS", dict, None), ("APPEND", list, -2),
                             ("APPENDS", list, None), ("ADDITEMS", set, None)):
    _code = getattr(pickle, _name)[0]
    _Unpickler.dispatch[_code] = _onto(_kind, _where, _Unpickler.dispatch[_code])
for _op, _fn in list(_Unpickler.dispatch.items()):
    def _counted(self, _fn=_fn):
        self._load.ops += 1
        if self._load.ops > MAX_OPCODES:
            raise FileTooLarge(f"more than {MAX_OPCODES} pickle opcodes")
        _fn(self)

    _Unpickler.dispatch[_op] = _counted
_Unpickler.dispatch[pickle.BUILD[0]] = _Unpickler._build
for _name in ("EXT1", "EXT2", "EXT4", "INST", "OBJ", "PERSID", "NEXT_BUFFER", "READONLY_BUFFER"):
    _Unpickler.dispatch[getattr(pickle, _name)[0]] = _refuse(_name)


class _Load:
    """One load's budgets and storages (set as safe_unpickle.CURRENT_LOAD while it runs)."""

    def __init__(self, file_size: int):
        self.ops, self.items = 0, 0
        self.bytes_left = 2 * file_size + BYTES_SLACK
        self.nested = {}  # id(bytes) -> (bytes, StorageRecord): a memo-referenced storage is read once
        self.depths = {}  # id(tuple or frozenset) -> (it, its nesting)
        self.legacy_depth = 0  # legacy torch.save records being read (at most 1)

    def nest(self, obj) -> None:
        """Record the nesting of a new tuple or frozenset (1 + its deepest tuple/frozenset item);
        deeper than MAX_DEPTH is refused while it is made, before anything can hash it."""
        depth = 1 + max((self.depths[id(x)][1] for x in obj if id(x) in self.depths), default=0)
        if depth > MAX_DEPTH:
            raise FileRefused(f"the file's objects are nested deeper than {MAX_DEPTH}")
        self.depths[id(obj)] = (obj, depth)  # obj kept so its id stays its own

    def charge_bytes(self, n: int, what: str) -> None:
        self.bytes_left -= n
        if self.bytes_left < 0:
            raise FileTooLarge(f"its {what} would take more than 2 x the file's size + 1 MiB of memory")

    def charge_items(self, n: int) -> None:
        self.items += n
        if self.items > MAX_ITEMS:
            raise FileTooLarge(f"more than {MAX_ITEMS} entries in its containers")

    def unpickle(self, reader: _Reader, persistent_load=None):
        return _Unpickler(reader, self, persistent_load).load()

    def storage(self, stype, numel, read_into=None) -> StorageRecord:
        """A storage of numel elements of stype's dtype, its bytes filled by read_into(bytearray) now,
        or (read_into None, a legacy file's storage, whose bytes follow the pickles) later through
        record.raw; the bytes are charged before they are allocated."""
        if not isinstance(stype, StorageType) or type(numel) is not int or numel < 0:
            raise UnsafePickleError(f"storage record of type {stype!r} and {numel!r} elements")
        nbytes = numel * stype.itemsize
        self.charge_bytes(nbytes, "storages")
        buf = bytearray(nbytes)
        if read_into is not None and nbytes and read_into(buf) != nbytes:
            raise FileRefused(f"a storage of {nbytes} bytes is truncated")
        flat = torch.frombuffer(buf, dtype=stype.dtype) if nbytes else torch.empty(0, dtype=stype.dtype)
        record = StorageRecord(flat)
        record.raw, record.stype = buf, stype  # flat is a view of raw: filling raw fills every tensor
        return record

    def legacy(self, reader: _Reader):
        """The object of a legacy (torch < 1.6, non-zip) torch.save, read from reader just after its
        magic number (torch/serialization.py _legacy_save): protocol 1001, sys_info, the object pickle
        whose persistent ids are ('storage', type, key, location, numel, None), the list of storage
        keys, then per key in that order an 8-byte little-endian count and count x itemsize bytes.
        Every storage is allocated (zeros) when first named, only once the bytes all named storages
        claim fit in what is left of the data, and filled from the file after the pickles."""
        if self.legacy_depth:  # torch writes no storage nested in a legacy file or nested storage
            raise UnsafePickleError("a legacy torch.save nested inside another")
        self.legacy_depth += 1
        try:
            return self._legacy(reader)
        finally:
            self.legacy_depth -= 1

    def _legacy(self, reader: _Reader):
        version, sys_info = self.unpickle(reader), self.unpickle(reader)
        if type(version) is not int or version != 1001 or not isinstance(sys_info, dict):
            raise FileRefused(f"not a legacy torch.save record (protocol {str(version)[:20]}, not 1001)")
        if sys_info.get("little_endian") is not True:
            raise FileRefused("a big-endian legacy torch.save file")
        records, claimed = {}, 0  # storage key -> StorageRecord; bytes the storages claim after the pickles

        def persistent(pid):
            nonlocal claimed
            if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage" and isinstance(pid[2], str)
                    and isinstance(pid[3], str)):
                raise UnsafePickleError(f"legacy storage record {str(pid)[:80]}")
            _, stype, key, _location, numel, view = pid
            if view is not None:
                raise FileRefused("a legacy storage view (torch < 0.4 view_metadata), which relaydiff does not load")
            if not isinstance(stype, StorageType) or type(numel) is not int or numel < 0:
                raise UnsafePickleError(f"legacy storage record of type {stype!r} and {str(numel)[:40]} elements")
            if key in records:
                same = records[key]
                if same.stype is not stype or same.flat.numel() != numel:
                    raise FileRefused(f"legacy storage {key[:40]} is named with two types or sizes")
                return same
            claimed += 8 + numel * stype.itemsize
            if claimed > reader.left:
                raise FileRefused(f"its storage records claim {claimed} bytes, {reader.left} are left: "
                                  "corrupt or truncated")
            records[key] = self.storage(stype, numel)
            return records[key]

        obj = self.unpickle(reader, persistent)
        keys = self.unpickle(reader)
        if not isinstance(keys, list) or not all(type(k) is str for k in keys) or len(set(keys)) != len(keys) \
                or set(keys) != records.keys():
            raise FileRefused(f"its storage key list {str(keys)[:60]} does not match the storages its pickle names")
        for key in keys:
            record = records[key]
            count = reader.read(8)
            if len(count) != 8 or int.from_bytes(count, "little") != record.flat.numel():
                raise FileRefused(f"legacy storage {key[:40]}'s element count does not match its record")
            if reader.readinto(record.raw) != len(record.raw):
                raise FileRefused(f"legacy storage {key[:40]} is truncated")
        if reader.left:
            raise FileRefused(f"{reader.left} bytes after the last legacy storage")
        return obj

    def legacy_storage(self, data: bytes) -> StorageRecord:
        """The one storage of a nested legacy torch.save (torch.storage._load_from_bytes in a plain
        pickle), read by legacy(); a memo-referenced one is read once."""
        if id(data) in self.nested:
            return self.nested[id(data)][1]
        reader = _Reader(io.BytesIO(data), len(data))
        magic = self.unpickle(reader)
        if type(magic) is not int or magic != TORCH_LEGACY_MAGIC:
            raise FileRefused("a nested storage is not a legacy torch.save")
        record = self.legacy(reader)
        if not isinstance(record, StorageRecord):
            raise UnsafePickleError(f"a nested storage holds a {type(record).__name__}, not one storage")
        self.nested[id(data)] = (data, record)
        return record


# ---------------------------------------------------------------------------- formats


def _sniff(head: bytes) -> str:
    """The file's format from its first bytes: 'zip', 'pickle', or a refusal naming what it is."""
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[257:262] == b"ustar":
        raise FileRefused("a tar archive (torch < 0.4's torch.save format), which relaydiff does not load")
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    raise FileRefused(f"not a torch.save zip file or a pickle (it starts {head[:8]!r})")


def _zip_layout(zf: zipfile.ZipFile, file_size: int) -> tuple[str, dict]:
    """(prefix, {storage key: ZipInfo}) once every member is checked against torch.save's layout."""
    infos = zf.infolist()
    if len(infos) > MAX_MEMBERS:
        raise FileTooLarge(f"more than {MAX_MEMBERS} zip members")
    names = [i.filename for i in infos]
    if any(n.split("/", 1)[-1] in ("constants.pkl", "constants") or "/code/" in n for n in names):
        raise FileRefused("a TorchScript archive (torch.jit.save): " + _TORCHSCRIPT_HINT)
    if len(set(names)) != len(names):
        raise FileRefused("a zip with two members of one name")
    prefixes = {n.split("/", 1)[0] for n in names}
    if len(prefixes) != 1 or not all("/" in n for n in names):
        raise FileRefused(f"not torch.save's zip layout: members {sorted(names)[:4]}")
    prefix = prefixes.pop() + "/"
    storages, total = {}, 0
    for info in infos:
        rest = info.filename[len(prefix):]
        match = _TENSOR_DATA.fullmatch(rest)
        if info.flag_bits & 0x1:
            raise FileRefused(f"zip member {info.filename} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) or \
                (match and info.compress_type != zipfile.ZIP_STORED):
            raise FileRefused(f"zip member {info.filename} is compressed (torch.save stores tensor data)")
        if info.compress_type == zipfile.ZIP_DEFLATED and info.file_size > MAX_INFLATION * info.compress_size + 1024:
            raise FileTooLarge(f"zip member {info.filename} inflates {info.compress_size} bytes to {info.file_size}")
        if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
            raise FileRefused(f"zip member {info.filename} has inconsistent sizes")
        total += info.file_size
        if match:
            storages[match.group(1)] = info
        elif rest == "data.pkl":
            if info.file_size > MAX_PICKLE_BYTES:
                raise FileTooLarge(f"its data.pkl is {info.file_size} bytes (limit {MAX_PICKLE_BYTES})")
        elif rest not in _META_MEMBERS or info.file_size > 1024:
            raise FileRefused(f"zip member {info.filename} is not part of torch.save's layout")
    if prefix + "data.pkl" not in names:
        raise FileRefused("a zip without data.pkl: not a torch.save file")
    if total > file_size + MAX_PICKLE_BYTES:
        raise FileTooLarge(f"its zip members inflate to {total} bytes")
    if prefix + "byteorder" in names and zf.read(prefix + "byteorder") != b"little":
        raise FileRefused("a big-endian torch.save file")
    return prefix, storages


def _load_zip(f, load: _Load, file_size: int):
    zf = zipfile.ZipFile(f)
    prefix, members = _zip_layout(zf, file_size)
    storages = {}

    def persistent(pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[2], str)):
            raise UnsafePickleError(f"storage record {str(pid)[:80]}")
        _, stype, key, _location, numel = pid
        if key in storages:
            return storages[key]
        info = members.get(key)
        if info is None or not isinstance(stype, StorageType) or type(numel) is not int \
                or info.file_size != numel * stype.itemsize:
            raise FileRefused(f"storage record {key[:40]} does not match a data member of its size")
        with zf.open(info) as member:
            storages[key] = load.storage(stype, numel, member.readinto)
        return storages[key]

    data = zf.read(prefix + "data.pkl")
    return load.unpickle(_Reader(io.BytesIO(data), len(data)), persistent)


def _check_graph(obj) -> None:
    """Nesting depth at most MAX_DEPTH and no reference cycle, found without recursion."""
    def children(x):
        if isinstance(x, dict):  # EasyDictRecord and OrderedDict too
            return [*x.keys(), *x.values()]
        if isinstance(x, (list, tuple, set, frozenset)):
            return list(x)
        if isinstance(x, (ObjectRecord, PersistentRecord)):
            return [x.state]
        return ()

    height, on_path = {}, set()
    stack = [(obj, 0)]
    while stack:
        x, state = stack.pop()
        key = id(x)
        if state == 0:
            if key in height:
                continue
            if key in on_path:
                raise FileRefused("the file's objects contain a reference cycle")
            kids = children(x)
            if not kids:
                height[key] = 0
                continue
            on_path.add(key)
            if len(on_path) > MAX_DEPTH:
                raise FileRefused(f"the file's objects are nested deeper than {MAX_DEPTH}")
            stack.append((x, 1))
            stack.extend((k, 0) for k in kids)
        else:
            on_path.discard(key)
            height[key] = 1 + max(height.get(id(k), 0) for k in children(x))


def _named(kind, what: str, path: str, reason: str) -> FileRefused:
    """kind('WHAT PATH: reason'), with .reason kept for callers that word the prefix themselves."""
    exc = kind(f"{what} {path}: {reason}")
    exc.reason = reason
    return exc


def load(path: str, *, what: str = "file"):
    """(object, format) of a torch.save zip file ('zip'), a legacy torch.save ('legacy') or a plain
    pickle ('pickle'), read as the module docstring says; tensors are CPU views of storages read
    from the file."""
    f = _open_regular(path, what)
    try:
        size = os.fstat(f.fileno()).st_size
        head = f.read(512)
        f.seek(0)
        load_ = _Load(size)
        token = CURRENT_LOAD.set(load_)
        try:
            fmt = _sniff(head)
            if fmt == "zip":
                obj = _load_zip(f, load_, size)
            else:
                reader = _Reader(f, size)
                obj = load_.unpickle(reader)
                if type(obj) is int and obj == TORCH_LEGACY_MAGIC and reader.left:  # pickled first, as torch does
                    fmt, obj = "legacy", load_.legacy(reader)
                if reader.left:
                    raise FileRefused(f"{reader.left} bytes after the pickle's end")
            _check_graph(obj)
        finally:
            CURRENT_LOAD.reset(token)
    except FileRefused as exc:
        raise _named(type(exc), what, path, str(exc)) from None
    except MemoryError:
        raise _named(FileTooLarge, what, path, "does not fit in memory") from None
    except Exception as exc:  # anything else a corrupt file makes the parsers raise
        raise _named(FileRefused, what, path, f"corrupt or truncated ({type(exc).__name__}: {str(exc)[:100]})") \
            from None
    finally:
        f.close()
    return obj, fmt


def check_finite(tensors: dict, where: str) -> None:
    """A FileRefused naming the first floating-point tensor of {name: tensor} holding a NaN or inf."""
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            raise FileRefused(f"{where}: tensor {name} holds NaN or infinite values")


def check_finite_number(value, where: str, key: str, allow_inf: bool = False) -> None:
    """A FileRefused naming key unless value is a finite real number (bool excluded); with allow_inf
    +inf passes too (EDM's sigma_max default)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not (math.isfinite(value) or (allow_inf and value == math.inf)):
        raise FileRefused(f"{where}: config field {key} must be a finite number, got {value!r}")


def load_state_dict(path: str, *, what: str = "state_dict file") -> dict[str, torch.Tensor]:
    """{name: CPU tensor} from a torch.save'd state_dict, finite; a FileRefused naming path otherwise."""
    state, _ = load(path, what=what)
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise FileRefused(f"{what} {path}: not a state_dict (a flat dict of names to tensors)")
    check_finite(state, f"{what} {path}")
    return dict(state)
