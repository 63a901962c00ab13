"""The pieces of a distributed save: safetensors files each holding pieces of tensors and
saying where each lies in the whole (``DCP_SHARDING_INFO``, as torch's
``HuggingFaceStorageWriter(save_distributed=True)`` writes it), grouped by tensor and checked
to tile it: every element in exactly one piece.

Such a save has no index listing its files. A rank whose save failed, a file not copied, or
pieces of two saves sharded differently in one folder leave a tensor whose pieces miss or
overlap elements; torch's load planner reads what the pieces cover and leaves the rest of the
destination as it was (a fresh model's random weights), with no error. The DCP reader, and
``s3torch info`` / ``verify``, check here first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, Iterable, List, Tuple

from .._tiling import find, shape_text
from ._errors import HeaderError, MissingShardError

if TYPE_CHECKING:
    from ._header import TensorInfo
    from ._source import ShardFile

# torch's names (torch.distributed.checkpoint._hf_utils) for where a piece of a tensor lies.
SHARDING_INFO_KEY = "DCP_SHARDING_INFO"
SAVED_OFFSETS_KEY = "saved_offsets"


def saved_offsets(f: "ShardFile") -> Dict[str, Tuple[int, ...]]:
    """Where each tensor of ``f`` lies in the whole, from its ``DCP_SHARDING_INFO``; {} when
    the file has none. What the file says is checked by :func:`gather`."""
    text = (f.header.metadata or {}).get(SHARDING_INFO_KEY)
    if text is None:
        return {}
    try:
        info = json.loads(text)
        return {name: tuple(v[SAVED_OFFSETS_KEY]) for name, v in info.items()}
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as e:  # RecursionError: nested too deep
        raise HeaderError(f"{f.where}: its {SHARDING_INFO_KEY} metadata is not what torch writes: {e!r}") from None


def has_pieces(files: Iterable["ShardFile"]) -> bool:
    """Whether any of ``files`` says where its tensors lie (a distributed save's)."""
    return any(SHARDING_INFO_KEY in (f.header.metadata or {}) for f in files)


@dataclass
class Pieces:
    """One tensor's saved pieces: each one's file, tensor in it, and offsets in the whole
    (its shape is the torch shape), and the whole's size (where the pieces end)."""

    name: str
    size: List[int]
    parts: List[Tuple["ShardFile", "TensorInfo", Tuple[int, ...]]] = field(default_factory=list)

    @property
    def whole(self) -> bool:
        """One piece holding all of the tensor."""
        return len(self.parts) == 1 and list(self.parts[0][1].torch_shape(self.parts[0][0].where)) == self.size


def gather(uri: str, files: Iterable["ShardFile"]) -> Dict[str, Pieces]:
    """Every tensor of ``files`` (a folder's, no index), its pieces grouped, in file order.
    A tensor is whole in its file unless the file's ``DCP_SHARDING_INFO`` places it; pieces
    of no elements (ranks' shards of no rows) are left out, but for a tensor of none. Raises
    HeaderError for offsets that do not fit the piece, a piece in two files, pieces that
    disagree on the dtype or overlap; MissingShardError for elements in no piece. Before
    anything is allocated or read."""
    out: Dict[str, Pieces] = {}
    seen: Dict[Tuple[str, Tuple[int, ...]], "ShardFile"] = {}
    empty: Dict[str, Tuple["ShardFile", "TensorInfo", Tuple[int, ...]]] = {}
    for f in files:
        placed = saved_offsets(f)
        for t in f.header.tensors.values():
            label = f"{f.where} tensor {t.name!r}"
            shape = t.torch_shape(f.where)
            offsets = placed.get(t.name, ()) or (0,) * len(shape)
            if len(offsets) != len(shape) or any(type(o) is not int or o < 0 for o in offsets):
                raise HeaderError(f"{label}: {SHARDING_INFO_KEY} gives offsets {list(offsets)} for shape {list(shape)}")
            if shape and not all(shape):  # a rank's shard of no rows (uneven sharding): holds nothing
                empty.setdefault(t.name, (f, t, offsets))
                continue
            if (t.name, offsets) in seen:
                raise HeaderError(
                    f"{uri}: tensor {t.name!r} at offsets {list(offsets)} is in both {seen[t.name, offsets].where} "
                    f"and {f.where}: which one to load cannot be told (keep one, or name an index)"
                )
            seen[t.name, offsets] = f
            end = [o + n for o, n in zip(offsets, shape)]
            g = out.get(t.name)
            if g is None:
                g = out[t.name] = Pieces(t.name, end)
            else:
                first = g.parts[0][1]
                if first.dtype.name != t.dtype.name or len(g.size) != len(end):
                    raise HeaderError(f"{label}: its pieces disagree on the dtype or the number of dimensions")
                g.size = [max(a, b) for a, b in zip(g.size, end)]
            g.parts.append((f, t, offsets))
    for name, (f, t, offsets) in empty.items():  # a tensor of no elements: one of its pieces
        if name not in out:
            out[name] = Pieces(name, [o + n for o, n in zip(offsets, t.torch_shape(f.where))], [(f, t, offsets)])
    for g in out.values():
        _check_tiled(uri, g)
    return out


def _check_tiled(uri: str, g: Pieces) -> None:
    """Every element of ``g``'s tensor in exactly one of its pieces (``_tiling.find``)."""
    if g.whole:
        return
    boxes = [(list(o), list(t.torch_shape(f.where))) for f, t, o in g.parts]
    u = find(g.size, boxes)
    if u is None:
        return
    wheres = [f"{f.key.rsplit('/', 1)[-1]}" for f, _, _ in g.parts]
    label = f"{uri}: tensor {g.name!r} ({shape_text(g.size)}, in {len(boxes)} piece{'s' if len(boxes) > 1 else ''})"
    if u.kind == "missing":
        names = sorted(set(wheres))
        listed = ", ".join(names[:4]) + (" ..." if len(names) > 4 else "")
        raise MissingShardError(
            f"{label}: {u.what} are in none of its files ({listed}): a file of a distributed save is "
            "missing (a rank whose save failed, or a file not copied)"
        )
    if u.kind == "overlap":
        a, b = (f"{wheres[i]} at {boxes[i][0]}" for i in u.at)
        raise HeaderError(
            f"{label}: the pieces in {a} and {b} overlap: pieces of two saves sharded differently? "
            "(which to load cannot be told; keep one save's files)"
        )
    raise HeaderError(f"{label}: {u.words(boxes)}")


__all__ = ["SAVED_OFFSETS_KEY", "SHARDING_INFO_KEY", "Pieces", "gather", "has_pieces", "saved_offsets"]
