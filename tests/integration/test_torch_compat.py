"""The private torch names s3torch uses live in s3torch._torch_compat: present on this torch,
used from there only, and when a torch release lacks them, one warning and torch's public path
(a DCP save and load through S3 still byte-exact)."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import types
from pathlib import Path
from typing import Iterator

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter

from s3torch import _torch_compat
from s3torch.dcp import _torch_save
from tests.conftest import BUCKET, make_client
from tests.integration.test_dcp import assert_same, empty_like_sd, reader, state_dict, writer

_FS = "torch.distributed.checkpoint.filesystem"
# compat attribute -> (torch module, private name)
PRIVATE = {
    "serialization_save": ("torch.serialization", "_save"),
    "serialization_tls": ("torch.serialization", "_serialization_tls"),
    "split_by_size_and_type": (_FS, "_split_by_size_and_type"),
    "item_size": (_FS, "_item_size"),
    "OverlappingCpuLoader": (_FS, "_OverlappingCpuLoader"),
    "SerialCpuLoader": (_FS, "_SerialCpuLoader"),
    "StorageInfo": (_FS, "_StorageInfo"),
    "StoragePrefix": (_FS, "_StoragePrefix"),
    "narrow_tensor_by_index": ("torch.distributed._shard._utils", "narrow_tensor_by_index"),
}
PACKAGE = Path(_torch_compat.__file__).parent


def test_every_private_name_is_present_on_this_torch() -> None:
    assert _torch_compat.MISSING == []  # and so no TorchCompatWarning
    assert _torch_compat.RECORD_WRITER and _torch_compat.WRITE_LOOP
    for attr, (module, name) in PRIVATE.items():
        assert getattr(_torch_compat, attr) is getattr(importlib.import_module(module), name), attr


def test_no_other_module_imports_a_private_torch_name() -> None:
    private = re.compile(r"\bfrom torch[\w.]* import [^(\n]*\b_[a-zA-Z]|\btorch(\.\w+)*\._[a-zA-Z]\w*\(")
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "_torch_compat.py":
            continue
        text = path.read_text()
        for m in private.finditer(text):
            offenders.append(f"{path.relative_to(PACKAGE)}: {m.group(0).strip()}")
        # names inside a parenthesised `from torch... import (` block
        for block in re.findall(r"\bfrom torch[\w.]* import \(([^)]*)\)", text):
            offenders += [f"{path.name}: {n.strip()}" for n in block.split(",") if n.strip().startswith("_")]
    assert offenders == []


@pytest.fixture
def torch_without_private_names(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.WarningsRecorder]:
    """_torch_compat reloaded as if torch's modules lacked every private name it looks up.

    torch itself keeps them (its own FileSystemWriter uses them): only the compat module's view
    of torch's modules is changed.
    """
    real_import = importlib.import_module
    hidden: dict = {}
    for module, name in PRIVATE.values():
        hidden.setdefault(module, set()).add(name)

    def import_module(name: str, package: str | None = None) -> types.ModuleType:
        mod = real_import(name, package)
        if name not in hidden:
            return mod
        view = types.ModuleType(name)
        view.__dict__.update({k: v for k, v in vars(mod).items() if k not in hidden[name]})
        return view

    saved = (_torch_save._State.checked, _torch_save._State.ok)
    with monkeypatch.context() as m:
        m.setattr(importlib, "import_module", import_module)
        with pytest.warns(UserWarning, match="lacks private names") as record:
            importlib.reload(_torch_compat)
    _torch_save._State.checked = False  # the record writer's first-use check runs again
    try:
        yield record
    finally:
        importlib.reload(_torch_compat)
        _torch_save._State.checked, _torch_save._State.ok = saved


def test_fallback_warns_once_and_dcp_stays_byte_exact(  # type: ignore[no-untyped-def]
    torch_without_private_names, seaweed, prefix: str, tmp_path: Path
) -> None:
    assert len(torch_without_private_names) == 1
    assert type(torch_without_private_names[0].message) is _torch_compat.TorchCompatWarning
    message = str(torch_without_private_names[0].message)
    for module, name in PRIVATE.values():
        assert f"{module}.{name}" in message
    assert not _torch_compat.RECORD_WRITER and not _torch_compat.WRITE_LOOP
    assert not _torch_save.fast_path_enabled()

    sd = state_dict()
    path = f"s3://{BUCKET}/{prefix}ck"
    dcp.save(sd, storage_writer=writer(seaweed, path, thread_count=2))
    out = empty_like_sd(sd)
    dcp.load(out, storage_reader=reader(seaweed, path))
    assert_same(sd, out)
    # The files are still byte for byte torch FileSystemWriter's.
    dcp.save(sd, storage_writer=FileSystemWriter(str(tmp_path / "fs"), thread_count=2))
    client = make_client(seaweed)
    names = sorted(p.name for p in (tmp_path / "fs").glob("*.distcp"))
    assert len(names) == 2
    for name in names:
        assert client.get_object(BUCKET, f"{prefix}ck/{name}").read() == (tmp_path / "fs" / name).read_bytes()
    out = empty_like_sd(sd)
    dcp.load(out, storage_reader=FileSystemReader(str(tmp_path / "fs")))
    assert_same(sd, out)


def test_fallback_narrowing_matches_torch(torch_without_private_names) -> None:  # type: ignore[no-untyped-def]
    from torch.distributed._shard._utils import narrow_tensor_by_index

    assert _torch_compat.narrow_tensor_by_index is not narrow_tensor_by_index  # s3torch's own
    t = torch.arange(60.0).reshape(3, 4, 5)
    for offsets, sizes in [((0, 0, 0), (3, 4, 5)), ((1, 0, 2), (2, 4, 3)), ((2, 3, 4), (1, 1, 1))]:
        ours = _torch_compat.narrow_tensor_by_index(t, offsets, sizes)
        assert torch.equal(ours, narrow_tensor_by_index(t, offsets, sizes))


def test_dcp_without_torch_says_to_install_it() -> None:
    code = "import sys; sys.modules['torch'] = None\nimport s3torch\nimport s3torch.dcp"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode != 0
    assert "ImportError: s3torch.dcp needs PyTorch" in r.stderr and "pip install torch" in r.stderr
