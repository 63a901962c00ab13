"""One version of each object per load: every response must carry the ETag of the first.

A load reads a file in many ranged GETs: a header or probe first, then the bytes it located.
Each GET is atomic, but an object replaced between two of them (a save or an upload to the
same path while the load runs) answers the later ones from the new version: tensors located
in one version are filled from the other. The CRT keeps the parts of one GET on one version
(``If-Match``); this keeps all of a load's GETs of an object on one, comparing each answer's
ETag with the first one seen (or the one ``expect`` was given). Answers without an ETag are
not compared.
"""

from __future__ import annotations

from typing import Any, Callable, Dict


class ObjectVersions:
    """The ETag each object answered first in one load; ``changed(message)`` builds the error
    for a later answer with another."""

    def __init__(self, changed: Callable[[str], Exception]) -> None:
        self._first: Dict[str, str] = {}
        self._changed = changed

    def expect(self, key: str, etag: str) -> None:
        """``key``'s version is ``etag`` (what an earlier read of this load saw)."""
        if etag:
            self._first.setdefault(key, etag)

    def first(self, key: str) -> str:
        """The ETag of the load's first read of ``key`` ("" while none): what a GET of it that
        cannot be checked after the fact (one returning bytes only) sends as If-Match."""
        return self._first.get(key, "")

    def refused(self, where: str, e: Exception) -> Exception:
        """The error for a GET held to ``first`` that the server refused (412, ``e``)."""
        return self._changed(
            f"{where}: the object was replaced while this load read it (a GET held to the ETag of its first "
            f"read was refused: {e}); what was read from it would mix two versions. Load again once the writer "
            "is done"
        )

    def check(self, key: str, where: str, handle: Any) -> None:
        """After ``handle`` (a finished GET of ``key``, which ``where`` names) succeeded: raise
        if it answered from another version than the load's first read of ``key``."""
        self.agree(key, where, handle.etag)

    def agree(self, key: str, where: str, etag: str) -> None:
        """A read of ``key`` for this load (this process's, or another rank's for it) answered
        from version ``etag``: raise if that is not the load's first version of ``key``."""
        if not etag:
            return
        first = self._first.setdefault(key, etag)  # atomic: loads check from one thread, CRT callbacks never
        if etag != first:
            raise self._changed(
                f"{where}: the object was replaced while this load read it (ETag {first} at its first read, "
                f"{etag} now: something wrote to the same path meanwhile); what was read from it mixes two "
                "versions. Load again once the writer is done"
            )
