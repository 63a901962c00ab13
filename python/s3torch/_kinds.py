"""What a checkpoint on S3 or on disk is made of: a DCP checkpoint (its ``.metadata`` makes it
loadable) or a folder of safetensors model weights (its ``*.safetensors.index.json``).
``Kind`` says which files are the markers: written last by ``s3torch cp``, removed first by
``remove_checkpoint``, so that no reader takes a partial one for whole."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, List, Optional, Tuple

METADATA = ".metadata"  # a DCP checkpoint's metadata file
DATA_SUFFIX = ".distcp"  # a DCP data file, as torch's writers and s3torch's name them
INDEX_SUFFIX = ".safetensors.index.json"
WEIGHTS_SUFFIX = ".safetensors"


@dataclass(frozen=True)
class Kind:
    """What is copied: which files go last (markers), which at DST mean one is there already,
    and whether down every file is written under a partial name until whole."""

    noun: str
    markers: Tuple[str, ...]  # name suffixes of the files that make the copy loadable, written last
    holds: Tuple[str, ...]  # name suffixes of the files that make DST hold one (removed by --overwrite)
    whole_files: bool

    def is_marker(self, name: str) -> bool:
        return os.path.basename(name).endswith(self.markers)

    def held(self, names: Iterable[str], copied: Iterable[str]) -> List[str]:
        """Of ``names`` (at DST), those that make a copy of this kind, in the folders the
        copy writes into (those of ``copied``): a model in a folder SRC does not have is not
        this copy's to refuse or replace. Markers first (removed in this order)."""
        folders = {os.path.dirname(n) for n in copied}
        found = [n for n in names if os.path.basename(n).endswith(self.holds) and os.path.dirname(n) in folders]
        return sorted(found, key=lambda n: (not self.is_marker(n), n))


DCP = Kind("a checkpoint", (METADATA,), (METADATA,), whole_files=False)
MODEL = Kind("a safetensors model", (INDEX_SUFFIX,), (INDEX_SUFFIX, WEIGHTS_SUFFIX), whole_files=True)


def kind_of(names: Iterable[str]) -> Optional[Kind]:
    """DCP when a top-level .metadata is among ``names``; a model folder when a *.safetensors is."""
    names = list(names)
    if METADATA in names:
        return DCP
    if any(n.endswith(WEIGHTS_SUFFIX) for n in names):
        return MODEL
    return None
