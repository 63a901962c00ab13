"""The save mark: which save wrote each ``.distcp`` file, so a load never mixes two saves.

Two saves to one path can overlap: a rank of a job that was restarted keeps writing (a
"zombie"), or two jobs share a checkpoint path by mistake. Each file and the ``.metadata``
are then whole, but the ``.metadata`` of one save can describe files of the other. Where the
records' offsets agree (same model, same sharding), every read succeeds and every record's
CRC32 matches its own bytes: the load silently mixes tensors of both saves.

So s3torch's writer ends each ``.distcp`` file with a mark, ``MAGIC`` and the writing rank's
save id (torch's per-``reset`` ``save_id``), right after the file's last record, and records
the same id on every ``_StorageInfo`` of that file (attribute ``ATTR``), which the
coordinator gathers into ``.metadata``. A load reads each file's mark with the probe of the
file's last record (no request of its own; _parallel_load) and refuses a file whose mark is
not the one the metadata names. Records and offsets are torch's own, so every DCP reader still reads the
files; a copy of the checkpoint (any tool) keeps the marks, unlike ETags.

Files written without marks (torch's writer, s3torchconnector, s3torch's generic write loop)
carry no ``ATTR`` and are not checked.
"""

from __future__ import annotations

import uuid
from typing import Any, Dict, Iterable, Optional, Tuple

from ._errors import CheckpointCorruptError

MAGIC = b"\n#s3torch-save:"
ATTR = "s3torch_save_id"
MAX_ID = 64  # characters: torch's ids are 36 (a uuid4); a longer one is not a writer's


def mark(save_id: str) -> bytes:
    """The bytes that end a file written by the save ``save_id``."""
    return MAGIC + save_id.encode("ascii")


def new_id(writer: Any) -> str:
    """The id of this rank's save: torch's ``save_id`` of the writer (a uuid per ``reset``),
    else a fresh uuid."""
    sid = getattr(writer, "save_id", None)
    return sid if isinstance(sid, str) and _valid(sid) else str(uuid.uuid4())


def split(data: bytes) -> Tuple[bytes, Optional[str]]:
    """A whole ``.distcp`` file's bytes: its records, and the save id its mark names (None,
    and the bytes as they are, when it ends with none)."""
    at = data.rfind(MAGIC, max(0, len(data) - len(MAGIC) - MAX_ID))
    if at < 0:
        return data, None
    sid = data[at + len(MAGIC) :].decode("ascii", "replace")
    return (data[:at], sid) if _valid(sid) else (data, None)


def tag(storage_infos: Iterable[Any], save_id: str) -> None:
    """Record ``save_id`` on the ``_StorageInfo`` of each item of a marked file."""
    for info in storage_infos:
        try:
            setattr(info, ATTR, save_id)
        except (AttributeError, TypeError):  # a torch whose _StorageInfo takes no attributes
            return


def expected(storage_data: Dict[Any, Any], where: str = "") -> Dict[str, Tuple[int, bytes]]:
    """For each marked file (relative path): where its mark starts (the end of its last
    record) and the mark the metadata expects there. Raises CheckpointCorruptError (its
    ``file``: the relative path) when the items of one file disagree on its save, or carry an
    id no writer writes; ``where`` (the checkpoint's location, ending in "/") begins its message."""
    ends: Dict[str, int] = {}
    ids: Dict[str, Optional[str]] = {}
    for idx, info in storage_data.items():
        path = info.relative_path
        ends[path] = max(ends.get(path, 0), info.offset + info.length)
        sid = getattr(info, ATTR, None)
        if sid is not None and not _valid(sid):
            raise _bad_metadata(where, path, f"the metadata of item {idx.fqn!r} names no valid save id ({ATTR})")
        if path in ids and ids[path] != sid:
            raise _bad_metadata(
                where,
                path,
                f"the metadata says two saves wrote this file ({ids[path]!r} and {sid!r}): it is inconsistent",
            )
        ids[path] = sid
    return {path: (ends[path], mark(sid)) for path, sid in ids.items() if sid is not None}


def check(where: str, want: bytes, got: bytes) -> None:
    """Raise CheckpointCorruptError unless ``got``, the bytes after the file's last record,
    are the mark ``want``."""
    if got == want:
        return
    expected_id = want[len(MAGIC) :].decode("ascii")
    if got.startswith(MAGIC):
        found = got[len(MAGIC) :].decode("ascii", "replace")
        raise CheckpointCorruptError(
            f"{where}: written by another save ({found!r}) than the one this checkpoint's .metadata describes "
            f"({expected_id!r}): two saves to this path overlapped (a rank of an earlier job still writing?), "
            "and loading would mix their tensors. Save again, to a fresh path"
        )
    raise CheckpointCorruptError(
        f"{where}: its save mark is missing where the .metadata says its records end: the file was replaced "
        f"after save {expected_id!r} wrote it (by another writer, or a save with a different layout), "
        "and loading would mix checkpoints. Save again, to a fresh path"
    )


def _bad_metadata(where: str, path: str, why: str) -> CheckpointCorruptError:
    err = CheckpointCorruptError(f"{where}{path}: {why}")
    err.file = path  # type: ignore[attr-defined]
    return err


def _valid(sid: Any) -> bool:
    return isinstance(sid, str) and 0 < len(sid) <= MAX_ID and sid.isascii() and sid.isprintable()
