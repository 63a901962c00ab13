"""Transforms for datasets whose DataLoader workers start by spawn (importable, so picklable)."""

from __future__ import annotations

from typing import Any, Tuple


def key_and_bytes(reader: Any) -> Tuple[str, bytes]:
    """(key, every byte) of an S3Reader."""
    return reader.key, reader.read()
