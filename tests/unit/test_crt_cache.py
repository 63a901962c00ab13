"""cmake/crt_cache.py's cache key: one compiler, one build of the CRT, whatever name CMake
found it by (the cold suite built the CRT twice, for /usr/bin/gcc and /usr/bin/cc, one gcc)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _crt_cache() -> ModuleType:
    spec = importlib.util.spec_from_file_location("crt_cache", ROOT / "cmake" / "crt_cache.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("crt_cache", mod)
    spec.loader.exec_module(mod)
    return mod


def test_a_compiler_named_through_links_shares_one_key(tmp_path: Path) -> None:
    c = _crt_cache()
    real = tmp_path / "gcc-12"
    real.write_text("#!/bin/sh\n")
    real.chmod(0o755)
    (tmp_path / "gcc").symlink_to(real)
    (tmp_path / "cc").symlink_to(tmp_path / "gcc")  # a link to a link, as /etc/alternatives makes
    keys = {c.cache_key(str(p), "Release") for p in (real, tmp_path / "gcc", tmp_path / "cc")}
    assert len(keys) == 1
    other = tmp_path / "clang"
    other.write_text("#!/bin/sh\n")
    other.chmod(0o755)
    assert c.cache_key(str(other), "Release") not in keys  # another compiler: its own build
    assert c.cache_key(str(real), "Debug") not in keys
    assert c.cache_key("", "Release") == c.cache_key("", "Release")  # none named: CMake's default


def test_a_bare_name_is_found_on_the_path(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    c = _crt_cache()
    real = tmp_path / "mycc"
    real.write_text("#!/bin/sh\n")
    real.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    assert c.canonical_compiler("mycc") == str(real.resolve())
    assert c.cache_key("mycc", "Release") == c.cache_key(str(real), "Release")
