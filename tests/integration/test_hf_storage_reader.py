"""S3HuggingFaceStorageReader: ``dcp.load`` of Hugging Face safetensors checkpoints on S3
(SeaweedFS), beside torch's own HuggingFaceStorageReader on a local copy of the same files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import HuggingFaceStorageReader
from torch.distributed.checkpoint.api import CheckpointException

from s3torch._servers import REGION
from s3torch.dcp import S3HuggingFaceStorageReader
from s3torch.safetensors import HeaderError, MissingShardError, save_file
from tests.conftest import BUCKET, make_client
from tests.gloo_ranks import run_ranks

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


def _model(seed: int = 0) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "embed.weight": torch.randn(512, 96, generator=g).to(torch.bfloat16),
        "layers.0.attn.weight": torch.randn(96, 96, generator=g),
        "layers.0.norm.weight": torch.randn(96, generator=g),
        "layers.0.norm.bias": torch.randn(96, generator=g),
        "lm_head.weight": torch.randn(512, 96, generator=g).to(torch.float16),
        "step": torch.tensor(7),
    }


def _save_sharded(env, prefix: str, sd: Dict[str, torch.Tensor], index: bool = True) -> str:  # type: ignore[no-untyped-def]
    """Two shards (and an index, as the Hub's checkpoints have), through s3torch.safetensors."""
    names = sorted(sd)
    first, second = names[: len(names) // 2], names[len(names) // 2 :]
    base = f"s3://{BUCKET}/{prefix}hf"
    shards = {"model-00001-of-00002.safetensors": first, "model-00002-of-00002.safetensors": second}
    for file, keys in shards.items():
        save_file({k: sd[k] for k in keys}, f"{base}/{file}", endpoint=env.endpoint, region=REGION)
    if index:
        weight_map = {k: file for file, keys in shards.items() for k in keys}
        body = json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}).encode()
        make_client(env).put(BUCKET, f"{prefix}hf/model.safetensors.index.json", body)
    return base


def _empty(sd: Dict[str, torch.Tensor], dtype=None) -> Dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    return {k: torch.zeros(v.shape, dtype=dtype or v.dtype) for k, v in sd.items()}


@pytest.mark.parametrize("layout", ["folder-with-index", "folder-of-files", "index-named"])
def test_loads_a_sharded_checkpoint_as_torch_does_from_disk(seaweed_env, prefix, tmp_path, layout) -> None:  # type: ignore[no-untyped-def]
    """A folder (its index, else its files) or an index named by its key (no listing)."""
    sd = _model()
    base = _save_sharded(seaweed_env, prefix, sd, index=layout != "folder-of-files")
    path = f"{base}/model.safetensors.index.json" if layout == "index-named" else base
    reader = S3HuggingFaceStorageReader(REGION, path, endpoint=seaweed_env.endpoint)
    got = _empty(sd)
    dcp.load(got, storage_reader=reader)
    for k in sd:
        assert torch.equal(got[k], sd[k]), k
    # Each file was read whole: its stored CRC32C checked.
    assert sorted(reader.last_load_checksums.values()) == ["CRC32C checked", "CRC32C checked"]
    # torch's reader, on a local copy of the same files, loads the same.
    local = tmp_path / "hf"
    local.mkdir()
    client = make_client(seaweed_env)
    for page in client.list_objects(BUCKET, f"{prefix}hf/"):
        for o in page.object_info:
            if o.key.endswith(".safetensors"):
                (local / Path(o.key).name).write_bytes(client.get_object(BUCKET, o.key).read())
    theirs = _empty(sd)
    dcp.load(theirs, storage_reader=HuggingFaceStorageReader(str(local)))
    for k in sd:
        assert torch.equal(theirs[k], got[k]), k


def test_reads_only_the_rows_a_partial_destination_needs(seaweed_env, prefix) -> None:  # type: ignore[no-untyped-def]
    """A destination of rows 100:228 of a 512-row tensor reads those rows' bytes only, and a
    destination that takes some columns reads its rows and cuts the columns on the host."""
    from torch.distributed.checkpoint.metadata import MetadataIndex
    from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, ReadItem

    sd = _model(1)
    base = _save_sharded(seaweed_env, prefix, sd)
    reader = S3HuggingFaceStorageReader(REGION, base, endpoint=seaweed_env.endpoint)
    reader.set_up_storage_reader(reader.read_metadata(), True)
    rows = torch.zeros(128, 96, dtype=torch.bfloat16)
    cols = torch.zeros(96, 32)

    def item(fqn: str, offsets, lengths) -> ReadItem:  # type: ignore[no-untyped-def]
        return ReadItem(
            type=LoadItemType.TENSOR,
            dest_index=MetadataIndex(fqn, torch.Size([0] * len(offsets))),
            dest_offsets=torch.Size([0] * len(offsets)),
            storage_index=MetadataIndex(fqn, torch.Size([0] * len(offsets))),
            storage_offsets=torch.Size(offsets),
            lengths=torch.Size(lengths),
        )

    dest = {"embed.weight": rows, "layers.0.attn.weight": cols}

    class Planner:
        def resolve_tensor(self, read_item: ReadItem) -> torch.Tensor:
            return dest[read_item.dest_index.fqn]

        def commit_tensor(self, read_item: ReadItem, tensor: torch.Tensor) -> None:
            pass

    plan = LoadPlan([item("embed.weight", [100, 0], [128, 96]), item("layers.0.attn.weight", [0, 64], [96, 32])])
    reader.read_data(reader.prepare_local_plan(plan), Planner()).wait()  # type: ignore[arg-type]
    assert torch.equal(rows, sd["embed.weight"][100:228])
    assert torch.equal(cols, sd["layers.0.attn.weight"][:, 64:96])
    assert reader.last_load_stats["bytes"] == 128 * 96 * 2 + 96 * 96 * 4  # those rows, no more
    assert set(reader.last_load_checksums.values()) == {"not checked: this load reads a part of the file"}


def test_casts_into_destinations_of_another_dtype_through_the_ring(seaweed_env, prefix) -> None:  # type: ignore[no-untyped-def]
    """Destinations of another dtype take their tensors through the staging ring, cast on the
    way (nothing of the loader's held); each file is still checked whole."""
    sd = _model(2)
    base = _save_sharded(seaweed_env, prefix, sd)
    got = _empty(sd, dtype=torch.float32)
    got["step"] = torch.tensor(0)
    reader = S3HuggingFaceStorageReader(REGION, base, endpoint=seaweed_env.endpoint, batch_bytes=64 << 10)
    dcp.load(got, storage_reader=reader)
    for k in sd:
        assert torch.equal(got[k], sd[k].to(got[k].dtype)), k
    assert sorted(reader.last_load_checksums.values()) == ["CRC32C checked", "CRC32C checked"]
    assert reader.last_load_stats["staged"] == sum(got[k].dtype != sd[k].dtype for k in sd) > 0


def test_destinations_not_taken_whole_are_copied_a_batch_at_a_time(seaweed_env, prefix) -> None:  # type: ignore[no-untyped-def]
    """Non-contiguous destinations take their rows read into memory of the loader's, at most
    batch_bytes at a time; each file, read whole over several batches, is still checked."""
    sd = _model(3)
    base = _save_sharded(seaweed_env, prefix, sd)
    got = {
        k: torch.zeros(v.shape[::-1], dtype=v.dtype).t() if v.dim() == 2 else torch.zeros_like(v) for k, v in sd.items()
    }
    reader = S3HuggingFaceStorageReader(REGION, base, endpoint=seaweed_env.endpoint, batch_bytes=64 << 10)
    dcp.load(got, storage_reader=reader)
    for k in sd:
        assert torch.equal(got[k], sd[k]), k
    assert sorted(reader.last_load_checksums.values()) == ["CRC32C checked", "CRC32C checked"]
    assert reader.last_load_stats["gets"] >= 4  # the batches: each of its own GETs


def test_pieces_of_a_tensor_over_several_files_are_assembled(seaweed_env, prefix) -> None:  # type: ignore[no-untyped-def]
    """torch's HuggingFaceStorageWriter(save_distributed=True) layout: each file holds a piece
    and says where it lies (DCP_SHARDING_INFO); the load puts the pieces together."""
    whole = torch.arange(8 * 6, dtype=torch.float32).reshape(8, 6)
    base = f"s3://{BUCKET}/{prefix}dist"
    for rank, (lo, hi) in enumerate([(0, 3), (3, 8)]):
        info = json.dumps({"w": {"saved_offsets": [lo, 0]}})
        save_file(
            {"w": whole[lo:hi].clone()},
            f"{base}/shard-0000{rank}-model-00001-of-00001.safetensors",
            metadata={"DCP_SHARDING_INFO": info},
            endpoint=seaweed_env.endpoint,
            region=REGION,
        )
    reader = S3HuggingFaceStorageReader(REGION, base, endpoint=seaweed_env.endpoint)
    md = reader.read_metadata()
    assert list(md.state_dict_metadata["w"].size) == [8, 6] and len(md.state_dict_metadata["w"].chunks) == 2
    got = {"w": torch.zeros(8, 6)}
    dcp.load(got, storage_reader=reader)
    assert torch.equal(got["w"], whole)


def _save_pieces(env, base: str, whole: torch.Tensor, boxes: list) -> None:  # type: ignore[no-untyped-def]
    """One file per piece (offsets, sizes) of ``whole``, each saying where it lies."""
    for rank, (offsets, sizes) in enumerate(boxes):
        piece = whole[tuple(slice(o, o + n) for o, n in zip(offsets, sizes))].clone()
        save_file(
            {"w": piece},
            f"{base}/shard-{rank:05d}-model-00001-of-00001.safetensors",
            metadata={"DCP_SHARDING_INFO": json.dumps({"w": {"saved_offsets": list(offsets)}})},
            endpoint=env.endpoint,
            region=REGION,
        )


@pytest.mark.parametrize(
    "boxes, error, match",
    [
        # A grid of 2 x 3 pieces (FSDP rows x tensor-parallel columns): loads whole.
        ([((r, c), (4, 2)) for r in (0, 4) for c in (0, 2, 4)], None, ""),
        # Uneven sharding over 4 ranks: two of them hold no rows (at the end, both).
        ([((0, 0), (5, 6)), ((5, 0), (3, 6)), ((8, 0), (0, 6)), ((8, 0), (0, 6))], None, ""),
        # Rows 3..5 in no file: a rank's file missing. torch's planner would leave them as
        # they were in the destination, with no error.
        ([((0, 0), (3, 6)), ((5, 0), (3, 6))], MissingShardError, r"rows 3\.\.5 of 8 are in none of its files"),
        ([((0, 0), (8, 3))], None, ""),  # the columns 3..6 missing make a 8x3 tensor: torch's size check
        ([((0, 3), (8, 3))], MissingShardError, r"indexes of dimension 1 0\.\.3 of 6"),
        ([((0, 0), (4, 2)), ((4, 4), (4, 2))], MissingShardError, r"32 of 48 elements are in none"),
        # Pieces of two saves sharded differently: which bytes to load cannot be told.
        (
            [((0, 0), (5, 6)), ((4, 0), (4, 6))],
            HeaderError,
            r"shard-00000.* at \[0, 0\] and shard-00001.* at \[4, 0\] overlap",
        ),
    ],
    ids=["grid", "uneven", "rows-missing", "last-columns-missing", "first-columns-missing", "scattered", "overlap"],
)
def test_pieces_that_do_not_tile_a_tensor_are_refused(seaweed_env, prefix, boxes, error, match) -> None:  # type: ignore[no-untyped-def]
    whole = torch.arange(8 * 6, dtype=torch.float32).reshape(8, 6)
    base = f"s3://{BUCKET}/{prefix}pieces"
    _save_pieces(seaweed_env, base, whole, boxes)
    reader = S3HuggingFaceStorageReader(REGION, base, endpoint=seaweed_env.endpoint)
    md = reader.read_metadata()
    if error is None:
        size = list(md.state_dict_metadata["w"].size)
        got = {"w": torch.full(size, -1.0)}
        if size == [8, 6]:
            dcp.load(got, storage_reader=reader)
            assert torch.equal(got["w"], whole)
        with pytest.raises(CheckpointException, match="Size mismatch"):  # torch's planner, at another size
            dcp.load({"w": torch.zeros(9, 6)}, storage_reader=reader)
        return
    with pytest.raises(error, match=match) as info:
        reader.set_up_storage_reader(md, True)
    assert f"{base}: tensor 'w'" in str(info.value)


def test_what_cannot_be_loaded_is_named(seaweed_env, prefix) -> None:  # type: ignore[no-untyped-def]
    empty = f"s3://{BUCKET}/{prefix}nothing"
    with pytest.raises(CheckpointException) as info:
        dcp.load(
            {"w": torch.zeros(1)},
            storage_reader=S3HuggingFaceStorageReader(REGION, empty, endpoint=seaweed_env.endpoint),
        )
    ((err, _tb),) = info.value.failures.values()
    assert isinstance(err, MissingShardError) and "no .safetensors file" in str(err)
    # The same tensor in two files, neither saying where it lies: which one is meant?
    base = f"s3://{BUCKET}/{prefix}dup"
    for name in ("consolidated.safetensors", "model.safetensors"):
        save_file({"w": torch.ones(2)}, f"{base}/{name}", endpoint=seaweed_env.endpoint, region=REGION)
    with pytest.raises(HeaderError, match=r"tensor 'w' at offsets \[0\] is in both .*consolidated.safetensors"):
        reader = S3HuggingFaceStorageReader(REGION, base, endpoint=seaweed_env.endpoint)
        reader.set_up_storage_reader(reader.read_metadata(), True)  # raised where torch would not swallow it
    assert S3HuggingFaceStorageReader.validate_checkpoint_id(base)
    assert not S3HuggingFaceStorageReader.validate_checkpoint_id("/local/dir")


def _read_rows(rank: int, base: str, kw: dict) -> dict:
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

    mesh = init_device_mesh("cpu", (2,))
    whole = _model(3)
    # FSDP-like rows for the matrices, tensor-parallel columns for the attention weight.
    placements = {"embed.weight": Shard(0), "lm_head.weight": Shard(0), "layers.0.attn.weight": Shard(1)}
    dest = {
        k: distribute_tensor(torch.zeros_like(v), mesh, [placements[k]]) for k, v in whole.items() if k in placements
    }
    reader = S3HuggingFaceStorageReader(REGION, base, **kw)
    dcp.load(dest, storage_reader=reader)
    return {
        "exact": all(torch.equal(dest[k].full_tensor(), whole[k]) for k in dest),
        "bytes": reader.last_load_stats["bytes"],
    }


def test_two_ranks_each_read_only_their_shards(seaweed_env, prefix, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """DTensor destinations on two gloo ranks, sharded by rows and by columns: every shard is
    exact, and the ranks together read each row once (columns: each rank its rows whole)."""
    base = _save_sharded(seaweed_env, prefix, _model(3))
    kw = {"s3client_config": make_client(seaweed_env).s3client_config, "endpoint": seaweed_env.endpoint}
    ranks = run_ranks(_read_rows, (base, kw), tmp_path)
    assert all(r.get("exact") for r in ranks), ranks
    rows = 512 * 96 * 2 + 512 * 96 * 2  # embed (bf16) and lm_head (f16): half each per rank
    assert [r["bytes"] for r in ranks] == [rows // 2 + 96 * 96 * 4] * 2, ranks


def test_progress_reports_the_load_and_leaves_no_thread(seaweed_env, prefix, capsys) -> None:  # type: ignore[no-untyped-def]
    import threading

    sd = _model(6)
    base = _save_sharded(seaweed_env, prefix, sd)
    reader = S3HuggingFaceStorageReader(REGION, base, endpoint=seaweed_env.endpoint, progress=True)
    counted: list = []
    add = reader._progress.add
    reader._progress.add = lambda n: (counted.append(n), add(n))  # type: ignore[method-assign]
    dcp.load(_empty(sd), storage_reader=reader)
    out = capsys.readouterr().out
    total = sum(v.numel() * v.element_size() for v in sd.values())
    assert f"s3torch: DCP load from {base}: 0.2 MB in " in out, out
    assert sum(counted) == total  # every byte counted, once
    assert not [t for t in threading.enumerate() if t.name == "s3torch-progress"]


@pytest.mark.parametrize(
    "info",
    [
        "[" * 100_000 + "]" * 100_000,  # nested past the parser's recursion limit
        "not json",
        '["w"]',
        '{"w": [0, 0]}',
        '{"w": {"saved_offsets": 3}}',
        '{"w": {"saved_offsets": [0]}}',  # a 2-d tensor
        '{"w": {"saved_offsets": [-1, 0]}}',
        '{"w": {"saved_offsets": [0.5, 0]}}',
    ],
    ids=["deep", "not-json", "list", "no-dict", "not-a-list", "short", "negative", "float"],
)
def test_hostile_sharding_info_is_a_header_error(seaweed_env, prefix, info) -> None:  # type: ignore[no-untyped-def]
    """DCP_SHARDING_INFO comes from the file: whatever it holds is refused as a HeaderError
    naming the file, before anything is allocated or read."""
    base = f"s3://{BUCKET}/{prefix}bad"
    uri = f"{base}/model.safetensors"
    save_file(
        {"w": torch.ones(2, 3)}, uri, metadata={"DCP_SHARDING_INFO": info}, endpoint=seaweed_env.endpoint, region=REGION
    )
    reader = S3HuggingFaceStorageReader(REGION, base, endpoint=seaweed_env.endpoint)
    with pytest.raises(HeaderError, match=r"model\.safetensors"):
        reader.set_up_storage_reader(reader.read_metadata(), True)
