"""Model weights in the safetensors format on S3, as ``s3torch info`` and ``verify`` see them: a
``.safetensors`` file, an index and the shards it names, or a folder of either. A folder that
holds a DCP checkpoint's ``.metadata`` is the checkpoint's (the verbs describe that)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from .. import _crt
from .._client import S3Client
from .._progress import human
from .._text import shown as text
from .._uri import as_dir
from ._checkpoint import METADATA
from ._common import CORRUPT, NOT_FOUND, OK, CLIError, progress_for, s3_uri

SUFFIXES = (".safetensors", ".json")
STREAM_AHEAD = 64 << 20  # bytes a verify's streaming GET reads ahead


@dataclass
class PieceSource:
    """A folder of a distributed save's files (no index): each tensor's pieces, checked to
    tile it (``safetensors/_pieces.py``). What ``open_weights`` answers for one, beside a
    ``Source``."""

    uri: str
    files: List[Any]  # ShardFile
    pieces: Dict[str, Any]  # name -> Pieces, in file order
    metadata: Optional[Dict[str, Any]] = None


def open_weights(client: S3Client, location: str) -> Optional[Any]:
    """The weights ``location`` names, every header read (a ``safetensors._source.Source``, or
    a ``PieceSource`` for a folder of a distributed save's pieces), or None when it names
    none: not on S3, or a folder that holds a DCP ``.metadata`` or neither ``*.safetensors``
    nor an index (the checkpoint's verbs say what is there). A key ending in ``.safetensors``
    or ``.json`` is weights whatever is beside it. Pieces that do not tile a tensor (a piece
    missing, or overlapping another) exit CORRUPT, naming the tensor and the files."""
    from ..safetensors import SafetensorsError
    from ..safetensors._errors import MissingShardError
    from ..safetensors._pieces import gather, has_pieces
    from ..safetensors._source import _get_headers, open_resolved, resolve

    if not location.startswith("s3://"):
        return None
    bucket, key = s3_uri(location)
    native = client._get_native()
    folder = not key.endswith(SUFFIXES)
    if folder:
        key = as_dir(key)
        try:
            native.head(bucket, key + METADATA)
            return None  # a DCP checkpoint
        except _crt.S3NotFoundError:
            pass
    uri = f"s3://{bucket}/{key}"
    try:
        try:
            found = resolve(native, uri, bucket, key)  # a folder is listed once, here
        except MissingShardError:
            return None  # a folder of neither (only a folder's resolve raises it)
        index_key, names = found
        if index_key is None:
            files = _get_headers(native, bucket, names, {}, True)
            if has_pieces(files):
                try:
                    return PieceSource(uri, files, gather(uri, files))
                except MissingShardError as e:  # no piece holds some elements: the folder is short of a file
                    raise CLIError(f"{e}", CORRUPT) from e
        return open_resolved(native, uri, bucket, index_key, names, verify=True)
    except MissingShardError as e:
        raise CLIError(str(e), NOT_FOUND) from e
    except SafetensorsError as e:  # a header or index that lies: what verify is for
        raise CLIError(f"{e}", CORRUPT) from e


def _checksum(stored: Any) -> str:
    if stored is None or not stored.algorithm:
        return f"none ({stored.why_not})" if stored is not None else "none"
    return (
        f"composite {stored.algorithm} of {stored.parts} parts" if stored.parts else f"full-object {stored.algorithm}"
    )


def describe(src: Any) -> Dict[str, Any]:
    """The files of ``src`` (an :func:`open_weights` answer: size, tensors, stored checksum),
    every tensor and the metadata: headers only."""
    per_file: Dict[str, int] = {}
    tensors: List[Dict[str, Any]] = []
    if isinstance(src, PieceSource):  # a tensor in pieces: its whole shape, its pieces' files
        for name, g in src.pieces.items():
            f, t, _ = g.parts[0]
            # The header's shape counts F4 elements, two a byte; the pieces' offsets torch's.
            packed = t.shape[-1] // t.torch_shape(f.where)[-1] if t.shape and t.torch_shape(f.where)[-1] else 1
            tensors.append(
                {
                    "name": name,
                    "dtype": t.dtype.name,
                    "shape": [*g.size[:-1], g.size[-1] * packed] if g.size else [],
                    "bytes": sum(p.nbytes for _, p, _ in g.parts),
                    "file": f.key,
                    "pieces": [{"file": pf.key, "offsets": list(o), "shape": list(p.shape)} for pf, p, o in g.parts],
                }
            )
            for pf, _, _ in g.parts:
                per_file[pf.key] = per_file.get(pf.key, 0) + 1
    for name, (f, t) in getattr(src, "tensors", {}).items():
        per_file[f.key] = per_file.get(f.key, 0) + 1
        tensors.append({"name": name, "dtype": t.dtype.name, "shape": list(t.shape), "bytes": t.nbytes, "file": f.key})
    files = [
        {
            "file": f"s3://{f.bucket}/{f.key}",
            "size": f.size,
            "tensors": per_file.get(f.key, 0),
            "checksum": _checksum(f.stored),
        }
        for f in src.files
    ]
    return {
        "weights": src.uri,
        "format": "safetensors",
        "distributed": isinstance(src, PieceSource),  # a distributed save's pieces, no index
        "metadata": src.metadata,
        "files": files,
        "tensors": tensors,
        "totals": {
            "files": len(files),
            "tensors": len(tensors),
            "tensor_bytes": sum(t["bytes"] for t in tensors),
            "file_bytes": sum(f["size"] for f in files),
        },
    }


def print_description(d: Dict[str, Any], limit: int) -> None:
    """``describe``'s answer as ``s3torch info`` prints it (outside text shown escaped)."""
    t = d["totals"]
    kind = "safetensors, the pieces of a distributed save" if d["distributed"] else "safetensors"
    print(f"weights      {text(d['weights'])}  ({kind})")
    print(
        f"total        {t['tensors']} tensors ({human(t['tensor_bytes'])}), {t['files']} files, "
        f"{human(t['file_bytes'])} ({t['file_bytes']:,} bytes)"
    )
    if d["metadata"]:
        shown = ", ".join(f"{text(str(k))}={text(str(v))}" for k, v in list(d["metadata"].items())[:8])
        print(f"metadata     {shown}")
    print("\nfiles:")
    for f in d["files"]:
        print(f"  {text(f['file'])}  {f['size']:,} bytes  {f['tensors']} tensors  checksum: {text(f['checksum'])}")
    print("\ntensors:")
    width = max([len(text(x["name"])) for x in d["tensors"][:limit]] + [3])
    for x in d["tensors"][:limit]:
        shape = str(tuple(x["shape"]))
        pieces = f"  in {len(x['pieces'])} pieces" if len(x.get("pieces", ())) > 1 else ""
        print(f"  {text(x['name']):<{width}}  {x['dtype']:<9} {shape:<20} {human(x['bytes']):>10}{pieces}")
    if len(d["tensors"]) > limit:
        print(f"  ... {len(d['tensors']) - limit} more (--tensors N, or --json)")


def verify(client: S3Client, src: Any) -> int:
    """Read every file of ``src`` (an :func:`open_weights` answer) whole, once, streamed
    (bounded memory), and check it against the checksum S3 stores with it; the headers were
    validated when the files were opened. Exit code: OK, or CORRUPT naming every file that
    failed."""
    from ..safetensors import SafetensorsError
    from ..safetensors._verify import FileCheck

    native = client._get_native()
    total = sum(f.size for f in src.files)
    failed: List[str] = []
    unchecked = 0
    t0 = time.perf_counter()
    with progress_for("verify", src.uri, total=total) as progress:
        for f in src.files:
            stored = f.stored
            if stored is None or not stored.algorithm:
                print(f"UNCHECKED  {text(f.where)}: not checked: {text(stored.why_not if stored else 'no checksum')}")
                unchecked += 1
                progress.add(f.size)
                continue
            check = FileCheck(f.where, f.size, stored)
            outcome: Optional[str] = None
            try:
                stream = native.get_stream(f.bucket, f.key, 0, f.size, STREAM_AHEAD, f.etag) if f.size else None
                at = 0
                try:
                    while stream is not None:
                        chunk = stream.next_chunk()
                        if chunk is None:
                            break
                        view = memoryview(chunk)
                        check.add(at, view)
                        at += len(view)
                        progress.add(len(view))
                finally:
                    if stream is not None:
                        stream.close()
                outcome = check.verify()
            except (SafetensorsError, _crt.S3Exception) as e:
                failed.append(f.where)
                print(f"CORRUPT    {text(f.where)}: {text(str(e))}")
                continue
            if outcome.startswith("not checked"):
                failed.append(f.where)
                print(f"CORRUPT    {text(f.where)}: {text(outcome)}")
            else:
                print(f"OK         {text(f.where)}: {outcome}")
    secs = max(time.perf_counter() - t0, 1e-9)
    if failed:
        print(f"{text(src.uri)}: {len(failed)} of {len(src.files)} files failed verification")
        return CORRUPT
    note = (
        f"; {unchecked} file has no stored checksum and was not checked"
        if unchecked == 1
        else f"; {unchecked} files have no stored checksum and were not checked"
        if unchecked
        else ""
    )
    tiled = ", every tensor's pieces present" if isinstance(src, PieceSource) else ""
    print(
        f"OK  {text(src.uri)}: {len(src.files) - unchecked} of {len(src.files)} files match their stored checksums, "
        f"every header valid{tiled}{note}; {human(total)} in {secs:.2f}s ({total / 1e9 / secs:.2f} GB/s)"
    )
    return OK
