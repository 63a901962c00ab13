"""Tensors read into destinations the caller holds (a model's parameters, a DCP planner's
tensors), a bounded batch at a time.

A destination that is the whole stored tensor, contiguous, takes the bytes itself, nothing
allocated: on the host in the stored dtype by the ranged GETs (:func:`~._load.fits_in_place`);
on a GPU, or in another floating-point dtype, through the staging ring of a loader for its
device, cast on the way (:func:`~._load.fits_staged`). The others (a part of the stored
tensor, a layout or dtype the ring cannot take) are read into the host loader's memory, at
most ``batch_bytes`` of them at a time, and copied (cast) from there. Each loader serves the
whole read, so a file one loader reads whole over several batches is checked against its
stored checksum once its last piece has landed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

import torch

from ._header import TensorInfo
from ._load import Loader
from ._open import ring_sizes
from ._source import ShardFile

if TYPE_CHECKING:
    from .. import _crt


@dataclass
class Placement:
    """One stored tensor (or rows of one), and where it goes."""

    file: ShardFile
    info: TensorInfo
    dst: torch.Tensor
    cut: Tuple[slice, ...] = ()  # the part of the read tensor that goes to dst (() for all of it)
    tag: Any = None  # the caller's, handed back to on_done


def read_into(
    loader_for: "Loaders",
    placements: List[Placement],
    batch_bytes: int,
    on_done: Optional[Callable[[Placement], None]] = None,
) -> None:
    """Fill every placement's destination; ``on_done`` is called for each once it holds its
    bytes. ``loader_for(device)`` makes the loader for a device (called once each; it keeps
    them for their ``stats`` and ``checksums``). A destination read into itself has its
    autograd version bumped, as a copy into it would."""
    cpu = torch.device("cpu")
    loaders: Dict[torch.device, Loader] = {cpu: loader_for(cpu)}
    work: Dict[torch.device, List[Tuple[Placement, bool]]] = {}
    for p in placements:
        whole = all(c == slice(0, n) for c, n in zip(p.cut, p.dst.shape))
        device = p.dst.device if whole else cpu
        if device not in loaders:
            loaders[device] = loader_for(device)
        taken = whole and loaders[device].takes(p.dst, p.file, p.info)
        if not taken:
            device = cpu
        work.setdefault(device, []).append((p, taken))
    for device, items in work.items():
        _read(loaders[device], items, batch_bytes, on_done)


def _read(
    loader: Loader,
    items: List[Tuple[Placement, bool]],
    batch_bytes: int,
    on_done: Optional[Callable[[Placement], None]],
) -> None:
    loader.plan_checks(list({(id(p.file), p.info.name): (p.file, p.info) for p, _ in items}.values()))

    def flush(batch: List[Tuple[Placement, bool]]) -> None:
        wanted = list({(id(p.file), p.info.name): p for p, _ in batch}.values())
        into: Dict[str, torch.Tensor] = {}
        for p, taken in batch:
            if taken:
                into.setdefault(p.info.name, p.dst)
        loaded = loader.load([(p.file, p.info) for p in wanted], into)
        with torch.no_grad():
            for p, _ in batch:
                src = loaded[p.info.name]
                if src is p.dst:  # read into itself
                    torch.autograd.graph.increment_version(p.dst)
                else:
                    p.dst.copy_(src[p.cut] if p.cut else src)
                if on_done is not None:
                    on_done(p)

    batch: List[Tuple[Placement, bool]] = []
    held = 0  # bytes of the batch read into the loader's memory
    names: Dict[str, ShardFile] = {}  # names in this batch -> their file (the loader keys by name)
    for p, taken in items:
        size = 0 if taken else p.info.nbytes
        if batch and (held + size > batch_bytes or names.get(p.info.name, p.file) is not p.file):
            flush(batch)
            batch, held, names = [], 0, {}
        batch.append((p, taken))
        held += size
        names[p.info.name] = p.file
    if batch:
        flush(batch)
    loader.verify_checks()


class Loaders:
    """What :func:`read_into` makes its loaders with: one per device, for the read's bucket,
    its ring sized for the device (``_open.ring_sizes``), each reporting the bytes it lands to
    ``on_progress``; kept, for their stats and checksums after the read."""

    def __init__(
        self, native: "_crt.NativeClient", bucket: str, on_progress: Optional[Callable[[int], None]] = None
    ) -> None:
        self.native, self.bucket, self.on_progress = native, bucket, on_progress
        self.made: List[Loader] = []

    def __call__(self, device: torch.device) -> Loader:
        loader = Loader(self.native, self.bucket, device, None, False, *ring_sizes(device, None, None))
        loader.on_progress = self.on_progress
        self.made.append(loader)
        return loader

    def results(self) -> Tuple[Dict[str, int], Dict[str, str]]:
        """The loaders' stats summed, and their checksum outcomes (a file two loaders each read
        a part of was checked by neither: "not checked" wins)."""
        stats: Dict[str, int] = {}
        checksums: Dict[str, str] = {}
        for loader in self.made:
            for k, v in loader.stats.items():
                stats[k] = stats.get(k, 0) + v
            for where, outcome in loader.checksums.items():
                if checksums.get(where, "").startswith("not checked"):
                    continue
                checksums[where] = outcome
        return stats, checksums
