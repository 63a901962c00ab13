"""Tensors read into destinations the caller holds (a model's parameters, a DCP planner's
tensors), a bounded batch at a time.

A destination that is exactly the stored tensor (host memory, its dtype and shape,
contiguous: :func:`~._load.fits_in_place`) takes the ranged GETs itself: nothing allocated,
nothing copied. The others (another device, dtype or layout, or a part of the stored tensor)
are read into the loader's host memory, at most ``batch_bytes`` of them at a time, and copied
(cast) from there. One loader serves the whole read, so a file read whole over several
batches is checked against its stored checksum once its last piece has landed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from ._header import TensorInfo
from ._load import Loader, fits_in_place
from ._source import ShardFile


@dataclass
class Placement:
    """One stored tensor (or rows of one), and where it goes."""

    file: ShardFile
    info: TensorInfo
    dst: torch.Tensor
    cut: Tuple[slice, ...] = ()  # the part of the read tensor that goes to dst (() for all of it)
    tag: Any = None  # the caller's, handed back to on_done

    @property
    def in_place(self) -> bool:
        """The GETs land in dst itself."""
        if any(c != slice(0, n) for c, n in zip(self.cut, self.dst.shape)):
            return False
        where = f"{self.file.where} tensor {self.info.name!r}"
        return fits_in_place(self.dst, self.info.torch_dtype(where), self.info.torch_shape(where))


def read_into(
    loader: Loader,
    placements: List[Placement],
    batch_bytes: int,
    on_done: Optional[Callable[[Placement], None]] = None,
) -> None:
    """Fill every placement's destination; ``on_done`` is called for each once it holds its
    bytes. A destination read in place has its autograd version bumped, as a copy into it
    would."""
    in_place = [p.in_place for p in placements]
    loader.plan_checks(list({(id(p.file), p.info.name): (p.file, p.info) for p in placements}.values()))

    def flush(batch: List[int]) -> None:
        wanted = list({(id(placements[i].file), placements[i].info.name): placements[i] for i in batch}.values())
        into: Dict[str, torch.Tensor] = {}
        for i in batch:
            if in_place[i]:
                into.setdefault(placements[i].info.name, placements[i].dst)
        loaded = loader.load([(p.file, p.info) for p in wanted], into)
        with torch.no_grad():
            for i in batch:
                p = placements[i]
                src = loaded[p.info.name]
                if src is p.dst:  # read in place
                    torch.autograd.graph.increment_version(p.dst)
                else:
                    p.dst.copy_(src[p.cut] if p.cut else src)
                if on_done is not None:
                    on_done(p)

    batch: List[int] = []
    held = 0  # bytes of the batch read into the loader's memory
    names: Dict[str, ShardFile] = {}  # names in this batch -> their file (the loader keys by name)
    for i, p in enumerate(placements):
        size = 0 if in_place[i] else p.info.nbytes
        if batch and (held + size > batch_bytes or names.get(p.info.name, p.file) is not p.file):
            flush(batch)
            batch, held, names = [], 0, {}
        batch.append(i)
        held += size
        names[p.info.name] = p.file
    if batch:
        flush(batch)
    loader.verify_checks()
