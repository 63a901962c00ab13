"""Every public module, class, function and method of s3torch has a docstring.

Public: modules whose dotted path has no part starting with ``_``; in them, the names in
``__all__`` (else the names defined there not starting with ``_``); in public classes, the
methods and properties they define. Classes of the native module (``s3torch._crt``) are
documented in its stub, ``_crt.pyi``, and not walked here.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType
from typing import Iterator, List

import s3torch


def _public_modules() -> Iterator[ModuleType]:
    yield s3torch
    for info in pkgutil.walk_packages(s3torch.__path__, "s3torch."):
        if not any(part.startswith("_") for part in info.name.split(".")[1:]):
            yield importlib.import_module(info.name)


def _undocumented() -> List[str]:
    missing: List[str] = []
    seen = set()
    for mod in _public_modules():
        if not (mod.__doc__ or "").strip():
            missing.append(mod.__name__)
        exported = getattr(mod, "__all__", None)
        names = exported if exported is not None else [n for n in vars(mod) if not n.startswith("_")]
        for name in names:
            obj = getattr(mod, name)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)) or id(obj) in seen:
                continue
            module = getattr(obj, "__module__", "") or ""
            if not module.startswith("s3torch") or module == "s3torch._crt":
                continue
            if exported is None and module != mod.__name__:
                continue  # imported from elsewhere: checked where it is defined, if public
            seen.add(id(obj))
            if not (obj.__doc__ or "").strip():
                missing.append(f"{module}.{obj.__qualname__}")
            if not inspect.isclass(obj):
                continue
            for attr, value in vars(obj).items():
                func = value.fget if isinstance(value, property) else getattr(value, "__func__", value)
                if attr.startswith("_") or not inspect.isfunction(func):
                    continue
                if not (func.__doc__ or "").strip():
                    missing.append(f"{module}.{obj.__qualname__}.{attr}")
    return missing


def test_every_public_name_has_a_docstring() -> None:
    assert _undocumented() == []
