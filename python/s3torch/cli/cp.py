"""``s3torch cp``: copy a DCP checkpoint between a local directory and S3, either way.

Up: every file but the metadata streams into its own multipart upload straight from an
mmap of the file (``--jobs`` files at a time, each with its parts in flight), then the
``.metadata`` files are PUT, so the copy on S3 is loadable only once complete. Down: every
object lands by ranged GETs straight into an mmap of its (preallocated) file, a window of
pieces in flight across files, and the ``.metadata`` files last. Bytes are copied as they
are, so the copy is byte-identical. Every piece of an object is held to the version the
listing saw (If-Match its ETag): a checkpoint saved again while it is copied down fails the
copy (exit 4) instead of leaving files that mix two saves.
"""

from __future__ import annotations

import argparse
import mmap
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Tuple

from .. import _crt
from .._client import S3Client
from .._paths import UnsafeKeyError, local_path
from .._progress import Progress, human
from ._checkpoint import METADATA, local_files
from ._common import (
    NOT_FOUND,
    OK,
    USAGE,
    CLIError,
    add_connection_arguments,
    as_dir,
    list_all,
    make_client,
    progress_for,
    s3_uri,
)

HELP = "copy a DCP checkpoint between a local directory and S3"
DESCRIPTION = """Copy the DCP checkpoint SRC to DST, one of them s3://bucket/prefix and the other
a local directory (for example one written by torch's FileSystemWriter), byte for byte.
Every file under SRC is copied to the same relative path under DST. Data files go first,
many transfers in flight (multipart uploads, ranged GETs into memory-mapped files); the
.metadata file(s) go last, so an interrupted copy leaves no loadable checkpoint at DST.

Refuses (exit 2), before writing anything, an object whose key below the prefix would not
stay under DST as a path: "..", ".", or empty segments, an absolute path, a backslash, NUL
or another control character.

Refuses (exit 2) when DST already holds a checkpoint (a .metadata), unless --overwrite:
then DST's old .metadata is removed before anything else is written, and files DST holds
that SRC does not are left in place."""

PIECE = 64 << 20  # download: bytes per ranged GET handed to the CRT (it splits them into parts)
WINDOW = 16  # download: pieces in flight at once, across files
CHUNK = 16 << 20  # upload: bytes per write() into a multipart upload
PARTIAL = ".s3torch-partial"  # download: a .metadata's name until it is whole


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add this verb\'s arguments and options to ``p``."""
    p.add_argument("src", metavar="SRC", help="the checkpoint: a local directory or s3://bucket/prefix")
    p.add_argument("dst", metavar="DST", help="where to copy it: s3://bucket/prefix or a local directory")
    p.add_argument("--overwrite", action="store_true", help="replace a checkpoint already at DST")
    p.add_argument(
        "--jobs", type=int, default=8, metavar="N", help="upload: files uploaded at once, each multipart (default 8)"
    )
    add_connection_arguments(p)


def _is_metadata(name: str) -> bool:
    return os.path.basename(name).endswith(METADATA)


def _ordered(files: Dict[str, int]) -> Tuple[List[str], List[str]]:
    data = sorted(n for n in files if not _is_metadata(n))
    meta = sorted(n for n in files if _is_metadata(n))
    return data, meta


def run(args: argparse.Namespace) -> int:
    """Run the verb with the parsed ``args``; returns the exit code."""
    up, down = args.dst.startswith("s3://"), args.src.startswith("s3://")
    if up == down:
        raise CLIError("one of SRC and DST must be s3://bucket/prefix and the other a local directory", USAGE)
    if args.jobs < 1:
        raise CLIError("--jobs must be at least 1", USAGE)
    client = make_client(args)
    return _upload(client, args) if up else _download(client, args)


# --- local -> S3 ---------------------------------------------------------------------------


def _upload(client: S3Client, args: argparse.Namespace) -> int:
    src = os.path.abspath(args.src)
    if not os.path.isfile(os.path.join(src, METADATA)):
        raise CLIError(f"no DCP checkpoint at {src}: {os.path.join(src, METADATA)} does not exist", NOT_FOUND)
    bucket, key = s3_uri(args.dst)
    prefix = as_dir(key)
    dst = f"s3://{bucket}/{prefix}"
    if not prefix:
        raise CLIError(f"{args.dst}: give a key prefix to copy the checkpoint under, not a whole bucket", USAGE)
    files = local_files(src)
    existing = [o.key for o in list_all(client, bucket, prefix) if _is_metadata(o.key)]
    if existing and not args.overwrite:
        raise CLIError(f"{dst} already holds a checkpoint ({existing[0]}); --overwrite replaces it", USAGE)
    for k in existing:  # first, so a copy that fails halfway never leaves old metadata over new files
        client.delete_object(bucket, k)
    data, meta = _ordered(files)
    with progress_for("cp", f"{src} -> {dst}", total=sum(files.values())) as progress:
        with ThreadPoolExecutor(min(args.jobs, max(1, len(data))), thread_name_prefix="s3torch-cp") as pool:
            for f in [pool.submit(_put_file, client, bucket, prefix + n, os.path.join(src, n), progress) for n in data]:
                f.result()
        for n in meta:
            _put_file(client, bucket, prefix + n, os.path.join(src, n), progress)
    total = sum(files.values())
    print(f"copied {len(files)} files, {human(total)} ({total:,} bytes): {src} -> {dst}")
    return OK


def _put_file(client: S3Client, bucket: str, key: str, path: str, progress: Progress) -> None:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            client.put(bucket, key, b"")
            return
        m = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)
        view = memoryview(m)
        upload = client.upload(bucket, key)
        try:
            for a in range(0, size, CHUNK):
                upload.write(view[a : a + CHUNK])  # the upload holds the slice until its parts are sent
                progress.add(min(CHUNK, size - a))
            upload.complete()
        except BaseException:
            upload.abort()
            raise
        finally:
            del upload  # lets its slices of the map go
            view.release()
            try:
                m.close()
            except BufferError:  # a slice still held after a failure: the map goes with it
                pass


# --- S3 -> local ---------------------------------------------------------------------------


def _download(client: S3Client, args: argparse.Namespace) -> int:
    bucket, key = s3_uri(args.src)
    prefix = as_dir(key)
    src = f"s3://{bucket}/{prefix}"
    listed = list(list_all(client, bucket, prefix))
    files = {o.key[len(prefix) :]: o.size for o in listed}
    etags = {o.key[len(prefix) :]: o.etag for o in listed}
    if METADATA not in files:
        raise CLIError(f"no DCP checkpoint at {src}: {src}{METADATA} does not exist", NOT_FOUND)
    dst = os.path.abspath(args.dst)
    try:  # every key, before anything is removed or written
        paths = {name: local_path(dst, name, prefix + name) for name in files}
    except UnsafeKeyError as e:
        raise CLIError(f"{src}: {e} (it would not stay under {dst})", USAGE) from e
    existing = [n for n in local_files(dst) if _is_metadata(n)] if os.path.isdir(dst) else []
    if existing and not args.overwrite:
        raise CLIError(f"{dst} already holds a checkpoint ({existing[0]}); --overwrite replaces it", USAGE)
    for n in existing:
        os.remove(os.path.join(dst, n))
    data, meta = _ordered(files)
    total = sum(files.values())
    with progress_for("cp", f"{src} -> {dst}", total=total) as progress:
        try:
            _get_files(client, bucket, prefix, paths, [(n, files[n], etags[n]) for n in data], progress)
            # Each .metadata under a name of its own until whole: a copy that fails there
            # leaves none that a load would take for a checkpoint.
            partial = _partial_suffix(paths, meta)
            _get_files(client, bucket, prefix, paths, [(n, files[n], etags[n]) for n in meta], progress, partial)
        except _crt.S3ObjectChangedError as e:
            raise CLIError(
                f"s3://{bucket}/{e.key}: replaced while it was copied (something is saving to {src}); "
                f"{dst} holds a partial copy, with no .metadata of this copy, so nothing loads it. "
                "Copy again once the save is done"
            ) from e
    print(f"copied {len(files)} files, {human(total)} ({total:,} bytes): {src} -> {dst}")
    return OK


def _partial_suffix(paths: Dict[str, str], meta: List[str]) -> str:
    """PARTIAL, lengthened until no ``.metadata``'s partial name is the path of a copied file
    (a bucket may hold a key ``.metadata.s3torch-partial`` too)."""
    taken = set(paths.values())
    suffix = PARTIAL
    while any(paths[n] + suffix in taken for n in meta):
        suffix += "~"
    return suffix


def _get_files(
    client: S3Client,
    bucket: str,
    prefix: str,
    paths: Dict[str, str],
    files: List[Tuple[str, int, str]],
    progress: Progress,
    partial: str = "",
) -> None:
    """Every file (name, size, ETag as listed; at ``paths[name]``, checked by ``local_path``),
    by pieces of PIECE bytes, WINDOW of them in flight, each GET writing straight into the
    file's memory map and held to the listed version. With a ``partial`` suffix, each file is
    written under its path plus that suffix and renamed once every file is whole (removed if
    the copy fails)."""
    native = client._get_native()
    maps: List[Tuple[Any, Any, Any]] = []  # (file, mmap, memoryview), closed at the end
    pieces: List[Tuple[str, int, int, int, str]] = []  # (key, offset, length, index in maps, ETag)
    # (handle, piece), oldest first. A handle holds its slice of the view (so the map stays
    # open) until the CRT is done with it; dropping the handle lets the slice go.
    inflight: List[Tuple[Any, Tuple[str, int, int, int, str]]] = []
    written: List[str] = []  # under their partial names
    done = False
    try:
        for name, size, etag in files:
            path = paths[name] + partial
            os.makedirs(os.path.dirname(path), exist_ok=True)
            written.append(path)
            f = open(path, "wb+")
            f.truncate(size)
            if size == 0:  # a GET of nothing all the same: held to the listed version too
                f.close()
                pieces.append((prefix + name, 0, 0, -1, etag))
                continue
            m = mmap.mmap(f.fileno(), size)
            maps.append((f, m, memoryview(m)))
            pieces += [(prefix + name, a, min(PIECE, size - a), len(maps) - 1, etag) for a in range(0, size, PIECE)]
        for piece in pieces:
            key, offset, length, i, etag = piece
            if i < 0:
                handle = native.start_get_into(bucket, key, _crt.HostBuffer(0), None, None, etag)
            else:
                handle = native.start_get_into(bucket, key, maps[i][2][offset : offset + length], offset, length, etag)
            inflight.append((handle, piece))
            del handle
            if len(inflight) >= WINDOW:
                _finish(inflight.pop(0), progress)
        while inflight:
            _finish(inflight.pop(0), progress)
        done = True
    except BaseException:
        for h, _ in inflight:
            h.cancel()
            try:
                h.wait()
            except Exception:
                pass
        raise
    finally:
        inflight.clear()
        for f, m, view in maps:
            view.release()
            m.close()  # writes the pages back (MAP_SHARED) as the process ends at the latest
            f.close()
        if partial:
            for path in written:
                if done:
                    os.replace(path, path[: -len(partial)])
                elif os.path.exists(path):
                    os.remove(path)


def _finish(entry: Tuple[Any, Tuple[str, int, int, int, str]], progress: Progress) -> None:
    handle, (key, offset, length, _, _) = entry
    try:
        got = handle.wait()
    finally:
        # A failed GET's handle holds a slice of the file's map: let it go here, not with the
        # traceback, so the caller can close the map (else BufferError hides the error).
        del entry, handle
    if got != length:
        raise _crt.S3Exception(
            f"{key}: expected {length} bytes at offset {offset}, got {got} (changed during the copy?)"
        )
    progress.add(length)
