"""The one rule for turning an object key into a local path: a key is an opaque string the
bucket's owner chose, so it may name a place outside the destination.

``local_path(root, relative)`` is used by every place s3torch writes a file named after a key
(``s3torch cp`` down). A relative path is refused, before anything is written, when it is
empty or absolute, has an empty, ``.`` or ``..`` segment, or holds a backslash, a NUL or
any other control character; what passes is joined under ``root`` and checked to stay there.
"""

from __future__ import annotations

import os
import unicodedata


class UnsafeKeyError(ValueError):
    """An object key that would not stay under the local destination as a path (``key``: the
    key; ``reason``: what is wrong with it). A ValueError: the CLI exits 2 on it."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"refused object key {key!r}: {reason}; nothing was written")
        self.key, self.reason = key, reason


def unsafe_reason(relative: str) -> "str | None":
    """Why ``relative`` (a key, relative to the copied prefix) is not a safe local path, or None."""
    if not isinstance(relative, str) or relative == "":
        return "it is empty below the prefix"
    for ch in relative:
        if ch == "\\":
            return "it holds a backslash"
        if ch == "\x00":
            return "it holds a NUL character"
        if unicodedata.category(ch) == "Cc":
            return f"it holds the control character {ch!r}"
    if relative.startswith("/"):
        return "it is an absolute path"
    for seg in relative.split("/"):
        if seg == "":
            return "it has an empty path segment"
        if seg in (".", ".."):
            return f"it has a {seg!r} path segment"
    return None


def local_path(root: str, relative: str, key: "str | None" = None) -> str:
    """``relative`` joined under ``root``, or UnsafeKeyError (naming ``key``, default
    ``relative``) when it would not stay there."""
    why = unsafe_reason(relative)
    base = os.path.abspath(root)
    if why is None:
        path = os.path.normpath(os.path.join(base, *relative.split("/")))
        if os.path.commonpath([base, path]) != base or path == base:
            why = "it leaves the destination"
        else:
            return path
    raise UnsafeKeyError(key if key is not None else relative, why)
