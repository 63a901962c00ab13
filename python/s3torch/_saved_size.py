"""About how many bytes ``torch.save`` writes for an object: the upload's size hint, so that a
checkpoint past S3's 10,000 parts of ``part_size`` is sent in larger parts (docs/engine.md).

``torch.save`` writes each storage a tensor views once, whole (a slice saves its whole base),
plus a pickle of everything else. This counts every distinct storage reachable through dicts,
lists, tuples and sets, and an allowance for the rest; it reads no tensor's bytes. Objects it
does not walk into (a module's or dataclass's attributes) count only the allowance: the hint
is then low, and a write past the configured parts' limit is refused as without one.
"""

from __future__ import annotations

from typing import Any, List, Set, Tuple

import torch

ALLOWANCE = 64 << 10  # per storage (its zip entry and pickle) and for the pickle of the rest
MAX_ITEMS = 1_000_000  # containers and tensors visited before it stops counting


def saved_size(obj: Any) -> int:
    """About the bytes ``torch.save(obj)`` writes, never counting a storage twice."""
    total = ALLOWANCE
    seen: Set[int] = set()  # ids of the containers walked
    storages: Set[Tuple[Any, int, int]] = set()
    todo: List[Any] = [obj]
    visited = 0
    while todo and visited < MAX_ITEMS:
        o = todo.pop()
        visited += 1
        if isinstance(o, torch.Tensor):
            try:
                storage = o.untyped_storage()
                key = (storage.device, storage.data_ptr(), storage.nbytes())
            except (RuntimeError, NotImplementedError):  # a DTensor, a sparse tensor: no storage of its own
                todo.extend(_parts(o))
                continue
            if key not in storages:
                storages.add(key)
                total += storage.nbytes() + ALLOWANCE
        elif isinstance(o, (dict, list, tuple, set, frozenset)):
            if id(o) in seen:
                continue
            seen.add(id(o))
            todo.extend(o.values() if isinstance(o, dict) else o)
    return total


def _parts(t: torch.Tensor) -> List[torch.Tensor]:
    """The tensors holding what ``torch.save`` writes of a tensor without a storage: a DTensor's
    local shard, a sparse tensor's indices and values; none for others (counted as nothing:
    a low hint, never a high one, which would give a small object huge part buffers)."""
    to_local = getattr(t, "to_local", None)
    if callable(to_local):
        return [to_local()]
    if t.layout == torch.sparse_coo:
        return [t._indices(), t._values()]
    if t.layout in (torch.sparse_csr, torch.sparse_bsr):
        return [t.crow_indices(), t.col_indices(), t.values()]
    if t.layout in (torch.sparse_csc, torch.sparse_bsc):
        return [t.ccol_indices(), t.row_indices(), t.values()]
    return []
