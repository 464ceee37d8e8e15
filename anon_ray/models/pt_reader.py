"""Read a PyTorch checkpoint (.pt) without torch and without running anything it names.

A .pt file is a zip holding data.pkl (the pickled object graph) and data/<key> (raw tensor storages).
A pickle may call any importable callable, so `find_class` here never imports: the torch functions
that rebuild tensors are replaced by numpy equivalents, a few harmless containers are allowed,
anything else from the standard library (where eval, exec, getattr, os.system and subprocess live)
is refused, and every other class (torch.nn and Ultralytics modules) becomes an inert record of its
name and pickled state, which `module_tree` turns into plain `Layer`s.
"""

from __future__ import annotations

import _compat_pickle
import io
import math
import pickle
import sys
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from anon_ray.models.registry import ModelError

# Storage classes as torch pickles them (the legacy typed names, kept by torch 2.x for compatibility).
STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class Opaque:
    """An object of a class that is never imported: its class name, constructor args and state.

    The unpickler hands out one subclass per pickled class (NEWOBJ insists on a real type), named
    like it; none of them has behaviour beyond keeping what the pickle gave it.
    """

    __slots__ = ("args", "state")

    def __new__(cls, *args: Any) -> Opaque:
        obj = super().__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __init__(self, *args: Any) -> None:
        """REDUCE calls the class: __new__ has already kept the arguments."""

    def __setstate__(self, state: Any) -> None:
        self.state = state


@dataclass(frozen=True)
class Layer:
    """One torch module of a checkpoint, as plain data."""

    kind: str  # class name, e.g. "Conv2d" or "C2f"
    path: str  # dotted position in the checkpoint, for error messages
    attrs: Mapping[str, Any] = field(default_factory=dict)  # plain attributes: stride, padding, nc, ...
    tensors: Mapping[str, np.ndarray] = field(default_factory=dict)  # parameters and buffers
    children: Mapping[str, Layer] = field(default_factory=dict)


def rebuild_tensor(storage: np.ndarray, offset: int, size: tuple, stride: tuple, *_: Any) -> np.ndarray:
    """torch._utils._rebuild_tensor_v2 on a numpy storage, bounds-checked (the pickle chooses the numbers)."""
    if not (isinstance(storage, np.ndarray) and all(isinstance(v, int) and v >= 0 for v in (offset, *size, *stride))
            and len(size) == len(stride)):
        raise ModelError(f"checkpoint has a malformed tensor: offset {offset!r}, size {size!r}, stride {stride!r}")
    count = math.prod(size)
    last = offset + sum((n - 1) * step for n, step in zip(size, stride))
    # Model weights never broadcast (stride 0), so a tensor holds no more values than its storage:
    # this also bounds the memory a tampered file can make us allocate.
    if count and (last >= len(storage) or count > len(storage)):
        raise ModelError(f"checkpoint tensor of size {tuple(size)} reaches past its storage of {len(storage)} values")
    index = np.asarray(offset)
    for n, step in zip(size, stride):
        index = index[..., None] + np.arange(n) * step
    return storage[index]


def rebuild_parameter(data: np.ndarray, *_: Any) -> np.ndarray:
    """torch._utils._rebuild_parameter(_with_state): a parameter is its tensor here."""
    return data


class RestrictedUnpickler(pickle.Unpickler):
    # Looked up under Python 3 names: torch pickles with protocol 2, which writes __builtin__ for builtins.
    ALLOWED: ClassVar[dict[tuple[str, str], Any]] = {
        ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): rebuild_parameter,
        ("collections", "OrderedDict"): dict,
        ("collections", "defaultdict"): lambda *_: {},  # the factory is dropped: it would be a callable
        ("builtins", "dict"): dict,
        ("builtins", "set"): set,
        ("typing", "Any"): "typing.Any",  # a type annotation in omegaconf configs: kept as a name
    } | {("torch", name): np.dtype(dtype) for name, dtype in STORAGE_DTYPES.items()}

    def __init__(self, archive: zipfile.ZipFile, root: str, byteorder: str) -> None:
        super().__init__(io.BytesIO(archive.read(f"{root}/data.pkl")))
        self.archive, self.root, self.byteorder = archive, root, byteorder
        self.storages: dict[str, np.ndarray] = {}
        self.opaque: dict[tuple[str, str], type[Opaque]] = {}

    def find_class(self, module: str, name: str) -> Any:
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[(module, name)]
        if module.partition(".")[0] in sys.stdlib_module_names:
            raise ModelError(f"checkpoint refers to {module}.{name}, which could run code: refusing to load it (a "
                             "checkpoint may name tensor rebuilders, containers and model classes, nothing else "
                             "from the standard library)")
        return self.opaque_class(module, name)

    def opaque_class(self, module: str, name: str) -> type[Opaque]:
        if (module, name) not in self.opaque:
            self.opaque[(module, name)] = type(name, (Opaque,), {"__slots__": ()})
        return self.opaque[(module, name)]

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], np.dtype)
                and isinstance(pid[2], str)):
            raise ModelError(f"checkpoint has an unsupported storage reference {pid!r}")
        _, dtype, key, _location, _numel = pid
        if key not in self.storages:
            try:
                raw = self.archive.read(f"{self.root}/data/{key}")
                self.storages[key] = np.frombuffer(raw, dtype.newbyteorder(self.byteorder)).astype(dtype)
            except (KeyError, ValueError) as e:
                raise ModelError(f"checkpoint storage {key!r}: {e}") from e
        return self.storages[key]


def read_checkpoint(data: bytes) -> Any:
    """The unpickled checkpoint (for Ultralytics a dict with 'model', 'ema', 'train_args', ...)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    except zipfile.BadZipFile as e:
        raise ModelError(f"not a PyTorch zip checkpoint: {e}") from e
    if len(pickles) != 1:
        raise ModelError(f"a PyTorch checkpoint has one <name>/data.pkl; this one has {pickles}")
    root = pickles[0].split("/")[0]
    byteorder = "<"
    if f"{root}/byteorder" in archive.namelist():  # absent in older files, which are little-endian
        byteorder = {b"little": "<", b"big": ">"}.get(archive.read(f"{root}/byteorder").strip(), "?")
        if byteorder == "?":
            raise ModelError("checkpoint declares an unknown byte order")
    try:
        return RestrictedUnpickler(archive, root, byteorder).load()
    except (pickle.UnpicklingError, EOFError, TypeError, AttributeError, IndexError, KeyError, ValueError) as e:
        raise ModelError(f"cannot read checkpoint: {type(e).__name__}: {e}") from e


def module_tree(obj: Any, path: str) -> Layer:
    """A pickled torch module (an Opaque holding the module's __dict__) as a Layer tree."""
    if not isinstance(obj, Opaque):
        raise ModelError(f"{path}: expected a torch module, found {type(obj).__name__}")
    state = obj.state
    if not isinstance(state, dict):
        raise ModelError(f"{path}: {type(obj).__name__} has no module state")
    tensors = {k: v for group in ("_parameters", "_buffers") for k, v in (state.get(group) or {}).items()
               if v is not None}
    children = {k: module_tree(v, f"{path}.{k}") for k, v in (state.get("_modules") or {}).items() if v is not None}
    attrs = {k: v for k, v in state.items() if not k.startswith("_") and k != "training"}
    return Layer(type(obj).__name__, path, attrs, tensors, children)

