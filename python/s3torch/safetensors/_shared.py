"""Tensors of a state dict that share memory (tied weights), as the safetensors package and
huggingface_hub decide them.

The format stores each tensor once, so of names whose tensors overlap in memory (a model's
``lm_head.weight`` tied to ``embed_tokens.weight``) one is kept: one whose tensor covers its
whole storage, preferring names the caller prefers (on load: the names the file has), then
names it does not discard, then the first in sorted order. The others are dropped on save,
and recorded in the metadata as ``dropped name -> kept name``; on load they are filled by the
kept one, since they share its memory. Tensors that share a storage without overlapping
(views of one buffer) are saved each on its own: the package refuses a view that does not
cover its storage, s3torch writes just the view's bytes.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Set, Tuple

import torch


def _span(t: torch.Tensor) -> Tuple[int, int]:
    start = t.data_ptr()
    return start, start + t.numel() * t.element_size()


def _covers_storage(t: torch.Tensor) -> bool:
    return (
        t.data_ptr() == t.untyped_storage().data_ptr() and t.numel() * t.element_size() == t.untyped_storage().nbytes()
    )


def shared_groups(state_dict: Dict[str, torch.Tensor]) -> List[List[str]]:
    """Names whose tensors overlap in memory, in groups of two or more (each sorted)."""
    by_storage: Dict[Tuple[str, int], List[str]] = {}
    for name, t in state_dict.items():
        if not isinstance(t, torch.Tensor) or t.device.type == "meta" or t.layout != torch.strided:
            continue
        storage = t.untyped_storage()
        if storage.data_ptr() == 0 or storage.nbytes() == 0:
            continue
        by_storage.setdefault((str(t.device), storage.data_ptr()), []).append(name)
    groups: List[List[str]] = []
    for names in by_storage.values():
        if len(names) < 2:
            continue
        spans = sorted((*_span(state_dict[n]), n) for n in names)
        current: Set[str] = {spans[0][2]}
        last_end = spans[0][1]
        for start, end, name in spans[1:]:
            if start < last_end:
                current.add(name)
            else:
                if len(current) > 1:
                    groups.append(sorted(current))
                current = {name}
            last_end = max(last_end, end)
        if len(current) > 1:
            groups.append(sorted(current))
    return sorted(groups)


def duplicate_names(
    state_dict: Dict[str, torch.Tensor],
    *,
    preferred: Iterable[str] = (),
    discard: Iterable[str] = (),
) -> Dict[str, List[str]]:
    """kept name -> the names dropped for it (sorted)."""
    prefer, drop = set(preferred), set(discard)
    out: Dict[str, List[str]] = {}
    for group in shared_groups(state_dict):
        complete = [n for n in group if _covers_storage(state_dict[n])]
        if not complete:
            raise RuntimeError(
                f"tensors {group} share memory and none of them covers all of it: save each once "
                "(clone them), since keeping one would not keep the others' bytes"
            )
        keep = complete[0]
        kept = [n for n in complete if n not in drop]
        if kept:
            keep = kept[0]
        chosen = [n for n in complete if n in prefer]
        if chosen:
            keep = chosen[0]
        out[keep] = [n for n in group if n != keep]
    return out


def drop_shared(
    state_dict: Dict[str, torch.Tensor],
    metadata: Optional[Dict[str, str]],
    discard: Iterable[str] = (),
) -> Tuple[Dict[str, torch.Tensor], Optional[Dict[str, str]]]:
    """The state dict with each shared group's other names dropped, and the metadata with
    ``dropped -> kept`` added for each (where it does not already name it). Neither argument
    is changed."""
    removes = duplicate_names(state_dict, discard=discard)
    if not removes:
        return state_dict, metadata
    kept_dict = dict(state_dict)
    meta = dict(metadata or {})
    for keep, dropped in removes.items():
        for name in dropped:
            meta.setdefault(name, keep)
            del kept_dict[name]
    return kept_dict, meta
