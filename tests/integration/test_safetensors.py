"""s3torch.safetensors against real servers: round trips for every dtype, interchange with the
safetensors package both ways, lazy safe_open and get_slice reading only what they return,
sharded indexes and prefixes, bad files, the staging ring path CUDA loads take (run here on
CPU destinations, as tests/integration/test_staging.py does for DCP)."""

from __future__ import annotations

import json
from typing import Any, Dict, List

import pytest
import safetensors.torch as sts
import torch

from s3torch.safetensors import (
    HeaderError,
    MissingShardError,
    SafetensorsError,
    TruncatedFileError,
    _load,
    load_file,
    safe_open,
    save,
    save_file,
)
from tests.conftest import BUCKET, make_client
from tests.unit.test_safetensors_header import TORCH_DTYPES, _same, _sample


def _model(seed: int = 0) -> Dict[str, torch.Tensor]:
    """Every dtype, 0-dim and empty tensors, small tensors between large ones."""
    d = {f"t.{dt}".replace("torch.", ""): _sample(dt, (7, 5), seed + i) for i, dt in enumerate(TORCH_DTYPES)}
    d.update(
        {
            "scalar": torch.tensor(2.5),
            "empty": torch.empty(0, 4, dtype=torch.bfloat16),
            "big": _sample(torch.float32, (600, 1000), seed),  # 2.4 MB: a GET and a storage of its own
            "norm": _sample(torch.float32, (1000,), seed + 1),
        }
    )
    return d


def _uri(prefix: str, name: str) -> str:
    return f"s3://{BUCKET}/{prefix}{name}"


def test_round_trip_every_dtype(server, prefix) -> None:  # type: ignore[no-untyped-def]
    client = make_client(server)
    d = _model()
    save_file(d, _uri(prefix, "m.safetensors"), {"format": "pt"}, client=client)
    raw = client.get_object(BUCKET, f"{prefix}m.safetensors").read()
    assert raw == sts.save(d, {"format": "pt"})
    with safe_open(_uri(prefix, "m.safetensors"), "pt", client=client) as f:
        out = f.get_tensors()
        assert f.metadata() == {"format": "pt"}
        stats = f.last_load_stats
    assert list(out) == f.offset_keys()  # file order, as the package's load_file returns it
    assert all(_same(out[k], d[k]) for k in d)
    assert stats["direct"] == len(d) and stats["gets"] < len(d)  # small neighbours share GETs
    # Every tensor has a storage of its own (so the package can save the result again).
    assert len({t.untyped_storage().data_ptr() for t in out.values() if t.numel()}) == sum(
        1 for t in out.values() if t.numel()
    )
    assert sts.save(out, {"format": "pt"}) == raw


def test_files_of_the_package_load_here(seaweed, prefix) -> None:  # type: ignore[no-untyped-def]
    client = make_client(seaweed)
    d = _model(5)
    del d["t.float8_e8m0fnu"]
    client.put(BUCKET, f"{prefix}p.safetensors", sts.save(d, {"a": "1", "b": "2"}))
    out = load_file(_uri(prefix, "p.safetensors"), client=client)
    assert all(_same(out[k], d[k]) for k in d)
    with safe_open(_uri(prefix, "p.safetensors"), client=client) as f:
        assert f.metadata() == {"a": "1", "b": "2"} and f.keys() == sorted(d)


def test_get_tensor_and_get_slice_read_only_what_they_return(seaweed, prefix) -> None:  # type: ignore[no-untyped-def]
    client = make_client(seaweed)
    d = {"w": torch.arange(40 * 6 * 5, dtype=torch.float32).reshape(40, 6, 5), "b": torch.arange(9, dtype=torch.int16)}
    save_file(d, _uri(prefix, "s.safetensors"), client=client)
    f = safe_open(_uri(prefix, "s.safetensors"), client=client)
    assert _same(f.get_tensor("b"), d["b"]) and f.last_load_stats["bytes"] == 18
    sl = f.get_slice("w")
    assert sl.get_shape() == [40, 6, 5] and sl.get_dtype() == "F32"
    row = 6 * 5 * 4
    for index, rows in [
        (3, 1),
        (-1, 1),
        (slice(10, 14), 4),
        (slice(2, 20, 5), 16),
        ((slice(5, 7), 2), 2),
        ((slice(5, 7), slice(1, 3), 4), 2),
        (slice(50, 60), 0),
        ((Ellipsis, 1), 40),
        (slice(None), 40),
    ]:
        got = sl[index]
        want = d["w"][index]
        assert torch.equal(got, want), index
        assert got.is_contiguous() and got.untyped_storage().nbytes() == want.numel() * 4, index
        assert f.last_load_stats["bytes"] == rows * row, index
    with pytest.raises(IndexError):
        sl[40]
    with pytest.raises(KeyError, match="no tensor 'nope'"):
        f.get_tensor("nope")
    assert torch.equal(f.get_slice("b")[2:5], d["b"][2:5])


def _shards(client, prefix: str) -> Dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    """Three shards and an index mapping each tensor to its shard, as transformers writes them."""
    d = {f"layers.{i}.{p}": _sample(torch.bfloat16, (64, 32 if p == "w" else 1), i) for i in range(6) for p in "wb"}
    weight_map: Dict[str, str] = {}
    names = list(d)
    for s in range(3):
        fname = f"model-{s + 1:05d}-of-00003.safetensors"
        part = {n: d[n] for n in names[s * 4 : (s + 1) * 4]}
        save_file(part, _uri(prefix, fname), {"format": "pt"}, client=client)
        weight_map.update({n: fname for n in part})
    index = {"metadata": {"total_size": sum(t.numel() * 2 for t in d.values())}, "weight_map": weight_map}
    client.put(BUCKET, f"{prefix}model.safetensors.index.json", json.dumps(index).encode())
    return d


def test_sharded_index_and_prefix(seaweed, prefix) -> None:  # type: ignore[no-untyped-def]
    client = make_client(seaweed)
    d = _shards(client, prefix)
    for uri in (_uri(prefix, "model.safetensors.index.json"), _uri(prefix, "")):
        out = load_file(uri, client=client)
        assert sorted(out) == sorted(d) and all(_same(out[k], d[k]) for k in d)
    with safe_open(_uri(prefix, ""), client=client) as f:
        assert f.metadata() == {"total_size": sum(t.numel() * 2 for t in d.values())}
        assert f.keys() == sorted(d)
    some = load_file(_uri(prefix, ""), keys=["layers.5.b", "layers.0.w"], client=client)
    assert list(some) == ["layers.5.b", "layers.0.w"] and _same(some["layers.5.b"], d["layers.5.b"])


def test_prefix_of_files_without_an_index(seaweed, prefix) -> None:  # type: ignore[no-untyped-def]
    client = make_client(seaweed)
    save_file({"a": torch.ones(3)}, _uri(prefix, "x/one.safetensors"), client=client)
    save_file({"b": torch.zeros(2, dtype=torch.int8)}, _uri(prefix, "x/two.safetensors"), client=client)
    out = load_file(_uri(prefix, "x/"), client=client)
    assert list(out) == ["a", "b"]
    save_file({"a": torch.ones(1)}, _uri(prefix, "x/three.safetensors"), client=client)
    with pytest.raises(HeaderError, match="tensor 'a' is in both"):
        load_file(_uri(prefix, "x/"), client=client)
    with pytest.raises(MissingShardError, match="no .safetensors file"):
        load_file(_uri(prefix, "empty/"), client=client)


def _put_index(client, prefix: str, weight_map: Dict[str, str]) -> str:  # type: ignore[no-untyped-def]
    client.put(BUCKET, f"{prefix}bad.safetensors.index.json", json.dumps({"weight_map": weight_map}).encode())
    return _uri(prefix, "bad.safetensors.index.json")


def test_bad_indexes_name_the_index_and_the_shard(seaweed, prefix) -> None:  # type: ignore[no-untyped-def]
    client = make_client(seaweed)
    save_file({"a": torch.ones(2)}, _uri(prefix, "s1.safetensors"), client=client)
    uri = _put_index(client, prefix, {"a": "s1.safetensors", "b": "s2.safetensors"})
    with pytest.raises(MissingShardError, match=r"s2\.safetensors.*named by the index.*bad\.safetensors\.index") as e:
        load_file(uri, client=client)
    assert isinstance(e.value, FileNotFoundError)
    uri = _put_index(client, prefix, {"a": "s1.safetensors", "zz": "s1.safetensors"})
    with pytest.raises(HeaderError, match=r"tensor 'zz' is not in its shard .*s1\.safetensors"):
        load_file(uri, client=client)
    for evil in ("../s1.safetensors", "/abs.safetensors", "a//b.safetensors", ""):
        uri = _put_index(client, prefix, {"a": evil})
        with pytest.raises(HeaderError, match="not a file beside the index"):
            load_file(uri, client=client)
    for bad in (b"{no", b"[" * 100_000):  # the second nested past Python's recursion limit
        client.put(BUCKET, f"{prefix}x.json", bad)
        with pytest.raises(HeaderError, match="index is not valid JSON"):
            load_file(_uri(prefix, "x.json"), client=client)
    with pytest.raises(MissingShardError):
        load_file(_uri(prefix, "absent.safetensors"), client=client)


def _count_allocs(monkeypatch: pytest.MonkeyPatch) -> List[Any]:
    calls: List[Any] = []
    real = _load.alloc

    def counting(*a: Any) -> torch.Tensor:
        calls.append(a)
        return real(*a)

    monkeypatch.setattr(_load, "alloc", counting)
    return calls


def test_truncated_and_lying_files_fail_before_allocation(seaweed, prefix, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    client = make_client(seaweed)
    raw = save({"w": torch.randn(1000), "v": torch.randn(10)})
    calls = _count_allocs(monkeypatch)
    client.put(BUCKET, f"{prefix}cut.safetensors", raw[:-100])
    with pytest.raises(TruncatedFileError, match=rf"s3://{BUCKET}/{prefix}cut.safetensors tensor 'w'.*past the end"):
        load_file(_uri(prefix, "cut.safetensors"), client=client)
    client.put(BUCKET, f"{prefix}head.safetensors", raw[:20])
    with pytest.raises(TruncatedFileError, match="runs past the end"):
        load_file(_uri(prefix, "head.safetensors"), client=client)
    lie = raw.replace(b'"shape":[1000]', b'"shape":[1001]')
    client.put(BUCKET, f"{prefix}lie.safetensors", lie)
    with pytest.raises(HeaderError, match=r"lie.safetensors tensor 'w': 4000 bytes .* shape \[1001\]"):
        load_file(_uri(prefix, "lie.safetensors"), client=client)
    client.put(BUCKET, f"{prefix}zero.safetensors", b"")
    with pytest.raises(SafetensorsError):
        load_file(_uri(prefix, "zero.safetensors"), client=client)
    assert calls == []


def test_cast_goes_through_the_ring(seaweed, prefix) -> None:  # type: ignore[no-untyped-def]
    client = make_client(seaweed)
    d = {
        "f": torch.randn(300, 70),
        "h": torch.randn(50).half(),
        "i": torch.arange(100),
        "q": torch.randn(9).to(torch.float8_e4m3fn),
    }
    save_file(d, _uri(prefix, "c.safetensors"), client=client)
    f = safe_open(
        _uri(prefix, "c.safetensors"), dtype=torch.bfloat16, client=client, staging_bytes=4096, staging_slot_bytes=1024
    )
    out = f.get_tensors()
    assert {k: v.dtype for k, v in out.items()} == {
        "f": torch.bfloat16,
        "h": torch.bfloat16,
        "i": torch.int64,
        "q": torch.bfloat16,
    }
    assert all(torch.equal(out[k], d[k].to(out[k].dtype)) for k in d)
    assert f.last_load_stats["staged"] == 3 and f.last_load_stats["direct"] == 1
    assert torch.equal(f.get_slice("f")[5:9], d["f"][5:9].bfloat16())


@pytest.mark.parametrize("cast", [None, torch.float32])
def test_the_cuda_path_on_cpu(seaweed, prefix, monkeypatch, cast) -> None:  # type: ignore[no-untyped-def]
    """device="cuda" without a GPU: destinations are made on the host instead, everything
    else is the CUDA path: every tensor through the staging ring, asked for page-locked,
    in slots far smaller than the tensors."""
    client = make_client(seaweed)
    d = _model(3)
    save_file(d, _uri(prefix, "g.safetensors"), client=client)
    asked: List[Any] = []
    real_alloc, real_borrow = _load.alloc, _load.borrow_ring

    def host_alloc(shape, dtype, device, pin):  # type: ignore[no-untyped-def]
        asked.append(device.type)
        return real_alloc(shape, dtype, torch.device("cpu"), False)

    def borrow(ring_bytes, slot_bytes, pinned):  # type: ignore[no-untyped-def]
        asked.append(("pinned", pinned))
        return real_borrow(ring_bytes, slot_bytes, False)

    monkeypatch.setattr(_load, "alloc", host_alloc)
    monkeypatch.setattr(_load, "borrow_ring", borrow)
    f = safe_open(
        _uri(prefix, "g.safetensors"),
        device="cuda",
        dtype=cast,
        client=client,
        staging_bytes=3 * 4096,
        staging_slot_bytes=4096,
    )
    out = f.get_tensors()
    assert f.last_load_stats["staged"] == len(d) and f.last_load_stats["direct"] == 0
    assert asked.count("cuda") == len(d) and ("pinned", True) in asked
    for k, v in d.items():
        want = v.to(cast) if cast is not None and v.is_floating_point() else v
        assert _same(out[k], want), k


def test_pin_memory_is_asked_for_every_cpu_destination(seaweed, prefix, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    client = make_client(seaweed)
    save_file(_model(), _uri(prefix, "p.safetensors"), client=client)
    pins: List[bool] = []
    real = _load.alloc

    def no_cuda_pin(shape, dtype, device, pin):  # type: ignore[no-untyped-def]
        pins.append(pin)
        return real(shape, dtype, device, False)  # page-locking needs CUDA

    monkeypatch.setattr(_load, "alloc", no_cuda_pin)
    out = load_file(_uri(prefix, "p.safetensors"), pin_memory=True, client=client)
    assert len(pins) == len(out) and all(pins)


def test_save_streams_a_multipart_upload(seaweed, prefix) -> None:  # type: ignore[no-untyped-def]
    client = make_client(seaweed, part_size=5 << 20)
    d = {
        "a": _sample(torch.float32, (3 << 20,)),
        "b": _sample(torch.bfloat16, (17,)),
        "c": _sample(torch.uint8, (1 << 20,)),
    }
    save_file(d, _uri(prefix, "big.safetensors"), {"k": "v"}, client=client)
    raw = client.get_object(BUCKET, f"{prefix}big.safetensors").read()
    assert raw == sts.save(d, {"k": "v"})
    with pytest.raises(ValueError, match="not contiguous"):
        save_file({"t": torch.randn(4, 3).t()}, _uri(prefix, "nc.safetensors"), client=client)
    with pytest.raises(RuntimeError, match="share memory"):
        base = torch.randn(10)
        save_file({"x": base[:6], "y": base[4:]}, _uri(prefix, "sh.safetensors"), client=client)
    assert not [
        o
        for p in client.list_objects(BUCKET, f"{prefix}")
        for o in p.objects
        if o.key.endswith(("nc.safetensors", "sh.safetensors"))
    ]


# --- the whole-file checksum ------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, outcome",
    [
        ("single", "CRC32C checked"),
        ("multipart", "CRC32C checked"),
        ("composite", "composite CRC32C of 3 parts checked"),
    ],
)
def test_files_s3torch_writes_are_checked_whole_on_load(seaweed, prefix, kind, outcome) -> None:  # type: ignore[no-untyped-def]
    """A single PUT's CRC32C, a multipart upload's full-object CRC32C (s3torch's default) and a
    composite one (its part sizes from GetObjectAttributes) are all checked; staged (CUDA's
    path) as direct."""
    client = make_client(
        seaweed, part_size=5 << 20, checksum_type="composite" if kind == "composite" else "full_object"
    )
    d = _model()
    if kind != "single":
        d["huge"] = _sample(torch.float32, (3 << 20,))  # 12 MiB: three parts
    uri = _uri(prefix, f"{kind}.safetensors")
    save_file(d, uri, client=client)
    for staged in (False, True):
        with safe_open(uri, client=client) as f:
            f._force_staging = staged
            out = f.get_tensors()
            assert f.last_load_checksums == {uri: outcome}, f.last_load_checksums
        assert all(_same(out[k], d[k]) for k in d)
    with safe_open(uri, client=client) as f:
        f.get_tensor("big")
        assert f.last_load_checksums == {uri: "not checked: this load reads a part of the file"}


def test_part_sizes_are_read_page_by_page(seaweed, prefix) -> None:  # type: ignore[no-untyped-def]
    """GetObjectAttributes lists at most 1000 parts a page: an object of more (a composite
    file over ~8 GB at 8 MiB parts) is read over several pages. Here 3 parts, 1 and 2 a page."""
    client = make_client(seaweed, part_size=5 << 20, checksum_type="composite")
    key = f"{prefix}pages.bin"
    with client.put_object(BUCKET, key) as w:
        w.write(bytes(13 << 20))  # parts of 5, 5 and 3 MiB
    native = client._get_native()
    want = [5 << 20, 5 << 20, 3 << 20]
    for max_parts in (1000, 2, 1):
        assert native.object_part_sizes(BUCKET, key, max_parts=max_parts) == want, max_parts
    for bad in (0, 1001):
        with pytest.raises(ValueError, match="max_parts must be between 1 and 1000"):
            native.object_part_sizes(BUCKET, key, max_parts=bad)


def test_a_byte_changed_on_the_way_fails_the_load(seaweed, prefix) -> None:  # type: ignore[no-untyped-def]
    from s3torch.safetensors import ChecksumMismatchError
    from tests.faults.proxy import Fault, FaultProxy

    client = make_client(seaweed)
    d = _model()
    uri = _uri(prefix, "m.safetensors")
    save_file(d, uri, client=client)
    with FaultProxy.in_front_of(seaweed.endpoint) as proxy:
        via = make_client(proxy, part_size=client.s3client_config.part_size)
        # Not the header's GET (the first bytes): one of the tensors' ranged GETs.
        fault = proxy.add(Fault("corrupt_response", method="GET", range=r"^bytes=[1-9]", times=1))
        with pytest.raises(ChecksumMismatchError, match=rf"{uri}: the bytes read do not match .*stored CRC32C"):
            load_file(uri, client=via)
        assert fault.injected == 1
        out = load_file(uri, client=via)  # the fault is spent: the same load goes through
        assert all(_same(out[k], d[k]) for k in d)
        proxy.add(Fault("corrupt_response", method="GET", range=r"^bytes=[1-9]", times=1))
        out = load_file(uri, client=via, verify_checksums=False)  # unchecked: the changed byte is returned
        assert not all(_same(out[k], d[k]) for k in d)


def test_sharded_loads_check_every_shard(seaweed, prefix) -> None:  # type: ignore[no-untyped-def]
    client = make_client(seaweed)
    shards = {"s1.safetensors": {"a": _sample(torch.float32, (64, 64), 1)}, "s2.safetensors": _model(2)}
    wm = {}
    for name, tensors in shards.items():
        save_file(tensors, _uri(prefix, name), client=client)
        wm.update({k: name for k in tensors})
    client.put(BUCKET, f"{prefix}m.safetensors.index.json", json.dumps({"weight_map": wm}).encode())
    with safe_open(_uri(prefix, "m.safetensors.index.json"), client=client) as f:
        f.get_tensors()
        assert f.last_load_checksums == {_uri(prefix, n): "CRC32C checked" for n in shards}
        assert f.last_load_stats["files_checked"] == 2


def test_moto_checksums_are_not_trusted(moto, prefix) -> None:  # type: ignore[no-untyped-def]
    """moto 5 stores no checksum for a single PUT with a CRC in a trailer, and for a multipart
    one writes the type as ``full_object`` with a CRC32 under the CRC32C name: a load says so
    and reads on rather than failing a good file."""
    client = make_client(moto, part_size=5 << 20)
    d = {"huge": _sample(torch.float32, (3 << 20,)), **_model()}
    for name, tensors in (("small.safetensors", _model()), ("large.safetensors", d)):
        uri = _uri(prefix, name)
        save_file(tensors, uri, client=client)
        with safe_open(uri, client=client) as f:
            out = f.get_tensors()
            assert f.last_load_checksums[uri].startswith("not checked: "), f.last_load_checksums
        assert all(_same(out[k], tensors[k]) for k in tensors)
