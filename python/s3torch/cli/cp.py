"""``s3torch cp``: copy a DCP checkpoint, or a folder of safetensors model weights (a Hugging
Face model), between a local directory and S3, either way.

Up: every file but the metadata streams into its own multipart upload, read a chunk at a
time (``--jobs`` files at a time, each with its parts in flight), then the ``.metadata``
files are PUT, so the copy on S3 is loadable only once complete. Down: every object lands
by ranged GETs straight into an mmap of its file, a window of pieces in flight across
files, then the ``.metadata`` files, each under a partial name until it is whole and synced.
Bytes are copied as they are, so the copy is byte-identical.

Both ways, every file is held to the version the listing saw: up its inode, size and mtime
(``_local_files.py``), down its ETag (If-Match). A checkpoint saved again while it is copied fails
the copy (exit 4) before any ``.metadata`` goes, instead of leaving a checkpoint that mixes
two saves. A disk that fills, or a local file that shrinks, is an error too, never a SIGBUS
(``_local_files.py``).

What "the metadata" is depends on what is copied (``Kind``): a DCP checkpoint's ``.metadata``;
a model folder's ``*.safetensors.index.json``. A model folder has readers that take any
``*.safetensors`` file they find (vLLM without an index), so down every file of one is written
under a partial name and renamed once whole and synced: a failed copy leaves no file that
holds less than its object.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Tuple

from .. import _crt
from .._client import S3Client
from .._create_only import write_create_only
from .._kinds import METADATA, WEIGHTS_SUFFIX, Kind, kind_of
from .._local_files import LocalFileChanged, NoRoom, check_stamp, get_files, put_file, stamp
from .._paths import UnsafeKeyError, local_path
from .._progress import Progress, human
from .._stored_checksum import ChecksumMismatch, FileCheck, stored_of
from .._uri import as_dir
from ._checkpoint import local_files
from ._common import (
    CORRUPT,
    NOT_FOUND,
    OK,
    USAGE,
    CLIError,
    add_connection_arguments,
    list_all,
    make_client,
    progress_for,
    s3_uri,
)

HELP = "copy a DCP checkpoint or a safetensors model folder between a local directory and S3"
DESCRIPTION = """Copy the DCP checkpoint SRC to DST, one of them s3://bucket/prefix and the other
a local directory (for example one written by torch's FileSystemWriter), byte for byte.
Every file under SRC is copied to the same relative path under DST. Data files go first,
many transfers in flight (multipart uploads, ranged GETs into memory-mapped files); the
.metadata file(s) go last, so an interrupted copy leaves no loadable checkpoint at DST.

SRC may be a model folder instead (no .metadata, and *.safetensors files: a Hugging Face
model with its config and tokenizer files): then its *.safetensors.index.json files play
the .metadata's part below, and the *.safetensors files with them are what "holds a model"
means. Down, every file of a model folder is written under a partial name and renamed once
whole and synced, so a failed copy leaves no file holding less than its object.

Refuses (exit 2), before writing anything, an object whose key below the prefix would not
stay under DST as a path: "..", ".", or empty segments, an absolute path, a backslash, NUL
or another control character.

Refuses (exit 2) when DST already holds a checkpoint (a .metadata), unless --overwrite:
then DST's old .metadata is removed before anything else is written (a model's index files,
then its *.safetensors files, in the folders the copy writes into), and files DST holds that
SRC does not are left in place. Up
without --overwrite, the .metadata is written create only (If-None-Match): one that a save
or another copy wrote to DST meanwhile is kept, and this copy fails (exit 2).

Down, every file is checked against the checksum S3 stores for it (one HEAD each), where
it has one that covers the object (a full-object CRC32, CRC32C or CRC64NVME, or a composite
one with its part sizes): a file that does not match fails the copy (exit 1) before its
.metadata is written; --no-verify skips this. Every file is synced to disk (fsync, as
torch's FileSystemWriter does) before the .metadata is written, and the .metadata before the
copy reports success. Every file gets its disk blocks before the first GET, and is open only
while a GET of it is in flight (a checkpoint of thousands of files copies under a limit of
1,024 open files). The bytes go straight to disk (O_DIRECT), past the page cache, from a ring
of buffers sized for --throughput-gbps (200 MiB at the default 10); on a filesystem without
O_DIRECT, through the page cache. A copy that does not fit in the free space of DST's
filesystem is refused (exit 4) before anything at DST is removed or written; one the
filesystem refuses anyway (a quota, a disk filling meanwhile) fails (exit 4) with the files it
had allocated or written removed."""

PARTIAL = ".s3torch-partial"  # download: a .metadata's name until it is whole
HEAD_THREADS = 16  # download: HEADs for the stored checksums at once


def _nothing_at(where: str, what: str) -> CLIError:
    return CLIError(
        f"no DCP checkpoint or safetensors model at {where}: {what} holds no {METADATA} and no *{WEIGHTS_SUFFIX} file",
        NOT_FOUND,
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add this verb\'s arguments and options to ``p``."""
    p.add_argument("src", metavar="SRC", help="the checkpoint: a local directory or s3://bucket/prefix")
    p.add_argument("dst", metavar="DST", help="where to copy it: s3://bucket/prefix or a local directory")
    p.add_argument("--overwrite", action="store_true", help="replace a checkpoint already at DST")
    p.add_argument(
        "--jobs", type=int, default=8, metavar="N", help="upload: files uploaded at once, each multipart (default 8)"
    )
    p.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="download: do not check each file against the checksum S3 stores for it",
    )
    add_connection_arguments(p)


def _ordered(files: Dict[str, int], kind: Kind) -> Tuple[List[str], List[str]]:
    data = sorted(n for n in files if not kind.is_marker(n))
    meta = sorted(n for n in files if kind.is_marker(n))
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
    if not os.path.isdir(src):
        raise CLIError(f"no DCP checkpoint or safetensors model at {src}: not a directory", NOT_FOUND)
    bucket, key = s3_uri(args.dst)
    prefix = as_dir(key)
    dst = f"s3://{bucket}/{prefix}"
    if not prefix:
        raise CLIError(f"{args.dst}: give a key prefix to copy the checkpoint under, not a whole bucket", USAGE)
    files = local_files(src)
    kind = kind_of(files)
    if kind is None:
        raise _nothing_at(src, "the directory")
    # The version of each file the copy is held to, from before anything is read.
    stamps = {n: stamp(os.lstat(os.path.join(src, n))) for n in files}
    existing = [prefix + n for n in kind.held((o.key[len(prefix) :] for o in list_all(client, bucket, prefix)), files)]
    if existing and not args.overwrite:
        raise CLIError(f"{dst} already holds {kind.noun} ({existing[0]}); --overwrite replaces it", USAGE)
    for k in existing:  # first, so a copy that fails halfway never leaves old metadata over new files
        client.delete_object(bucket, k)
    data, meta = _ordered(files, kind)

    def put(n: str, progress: Progress, exclusive: bool = False) -> None:
        put_file(client, bucket, prefix + n, os.path.join(src, n), stamps[n], progress, exclusive)

    try:
        with progress_for("cp", f"{src} -> {dst}", total=sum(files.values())) as progress:
            with ThreadPoolExecutor(min(args.jobs, max(1, len(data))), thread_name_prefix="s3torch-cp") as pool:
                try:
                    for f in [pool.submit(put, n, progress) for n in data]:
                        f.result()
                except BaseException:
                    pool.shutdown(cancel_futures=True)  # the files not started yet never start
                    raise
            for n in data:  # a file saved again after its upload: the .metadata must not go
                path = os.path.join(src, n)
                try:
                    check_stamp(path, stamps[n], os.lstat(path))
                except FileNotFoundError as e:
                    raise LocalFileChanged(path) from e
            for n in meta:  # without --overwrite, create only: a checkpoint saved there meanwhile stays
                if args.overwrite:
                    put(n, progress)
                else:
                    write_create_only(functools.partial(put, n, progress), f"s3://{bucket}/{prefix}{n}")
    except _crt.S3ObjectExistsError as e:
        raise CLIError(
            f"s3://{bucket}/{e.key}: written by something else (a save or another copy) while this copy ran, "
            f"so this copy left it as it is and is not complete; the data files of the same names are this "
            f"copy's. Copy again with --overwrite, or to another prefix",
            USAGE,
        ) from e
    except LocalFileChanged as e:
        raise CLIError(
            f"{e.path}: changed while it was copied (something is saving to {src}); {dst} holds no "
            ".metadata of this copy, so nothing loads it. Copy again once the save is done"
        ) from e
    total = sum(files.values())
    print(f"copied {len(files)} files, {human(total)} ({total:,} bytes): {src} -> {dst}")
    return OK


# --- S3 -> local ---------------------------------------------------------------------------


def _download(client: S3Client, args: argparse.Namespace) -> int:
    bucket, key = s3_uri(args.src)
    prefix = as_dir(key)
    src = f"s3://{bucket}/{prefix}"
    listed = list(list_all(client, bucket, prefix))
    files = {o.key[len(prefix) :]: o.size for o in listed}
    etags = {o.key[len(prefix) :]: o.etag for o in listed}
    kind = kind_of(files)
    if kind is None:
        raise _nothing_at(src, "the prefix")
    dst = os.path.abspath(args.dst)
    try:  # every key, before anything is removed or written
        paths = {name: local_path(dst, name, prefix + name) for name in files}
    except UnsafeKeyError as e:
        raise CLIError(f"{src}: {e} (it would not stay under {dst})", USAGE) from e
    existing = kind.held(local_files(dst), files) if os.path.isdir(dst) else []
    if existing and not args.overwrite:
        raise CLIError(f"{dst} already holds {kind.noun} ({existing[0]}); --overwrite replaces it", USAGE)
    total = sum(files.values())
    _check_room(dst, paths, total)
    checks = _stored_checks(client, bucket, prefix, files, etags) if args.verify else {}
    for n in existing:
        os.remove(os.path.join(dst, n))
    data, meta = _ordered(files, kind)
    with progress_for("cp", f"{src} -> {dst}", total=total) as progress:
        try:
            # Each .metadata (each file of a model) under a name of its own until whole: a copy
            # that fails there leaves none that a load would take for whole.
            partial = _partial_suffix(paths, data + meta if kind.whole_files else meta)
            whole = partial if kind.whole_files else ""
            for names, suffix in ((data, whole), (meta, partial)):
                todo = [(n, files[n], etags[n]) for n in names]
                get_files(client, bucket, prefix, paths, todo, progress, suffix, checks=checks)
        except ChecksumMismatch as e:
            raise CLIError(
                f"{e}; the copy stopped before its .metadata"
                + (", and removed its files" if kind.whole_files else f" ({dst} holds a copy nothing loads)"),
                CORRUPT,
            ) from e
        except NoRoom as e:
            raise CLIError(
                f"{e.why()}; the copy stopped before its .metadata, and removed the files it had "
                + ("only allocated" if e.removed == "allocated" else "written")
            ) from e
        except _crt.S3ObjectChangedError as e:
            raise CLIError(
                f"s3://{bucket}/{e.key}: replaced while it was copied (something is saving to {src}); "
                f"{dst} holds a partial copy, with no .metadata of this copy, so nothing loads it. "
                "Copy again once the save is done"
            ) from e
    print(f"copied {len(files)} files, {human(total)} ({total:,} bytes): {src} -> {dst}")
    if args.verify:
        algorithms = sorted({c.stored.algorithm for c in checks.values()})
        unchecked = len(files) - len(checks)
        print(
            f"checked {len(checks)} of {len(files)} files against the checksum S3 stores for them"
            + (f" ({', '.join(algorithms)})" if algorithms else "")
            + (f"; {unchecked} have none that covers the object, not checked" if unchecked else "")
        )
    return OK


def _stored_checks(
    client: S3Client, bucket: str, prefix: str, files: Dict[str, int], etags: Dict[str, str]
) -> Dict[str, FileCheck]:
    """Object key -> a check of the file against the checksum S3 stores for it, for each file
    that has one covering it (a HEAD each, HEAD_THREADS at once; a composite one with its part
    sizes). An object whose HEAD answers another version than the listing saw fails the copy
    before anything at DST is touched."""
    native = client._get_native()
    names = sorted(files)
    with ThreadPoolExecutor(max(1, min(HEAD_THREADS, len(names))), thread_name_prefix="s3torch-cp-head") as pool:
        answers = list(pool.map(lambda n: stored_of(native, bucket, prefix + n), names))
    checks: Dict[str, FileCheck] = {}
    for name, (stored, etag) in zip(names, answers):
        if etag and etags[name] and etag != etags[name]:
            raise CLIError(
                f"s3://{bucket}/{prefix}{name}: replaced since it was listed (something is saving to "
                f"s3://{bucket}/{prefix}); nothing was copied. Copy again once the save is done"
            )
        if stored.algorithm:
            checks[prefix + name] = FileCheck(f"s3://{bucket}/{prefix}{name}", files[name], stored)
    return checks


def _check_room(dst: str, paths: Dict[str, str], total: int) -> None:
    """Refuse, before anything at ``dst`` is touched, a copy that cannot fit: ``total`` bytes
    against the free space of the filesystem ``dst`` is (to be) on, plus what the files it
    replaces hold. (Allocating each file before its GETs is what guarantees it; this keeps a
    copy that cannot fit from removing the old checkpoint first.)"""
    where = dst
    while not os.path.isdir(where):
        where = os.path.dirname(where)
    usage = shutil.disk_usage(where)
    if usage.total == 0:  # a filesystem that reports no sizes (some FUSE ones): nothing to go by
        return
    replaced = sum(os.path.getsize(p) for p in paths.values() if os.path.isfile(p))
    free = usage.free
    if total > free + replaced:
        raise CLIError(
            f"{dst}: the checkpoint needs {human(total)} and its filesystem has {human(free)} free"
            + (f" (+{human(replaced)} in files the copy would replace)" if replaced else "")
            + "; nothing was copied"
        )


def _partial_suffix(paths: Dict[str, str], meta: List[str]) -> str:
    """PARTIAL, lengthened until no partial name of a file in ``meta`` is the path of a copied
    file (a bucket may hold a key ``.metadata.s3torch-partial`` too)."""
    taken = set(paths.values())
    suffix = PARTIAL
    while any(paths[n] + suffix in taken for n in meta):
        suffix += "~"
    return suffix
