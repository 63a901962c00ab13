"""The save mark's rules (dcp/_save_mark.py) on metadata built by hand: what a crafted or
inconsistent ``.metadata`` gets, and how a file's bytes split into records and mark."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import MetadataIndex

from s3torch.dcp import CheckpointCorruptError, _save_mark

SID = "0b9f3c52-6a55-4d0e-9f52-1f1a2b3c4d5e"


def info(path: str, offset: int, length: int, sid: object = None) -> _StorageInfo:
    i = _StorageInfo(path, offset, length)
    if sid is not None:
        setattr(i, _save_mark.ATTR, sid)
    return i


def test_expected_marks_start_where_each_files_last_record_ends() -> None:
    sd = {
        MetadataIndex("a"): info("__0_0.distcp", 0, 100, SID),
        MetadataIndex("b"): info("__0_0.distcp", 100, 50, SID),
        MetadataIndex("c"): info("__1_0.distcp", 0, 7, "other"),
        MetadataIndex("d"): info("__2_0.distcp", 0, 9),  # another writer's file: no mark expected
    }
    assert _save_mark.expected(sd) == {
        "__0_0.distcp": (150, _save_mark.mark(SID)),
        "__1_0.distcp": (7, _save_mark.mark("other")),
    }


@pytest.mark.parametrize("bad", ["", "x" * 65, "caf\u00e9", "a\nb", 7, b"bytes"])
def test_an_id_no_writer_writes_is_corrupt_metadata(bad: object) -> None:
    sd = {MetadataIndex("a"): info("__0_0.distcp", 0, 10, bad)}
    with pytest.raises(CheckpointCorruptError, match="names no valid save id") as ei:
        _save_mark.expected(sd, "s3://b/ck/")
    assert str(ei.value).startswith("s3://b/ck/__0_0.distcp: ") and ei.value.file == "__0_0.distcp"  # type: ignore[attr-defined]


def test_items_of_one_file_naming_two_saves_are_corrupt_metadata() -> None:
    sd = {
        MetadataIndex("a"): info("__0_0.distcp", 0, 10, SID),
        MetadataIndex("b"): info("__0_0.distcp", 10, 10, "other"),
    }
    with pytest.raises(CheckpointCorruptError, match="two saves wrote this file"):
        _save_mark.expected(sd)
    sd[MetadataIndex("b")] = info("__0_0.distcp", 10, 10)  # one item marked, one not
    with pytest.raises(CheckpointCorruptError, match="two saves wrote this file"):
        _save_mark.expected(sd)


def test_check_tells_another_save_from_a_missing_mark() -> None:
    want = _save_mark.mark(SID)
    _save_mark.check("f", want, want)
    with pytest.raises(CheckpointCorruptError, match=r"^f: written by another save \('other'\)"):
        _save_mark.check("f", want, _save_mark.mark("other"))
    for got in (b"", b"\x00", b"PK\x05\x06 end of a zip"):
        with pytest.raises(CheckpointCorruptError, match="^f: its save mark is missing"):
            _save_mark.check("f", want, got)


def test_split_a_files_bytes() -> None:
    records = b"PK\x03\x04" + bytes(range(256)) * 3
    assert _save_mark.split(records + _save_mark.mark(SID)) == (records, SID)
    assert _save_mark.split(records) == (records, None)
    assert _save_mark.split(b"") == (b"", None)


def test_a_writer_without_a_save_id_gets_a_fresh_one() -> None:
    class Writer:
        save_id = None

    a, b = _save_mark.new_id(Writer()), _save_mark.new_id(Writer())
    assert a != b and len(a) == 36
    Writer.save_id = SID  # type: ignore[assignment]
    assert _save_mark.new_id(Writer()) == SID


# Hostile input: a crafted .metadata chooses the ids, a crafted file the bytes after its records.
_ids = st.one_of(st.none(), st.text(max_size=80), st.binary(max_size=80), st.integers(), st.floats())


@settings(max_examples=200, deadline=None)
@given(sids=st.lists(_ids, min_size=1, max_size=4), ends=st.lists(st.integers(0, 1 << 40), min_size=1, max_size=4))
def test_expected_takes_any_metadata_values_without_surprise(sids: list, ends: list) -> None:
    sd = {
        MetadataIndex(f"t{i}"): info(f"__{i % 2}_0.distcp", end, 1, sid) for i, (sid, end) in enumerate(zip(sids, ends))
    }
    try:
        marks = _save_mark.expected(sd)
    except CheckpointCorruptError:
        return
    for path, (start, mark) in marks.items():
        assert start == max(i.offset + i.length for i in sd.values() if i.relative_path == path)
        assert _save_mark.split(b"records" + mark)[1] == mark[len(_save_mark.MAGIC) :].decode()


@settings(max_examples=300, deadline=None)
@given(got=st.one_of(st.binary(max_size=120), st.binary(max_size=70).map(lambda b: _save_mark.MAGIC + b)))
def test_check_and_split_take_any_file_bytes(got: bytes) -> None:
    want = _save_mark.mark(SID)
    try:
        _save_mark.check("f", want, got)
        assert got == want
    except CheckpointCorruptError as e:
        assert got != want and str(e).startswith("f: ")
    records, sid = _save_mark.split(b"PK" + got)
    assert (sid is None and records == b"PK" + got) or (b"PK" + got).startswith(records)
