"""The allow-list unpickler of DCP ``.metadata`` (s3torch.dcp._safe_unpickle) and the tensor
record parsers' refusal of anything else: real metadata of every shape torch writes loads;
a pickle that names any other global raises CheckpointUnsafeError before it runs; hostile
bytes (hypothesis) raise a typed error and nothing else."""

from __future__ import annotations

import io
import os
import pathlib
import pickle
import pickletools
import struct
import warnings
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from torch.distributed.checkpoint import FileSystemWriter
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import Metadata, MetadataIndex, TensorProperties

from s3torch.dcp import CheckpointCorruptError, CheckpointUnsafeError
from s3torch.dcp._record import HEAD_BYTES, TAIL_BYTES, _MetaUnpickler, locate
from s3torch.dcp._safe_unpickle import ALLOWED, check_bytes_item, load_metadata, safe_loads


class RunsShell:
    """Unpickling this runs ``touch <marker>`` through os.system."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (os.system, (f"touch {self.marker}",))


class RunsExec:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def crafted(marker: pathlib.Path, how: str = "system") -> bytes:
    """A Metadata-looking pickle whose storage_data would run code."""
    evil = RunsShell(str(marker)) if how == "system" else RunsExec(str(marker))
    return pickle.dumps(Metadata(state_dict_metadata={}, storage_data=evil))


def save_metadata(tmp_path: pathlib.Path, sd: dict, checkpoint_id: Any = None) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed is disabled ... single process"
        dcp.save(sd, storage_writer=FileSystemWriter(str(tmp_path)), checkpoint_id=checkpoint_id)
    return (tmp_path / ".metadata").read_bytes()


def test_real_metadata_loads_like_pickle(tmp_path: pathlib.Path) -> None:
    sd = {
        **{f"t_{d}": torch.ones(3, dtype=d) for d in (torch.float32, torch.bfloat16, torch.int8, torch.bool)},
        "cplx": torch.ones(2, dtype=torch.complex64),
        "scalar": torch.tensor(1.5),
        "nested": {"a": torch.zeros(2, 2), "b": [torch.ones(1), 3]},
        "extra": {"step": 11, "name": "run", "set": {1, 2}},
    }
    data = save_metadata(tmp_path, sd, checkpoint_id=tmp_path)  # a Path checkpoint_id is pickled too
    ours, theirs = safe_loads(data, "x"), pickle.loads(data)
    assert ours == theirs
    assert isinstance(ours.storage_meta.checkpoint_id, pathlib.PurePath)
    for info in ours.storage_data.values():
        assert isinstance(info, _StorageInfo)


@pytest.mark.parametrize("protocol", range(0, pickle.HIGHEST_PROTOCOL + 1))
def test_every_pickle_protocol(tmp_path: pathlib.Path, protocol: int) -> None:
    md = pickle.loads(save_metadata(tmp_path, {"w": torch.ones(4), "n": 1}))
    md.storage_meta = None
    md.state_dict_metadata["w"].properties = TensorProperties(dtype=torch.float16, layout=torch.sparse_coo)
    assert safe_loads(pickle.dumps(md, protocol=protocol), "x") == md


def test_allow_list_comes_from_torch() -> None:
    import torch.distributed.checkpoint.metadata as m

    names = {n for (mod, n) in ALLOWED if mod == m.__name__}
    assert {
        "Metadata",
        "MetadataIndex",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
    } <= names
    assert {"TensorProperties", "StorageMeta", "_MEM_FORMAT_ENCODING"} <= names
    assert ALLOWED[("torch", "float32")] is torch.float32 and ALLOWED[("torch", "Size")] is torch.Size
    assert ALLOWED[("torch", "channels_last")] is torch.channels_last
    # Nothing that runs code or reaches the system.
    for mod, _ in ALLOWED:
        assert mod.split(".")[0] not in ("os", "posix", "subprocess", "sys", "importlib", "runpy", "shutil")
    for bad in ("eval", "exec", "getattr", "__import__", "open", "compile", "bytearray"):
        assert ("builtins", bad) not in ALLOWED


@pytest.mark.parametrize("how", ["system", "exec"])
def test_crafted_metadata_is_refused_before_it_runs(tmp_path: pathlib.Path, how: str) -> None:
    marker = tmp_path / "marker"
    with pytest.raises(CheckpointUnsafeError) as info:
        load_metadata(crafted(marker, how), "s3://b/ckpt/.metadata")
    want = f"{os.system.__module__}.system" if how == "system" else "builtins.exec"
    assert info.value.refused == want
    assert want in str(info.value) and "s3://b/ckpt/.metadata" in str(info.value)
    assert "trust_checkpoint=True" in str(info.value) and "--trust-checkpoint" in str(info.value)
    assert isinstance(info.value, pickle.UnpicklingError)
    assert not marker.exists()
    # The opt-out is plain pickle: it does run it (that is what trusting means).
    load_metadata(crafted(marker, how), "x", trust_checkpoint=True)
    assert marker.exists()


def test_setting_attributes_on_an_allowed_class_is_undone_and_refused() -> None:
    # BUILD with slot state on the class object itself: Metadata.__reduce__ = torch.Size.
    data = (
        b"\x80\x04"
        + b"\x8c\x25torch.distributed.checkpoint.metadata\x94\x8c\x08Metadata\x94\x93\x94"
        + b"N}\x94\x8c\x0a__reduce__\x94\x8c\x05torch\x94\x8c\x04Size\x94\x93\x94s\x86\x94b."
    )
    pickletools.dis(data, out=io.StringIO())  # well-formed
    with pytest.raises(CheckpointUnsafeError, match="set attributes on an allow-listed class"):
        safe_loads(data, "x")
    assert "__reduce__" not in vars(Metadata)


@pytest.mark.parametrize(
    "data",
    [b"", b"not a pickle", b"\x80\x05", pickle.dumps(3), pickle.dumps({"a": 1}), b"\x80\x04K\x01K\x02\x86\x94."],
)
def test_not_metadata_is_corrupt(data: bytes) -> None:
    with pytest.raises(CheckpointCorruptError):
        load_metadata(data, "x")


def test_constructors_that_refuse_their_arguments_are_corrupt() -> None:
    enc = pickle.dumps(torch.distributed.checkpoint.metadata._MEM_FORMAT_ENCODING.TORCH_CHANNELS_LAST)
    bad = enc.replace(b"K\x01", b"K\x07")  # _MEM_FORMAT_ENCODING(7)
    assert bad != enc
    with pytest.raises(CheckpointCorruptError):
        safe_loads(bad, "x")


# --- hostile bytes: typed errors only ---------------------------------------------------------


_metadata_bytes = pickle.dumps(
    Metadata(
        state_dict_metadata={},
        storage_data={MetadataIndex("w"): _StorageInfo("__0_0.distcp", 0, 10)},
        planner_data={"w": ("w",)},
    )
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_fuzz_random_bytes(data: bytes) -> None:
    try:
        load_metadata(data, "x")
    except (CheckpointUnsafeError, CheckpointCorruptError):
        pass


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(_metadata_bytes) - 1), st.integers(0, 255)), max_size=8))
def test_fuzz_mutated_metadata(edits: list) -> None:
    data = bytearray(_metadata_bytes)
    for pos, val in edits:
        data[pos] = val
    try:
        load_metadata(bytes(data), "x")
    except (CheckpointUnsafeError, CheckpointCorruptError):
        pass


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=30), st.text(min_size=1, max_size=30))
def test_fuzz_any_global_outside_the_list_is_refused(module: str, name: str) -> None:
    if (module, name) in ALLOWED or "\n" in module + name:
        return
    data = b"\x80\x02c" + module.encode("utf-8", "replace") + b"\n" + name.encode("utf-8", "replace") + b"\n)R."
    with pytest.raises((CheckpointUnsafeError, CheckpointCorruptError)):
        safe_loads(data, "x")


# --- tensor records and byte items: nothing but torch's weights-only unpickler ----------------


def _record(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_record_locator_never_unpickles_a_foreign_global(tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "marker"
    rec = _record(RunsShell(str(marker)))
    assert locate(rec[:HEAD_BYTES], rec[-TAIL_BYTES:], len(rec)) is None
    with pytest.raises(pickle.UnpicklingError):
        _MetaUnpickler(io.BytesIO(pickle.dumps(RunsShell(str(marker))))).load()
    # ... and the fallback is weights_only (the parallel loader's and torch's own).
    with pytest.raises(pickle.UnpicklingError):
        torch.load(io.BytesIO(rec), weights_only=True)
    assert not marker.exists()
    # A plain tensor is located.
    rec = _record(torch.arange(10))
    assert locate(rec[:HEAD_BYTES], rec[-TAIL_BYTES:], len(rec)) is not None


@pytest.mark.parametrize(
    "old, new, why",
    [
        (b"K\x02K\n\x85", b"K\x03K\n\x85", "offset 3 + 10 elements: 1 past the storage's 12"),
        (b"K\x02K\n\x85", b"K\x02K\x0b\x85", "11 elements from offset 2"),
        (b"K\x01\x85", b"K\x02\x85", "stride 2"),
    ],
)
def test_a_tensor_outside_its_storage_is_not_located(old: bytes, new: bytes, why: str) -> None:
    """A record whose data.pkl places the tensor past the end of its storage (a checkpoint
    someone else wrote; the .metadata stays consistent). Before, ``locate`` took it, and the
    load read the bytes after the storage (the zip's own records) into the tensor, with no
    CRC check (the read is not of the whole storage) and no error; torch.load refuses it."""
    rec = _record(torch.arange(12, dtype=torch.int64)[2:])  # storage of 12, offset 2, size 10
    assert locate(rec[:HEAD_BYTES], rec[-TAIL_BYTES:], len(rec)) is not None
    assert rec.count(old) == 1
    bad = rec.replace(old, new)
    assert locate(bad[:HEAD_BYTES], bad[-TAIL_BYTES:], len(bad)) is None, why
    with pytest.raises(RuntimeError, match="storage"):  # torch's refusal, which the fallback gives
        torch.load(io.BytesIO(bad), weights_only=True)


def test_zip64_fields_cut_short_are_not_located() -> None:
    """Central directories whose ZIP64 parts promise more than they hold: before, ``locate``
    raised struct.error or StopIteration (a traceback from ``s3torch verify``)."""
    full = struct.pack("<HHHHIIH", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    cut_locator = b"PK\x06\x07" + b"\0" * 4 + b"PK\x05\x06" + full  # its 8-byte offset cut off
    assert locate(b"", cut_locator, len(cut_locator)) is None
    # an entry whose sizes say "in the ZIP64 extra field", which holds one value of the two
    entry = struct.pack("<HxxxxIIIHHH", 0, 0, 0xFFFFFFFF, 0xFFFFFFFF, 1, 12, 0)
    extra = struct.pack("<HHQ", 1, 8, 5)
    cd = b"PK\x01\x02" + b"\0" * 6 + entry + b"\0" * 8 + struct.pack("<I", 0) + b"a" + extra
    tail = cd + b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 1, 1, len(cd), 0, 0)
    assert locate(b"", tail, len(tail)) is None


def test_byte_items_are_checked_with_the_weights_only_unpickler(tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "marker"
    with pytest.raises(CheckpointUnsafeError) as info:
        check_bytes_item(_record({"x": RunsShell(str(marker))}), "s3://b/c item 'extra'")
    assert "system" in info.value.refused and "trust_checkpoint" in str(info.value)
    assert not marker.exists()
    check_bytes_item(_record({"step": 3, "name": "x", "lr": [0.1, 0.2]}), "x")
    with pytest.raises(CheckpointCorruptError):
        check_bytes_item(b"garbage", "x")


def _zip_tail(n_entries: int, cd_size: int, cd_offset: int) -> bytes:
    return b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, n_entries, n_entries, cd_size, cd_offset, 0)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600), st.binary(max_size=600), st.integers(0, 2**40))
def test_fuzz_record_locator(head: bytes, tail: bytes, record_len: int) -> None:
    # Any bytes: a layout or None (the caller falls back to torch.load), never an exception.
    got = locate(head, tail, max(record_len, len(head), len(tail)))
    assert got is None or got.data_len >= 0


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 0xFFFF), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.binary(max_size=200))
def test_fuzz_record_locator_central_directory(n: int, size: int, offset: int, junk: bytes) -> None:
    tail = junk + _zip_tail(n, size, offset)
    locate(b"", tail, len(tail))  # no exception, whatever the counts and offsets say


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6))
@example(edits=[(161, 148)])  # data.pkl calling the rebuild on a tuple: was an AttributeError
def test_fuzz_mutated_tensor_record(edits: list) -> None:
    rec = bytearray(_record(torch.arange(3000, dtype=torch.int32)))
    for pos, val in edits:
        rec[pos % len(rec)] = val
    got = locate(bytes(rec[:HEAD_BYTES]), bytes(rec[-TAIL_BYTES:]), len(rec))
    if got is not None:
        assert 0 <= got.data_offset and got.data_offset + got.data_len <= len(rec)


def test_msc_checkpoint_id_is_read_as_text_without_resolving_a_profile() -> None:
    from s3torch.dcp._safe_unpickle import ForeignCheckpointId

    # What multi-storage-client's writer pickles as storage_meta.checkpoint_id: a
    # MultiStoragePath, whose own __setstate__ would resolve the MSC profile it names.
    data = (
        b"\x80\x04\x8c\x1amultistorageclient.pathlib\x94\x8c\x10MultiStoragePath\x94\x93\x94)\x81\x94"
        b"}\x94(\x8c\x05_path\x94\x8c\x09msc://p/x\x94\x8c\x0e_internal_path\x94Nub."
    )
    got = safe_loads(data, "x")
    assert isinstance(got, ForeignCheckpointId) and str(got) == "msc://p/x" and os.fspath(got) == "msc://p/x"


@pytest.mark.parametrize(
    "storage_data",
    [
        {"w": _StorageInfo("f", 0, 1)},  # a str where a MetadataIndex belongs
        {MetadataIndex("w"): 5},
        {MetadataIndex("w"): _StorageInfo("f", -1, 1)},
        {MetadataIndex("w"): _StorageInfo("f", 0, True)},
        {MetadataIndex("w"): _StorageInfo(7, 0, 1)},  # type: ignore[arg-type]
        None,
    ],
)
def test_allow_listed_objects_in_the_wrong_places_are_corrupt(storage_data: Any) -> None:
    data = pickle.dumps(Metadata(state_dict_metadata={}, storage_data=storage_data))
    with pytest.raises(CheckpointCorruptError, match="torch's file format"):
        load_metadata(data, "x")
    load_metadata(data, "x", trust_checkpoint=True)  # trusted: as it is
