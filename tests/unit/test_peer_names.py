"""Every public name of s3torchconnector (installed, 1.5.0) is importable from the same module
path under s3torch: code written for the peer runs with its imports changed.

A module is public when no part of its path after the package starts with ``_``. Its public
names: its ``__all__``, the names its source defines at top level (classes, functions,
constants; not loggers), and the names it imports of objects that are public somewhere in
the peer (e.g. ``s3torchconnector.s3reader.S3ReaderConstructorProtocol``, defined in
``s3reader.protocol``). Not counted: what a public module imports from the standard library,
torch, tenacity or the peer's private modules (``S3BucketKeyData``), and the Rust client's
types (``s3torchconnectorclient``) other than ``S3Exception``. Two private paths users import
from are checked as well: ``_s3client`` (S3Client, S3ClientConfig) and ``_user_agent``
(UserAgent). Not provided: ``_s3client.MockS3Client``, a test double over the peer's Rust mock
client.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import logging
import pkgutil
from typing import Dict, List, Set

import pytest
import s3torchconnector as peer

EXTRA = {"_s3client": ["S3Client", "S3ClientConfig"], "_user_agent": ["UserAgent"]}


def _public_modules() -> List[str]:
    names = ["s3torchconnector"]
    for info in pkgutil.walk_packages(peer.__path__, "s3torchconnector."):
        if not any(part.startswith("_") for part in info.name.split(".")[1:]):
            names.append(info.name)
    return names


def _defined(module) -> Set[str]:  # type: ignore[no-untyped-def]
    names = set(getattr(module, "__all__", []))
    tree = ast.parse(inspect.getsource(module))
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return {
        n
        for n in names
        if not n.startswith("_") and hasattr(module, n) and not isinstance(getattr(module, n), logging.Logger)
    }


def _peer_public_names() -> Dict[str, List[str]]:
    modules = {name: importlib.import_module(name) for name in _public_modules()}
    defined = {name: _defined(m) for name, m in modules.items()}
    public_objects = {id(getattr(modules[name], n)) for name, ns in defined.items() for n in ns}
    for name, ns in EXTRA.items():
        m = importlib.import_module(f"s3torchconnector.{name}")
        public_objects.update(id(getattr(m, n)) for n in ns)
    result = {}
    for name, m in modules.items():
        reexported = {
            n
            for n in dir(m)
            if not n.startswith("_") and not inspect.ismodule(getattr(m, n)) and id(getattr(m, n)) in public_objects
        }
        result[name] = sorted(defined[name] | reexported)
    for name, ns in EXTRA.items():
        result[f"s3torchconnector.{name}"] = ns
    return result


PEER_NAMES = _peer_public_names()


def test_the_walk_finds_the_names_the_peer_documents() -> None:
    # A guard on the walk itself: it sees what the peer's docs and e2e suite import.
    assert "S3ReaderConstructorProtocol" in PEER_NAMES["s3torchconnector.s3reader"]
    assert "DCPOptimizedConstructor" in PEER_NAMES["s3torchconnector.s3reader"]
    assert "RoundRobinPrefixStrategy" in PEER_NAMES["s3torchconnector.dcp.s3_prefix_strategy"]
    assert len(PEER_NAMES) >= 15


@pytest.mark.parametrize("module", sorted(PEER_NAMES))
def test_every_public_name_of_the_peer_is_at_the_same_path(module: str) -> None:
    ours = importlib.import_module("s3torch" + module[len("s3torchconnector") :])
    missing = [n for n in PEER_NAMES[module] if not hasattr(ours, n)]
    assert not missing, f"{ours.__name__} lacks {missing} (s3torchconnector's {module} has them)"
