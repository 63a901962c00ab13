"""The safetensors loader without a server: an in-memory fake of the native client, so the
planning (coalesced GETs, which tensors are read, allocation only after validation) and the
CUDA path's use of the staging ring can be checked exactly. The same loads against real
servers are in tests/integration/test_safetensors.py."""

from __future__ import annotations

import base64
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pytest
import torch

from s3torch import _crt
from s3torch.safetensors import (
    ChecksumMismatchError,
    HeaderError,
    MissingShardError,
    TruncatedFileError,
    _load,
    _open,
    save,
)
from s3torch.safetensors._open import safe_open
from tests.unit.test_prefault import PrefaulterRecorder
from tests.unit.test_safetensors_header import _same, _sample


class _Handle:
    etag = '"1"'  # one version of every object

    def __init__(self, n: int, size: int, error: Optional[BaseException] = None) -> None:
        self.n, self.object_size, self.error = n, size, error

    def wait(self) -> int:
        if self.error is not None:
            raise self.error
        return self.n

    def done(self) -> bool:
        return True

    def cancel(self) -> None:
        pass


class _Obj:
    def __init__(self, key: str, size: int, checksum: Tuple[str, str, str] = ("", "", "")) -> None:
        self.key, self.size, self.etag = key, size, '"1"'
        self.checksum_algorithm, self.checksum, self.checksum_type = checksum


class _Page:
    def __init__(self, objects: List[_Obj]) -> None:
        self.objects, self.is_truncated, self.next_continuation_token = objects, False, ""


def _write(buf: Any, data: bytes) -> None:
    if isinstance(buf, torch.Tensor):
        buf.numpy()[: len(data)] = np.frombuffer(data, dtype=np.uint8)
    else:
        memoryview(buf).cast("B")[: len(data)] = data


class FakeNative:
    """GETs copy from in-memory objects at once; every (key, offset, length) is recorded.
    HEADs report a full-object CRC32C of each object (``stored`` overrides it by key);
    ``flip``: an object offset whose byte every GET covering it returns changed."""

    def __init__(self, objects: Dict[str, bytes]) -> None:
        self.objects = objects
        self.gets: List[Tuple[str, int, int]] = []
        self.stored: Dict[str, Tuple[str, str, str]] = {}
        self.parts: Dict[str, List[int]] = {}  # GetObjectAttributes: part sizes by key
        self.flip: Optional[int] = None

    def _missing(self, key: str) -> _crt.S3NotFoundError:
        e = _crt.S3NotFoundError(f"NoSuchKey {key}")
        e.http_status = 404
        return e

    def start_get_into(self, bucket: str, key: str, buf: Any, offset: int, length: int) -> _Handle:
        if key not in self.objects:
            return _Handle(0, 0, self._missing(key))
        self.gets.append((key, offset, length))
        data = self.objects[key][offset : offset + length]
        if self.flip is not None and offset <= self.flip < offset + len(data):
            changed = bytearray(data)
            changed[self.flip - offset] ^= 0x10
            data = bytes(changed)
        _write(buf, data)
        return _Handle(len(data), len(self.objects[key]))

    def get_into(self, bucket: str, key: str, buf: Any, offset: int, length: int, if_match: str = "") -> int:
        return self.start_get_into(bucket, key, buf, offset, length).wait()

    @staticmethod
    def wait_any(handles: List[_Handle], timeout: Any = None) -> int:
        return 0  # every fake GET is done at once: the oldest lands first

    def head(self, bucket: str, key: str, for_read: bool = False, checksum: bool = False) -> _Obj:
        if key not in self.objects:
            raise self._missing(key)
        data = self.objects[key]
        crc = base64.b64encode(_crt.checksum("crc32c", data).to_bytes(4, "big")).decode()
        stored = self.stored.get(key, ("CRC32C", crc, "FULL_OBJECT"))
        return _Obj(key, len(data), stored if checksum else ("", "", ""))

    def object_part_sizes(self, bucket: str, key: str) -> List[int]:
        return list(self.parts.get(key, []))

    def get_bytes(
        self, bucket: str, key: str, offset: int = 0, length: Any = None, size_hint: Any = None, if_match: str = ""
    ) -> bytes:
        return self.objects[key][offset:]

    def list_objects(self, bucket: str, prefix: str, delimiter: str, max_keys: int, token: str) -> _Page:
        keys = sorted(k for k in self.objects if k.startswith(prefix) and "/" not in k[len(prefix) :])
        return _Page([_Obj(k, len(self.objects[k])) for k in keys])


class _Client:
    def __init__(self, native: FakeNative) -> None:
        self.native = native

    def _get_native(self) -> FakeNative:
        return self.native


def _open_fake(objects: Dict[str, bytes], uri: str = "s3://b/m.safetensors", **kw: Any) -> Tuple[safe_open, FakeNative]:
    native = FakeNative(objects)
    return safe_open(uri, client=_Client(native), **kw), native  # type: ignore[arg-type]


def _model() -> Dict[str, torch.Tensor]:
    d = {f"n{i}": _sample(torch.float32, (100,), i) for i in range(20)}  # 400 B each: one GET
    d["big"] = _sample(torch.bfloat16, (1024, 600), 99)  # 1.2 MB: its own GET and storage
    d["empty"] = torch.empty(0, 3)
    d["scalar"] = torch.tensor(7, dtype=torch.int64)
    return d


def test_small_neighbours_share_a_get_and_keep_their_own_storage() -> None:
    d = _model()
    f, native = _open_fake({"m.safetensors": save(d)})
    out = f.get_tensors()
    assert all(_same(out[k], d[k]) for k in d)
    data_gets = native.gets[1:]  # after the header's
    assert len(data_gets) == 2, data_gets  # the big tensor, then every small one at once
    ptrs = [t.untyped_storage().data_ptr() for t in out.values() if t.numel()]
    assert len(set(ptrs)) == len(ptrs)
    assert all(t.untyped_storage().nbytes() == t.numel() * t.element_size() for t in out.values())


def test_the_tensors_with_their_own_get_are_made_resident_ahead_of_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fresh memory a GET lands in straight (a tensor of its own) is handed to the
    prefaulting thread (_prefault.py) before any GET starts; a shared landing buffer is not
    (it lives for one GET)."""
    rec = PrefaulterRecorder(lambda: len(native.gets))
    monkeypatch.setattr(_load, "Prefaulter", rec.cls)
    d = _model()
    f, native = _open_fake({"m.safetensors": save(d)})
    out = f.get_tensors()
    assert all(_same(out[k], d[k]) for k in d)
    assert rec.handed == [[(out["big"].data_ptr(), out["big"].numel() * 2)]]
    assert rec.gets_before == [1]  # only the header's GET came before
    assert rec.helps == len(native.gets) - rec.gets_before[0] == 2  # each GET waited for: a hand offered


def test_only_requested_tensors_and_rows_are_read() -> None:
    d = _model()
    raw = save(d)
    f, native = _open_fake({"m.safetensors": raw})
    n0 = len(native.gets)
    assert _same(f.get_tensor("n7"), d["n7"])
    assert [g[2] for g in native.gets[n0:]] == [400]
    n0 = len(native.gets)
    assert torch.equal(f.get_slice("big")[10:12, 5], d["big"][10:12, 5])
    assert [g[2] for g in native.gets[n0:]] == [2 * 600 * 2]


def test_validation_comes_before_any_allocation(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: List[Any] = []
    monkeypatch.setattr(_load, "alloc", lambda *a: calls.append(a))
    raw = save({"a": torch.ones(4), "b": torch.ones(2)})
    for bad, error in [
        (raw.replace(b'"shape":[4]', b'"shape":[5]'), HeaderError),
        (raw[:-4], TruncatedFileError),
        (raw.replace(b'"F32"', b'"F33"', 1), HeaderError),
    ]:
        with pytest.raises(error, match="s3://b/m.safetensors"):
            _open_fake({"m.safetensors": bad})[0].get_tensors()
    assert calls == []


def test_a_missing_shard_is_named_with_its_index() -> None:
    idx = b'{"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}}'
    objects = {"d/i.safetensors.index.json": idx, "d/s1.safetensors": save({"a": torch.ones(1)})}
    with pytest.raises(MissingShardError, match=r"s3://b/d/s2.safetensors.*named by the index s3://b/d/i"):
        _open_fake(objects, "s3://b/d/i.safetensors.index.json")


@pytest.mark.parametrize("cast", [None, torch.float16])
def test_the_cuda_path_uses_the_pinned_ring(monkeypatch: pytest.MonkeyPatch, cast: Optional[torch.dtype]) -> None:
    """device="cuda" on a machine without one: destinations are made on the host, the rest is
    the CUDA path: the ring asked for page-locked, every tensor staged in slots."""
    asked: List[Any] = []
    real_alloc, real_borrow = _load.alloc, _load.borrow_ring

    def host_alloc(shape, dtype, device, pin):  # type: ignore[no-untyped-def]
        asked.append(device)
        return real_alloc(shape, dtype, torch.device("cpu"), False)

    def borrow(ring_bytes, slot_bytes, pinned):  # type: ignore[no-untyped-def]
        asked.append(("pinned", pinned))
        return real_borrow(ring_bytes, slot_bytes, False)

    monkeypatch.setattr(_load, "alloc", host_alloc)
    monkeypatch.setattr(_load, "borrow_ring", borrow)
    d = _model()
    f, _ = _open_fake(
        {"m.safetensors": save(d)}, device="cuda:1", dtype=cast, staging_bytes=3 * 4096, staging_slot_bytes=4096
    )
    out = f.get_tensors()
    assert f.last_load_stats["staged"] == len(d) and f.last_load_stats["direct"] == 0
    assert asked.count(torch.device("cuda", 1)) == len(d) and ("pinned", True) in asked
    for k, v in d.items():
        want = v.to(cast) if cast is not None and v.is_floating_point() else v
        assert _same(out[k], want), k


def test_devices_and_arguments_are_checked() -> None:
    assert _open.device_of(0) == torch.device("cuda", 0)
    assert _open.device_of("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="cpu or cuda"):
        _open.device_of("meta")
    with pytest.raises(ValueError, match="framework 'np'"):
        _open_fake({}, framework="np")
    with pytest.raises(ValueError, match="not both"):
        _open.client_of(object(), "us-east-1", None, None)  # type: ignore[arg-type]


# --- the whole-file checksum (_verify.py) ---------------------------------------------------


@pytest.mark.parametrize("staged", [False, True], ids=["direct", "staged"])
def test_a_file_read_whole_is_checked_against_its_stored_crc(staged: bool) -> None:
    d = _model()
    raw = save(d)
    f, native = _open_fake({"m.safetensors": raw}, staging_bytes=3 * 4096, staging_slot_bytes=4096)
    f._force_staging = staged
    out = f.get_tensors()
    assert all(_same(out[k], d[k]) for k in d)
    assert f.last_load_checksums == {"s3://b/m.safetensors": "CRC32C checked"}
    assert f.last_load_stats["files_checked"] == 1
    # One byte changed on the way, in a small tensor's range or the big one's:
    info = f._source.tensors
    data_start = info["big"][0].header.data_start
    for at in (data_start + info["n5"][1].begin + 7, data_start + info["big"][1].begin + 100_000):
        native.flip = at
        with pytest.raises(ChecksumMismatchError, match=r"s3://b/m.safetensors: .*stored CRC32C"):
            f.get_tensors()
    native.flip = None
    assert all(_same(v, d[k]) for k, v in f.get_tensors().items())


def test_a_stored_checksum_of_another_version_than_the_header_is_refused() -> None:
    """The HEAD that gives the stored checksum runs beside the header's GET: an object replaced
    between them would have its new version's checksum compared with the old version's bytes
    (a checksum mismatch that calls the file corrupt)."""
    from s3torch.safetensors import FileChangedError

    class Replaced(FakeNative):
        def head(self, bucket: str, key: str, for_read: bool = False, checksum: bool = False) -> _Obj:
            obj = super().head(bucket, key, for_read, checksum)
            obj.etag = '"2"'
            return obj

    native = Replaced({"m.safetensors": save(_model())})
    with pytest.raises(FileChangedError, match=r'ETag "1" for its header, "2" for its stored checksum'):
        safe_open("s3://b/m.safetensors", client=_Client(native))  # type: ignore[arg-type]


def test_reads_of_a_part_and_unusable_checksums_are_not_checked() -> None:
    raw = save(_model())
    f, native = _open_fake({"m.safetensors": raw})
    native.flip = len(raw) - 1  # a byte get_tensor("n3") does not read
    f.get_tensor("n3")
    assert f.last_load_checksums == {"s3://b/m.safetensors": "not checked: this load reads a part of the file"}
    for stored, why in [
        (("", "", ""), "the object has no stored checksum"),
        (("CRC32C", "AAAAAA==-3", "COMPOSITE"), "names 3 parts; the object lists 0 of 0 bytes"),
        (("CRC32C", "AAAAAA==", "COMPOSITE"), "composite without a part count"),
        (("CRC32C", "AAAAAA==", "full_object"), "not S3's FULL_OBJECT"),
        (("SHA256", "x" * 44, "FULL_OBJECT"), "cannot be combined"),
        (("CRC64NVME", "AAAAAA==", "FULL_OBJECT"), "not 8 bytes of base64"),
    ]:
        native.stored["m.safetensors"] = stored
        g, _ = _open_fake({"m.safetensors": raw})
        g._source = _open.open_source(native, g.uri, "b", "m.safetensors", verify=True)  # type: ignore[arg-type]
        g.get_tensors()  # the flipped byte goes unnoticed: nothing to check it against
        assert why in g.last_load_checksums["s3://b/m.safetensors"], (stored, g.last_load_checksums)
    h, _ = _open_fake({"m.safetensors": raw}, verify_checksums=False)
    h.get_tensors()
    assert h.last_load_checksums == {"s3://b/m.safetensors": "not checked: verify_checksums=False"}


@pytest.mark.parametrize("algorithm", ["CRC32", "CRC32C", "CRC64NVME"])
def test_every_combinable_algorithm_is_checked(algorithm: str) -> None:
    raw = save(_model())
    native = FakeNative({"m.safetensors": raw})
    crc = _crt.checksum(algorithm.lower(), raw)
    width = 8 if algorithm == "CRC64NVME" else 4
    native.stored["m.safetensors"] = (algorithm, base64.b64encode(crc.to_bytes(width, "big")).decode(), "")
    f = safe_open("s3://b/m.safetensors", client=_Client(native))  # type: ignore[arg-type]
    f.get_tensors()
    assert f.last_load_checksums == {"s3://b/m.safetensors": f"{algorithm} checked"}
    native.flip = len(raw) - 5  # in the last tensor's bytes
    with pytest.raises(ChecksumMismatchError):
        f.get_tensors()


def test_a_composite_checksum_is_checked_part_by_part() -> None:
    """Parts whose boundaries fall inside the header, between tensors and inside the big one."""
    raw = save(_model())
    sizes = [100, 2000, 500_000, len(raw) - 502_100]
    native = FakeNative({"m.safetensors": raw})
    native.parts["m.safetensors"] = sizes
    crcs, at = [], 0
    for n in sizes:
        crcs.append(_crt.checksum("crc32c", raw[at : at + n]).to_bytes(4, "big"))
        at += n
    value = base64.b64encode(_crt.checksum("crc32c", b"".join(crcs)).to_bytes(4, "big")).decode()
    native.stored["m.safetensors"] = ("CRC32C", f"{value}-4", "COMPOSITE")
    for staged in (False, True):
        f = safe_open("s3://b/m.safetensors", client=_Client(native), staging_bytes=3 * 4096, staging_slot_bytes=4096)  # type: ignore[arg-type]
        f._force_staging = staged
        f.get_tensors()
        assert f.last_load_checksums == {"s3://b/m.safetensors": "composite CRC32C of 4 parts checked"}
        native.flip = 400_000
        with pytest.raises(ChecksumMismatchError, match="composite CRC32C of 4 parts"):
            f.get_tensors()
        native.flip = None
    native.parts["m.safetensors"] = [100, len(raw) - 100, 0, 0]  # the right count, the wrong layout
    f = safe_open("s3://b/m.safetensors", client=_Client(native))  # type: ignore[arg-type]
    with pytest.raises(ChecksumMismatchError):
        f.get_tensors()


def test_the_staging_ring_defaults_by_device() -> None:
    """CUDA destinations: 512 MiB in 16 MiB slots unless sizes are given; host casts: 256 MiB in
    8 MiB slots; a ring given smaller than 16 MiB keeps 8 MiB slots (as before the CUDA default)."""
    from s3torch.safetensors._open import ring_sizes

    MiB = 1 << 20
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert ring_sizes(cuda, None, None) == (512 * MiB, 16 * MiB)
    assert ring_sizes(cpu, None, None) == (256 * MiB, 8 * MiB)
    assert ring_sizes(cuda, 8 * MiB, None) == (8 * MiB, 8 * MiB)
    assert ring_sizes(cuda, 64 * MiB, None) == (64 * MiB, 16 * MiB)
    assert ring_sizes(cuda, None, 4 * MiB) == (512 * MiB, 4 * MiB)
