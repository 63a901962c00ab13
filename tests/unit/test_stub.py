"""The hand-written _crt.pyi must match the compiled module: same public names, same
members per class, same parameter names (and defaults) per function."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import s3torch
from s3torch import _crt

STUB = Path(s3torch.__file__).with_name("_crt.pyi")


def _stub_tree() -> ast.Module:
    assert STUB.exists(), f"{STUB} is not installed with the package"
    return ast.parse(STUB.read_text())


def _public(names) -> set:  # type: ignore[no-untyped-def]
    return {n for n in names if not n.startswith("_")}


def _stub_params(fn: ast.FunctionDef) -> list:
    args = [a.arg for a in fn.args.args]
    if fn.args.kwonlyargs:  # pybind11 shows py::kw_only() as a bare "*"
        args += ["*"] + [a.arg for a in fn.args.kwonlyargs]
    if fn.args.kwarg is not None:
        args.append("**" + fn.args.kwarg.arg)
    return [a for a in args if a != "self"]


def _runtime_params(obj) -> list:  # type: ignore[no-untyped-def]
    # pybind11 signatures: "name(self: X, a: str, b: int = 3) -> T" in the first doc line(s).
    doc = (obj.__doc__ or "").splitlines()
    sig = next((line for line in doc if "(" in line), "")
    inner = sig[sig.index("(") + 1 : sig.rindex(")")] if "(" in sig else ""
    names = []
    depth = 0
    cur = ""
    for ch in inner:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            names.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        names.append(cur)
    out = [re.split(r"[:=]", n.strip())[0].strip() for n in names]
    return [n for n in out if n and n != "self"]


def test_module_level_names_match() -> None:
    tree = _stub_tree()
    stub_names = set()
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            stub_names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            stub_names.add(node.target.id)
    assert _public(dir(_crt)) == _public(stub_names)


def test_class_members_and_signatures_match() -> None:
    tree = _stub_tree()
    checked = 0
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        cls = getattr(_crt, node.name)
        if issubclass(cls, BaseException):
            assert [b.id for b in node.bases if isinstance(b, ast.Name)] == [b.__name__ for b in cls.__bases__]
            continue
        stub_members = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
        # Annotated names stand for read/write properties (ClientConfig's fields).
        attributes = {n.target.id for n in node.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
        runtime_members = {n for n in vars(cls) if not n.startswith("_")}
        assert _public(stub_members | attributes) == runtime_members, node.name
        for name in attributes:
            member = inspect.getattr_static(cls, name)
            assert isinstance(member, property) and member.fset is not None, f"{node.name}.{name}"
        for fn in node.body:
            if isinstance(fn, ast.FunctionDef) and not fn.name.startswith("__"):
                member = inspect.getattr_static(cls, fn.name)
                if isinstance(member, property):
                    assert any(isinstance(d, ast.Name) and d.id == "property" for d in fn.decorator_list), fn.name
                    continue
                assert _stub_params(fn) == _runtime_params(getattr(cls, fn.name)), f"{node.name}.{fn.name}"
                checked += 1
        init = next((f for f in node.body if isinstance(f, ast.FunctionDef) and f.name == "__init__"), None)
        if init is not None:
            assert _stub_params(init) == _runtime_params(cls.__init__), f"{node.name}.__init__"
    assert checked > 10
