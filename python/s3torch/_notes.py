"""A note on an exception raised through s3torch, naming what it was doing then (the object a
transform failed on, the shard a resume found replaced): PEP 678's ``add_note``, Python 3.11+.
Python 3.10 has no ``add_note``: the note goes into ``__notes__`` all the same, which the
``exceptiongroup`` backport (a dependency of pytest on 3.10) shows in tracebacks; the
exception keeps its type and message either way."""

from __future__ import annotations


def add_note(e: BaseException, note: str) -> None:
    """Add ``note`` to ``e``'s notes; never raises."""
    if hasattr(e, "add_note"):
        e.add_note(note)
        return
    try:
        e.__notes__ = [*getattr(e, "__notes__", []), note]  # type: ignore[attr-defined]
    except (AttributeError, TypeError):  # an exception that takes no attributes: its own message stands
        pass
