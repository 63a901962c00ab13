"""A DCP checkpoint as the verbs see it: its ``.metadata`` and the files beside it, on S3
or in a local directory (torch's FileSystemWriter layout)."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from .. import _crt
from .._catalog import dated_listing, what_is_there
from .._client import S3Client
from .._kinds import METADATA
from .._text import shown as text
from .._uri import as_dir
from ._common import FAILED, NOT_FOUND, CLIError, s3_uri


@dataclass(frozen=True)
class Record:
    """One item of the checkpoint: where its bytes are and what they hold."""

    fqn: str
    chunk_offset: Tuple[int, ...]  # the chunk's offset in the whole tensor (all 0: unsharded)
    file: str  # relative path of the file that holds it
    offset: int  # in the file
    length: int
    dtype: Optional[str]  # None for a byte item
    shape: Optional[Tuple[int, ...]]  # the chunk's shape


@dataclass
class Checkpoint:
    where: str  # "s3://bucket/prefix/" or a local directory
    metadata: Any  # torch.distributed.checkpoint.metadata.Metadata
    files: Dict[str, int]  # every file present beside .metadata: relative path -> size
    bucket: str = ""  # on S3
    prefix: str = ""  # on S3, ending in "/"

    def key(self, relative: str) -> str:
        return self.prefix + relative

    def location(self, relative: str) -> str:
        return f"{self.where}{relative}" if self.bucket else os.path.join(self.where, relative)

    def records(self) -> List[Record]:
        """Every stored item, ordered by file and offset."""
        md = self.metadata
        out = []
        for idx, info in md.storage_data.items():
            meta = md.state_dict_metadata.get(idx.fqn)
            chunk = None
            for c in getattr(meta, "chunks", ()):
                if tuple(c.offsets) == tuple(idx.offset or ()):
                    chunk = c
            dtype = shape = None
            if chunk is not None:
                dtype, shape = str(meta.properties.dtype).replace("torch.", ""), tuple(int(s) for s in chunk.sizes)
            out.append(
                Record(idx.fqn, tuple(idx.offset or ()), info.relative_path, info.offset, info.length, dtype, shape)
            )
        return sorted(out, key=lambda r: (r.file, r.offset))


TRUST_HELP = (
    "unpickle the checkpoint's .metadata with plain pickle, as torch does, instead of s3torch's allow-list "
    "of DCP metadata classes: only for a checkpoint whose writer you trust (a crafted .metadata runs code)"
)


def add_trust_argument(p: argparse.ArgumentParser) -> None:
    """``--trust-checkpoint``: the CLI's opt-out of the metadata allow-list (see SECURITY.md)."""
    p.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)


def _load_metadata(data: bytes, where: str, trust: bool) -> Any:
    from ..dcp._errors import CheckpointCorruptError
    from ..dcp._safe_unpickle import CheckpointUnsafeError, load_metadata

    try:
        return load_metadata(data, f"{where}{METADATA}", trust)
    except CheckpointUnsafeError as e:
        raise CLIError(f"{e}", FAILED) from e
    except CheckpointCorruptError as e:
        raise CLIError(f"{where}{METADATA} is not a DCP checkpoint's metadata ({e})") from e


def open_s3(client: S3Client, uri: str, trust: bool = False) -> Checkpoint:
    bucket, key = s3_uri(uri)
    prefix = as_dir(key)
    where = f"s3://{bucket}/{prefix}"
    listed = dated_listing(client, bucket, prefix)
    files = {name: size for name, (size, _) in listed.items()}
    if METADATA not in files:
        raise CLIError(
            f"no DCP checkpoint at {where}: {where}{METADATA} does not exist"
            + (f" ({len(files)} other objects there{text(what_is_there(where, listed))})" if files else ""),
            NOT_FOUND,
        )
    try:
        data = client._get_native().get_bytes(bucket, prefix + METADATA)
    except _crt.S3NotFoundError as e:
        raise CLIError(f"no DCP checkpoint at {where}: {e}", NOT_FOUND) from e
    files.pop(METADATA)
    return Checkpoint(where, _load_metadata(data, where, trust), files, bucket, prefix)


def open_local(path: str, trust: bool = False) -> Checkpoint:
    where = os.path.join(os.path.abspath(path), "")
    meta = os.path.join(where, METADATA)
    if not os.path.isfile(meta):
        raise CLIError(f"no DCP checkpoint at {where}: {meta} does not exist", NOT_FOUND)
    with open(meta, "rb") as f:
        md = _load_metadata(f.read(), where, trust)
    files = local_files(where)
    files.pop(METADATA, None)
    return Checkpoint(where, md, files)


def local_files(root: str) -> Dict[str, int]:
    """Every regular file under ``root``: relative path (with "/") -> size."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            full = os.path.join(dirpath, n)
            if os.path.isfile(full) and not os.path.islink(full):
                out[os.path.relpath(full, root).replace(os.sep, "/")] = os.path.getsize(full)
    return out


def open_any(client_factory: Any, location: str, trust: bool = False) -> Checkpoint:
    if location.startswith("s3://"):
        return open_s3(client_factory(), location, trust)
    return open_local(location, trust)
