"""What a failed read during a DCP load raises: the item whose bytes failed, and whether the
checkpoint or the network is to blame (no server: a fake native client)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.distributed.checkpoint.metadata import MetadataIndex
from torch.distributed.checkpoint.planner import LoadItemType, ReadItem

from s3torch import _crt
from s3torch.dcp import CheckpointConnectionError, CheckpointCorruptError, CheckpointReadError
from s3torch.dcp._errors import read_error
from s3torch.dcp._parallel_load import ParallelLoader, _Item
from tests.unit.test_staging import FakeNative


def _s3_error(cls: type = _crt.S3Exception, **attrs: Any) -> _crt.S3Exception:
    e = cls("GetObject s3://b/k: failed")
    for k, v in attrs.items():
        setattr(e, k, v)
    return e


def test_server_and_network_failures_are_read_errors_not_corruption() -> None:
    e = _s3_error(code="SlowDown", http_status=503, request_id="R1", bucket="b", key="k")
    got = read_error("s3://b/k item w", e)
    assert isinstance(got, CheckpointReadError) and not isinstance(got, CheckpointCorruptError)
    assert (got.code, got.http_status, got.request_id, got.key) == ("SlowDown", 503, "R1", "k")
    assert "s3://b/k item w: cannot read its bytes" in str(got) and "may be intact" in str(got)
    assert isinstance(read_error("w", _s3_error(crt_error="AWS_IO_SOCKET_CLOSED")), CheckpointReadError)


def test_a_failed_connection_stays_a_connection_error() -> None:
    class Refused(_crt.S3Exception, ConnectionError):  # as the native core's connection errors are
        pass

    got = read_error("w", _s3_error(Refused, crt_error="AWS_IO_SOCKET_CONNECTION_REFUSED"))
    assert isinstance(got, CheckpointConnectionError) and isinstance(got, ConnectionError)
    assert isinstance(got, CheckpointReadError) and got.crt_error == "AWS_IO_SOCKET_CONNECTION_REFUSED"


def test_missing_or_truncated_files_are_corruption() -> None:
    assert isinstance(read_error("w", _s3_error(http_status=416)), CheckpointCorruptError)
    assert "truncated?" in str(read_error("w", _s3_error(http_status=416)))
    assert isinstance(read_error("w", _s3_error(_crt.S3NotFoundError)), CheckpointCorruptError)


@pytest.mark.parametrize("cls", [_crt.S3PermissionError, _crt.S3TimeoutError, _crt.S3CancelledError])
def test_access_timeout_and_cancellation_pass_through(cls: type) -> None:
    e = _s3_error(cls)
    assert read_error("w", e) is e


def test_the_item_named_is_the_one_whose_read_failed() -> None:
    class FailAt(FakeNative):
        def start_get_into(self, bucket: str, key: str, buf: Any, offset: int, length: int) -> Any:
            h = super().start_get_into(bucket, key, torch.frombuffer(buf, dtype=torch.uint8), offset, length)
            if offset == 3000:
                h.error = _s3_error(http_status=500, code="InternalError")
            return h

    native = FailAt({"f": bytes(10_000)})
    loader = ParallelLoader(native, "b", verify=True)  # type: ignore[arg-type]

    def item(fqn: str, off: int) -> _Item:
        idx = MetadataIndex(fqn)
        req = ReadItem(LoadItemType.TENSOR, idx, torch.Size([0]), idx, torch.Size([0]), torch.Size([1]))
        return _Item(req, "f", off, 1000)

    items = [item("first", 0), item("second", 1000), item("third", 3000), item("fourth", 5000)]
    with pytest.raises(CheckpointReadError, match=r"s3://b/f item third: cannot read its bytes"):
        loader._probe(items)
