"""Argument checks shared by the public classes (bool is an int subclass, but never a size)."""

from __future__ import annotations

from typing import Any


def is_int(value: Any) -> bool:
    """An int, but not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An int or a float, but not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)
