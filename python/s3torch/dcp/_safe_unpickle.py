"""The one place s3torch unpickles a DCP checkpoint's ``.metadata``: an allow-list of exactly
the classes torch's DCP metadata is made of, so that no code runs from a checkpoint's bytes.

torch's ``FileSystemReader.read_metadata`` is a plain ``pickle.load``: a crafted ``.metadata``
whose pickle names ``os.system`` or ``builtins.exec`` runs it. Here ``find_class`` only
hands out the dataclasses and enums of ``torch.distributed.checkpoint.metadata`` (read from
that module, so a newer torch's additions come with it), ``_StorageInfo``, ``torch.Size``,
the dtype, layout and memory-format values, torch's layout lookup, ``pathlib`` paths (a
``checkpoint_id`` saved as a ``Path``; multi-storage-client's ``MultiStoragePath`` is read as
text by a stand-in, :class:`ForeignCheckpointId`) and a few builtin containers. Any other global raises
:class:`CheckpointUnsafeError` before anything it names is called.

What an allow-listed pickle can still do is call those classes with arguments of its choosing
(harmless: they build data) and set attributes on what it built. It could also set attributes
on an allow-listed *class* (pickle's BUILD with slot state); the classes' dicts are compared
before and after each load, and a change is undone and refused.

A checkpoint the user trusts (one that holds its own classes in ``planner_data``, say) can be
read with ``trust_checkpoint=True`` on the readers or ``--trust-checkpoint`` on the CLI:
plain ``pickle``, as torch does.
"""

from __future__ import annotations

import copyreg
import enum
import io
import pathlib
import pickle
import threading
from typing import Any, Dict, Tuple

import torch
import torch.distributed.checkpoint.filesystem as _dcp_filesystem
import torch.distributed.checkpoint.metadata as _dcp_metadata
import torch.serialization

from .._crt import S3Exception
from ._errors import CheckpointCorruptError

OPT_OUT = (
    "if you trust this checkpoint and its writer, pass trust_checkpoint=True to the reader "
    "(S3StorageReader, MultiStorageFileSystemReader) or --trust-checkpoint to the s3torch CLI"
)


class CheckpointUnsafeError(S3Exception, pickle.UnpicklingError):
    """A checkpoint's ``.metadata`` names a global outside the allow-list of DCP metadata
    classes (``refused``: ``"module.name"``); nothing it names was called. Also a
    ``pickle.UnpicklingError``. Opt out for a trusted checkpoint with
    ``trust_checkpoint=True`` (readers) or ``--trust-checkpoint`` (CLI)."""

    refused: str = ""
    where: str = ""


def _metadata_classes() -> Dict[Tuple[str, str], Any]:
    """The dataclasses and enums torch's DCP metadata module defines (every version brings its own)."""
    out: Dict[Tuple[str, str], Any] = {}
    for mod in (_dcp_metadata,):
        for name, obj in vars(mod).items():
            if (
                isinstance(obj, type)
                and obj.__module__ == mod.__name__
                and (hasattr(obj, "__dataclass_fields__") or issubclass(obj, enum.Enum))
            ):
                out[(mod.__name__, name)] = obj
    info = getattr(_dcp_filesystem, "_StorageInfo", None)
    if info is not None:
        out[(_dcp_filesystem.__name__, "_StorageInfo")] = info
    return out


def _torch_values() -> Dict[Tuple[str, str], Any]:
    """``torch.<name>`` for every dtype, layout and memory format, and the functions torch's
    own pickles of them name."""
    out: Dict[Tuple[str, str], Any] = {("torch", "Size"): torch.Size}
    for name, obj in vars(torch).items():
        if isinstance(obj, (torch.dtype, torch.layout, torch.memory_format)):
            out[("torch", name)] = obj
    get_layout = getattr(torch.serialization, "_get_layout", None)  # a dict lookup by name
    if get_layout is not None:
        out[("torch.serialization", "_get_layout")] = get_layout
    return out


class ForeignCheckpointId:
    """Stands in for the path object another writer saved as ``storage_meta.checkpoint_id``
    (multi-storage-client's ``MultiStoragePath``, whose ``__setstate__`` resolves an MSC
    profile): keeps the path as text and runs nothing. ``str()`` and ``os.fspath()`` give it."""

    path: str = ""

    def __setstate__(self, state: Any) -> None:
        """Keep the ``_path`` of the saved state as text."""
        path = state.get("_path") if isinstance(state, dict) else None
        self.path = str(path) if isinstance(path, (str, pathlib.PurePath)) else ""

    def __str__(self) -> str:
        return self.path

    def __fspath__(self) -> str:
        return self.path

    def __repr__(self) -> str:
        return f"ForeignCheckpointId({self.path!r})"


def _other_values() -> Dict[Tuple[str, str], Any]:
    out: Dict[Tuple[str, str], Any] = {}
    for name in ("object", "set", "frozenset", "complex", "slice"):  # none allocates by a size argument
        out[("builtins", name)] = getattr(__import__("builtins"), name)
        out[("__builtin__", name)] = out[("builtins", name)]  # protocol 0-2 pickles
    import collections

    out[("collections", "OrderedDict")] = collections.OrderedDict
    out[("multistorageclient.pathlib", "MultiStoragePath")] = ForeignCheckpointId
    for name in ("PurePath", "PurePosixPath", "PureWindowsPath", "Path", "PosixPath", "WindowsPath"):
        cls = getattr(pathlib, name)
        out[("pathlib", name)] = cls
        out[(cls.__module__, name)] = cls  # Python 3.13: pathlib._local
    return out


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """``copyreg._reconstructor`` (pickle protocols 0 and 1) for allow-listed classes only."""
    if not (isinstance(cls, type) and cls in _ALLOWED_TYPES and (base is object or base in _ALLOWED_TYPES)):
        raise TypeError(f"copyreg._reconstructor of {cls!r} over {base!r}")
    return copyreg._reconstructor(cls, base, state)  # type: ignore[attr-defined]


ALLOWED: Dict[Tuple[str, str], Any] = {**_metadata_classes(), **_torch_values(), **_other_values()}
_ALLOWED_TYPES = {obj for obj in ALLOWED.values() if isinstance(obj, type)}
ALLOWED[("copyreg", "_reconstructor")] = ALLOWED[("copy_reg", "_reconstructor")] = _reconstructor
"""``(module, name)`` -> the object: everything a DCP ``.metadata`` pickle may name."""

# The allow-listed classes whose attributes a pickle could set (see the module docstring).
_GUARDED = [obj for obj in ALLOWED.values() if isinstance(obj, type) and obj.__module__ not in ("builtins",)]
_GUARD_LOCK = threading.Lock()


class _AllowListUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, where: str) -> None:
        super().__init__(io.BytesIO(data))
        self._where = where

    def find_class(self, module: str, name: str) -> Any:
        got = ALLOWED.get((module, name))
        if got is None:
            err = CheckpointUnsafeError(
                f"{self._where}: refused to unpickle {module}.{name}: it is not one of the classes a DCP "
                f"checkpoint's metadata is made of, and unpickling it could run code from the checkpoint; "
                f"{OPT_OUT}"
            )
            err.refused, err.where = f"{module}.{name}", self._where
            raise err
        return got

    def persistent_load(self, pid: Any) -> Any:
        raise CheckpointUnsafeError(f"{self._where}: refused a pickle persistent id in DCP metadata; {OPT_OUT}")


def _snapshot() -> Dict[type, Dict[str, Any]]:
    return {cls: dict(vars(cls)) for cls in _GUARDED}


def _restore(before: Dict[type, Dict[str, Any]]) -> bool:
    """Undo any change to the guarded classes' attributes; True if there was one."""
    changed = False
    for cls, attrs in before.items():
        now = vars(cls)
        if len(now) == len(attrs) and all(now.get(k, _MISSING) is v for k, v in attrs.items()):
            continue
        changed = True
        for k in [k for k in now if k not in attrs]:
            delattr(cls, k)
        for k, v in attrs.items():
            if now.get(k, _MISSING) is not v:
                setattr(cls, k, v)
    return changed


_MISSING = object()


def safe_loads(data: bytes, where: str) -> Any:
    """Unpickle ``data`` (the ``.metadata`` at ``where``) through the allow-list.

    Raises CheckpointUnsafeError for a global outside it, CheckpointCorruptError for bytes that
    are not a pickle (or fail to build); never anything else."""
    with _GUARD_LOCK:
        before = _snapshot()
        try:
            obj = _AllowListUnpickler(bytes(data), where).load()
        except CheckpointUnsafeError:
            _restore(before)
            raise
        except RecursionError as e:
            _restore(before)
            raise CheckpointCorruptError(f"{where}: DCP metadata nests too deeply to unpickle") from e
        except Exception as e:  # truncated, not a pickle, a constructor that refused its arguments
            _restore(before)
            raise CheckpointCorruptError(
                f"{where}: is not a readable DCP checkpoint metadata pickle ({type(e).__name__}: {e})"
            ) from e
        if _restore(before):
            raise CheckpointUnsafeError(
                f"{where}: DCP metadata set attributes on an allow-listed class (undone); {OPT_OUT}"
            )
    return obj


def load_metadata(data: bytes, where: str, trust_checkpoint: bool = False) -> Any:
    """A DCP checkpoint's Metadata from its ``.metadata`` bytes: through the allow-list unless
    ``trust_checkpoint``. Anything that is not a ``Metadata`` is a CheckpointCorruptError."""
    if trust_checkpoint:
        try:
            md = pickle.loads(data)
        except Exception as e:
            raise CheckpointCorruptError(f"{where}: is not a readable DCP checkpoint metadata pickle ({e})") from e
    else:
        md = safe_loads(data, where)
    if not hasattr(md, "state_dict_metadata") or not hasattr(md, "storage_data"):
        raise CheckpointCorruptError(f"{where}: is not a DCP checkpoint's metadata (a {type(md).__name__})")
    if not trust_checkpoint:
        try:
            why = _shape_problem(md)
        except Exception as e:  # an attribute missing, or not what its class declares
            why = f"{type(e).__name__}: {e}"
        if why:
            raise CheckpointCorruptError(f"{where}: is not a DCP checkpoint's metadata in torch's file format ({why})")
    return md


def _is_size(v: Any) -> bool:
    return isinstance(v, (tuple, list)) and all(isinstance(i, int) and not isinstance(i, bool) for i in v)


def _shape_problem(md: Any) -> str:
    """What is wrong with the allow-listed objects' arrangement, or "": the shapes torch's
    FileSystemWriter (and every writer built on it) saves, so that readers and the CLI can
    use the metadata without meeting a str where a MetadataIndex belongs."""
    m = _dcp_metadata
    sdm, sd = md.state_dict_metadata, md.storage_data
    if not isinstance(sdm, dict) or not isinstance(sd, dict):
        return "state_dict_metadata and storage_data must be dicts"
    for fqn, item in sdm.items():
        if not isinstance(fqn, str):
            return f"a state dict key is a {type(fqn).__name__}"
        if isinstance(item, m.TensorStorageMetadata):
            if not isinstance(item.properties, m.TensorProperties) or not isinstance(
                item.properties.dtype, torch.dtype
            ):
                return f"{fqn!r}: its tensor properties are not TensorProperties"
            if not _is_size(item.size) or not isinstance(item.chunks, list):
                return f"{fqn!r}: its size or chunks are malformed"
            for c in item.chunks:
                if not isinstance(c, m.ChunkStorageMetadata) or not _is_size(c.offsets) or not _is_size(c.sizes):
                    return f"{fqn!r}: a chunk is malformed"
        elif not isinstance(item, m.BytesStorageMetadata):
            return f"{fqn!r}: a {type(item).__name__}, not tensor or bytes metadata"
    for idx, info in sd.items():
        if not isinstance(idx, m.MetadataIndex) or not isinstance(idx.fqn, str):
            return f"a storage_data key is a {type(idx).__name__}, not a MetadataIndex"
        if idx.offset is not None and not _is_size(idx.offset):
            return f"{idx.fqn!r}: its offset is malformed"
        if not isinstance(info, _dcp_filesystem._StorageInfo) or not isinstance(info.relative_path, str):
            return f"{idx.fqn!r}: its storage info is a {type(info).__name__}, not a _StorageInfo"
        for name in ("offset", "length"):
            v = getattr(info, name, None)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                return f"{idx.fqn!r}: its {name} is {v!r}, not a byte count"
    return ""


def check_bytes_item(data: bytes, where: str) -> None:
    """Refuse a byte item (a non-tensor state-dict value, ``torch.save``d by the writer) that
    torch's weights-only unpickler will not load: torch's ``DefaultLoadPlanner.load_bytes``
    unpickles it with ``weights_only=False``, which would run what it names."""
    try:
        torch.load(io.BytesIO(data), weights_only=True)
    except pickle.UnpicklingError as e:
        # torch raises UnpicklingError for a refused global and for bytes that are not a
        # pickle alike; its message names the global ("... unsupported GLOBAL posix.system ...").
        words = str(e).split()
        if "GLOBAL" not in words or words.index("GLOBAL") + 1 >= len(words):
            raise CheckpointCorruptError(f"{where}: the item's bytes do not load ({_first_line(e)})") from None
        refused = words[words.index("GLOBAL") + 1]
        err = CheckpointUnsafeError(
            f"{where}: refused to unpickle {refused} in a non-tensor item (torch's planner would unpickle it "
            f"with weights_only=False, running what it names); {OPT_OUT}"
        )
        err.refused, err.where = refused, where
        raise err from None
    except Exception as e:
        raise CheckpointCorruptError(f"{where}: the item's bytes do not load ({type(e).__name__}: {e})") from e


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip() and "documentation" not in line]
    return lines[-1] if lines else type(e).__name__


class SafeBytesPlanner:
    """The load planner, with each byte item checked by :func:`check_bytes_item` before the
    planner unpickles it; everything else passes through to the planner."""

    def __init__(self, planner: Any, where: str) -> None:
        self._planner, self._where = planner, where

    def __getattr__(self, name: str) -> Any:
        return getattr(self._planner, name)

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        """Check the bytes, then hand them to the planner."""
        data = value.getvalue()
        check_bytes_item(data, f"{self._where} item {read_item.dest_index.fqn!r}")
        self._planner.load_bytes(read_item, io.BytesIO(data))
