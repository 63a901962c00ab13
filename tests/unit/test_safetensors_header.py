"""s3torch.safetensors without a server: the header parser against every lie a header can
tell, and the writer's bytes against the safetensors package's (the oracle, when installed)."""

from __future__ import annotations

import json
import struct
from typing import Any, Dict

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s3torch import S3Exception
from s3torch.safetensors import (
    HeaderError,
    SafetensorsError,
    TruncatedFileError,
    UnsupportedDtypeError,
    load,
    save,
)
from s3torch.safetensors._dtypes import DTYPES
from s3torch.safetensors._header import MAX_HEADER, header_length, parse_header

WHERE = "s3://b/model.safetensors"

# Every dtype torch and the safetensors format share (F4 has its own test).
TORCH_DTYPES = [d.torch for d in DTYPES.values() if d.torch is not None and d.name != "F4"]


def _file(header: Any, data: bytes = b"", raw: bytes = b"") -> bytes:
    text = raw or json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def _parse(blob: bytes):  # type: ignore[no-untyped-def]
    n = header_length(blob[:8], WHERE, len(blob))
    return parse_header(blob[8 : 8 + n], WHERE, len(blob))


def _t(dtype: str = "F32", shape: Any = (2,), offsets: Any = (0, 8)) -> Dict[str, Any]:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


def _sample(dtype: torch.dtype, shape: tuple, seed: int = 0) -> torch.Tensor:
    """Random bytes of ``dtype`` (every bit pattern, NaNs included: compared as bytes)."""
    n = int(torch.Size(shape).numel()) * dtype.itemsize
    raw = torch.randint(0, 256, (n,), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    if dtype == torch.bool:
        raw = raw % 2
    return raw.view(dtype).reshape(shape) if n else torch.empty(shape, dtype=dtype)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and a.reshape(-1).view(torch.uint8).equal(b.reshape(-1).view(torch.uint8))
    )


# --- good files --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", TORCH_DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (5,), (2, 3, 4)], ids=str)
def test_every_dtype_round_trips_in_memory(dtype: torch.dtype, shape: tuple) -> None:
    d = {"t": _sample(dtype, shape), "pad": _sample(torch.uint8, (3,), 1)}
    back = load(save(d, {"k": "v"}))
    assert list(back) == ["t", "pad"] or list(back) == ["pad", "t"]
    assert all(_same(back[k], d[k]) for k in d)


def test_f4_packs_two_elements_a_byte() -> None:
    t = torch.randint(0, 256, (2, 3), dtype=torch.uint8).view(torch.float4_e2m1fn_x2)
    blob = save({"q": t})
    h = _parse(blob).tensors["q"]
    assert (h.dtype.name, h.shape) == ("F4", (2, 6))
    assert _same(load(blob)["q"], t)


def test_a_dtype_torch_lacks_is_a_clear_error_at_load() -> None:
    blob = _file({"a": _t("F6_E2M3", (4,), (0, 3))}, b"\0" * 3)
    assert _parse(blob).tensors["a"].dtype.name == "F6_E2M3"  # the header is valid
    with pytest.raises(UnsupportedDtypeError, match=r"<bytes> tensor 'a'.*F6_E2M3.*no torch dtype"):
        load(blob)


# --- interchange with the safetensors package ------------------------------------------------


@pytest.mark.parametrize("dtype", TORCH_DTYPES, ids=str)
def test_bytes_match_the_safetensors_package(dtype: torch.dtype) -> None:
    import safetensors.torch as sts

    d = {
        "b": _sample(dtype, (3, 2)),
        "a": _sample(torch.float32, (4,)),
        "s": _sample(dtype, ()),
        "e": _sample(dtype, (0,)),
    }
    for meta in (None, {"format": "pt"}):
        ours = save(d, meta)
        assert ours == sts.save(d, meta)
        if dtype != torch.float8_e8m0fnu:  # the package writes F8_E8M0 but cannot load it (0.8.0)
            theirs = sts.load(ours)
            assert all(_same(theirs[k], d[k]) for k in d)


_names = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=12).filter(
    lambda s: s != "__metadata__"
)
_dtypes = st.sampled_from([torch.float32, torch.bfloat16, torch.uint8, torch.bool, torch.int64, torch.float8_e5m2])
_shapes = st.lists(st.integers(0, 4), max_size=3).map(tuple)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(_names, st.tuples(_dtypes, _shapes), max_size=6),
    st.one_of(st.none(), st.dictionaries(_names, st.text(max_size=8), max_size=1)),
)
def test_any_dict_matches_the_package_byte_for_byte(spec: Dict[str, Any], meta: Any) -> None:
    """Names with quotes, backslashes, control characters and any Unicode; any shapes; one
    metadata key at most (with more, the package's order of them is its hash map's)."""
    import safetensors.torch as sts

    d = {name: _sample(dt, shape, i) for i, (name, (dt, shape)) in enumerate(spec.items())}
    if not d and meta is not None:
        meta = None  # the package writes invalid JSON for no tensors with metadata
    ours = save(d, meta)
    assert ours == sts.save(d, meta)
    back = load(ours)
    assert set(back) == set(d) and all(_same(back[k], d[k]) for k in d)


def test_files_of_the_package_load_here() -> None:
    import safetensors.torch as sts

    d = {f"layer.{i}.w": _sample(dt, (i + 1, 3), i) for i, dt in enumerate(TORCH_DTYPES)}
    del d[f"layer.{TORCH_DTYPES.index(torch.float8_e8m0fnu)}.w"]  # written but not loadable by the package
    back = load(sts.save(d, {"a": "1", "b": "2", "c": "3"}))
    assert all(_same(back[k], d[k]) for k in d)


# --- headers that lie ----------------------------------------------------------------------

BAD = {
    "not JSON": (_file(None, raw=b"{not json}   "), HeaderError, "not valid JSON"),
    "not UTF-8": (_file(None, raw=b'{"\xff": 1}'), HeaderError, "not valid JSON"),
    "a JSON list": (_file(None, raw=b"[]"), HeaderError, "not an object"),
    "JSON nested too deep": (_file(None, raw=b"[" * 100_000), HeaderError, "not valid JSON"),  # RecursionError
    "a repeated key": (
        _file(None, b"\0" * 8, raw=b'{"a":' + json.dumps(_t()).encode() + b',"a":' + json.dumps(_t()).encode() + b"}"),
        HeaderError,
        "'a' appears twice",
    ),
    "an unknown dtype": (_file({"w": _t("F12")}, b"\0" * 8), HeaderError, "tensor 'w': unknown dtype 'F12'"),
    "a dtype that is not a str": (_file({"w": _t(7)}, b"\0" * 8), HeaderError, "tensor 'w': unknown dtype 7"),
    "a negative dim": (_file({"w": _t(shape=(-2,))}, b"\0" * 8), HeaderError, "tensor 'w': shape"),
    "a float dim": (_file({"w": _t(shape=(2.0,))}, b"\0" * 8), HeaderError, "tensor 'w': shape"),
    "a bool dim": (_file({"w": _t(shape=(True,))}, b"\0" * 8), HeaderError, "tensor 'w': shape"),
    "three offsets": (_file({"w": _t(offsets=(0, 4, 8))}, b"\0" * 8), HeaderError, "tensor 'w': data_offsets"),
    "end before begin": (_file({"w": _t(offsets=(8, 0))}, b"\0" * 8), HeaderError, "tensor 'w': data_offsets"),
    "a length not the shape's": (
        _file({"w": _t(shape=(3,))}, b"\0" * 8),
        HeaderError,
        r"tensor 'w': 8 bytes .* \(12 bytes\)",
    ),
    "a huge shape": (_file({"w": _t(shape=(1 << 40, 1 << 40))}, b"\0" * 8), HeaderError, "tensor 'w'"),
    "an entry that is not an object": (_file({"w": [1, 2]}), HeaderError, "tensor 'w': its entry is list"),
    "offsets past the end": (
        _file({"w": _t(offsets=(0, 8))}, b"\0" * 4),
        TruncatedFileError,
        "tensor 'w'.*past the end",
    ),
    "overlapping tensors": (
        _file({"a": _t(offsets=(0, 8)), "b": _t(offsets=(4, 12))}, b"\0" * 12),
        HeaderError,
        "tensor 'b'.*overlap",
    ),
    "the same bytes twice": (
        _file({"a": _t(offsets=(0, 8)), "b": _t(offsets=(0, 8))}, b"\0" * 8),
        HeaderError,
        "overlap",
    ),
    "a hole": (_file({"w": _t(offsets=(8, 16))}, b"\0" * 16), HeaderError, "tensor 'w': a hole of 8 bytes"),
    "trailing bytes": (_file({"w": _t()}, b"\0" * 9), HeaderError, "1 bytes after the last tensor"),
    "metadata not a map": (_file({"__metadata__": ["a"]}), HeaderError, "__metadata__ must map str to str"),
    "metadata values not str": (_file({"__metadata__": {"a": 1}}), HeaderError, "__metadata__ must map str to str"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_lying_header_is_a_typed_error_naming_object_and_tensor(case: str) -> None:
    blob, error, match = BAD[case]
    with pytest.raises(error, match=match) as info:
        _parse(blob)
    assert isinstance(info.value, SafetensorsError) and isinstance(info.value, ValueError)
    assert isinstance(info.value, S3Exception) and WHERE in str(info.value)


def test_header_length_is_bounded_before_it_is_read() -> None:
    with pytest.raises(HeaderError, match="exceeds the 100000000-byte bound"):
        header_length(struct.pack("<Q", MAX_HEADER + 1), WHERE, 1 << 40)
    with pytest.raises(TruncatedFileError, match="runs past the end of the 100-byte object"):
        header_length(struct.pack("<Q", 93), WHERE, 100)
    with pytest.raises(TruncatedFileError, match="too short"):
        header_length(b"\0" * 5, WHERE, 5)


@pytest.mark.parametrize("case", ["offsets past the end", "a length not the shape's", "an unknown dtype"])
def test_load_allocates_nothing_for_a_bad_header(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(torch, "empty", lambda *a, **k: calls.append(a))
    with pytest.raises(SafetensorsError):
        load(BAD[case][0])
    assert calls == []


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_mutated_headers_only_ever_raise_typed_errors(data: st.DataObject) -> None:
    """Flip, drop or insert bytes of a valid file's header: the parser accepts (and then
    every tensor lies inside the data) or raises a SafetensorsError, nothing else. Where the
    package is installed, it agrees whenever the header still parses here."""
    d = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(4, dtype=torch.int16)}
    blob = bytearray(save(d, {"k": "v"}))
    n = struct.unpack("<Q", blob[:8])[0]
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(8, 8 + n - 1))
        op = data.draw(st.sampled_from(["flip", "digit"]))
        blob[i] = data.draw(st.integers(0, 255)) if op == "flip" else ord(data.draw(st.sampled_from("0123456789")))
    try:
        h = _parse(bytes(blob))
    except SafetensorsError:
        return
    size = len(blob) - h.data_start
    assert all(0 <= t.begin <= t.end <= size for t in h.tensors.values())
    try:
        from safetensors import deserialize
    except ImportError:
        return
    deserialize(bytes(blob))  # the package accepts it too
