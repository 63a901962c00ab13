"""Small shared helpers: s3:// paths through pathlib, int checks, public docstrings."""

from __future__ import annotations

from pathlib import Path

import pytest

from s3torch._checks import is_int, is_number
from s3torch._uri import s3_path


@pytest.mark.parametrize(
    "path, expected",
    [
        ("s3://bucket/key", "s3://bucket/key"),
        (Path("s3://bucket/a/b"), "s3://bucket/a/b"),  # pathlib collapsed it to "s3:/bucket/a/b"
        ("s3:/bucket/key", "s3://bucket/key"),
        ("/local/file", "/local/file"),
    ],
)
def test_s3_path(path: object, expected: str) -> None:
    assert s3_path(path) == expected  # type: ignore[arg-type]


def test_int_checks() -> None:
    assert is_int(3) and is_int(0) and not is_int(True) and not is_int(3.0) and not is_int("3")
    assert is_number(3) and is_number(2.5) and not is_number(False) and not is_number(None)


def test_storage_writer_docstring() -> None:
    from s3torch.dcp import S3StorageWriter

    assert S3StorageWriter.__doc__ and "Write DCP checkpoints" in S3StorageWriter.__doc__


def test_free_ports_are_distinct_and_free() -> None:
    """A local server's ports (SeaweedFS takes 12): chosen one at a time, a port let go could
    be handed out twice, and the server then did not start (a CI run's `s3torch serve`)."""
    import socket

    from s3torch._servers import free_ports

    for _ in range(20):
        ports = free_ports(12)
        assert len(set(ports)) == 12
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", port))
