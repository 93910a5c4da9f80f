"""The torch-free checkpoint reader, on tiny files written here in both torch formats.

The pickles are made the way torch.save makes them -- a Pickler whose
persistent_id turns storages into ('storage', ...) tuples, and stand-in
objects that pickle as torch._utils._rebuild_tensor_v2 / torch.FloatStorage --
so the reader is tested without torch installed.
"""

import io
import pickle
import sys
import types
import zipfile
from collections import OrderedDict

import numpy as np
import pytest

from ensemble_group.torchfile import (
    LEGACY_MAGIC,
    LEGACY_PROTOCOL,
    TorchFileError,
    UnsafePickleError,
    load_numpy_pickle,
    load_state_dict,
)

# ------------------------------------------------------------ torch look-alikes


def _rebuild_tensor_v2(*args):  # never called while writing: only its name is pickled
    raise AssertionError


_rebuild_tensor_v2.__module__ = "torch._utils"
_rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"


class _StorageClass:
    """Pickles by reference as torch.<name> (like torch.FloatStorage)."""

    def __init__(self, name):
        self.name = name

    def __reduce__(self):
        return self.name  # a string: pickled as global <__module__>.<name>


_StorageClass.__module__ = "torch"
FLOAT = _StorageClass("FloatStorage")
LONG = _StorageClass("LongStorage")
HALF = _StorageClass("HalfStorage")
# pickle checks that a global it writes can be looked up again: fake modules
# named torch / torch._utils make the stand-ins resolvable while writing.
_fake_torch = types.ModuleType("torch")
_fake_torch.FloatStorage, _fake_torch.LongStorage, _fake_torch.HalfStorage = FLOAT, LONG, HALF
_fake_utils = types.ModuleType("torch._utils")
_fake_utils._rebuild_tensor_v2 = _rebuild_tensor_v2


@pytest.fixture(autouse=True)
def fake_torch_modules(monkeypatch):
    """Only for *writing* the test files; the reader never imports torch."""
    if "torch" in sys.modules and sys.modules["torch"] is not _fake_torch:
        pytest.skip("a real torch is imported in this process")
    monkeypatch.setitem(sys.modules, "torch", _fake_torch)
    monkeypatch.setitem(sys.modules, "torch._utils", _fake_utils)


class Storage:
    def __init__(self, key, stype, data):
        self.key, self.stype, self.data = key, stype, np.ascontiguousarray(data).ravel()


class Tensor:
    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, tuple(size), tuple(stride), False, OrderedDict())

    def __reduce__(self):
        return (_rebuild_tensor_v2, self.args)


class TorchPickler(pickle.Pickler):
    def __init__(self, f, legacy):
        super().__init__(f, protocol=2)
        self.legacy, self.seen = legacy, {}

    def persistent_id(self, obj):
        if not isinstance(obj, Storage):
            return None
        self.seen[obj.key] = obj
        if self.legacy:
            return ("storage", obj.stype, obj.key, "cpu", obj.data.size, None)
        return ("storage", obj.stype, obj.key, "cpu", obj.data.size)


def write_legacy(path, obj):
    buf = io.BytesIO()
    for header in (LEGACY_MAGIC, LEGACY_PROTOCOL,
                   {"protocol_version": LEGACY_PROTOCOL, "little_endian": True,
                    "type_sizes": {"short": 2, "int": 4, "long": 4}}):
        pickle.dump(header, buf, protocol=2)
    p = TorchPickler(buf, legacy=True)
    p.dump(obj)
    keys = sorted(p.seen)
    pickle.dump(keys, buf, protocol=2)
    for k in keys:
        data = p.seen[k].data
        buf.write(np.int64(data.size).tobytes())
        buf.write(data.astype(data.dtype.newbyteorder("<")).tobytes())
    path.write_bytes(buf.getvalue())


def write_zip(path, obj):
    buf = io.BytesIO()
    p = TorchPickler(buf, legacy=False)
    p.dump(obj)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", buf.getvalue())
        zf.writestr("archive/byteorder", "little")
        zf.writestr("archive/version", "3\n")
        for k, s in p.seen.items():
            zf.writestr(f"archive/data/{k}", s.data.tobytes())


def sample():
    """A state dict with plain, transposed, offset and non-float tensors sharing storages."""
    base = np.arange(60, dtype=np.float32) * 0.5 - 7.25
    s0 = Storage("0", FLOAT, base)
    s1 = Storage("1", LONG, np.array([3, -1, 2**40, 7], np.int64))
    s2 = Storage("2", HALF, np.array([1.5, -2.25, 65504.0], np.float16))
    sd = OrderedDict()
    sd["conv.weight"] = Tensor(s0, 0, (3, 4, 5), (20, 5, 1))
    sd["conv.weight_t"] = Tensor(s0, 0, (5, 4, 3), (1, 5, 20))  # a transpose
    sd["slice"] = Tensor(s0, 7, (3, 4), (4, 1))  # offset view
    sd["strided"] = Tensor(s0, 2, (2, 3), (30, 3))  # gaps
    sd["bn.num_batches_tracked"] = Tensor(s1, 2, (), ())
    sd["ids"] = Tensor(s1, 0, (4,), (1,))
    sd["half"] = Tensor(s2, 0, (3,), (1,))
    expected = {
        "conv.weight": base.reshape(3, 4, 5),
        "conv.weight_t": base.reshape(3, 4, 5).transpose(2, 1, 0),
        "slice": base[7:19].reshape(3, 4),
        "strided": np.lib.stride_tricks.as_strided(base[2:], (2, 3), (120, 12)),
        "bn.num_batches_tracked": np.array(2**40, np.int64),
        "ids": np.array([3, -1, 2**40, 7], np.int64),
        "half": np.array([1.5, -2.25, 65504.0], np.float16),
    }
    return sd, expected


@pytest.mark.parametrize("writer", [write_legacy, write_zip], ids=["legacy", "zip"])
def test_round_trip_is_exact(tmp_path, writer):
    sd, expected = sample()
    path = tmp_path / "model.pt"
    writer(path, sd)
    got = load_state_dict(path)
    assert list(got) == list(expected)
    for k, v in expected.items():
        assert got[k].dtype == v.dtype, k
        assert got[k].shape == v.shape, k
        assert np.array_equal(got[k], v), k
        assert got[k].flags.c_contiguous and got[k].flags.owndata, k


def test_nested_dicts_are_flattened(tmp_path):
    s = Storage("0", FLOAT, np.arange(4, dtype=np.float32))
    write_zip(tmp_path / "m.pt", {"state_dict": {"a": Tensor(s, 0, (2, 2), (2, 1))}, "epoch": 3})
    got = load_state_dict(tmp_path / "m.pt")
    assert list(got) == ["state_dict.a"]
    assert np.array_equal(got["state_dict.a"], np.arange(4, dtype=np.float32).reshape(2, 2))


class Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.parametrize("writer", [write_legacy, write_zip], ids=["legacy", "zip"])
def test_forbidden_global_is_refused(tmp_path, writer):
    path = tmp_path / "evil.pt"
    writer(path, {"x": Evil()})
    with pytest.raises(UnsafePickleError, match="system"):
        load_state_dict(path)


def test_tensor_past_its_storage_is_an_error(tmp_path):
    s = Storage("0", FLOAT, np.arange(4, dtype=np.float32))
    write_zip(tmp_path / "m.pt", {"a": Tensor(s, 2, (2, 2), (2, 1))})
    with pytest.raises(TorchFileError, match="does not fit"):
        load_state_dict(tmp_path / "m.pt")


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "x.pt").write_bytes(pickle.dumps(12345, protocol=2))
    with pytest.raises(TorchFileError, match="magic"):
        load_state_dict(tmp_path / "x.pt")


def test_numpy_pickle_nested_dicts(tmp_path):
    tree = {"VGG16_0": {"Conv_0": {"kernel": np.ones((3, 3, 3, 2), np.float32),
                                   "bias": np.arange(2, dtype=np.float32)}}}
    (tmp_path / "w.ckpt").write_bytes(pickle.dumps(tree, protocol=3))
    got = load_numpy_pickle(tmp_path / "w.ckpt")
    assert sorted(got) == ["VGG16_0/Conv_0/bias", "VGG16_0/Conv_0/kernel"]
    assert np.array_equal(got["VGG16_0/Conv_0/bias"], [0, 1])


def test_numpy_pickle_refuses_other_globals_and_object_arrays(tmp_path):
    (tmp_path / "evil.ckpt").write_bytes(pickle.dumps({"a": Evil()}))
    with pytest.raises(UnsafePickleError, match="system"):
        load_numpy_pickle(tmp_path / "evil.ckpt")
    (tmp_path / "obj.ckpt").write_bytes(pickle.dumps({"a": np.array([1, "x"], dtype=object)}))
    with pytest.raises(UnsafePickleError, match="object"):
        load_numpy_pickle(tmp_path / "obj.ckpt")
