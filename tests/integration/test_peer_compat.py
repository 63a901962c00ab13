"""s3torchconnector's API where it goes beyond names: the User-Agent the server sees, a part
size below S3's minimum, and the errors user code matches on (SeaweedFS, through the fault
proxy, which records each request's User-Agent)."""

from __future__ import annotations

import operator
from typing import Any

import pytest

from s3torch import S3Client, S3ClientConfig, S3MapDataset, S3NotFoundError
from s3torch._config import PartSizeWarning
from s3torch._servers import ACCESS_KEY, REGION, SECRET_KEY
from s3torch._user_agent import UserAgent
from s3torch.dcp import S3FileSystem
from tests.conftest import BUCKET
from tests.faults.proxy import FaultProxy

MiB = 1024 * 1024


def _cfg(**extra: Any) -> S3ClientConfig:
    return S3ClientConfig(force_path_style=True, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY, **extra)


def test_user_agent_reaches_the_server_on_every_request(proxy: FaultProxy, prefix: str) -> None:
    client = S3Client(REGION, endpoint=proxy.endpoint, s3client_config=_cfg(), user_agent=UserAgent(["my-app/1.0"]))
    assert client.user_agent_prefix == UserAgent.get_default_prefix() + " (my-app/1.0)"
    assert client.user_agent_prefix.startswith("s3torch/")
    big = bytes(range(256)) * (11 * MiB // 256)  # a multipart upload: create, parts, complete
    client.put(BUCKET, prefix + "small", b"hello")
    with client.put_object(BUCKET, prefix + "big") as w:
        w.write(big)
    assert client.get_object(BUCKET, prefix + "big").read() == big
    client.head_object(BUCKET, prefix + "small")
    list(client.list_objects(BUCKET, prefix))
    client.copy_object(BUCKET, prefix + "small", BUCKET, prefix + "copy")
    client.delete_object(BUCKET, prefix + "copy")
    seen = proxy.user_agents()
    assert {m for m, _, _ in seen} >= {"PUT", "POST", "GET", "HEAD", "DELETE"}
    for method, target, agent in seen:
        # aws-c-s3 appends its own product token after ours.
        assert agent.startswith(client.user_agent_prefix), (method, target, agent)


def test_user_agent_survives_pickling_and_datasets_add_their_comments(proxy: FaultProxy, prefix: str) -> None:
    import pickle

    client = S3Client(REGION, endpoint=proxy.endpoint, s3client_config=_cfg(), user_agent=UserAgent(["x"]))
    assert pickle.loads(pickle.dumps(client)).user_agent_prefix == client.user_agent_prefix
    client.put(BUCKET, prefix + "a", b"a")
    ds = S3MapDataset.from_prefix(
        f"s3://{BUCKET}/{prefix}",
        region=REGION,
        endpoint=proxy.endpoint,
        s3client_config=_cfg(),
        transform=operator.methodcaller("read"),
    )
    assert ds[0] == b"a"
    assert ds._client is not None
    assert ds._client.user_agent_prefix.endswith("(md/dataset#map md/reader_type#sequential)")
    assert any(a.startswith(ds._client.user_agent_prefix) for _, t, a in proxy.user_agents() if prefix in t)


def test_the_peers_user_agent_object_is_accepted() -> None:
    import s3torchconnector._user_agent as peer_ua

    client = S3Client(
        REGION, endpoint="http://127.0.0.1:9", s3client_config=_cfg(), user_agent=peer_ua.UserAgent(["c"])
    )
    assert client.user_agent_prefix == peer_ua.UserAgent(["c"]).prefix
    with pytest.raises(TypeError, match="user_agent"):
        S3Client(REGION, endpoint="http://127.0.0.1:9", user_agent="not a UserAgent")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="List"):
        UserAgent("not a list")  # type: ignore[arg-type]


def test_a_part_size_below_5_mib_is_accepted_and_5_mib_is_used(seaweed, prefix: str) -> None:  # type: ignore[no-untyped-def]
    # s3torchconnector accepts it (its e2e suite passes part_size=756); S3 refuses parts under
    # 5 MiB but the last, so 5 MiB is used, with a warning; the config keeps the value given.
    with pytest.warns(PartSizeWarning, match="part_size 756"):
        cfg = _cfg(throughput_target_gbps=77, part_size=756, max_attempts=3)
    client = S3Client(REGION, endpoint=seaweed.endpoint, s3client_config=cfg)
    assert client.s3client_config.part_size == 756 and client._s3client_config is cfg
    assert client._get_native().part_size == 5 * MiB
    data = bytes(range(256)) * (6 * MiB // 256)  # two parts of an upload
    with client.put_object(BUCKET, prefix + "obj") as w:
        w.write(data)
    assert client.get_object(BUCKET, prefix + "obj").read() == data


def test_a_copy_whose_source_is_missing_names_the_source(seaweed, prefix: str) -> None:  # type: ignore[no-untyped-def]
    client = S3Client(REGION, endpoint=seaweed.endpoint, s3client_config=_cfg())
    src, dst = prefix + "missing-source", prefix + "destination"
    with pytest.raises(S3NotFoundError) as e:
        client.copy_object(BUCKET, src, BUCKET, dst)
    assert f"s3://{BUCKET}/{src}" in str(e.value) and "copy source" in str(e.value)
    assert e.value.key == src
    fs = S3FileSystem(REGION, s3_client=client)
    with pytest.raises(S3NotFoundError, match="missing-source"):
        fs.rename(f"s3://{BUCKET}/{src}", f"s3://{BUCKET}/{dst}")


def test_not_found_messages_carry_the_peers_phrases(seaweed, prefix: str) -> None:  # type: ignore[no-untyped-def]
    client = S3Client(REGION, endpoint=seaweed.endpoint, s3client_config=_cfg())
    with pytest.raises(S3NotFoundError, match="Service error: The object was not found") as e:
        client.head_object(BUCKET, prefix + "nope")
    assert e.value.code == "NotFound"
    with pytest.raises(S3NotFoundError, match="Service error: The key does not exist") as e:
        client.get_into(BUCKET, prefix + "nope", bytearray(10))
    assert e.value.code == "NoSuchKey"
    # A reader looks the size up first (a HEAD); to the user it is the read that failed.
    with pytest.raises(S3NotFoundError, match="Service error: The key does not exist"):
        client.get_object(BUCKET, prefix + "nope").read()


@pytest.mark.parametrize(
    "select, max_gap, gets",
    [
        ("all", 0, 1),  # every tensor: one contiguous range
        ("all", float("inf"), 1),
        ("weights", 0, 3),  # weights only: the biases between them are gaps
        ("weights", float("inf"), 1),
        ("layer 1", 0, 1),  # one layer: bias and weight are neighbours
    ],
)
def test_dcp_optimized_reader_coalesces_item_ranges_into_gets(
    proxy: FaultProxy, prefix: str, select: str, max_gap: float, gets: int
) -> None:
    # What the peer's e2e tests count by patching its private S3Client._get_object_stream,
    # counted here at the server: data GETs per load with S3ReaderConstructor.dcp_optimized.
    import torch
    import torch.distributed.checkpoint as dcp

    from s3torch import S3ReaderConstructor
    from s3torch.dcp import S3StorageReader, S3StorageWriter

    model = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.Linear(12, 12), torch.nn.Linear(9, 9))
    sd = model.state_dict()
    uri = f"s3://{BUCKET}/{prefix}ckpt"
    kw: Any = dict(endpoint=proxy.endpoint, s3client_config=_cfg())
    dcp.save(sd, storage_writer=S3StorageWriter(REGION, uri, **kw))
    wanted = {
        "all": lambda k: True,
        "weights": lambda k: k.endswith(".weight"),
        "layer 1": lambda k: k.startswith("1."),
    }[select]
    dest = {k: torch.zeros_like(v) for k, v in sd.items() if wanted(k)}
    before = proxy.requests_to(r"\.distcp", method="GET")
    ctor = S3ReaderConstructor.dcp_optimized(max_gap)
    dcp.load(dest, storage_reader=S3StorageReader(REGION, uri, reader_constructor=ctor, **kw))
    assert proxy.requests_to(r"\.distcp", method="GET") - before == gets
    for k, v in dest.items():
        assert torch.equal(v, sd[k]), k
