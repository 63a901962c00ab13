"""What a URI names: one safetensors file, an index (``*.safetensors.index.json``) and the shards
it maps, or a prefix holding either. Headers of every file are read concurrently (the first
``HEAD_GUESS`` bytes of each in one batch of GETs, the rest of a longer header after) and
validated before anything else happens.

- ``s3://b/dir/model.safetensors``: the file.
- ``s3://b/dir/model.safetensors.index.json`` (any key ending in ``.json``): the index; its
  ``weight_map`` names each tensor's shard, relative to the index's folder.
- ``s3://b/dir/`` (a key ending in ``/``, or none): the one ``*.safetensors.index.json``
  directly under it if there is one, else every ``*.safetensors`` directly under it.
"""

from __future__ import annotations

import json
import posixpath
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from .. import _crt
from .._listing import pages
from .._stored_checksum import Stored
from .._stored_checksum import stored_of as _stored
from ._errors import FileChangedError, HeaderError, MissingShardError, TruncatedFileError, read_error
from ._header import MAX_HEADER, PREFIX, Header, TensorInfo, header_length, parse_header
from ._pieces import has_pieces

HEAD_GUESS = 256 * 1024  # first GET of each file: most headers fit (MoE models' can be MBs)
HEAD_THREADS = 8  # HEADs (stored checksums) in flight at once, beside the header GETs
MAX_INDEX = MAX_HEADER  # bytes of an index file
INDEX_SUFFIX = ".safetensors.index.json"
FILE_SUFFIX = ".safetensors"


@dataclass
class ShardFile:
    """One safetensors object and its validated header."""

    bucket: str
    key: str
    size: int
    header: Header
    # Names to load from this file when an index chose them (None: every tensor).
    names: Optional[List[str]] = None
    # The stored checksum (None: not asked for, verify_checksums=False), and when it can be
    # checked, the file's first header.data_start bytes (the length prefix and the header).
    stored: Optional[Stored] = None
    head: bytes = b""
    etag: str = ""  # the version the header was read from; every later GET must answer the same

    @property
    def where(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass
class Source:
    """The files behind a URI and which file holds each tensor."""

    uri: str
    files: List[ShardFile]
    metadata: Optional[Dict[str, Any]]
    tensors: Dict[str, Tuple[ShardFile, TensorInfo]] = field(default_factory=dict)  # in load order


def _get_headers(
    native: "_crt.NativeClient", bucket: str, keys: List[str], why: Dict[str, str], verify: bool
) -> List[ShardFile]:
    """Read and validate the header of every key, all first GETs in flight at once (and with
    ``verify``, a HEAD of each for its stored checksum meanwhile). ``why``: key -> what named
    it, for the error when it is missing."""
    bufs = [_crt.HostBuffer(HEAD_GUESS) for _ in keys]
    handles: List[Any] = []
    out: List[ShardFile] = []
    pool = ThreadPoolExecutor(min(HEAD_THREADS, len(keys)), thread_name_prefix="s3torch-head") if verify else None
    heads: Dict[str, "Future[Any]"] = {}
    try:
        if pool is not None:
            heads = {key: pool.submit(_stored, native, bucket, key) for key in keys}
        for key, buf in zip(keys, bufs):
            try:
                handles.append(native.start_get_into(bucket, key, buf, 0, HEAD_GUESS))
            except _crt.S3Exception as e:
                raise _named(read_error(f"s3://{bucket}/{key}", e), why.get(key)) from e
        for key, buf, h in zip(keys, bufs, handles):
            where = f"s3://{bucket}/{key}"
            try:
                got = h.wait()
            except _crt.S3Exception as e:
                raise _named(read_error(where, e), why.get(key)) from e
            size = h.object_size
            first = memoryview(buf)[:got]
            if got < min(size, HEAD_GUESS):
                raise TruncatedFileError(f"{where}: read {got} of the first {min(size, HEAD_GUESS)} bytes (truncated?)")
            n = header_length(bytes(first[:PREFIX]), where, size)
            if PREFIX + n <= got:
                raw = bytes(first[PREFIX : PREFIX + n])
            else:  # a long header: the rest of it, now that its length is checked
                rest = bytearray(PREFIX + n - got)
                try:
                    more = native.get_into(bucket, key, rest, got, len(rest), h.etag)  # the same version
                except _crt.S3Exception as e:
                    raise read_error(where, e) from e
                if more != len(rest):
                    raise TruncatedFileError(f"{where}: the header ends early ({got + more} of {PREFIX + n} bytes)")
                raw = bytes(first[PREFIX:]) + bytes(rest)
            f = ShardFile(bucket, key, size, parse_header(raw, where, size), etag=h.etag)
            if key in heads:
                try:
                    f.stored, stored_etag = heads[key].result()
                except _crt.S3Exception as e:
                    raise _named(read_error(where, e), why.get(key)) from e
                if stored_etag and h.etag and stored_etag != h.etag:
                    # The HEAD answered from another version than the header's GET: its
                    # checksum is not of the bytes this load reads.
                    raise FileChangedError(
                        f"{where}: the object was replaced while this load read it (ETag {h.etag} for its "
                        f"header, {stored_etag} for its stored checksum). Load again once the writer is done"
                    )
                if f.stored.algorithm:
                    f.head = bytes(first[:PREFIX]) + raw
            out.append(f)
        return out
    finally:
        for h in handles:
            if not h.done():
                h.cancel()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _named(e: "_crt.S3Exception", why: Optional[str]) -> "_crt.S3Exception":
    if why and isinstance(e, MissingShardError):
        e.args = (f"{e.args[0] if e.args else ''} ({why})",)
    return e


def _read_index(native: "_crt.NativeClient", bucket: str, key: str) -> Tuple[Dict[str, str], Any]:
    """The index's weight_map (tensor -> shard key) and its metadata, validated."""
    where = f"s3://{bucket}/{key}"
    try:
        info = native.head(bucket, key)
        size = info.size
        if size > MAX_INDEX:
            raise HeaderError(f"{where}: an index of {size} bytes exceeds the {MAX_INDEX}-byte bound")
        # The version the HEAD measured (so the bound holds): a replaced index fails the GET.
        raw = native.get_bytes(bucket, key, 0, None, size, info.etag)
    except _crt.S3NotFoundError as e:
        raise MissingShardError(f"{where}: no such index: {e}") from e
    except HeaderError:
        raise
    except _crt.S3Exception as e:
        raise read_error(where, e) from e
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # RecursionError: nested too deep
        raise HeaderError(f"{where}: the index is not valid JSON: {e}") from None
    wm = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(wm, dict) or not all(isinstance(v, str) for v in wm.values()):
        raise HeaderError(f"{where}: the index has no weight_map of tensor name -> file name")
    folder = posixpath.dirname(key)
    shards: Dict[str, str] = {}
    for name, rel in wm.items():
        parts = rel.split("/")
        if not rel or rel.startswith("/") or "\\" in rel or any(p in ("", ".", "..") for p in parts):
            raise HeaderError(f"{where}: tensor {name!r} names the shard {rel!r}, not a file beside the index")
        shards[name] = posixpath.join(folder, rel) if folder else rel
    return shards, doc.get("metadata")


def _list(native: "_crt.NativeClient", bucket: str, prefix: str) -> List[str]:
    try:
        return [o.key for page in pages(native, bucket, prefix, "/") for o in page.objects]
    except _crt.S3Exception as e:
        raise read_error(f"s3://{bucket}/{prefix}", e) from e


def resolve(native: "_crt.NativeClient", uri: str, bucket: str, key: str) -> Tuple[Optional[str], List[str]]:
    """What ``key`` names: ``(index key, [])`` for an index, or ``(None, files)``. A folder
    (``""`` or ending in ``/``) lists once: its one ``*.safetensors.index.json``, else its
    ``*.safetensors`` (MissingShardError when neither; HeaderError for several indexes); a key
    ending in ``.json`` is an index; any other key is the one file."""
    if key == "" or key.endswith("/"):
        listed = _list(native, bucket, key)
        indexes = [k for k in listed if k.endswith(INDEX_SUFFIX)]
        if len(indexes) > 1:
            raise HeaderError(f"{uri}: several indexes ({', '.join(indexes)}): name the one to load")
        if indexes:
            return indexes[0], []
        names = sorted(k for k in listed if k.endswith(FILE_SUFFIX))
        if not names:
            raise MissingShardError(f"{uri}: no {FILE_SUFFIX} file and no {INDEX_SUFFIX} under this prefix")
        return None, names
    if key.endswith(".json"):
        return key, []
    return None, [key]


def open_source(native: "_crt.NativeClient", uri: str, bucket: str, key: str, verify: bool = False) -> Source:
    """Resolve ``uri`` (already split into bucket and key) and read every header (``verify``:
    and every file's stored checksum)."""
    return open_resolved(native, uri, bucket, *resolve(native, uri, bucket, key), verify=verify)


def open_resolved(
    native: "_crt.NativeClient",
    uri: str,
    bucket: str,
    index_key: Optional[str],
    names: List[str],
    verify: bool = False,
) -> Source:
    """The Source of what :func:`resolve` found: the files (``names``), or those the index
    names, every header read."""
    if index_key is None:
        return _assemble(uri, _get_headers(native, bucket, names, {}, verify), None)
    shards, metadata = _read_index(native, bucket, index_key)
    order: List[str] = sorted(set(shards.values()))
    why = {k: f"named by the index s3://{bucket}/{index_key}" for k in order}
    files = _get_headers(native, bucket, order, why, verify)
    by_key = {f.key: f for f in files}
    for f in files:
        f.names = []
    for name, shard in shards.items():
        f = by_key[shard]
        if name not in f.header.tensors:
            raise HeaderError(f"s3://{bucket}/{index_key}: tensor {name!r} is not in its shard {f.where}")
        assert f.names is not None
        f.names.append(name)
    return _assemble(uri, files, metadata if isinstance(metadata, dict) else None)


def _assemble(uri: str, files: List[ShardFile], metadata: Optional[Dict[str, Any]]) -> Source:
    src = Source(uri, files, metadata if metadata is not None or len(files) != 1 else files[0].header.metadata)
    for f in files:
        infos = f.header.tensors.values()
        if f.names is not None:
            chosen = set(f.names)
            infos = [t for t in infos if t.name in chosen]  # type: ignore[assignment]
        for t in infos:
            if t.name in src.tensors:
                other = src.tensors[t.name][0]
                why = (
                    ": pieces of a distributed save, which dcp.load with S3HuggingFaceStorageReader puts together"
                    if has_pieces([other, f])
                    else ""
                )
                raise HeaderError(f"{uri}: tensor {t.name!r} is in both {other.where} and {f.where}{why}")
            src.tensors[t.name] = (f, t)
    return src
