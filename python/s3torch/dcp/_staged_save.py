"""Saving a tensor's ``torch.save`` record through the staging ring: device memory to the
multipart upload in slot-sized pieces, never the whole tensor in host memory.

What torch writes for a CUDA tensor ``t`` is the record of ``t.cpu()``: a CPU tensor laid out
by ``empty_like``'s rule (``preserve_format``: a non-overlapping dense tensor keeps its
strides, any other gets dense strides in the order of its own), whose storage is exactly its
elements. So the record's small parts (``data.pkl`` and the rest) are pickled from a
*template*, ``torch.empty_like(t, device="cpu")``: virtual memory that is never touched. The
storage record's bytes are ``t``'s elements in the template's memory order: ``t`` permuted so
that row-major order is that order (for a dense ``t``, one flat span of its memory). They are
cut into blocks of at most a slot, each copied device-to-host into a slot of a page-locked
ring on a side stream, and written to the upload from there; the upload copies them into its
part buffers before ``write`` returns, so a slot is free again as soon as it is written.

A CPU tensor goes the way torch's writer takes it: as it is when its storage is exactly its
elements (the storage's bytes, whatever the strides), else as ``clone()`` would lay it out
(the template rule again). Tests send CPU tensors through the ring (unpinned) so that CI,
without a GPU, runs the same pipeline.

s3torch.safetensors' saves send a CUDA tensor's bytes through the same ``StagedSave``
(``chunks`` of its flat byte view: a safetensors file holds the elements in row-major order).

Who owns what: a ``StagedSave`` and its ring belong to one writer thread for one file. A slot
is busy from the start of its copy until the upload has taken its bytes (the consumer asks
for the next chunk); after an error every copy still in flight is waited for and every slot
goes back to the ring. Stream semantics: the side stream of a device first waits for the
stream the save's caller is on (``caller_streams``; for a tensor on another device, that
device's current stream), so work already queued on the tensors finishes before they are read;
each slot's copy is followed by a CUDA event, which the writing thread waits for before the
slot's bytes are used.
"""

from __future__ import annotations

import contextlib
from collections import deque
from dataclasses import dataclass
from typing import Any, Deque, Dict, Iterator, Optional, Tuple

import torch

from ._errors import StagingError
from ._staging import StagingRing, blocks

MiB = 1024 * 1024
DEFAULT_SAVE_RING_BYTES = 64 * MiB
DEFAULT_SAVE_SLOT_BYTES = 8 * MiB


def record_source(t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(template, src)`` for a tensor torch's writer would save: ``template`` is a CPU
    tensor laid out as the one torch saves for ``t`` (only its layout is pickled: its
    storage may never be written); ``src`` is a view of ``t`` whose row-major order is the
    template's storage order (1-D when that order is one flat span of memory)."""
    if t.device.type == "cpu" and t.untyped_storage().nbytes() == t.nbytes:
        # torch's CPU loaders save such a tensor as it is: its storage, whatever its strides.
        return t, t.as_strided((t.numel(),), (1,), 0)
    return _device_source(t)


def _device_source(t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``record_source`` by the rule of ``t.cpu()`` (and of ``clone()``, which lays out the same way)."""
    template = torch.empty_like(t, device="cpu")
    strides = template.stride()
    order = sorted(range(t.dim()), key=lambda d: -strides[d])  # stable: size-1 dims stay put
    src = t.permute(order)
    if src.is_contiguous():
        src = src.view(-1)
    return template, src


def plain_strided(t: torch.Tensor) -> bool:
    """Whether ``t``'s bytes can stream through the ring as they are: a plain strided tensor,
    not quantized, without a lazy conjugate or negative bit (those go the caller's other way)."""
    return (
        type(t) is torch.Tensor
        and t.layout == torch.strided
        and not t.is_quantized
        and not t.is_conj()
        and not t.is_neg()
    )


def copy_block(dst: torch.Tensor, src: torch.Tensor, non_blocking: bool) -> None:
    """Copy ``src`` (a block of the tensor being saved) into ``dst`` (a slot's view of the same
    shape and dtype). One function, so tests can make a copy fail."""
    dst.copy_(src, non_blocking=non_blocking)


def caller_streams() -> Dict[torch.device, Any]:
    """The calling thread's current stream on the current CUDA device (none when CUDA is not
    initialized: then no tensor is on a GPU). Current streams are per thread: writer threads
    wait for the caller's stream, not their own default one."""
    if not torch.cuda.is_initialized():
        return {}
    dev = torch.device("cuda", torch.cuda.current_device())
    return {dev: torch.cuda.current_stream(dev)}


def on_callers_stream(dev: torch.device, streams: Dict[torch.device, Any]) -> Any:
    """A context in which work on ``dev`` is queued on the save's caller's stream (its
    current stream for a device the caller was not on); no-op for host tensors. For the
    tensors a writer thread copies to the host itself (``t.cpu()``, torch's way): without it
    the copy would run on the thread's own default stream, before the caller's queued writes."""
    if dev.type != "cuda":
        return contextlib.nullcontext()
    return torch.cuda.stream(callers_stream(dev, streams))


def callers_stream(dev: torch.device, streams: Dict[torch.device, Any]) -> Any:
    """The stream the save's caller was on for ``dev`` (``caller_streams``), else ``dev``'s current one."""
    return streams.get(dev) or torch.cuda.current_stream(dev)


@dataclass
class _Copy:
    slot: int
    n: int  # bytes
    event: Any  # the CUDA event recorded after the copy, or None (host copies are done at once)


class StagedSave:
    """Streams tensors through ``ring`` for one file (see the module docstring); use as a
    context manager, whose exit returns every slot to the ring, also after an error."""

    def __init__(self, ring: StagingRing, caller_streams: Optional[Dict[torch.device, Any]] = None) -> None:
        self.ring = ring
        self._caller = caller_streams or {}  # device -> the stream the save's caller was on
        self._copies: Deque[_Copy] = deque()  # copies started and not yet written, oldest first
        self._held: Optional[int] = None  # the slot handed to the consumer, until it asks for more
        self._side: Dict[torch.device, Any] = {}  # device -> side stream
        self._events: Dict[Tuple[int, torch.device], Any] = {}  # (slot, device) -> its copy's event

    def __enter__(self) -> "StagedSave":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Wait for the copies still in flight (errors dropped) and return every slot."""
        ring = self.ring
        if self._held is not None:
            ring.free.append(self._held)
            self._held = None
        while self._copies:
            c = self._copies.popleft()
            if c.event is not None:
                try:
                    c.event.synchronize()
                except Exception:  # the error already raised is the one that matters
                    pass
            ring.free.append(c.slot)

    def _stream(self, dev: torch.device) -> Any:
        s = self._side.get(dev)
        if s is None:
            s = torch.cuda.Stream(device=dev)
            caller = callers_stream(dev, self._caller)
            queued = caller.record_event()
            # Also wait on the host for the work queued on the caller's stream, before the
            # first copy of this file is issued. The copies must wait for that work anyway, so
            # this costs nothing; kept while the device-side wait alone has not run on a GPU
            # since the fix of the failure once blamed on it (a slot allocated twice, docs/dcp.md).
            queued.synchronize()
            s.wait_event(queued)
            self._side[dev] = s
        return s

    def chunks(self, src: torch.Tensor, where: str) -> Iterator[torch.Tensor]:
        """``src``'s bytes in row-major order as uint8 slot views, at most a slot each. A
        yielded slot stays valid until the next chunk is asked for; up to the ring's slots
        are being copied meanwhile. A failed copy raises StagingError naming ``where``."""
        ring = self.ring
        size = src.element_size()
        todo = blocks(src, ring.slot_bytes // size * size)
        more = True
        while True:
            while more and ring.free:
                block = next(todo, None)
                if block is None:
                    more = False
                else:
                    self._start(block, where)
            if not self._copies:
                return
            c = self._copies.popleft()
            self._held = c.slot  # returned by the consumer's next call, or by close()
            if c.event is not None:
                try:
                    c.event.synchronize()
                except RuntimeError as e:  # an asynchronous CUDA error surfaces here
                    raise _copy_failed(where, e) from e
            yield ring.slot(c.slot, c.n)
            ring.free.append(c.slot)
            self._held = None

    def _start(self, block: torch.Tensor, where: str) -> None:
        ring = self.ring
        slot = ring.free.popleft()
        n = block.numel() * block.element_size()
        try:
            dst = ring.slot(slot, n).view(block.dtype).view(block.shape)
            event = None
            try:
                if block.device.type == "cuda":
                    s = self._stream(block.device)
                    with torch.cuda.stream(s):
                        copy_block(dst, block, non_blocking=ring.pinned)
                    event = self._events.get((slot, block.device))
                    if event is None:  # one event per slot and device, re-recorded at each use
                        event = self._events[(slot, block.device)] = torch.cuda.Event()
                    event.record(s)
                else:
                    copy_block(dst, block, non_blocking=False)
            except RuntimeError as e:  # torch.OutOfMemoryError and CUDA errors among them
                raise _copy_failed(where, e) from e
        except BaseException:
            side = self._side.get(block.device)
            if side is not None:  # a copy launched before the failure may still write the slot
                try:
                    side.synchronize()
                except Exception:
                    pass
            ring.free.append(slot)
            raise
        ring.uses += 1
        self._copies.append(_Copy(slot, n, event))


def _copy_failed(where: str, e: BaseException) -> StagingError:
    return StagingError(f"{where}: copying its bytes to host memory for the upload failed: {type(e).__name__}: {e}")
