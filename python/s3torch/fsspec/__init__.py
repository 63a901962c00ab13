"""s3torch as an fsspec filesystem: what reads and writes through fsspec (pandas, pyarrow, Hugging
Face ``datasets``, Lightning's loggers, torch's ``FsspecWriter``/``FsspecReader``) on s3torch's
engine, with no s3fs.

``fsspec.open("s3torch://bucket/key")`` and ``fsspec.filesystem("s3torch", ...)`` find it by
the package's entry point. To serve ``s3://`` as well, in place of s3fs, call :func:`register`
(once per process: a spawned worker calls it again)::

    import s3torch.fsspec
    s3torch.fsspec.register()             # s3:// and s3a:// now go through s3torch
    df = pandas.read_parquet("s3://bucket/table.parquet")

See :class:`S3TorchFileSystem` for the options, docs/fsspec.md for what each call does, and
docs/migrating.md for what differs from s3fs.
"""

from __future__ import annotations

from typing import Any, Iterable

from .filesystem import S3TorchFileSystem

__all__ = ["S3TorchAsyncFileSystem", "S3TorchFileSystem", "register"]


def __getattr__(name: str) -> Any:
    # Imported when asked for: it needs fsspec's AsyncFileSystemWrapper (fsspec 2024.12 and
    # later), which the synchronous filesystem does not.
    if name == "S3TorchAsyncFileSystem":
        from ._async import S3TorchAsyncFileSystem

        return S3TorchAsyncFileSystem
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register(protocols: Iterable[str] = ("s3", "s3a")) -> None:
    """Make fsspec open ``protocols`` (default ``s3://`` and ``s3a://``) with
    :class:`S3TorchFileSystem`, replacing what was registered for them (s3fs) in this process."""
    import fsspec

    for protocol in protocols:
        fsspec.register_implementation(protocol, S3TorchFileSystem, clobber=True)
