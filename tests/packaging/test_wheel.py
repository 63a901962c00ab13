"""The release wheel: scripts/build_wheel.sh builds it (manylinux_2_28, checked by auditwheel,
no s3torch-bench inside), it installs into a fresh virtual environment with no compiler on
PATH, and the conformance suite passes against the installed wheel.

The first run on a machine builds the AWS CRT with zig (several minutes, cached under the CRT
cache root); the wheel itself is cached there by a hash of the sources it is built from.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.background_builds import RUNNER, Build

ROOT = Path(__file__).resolve().parents[2]
# What the wheel is built from: a change to any of these builds it again.
SOURCES = ["CMakeLists.txt", "pyproject.toml", "README.md", "cmake", "csrc", "python", "scripts/build_wheel.sh"]
COMPILERS = re.compile(r"^(cc|c\+\+|gcc|g\+\+|clang|clang\+\+|zig|ld|ld\.\w+|as|cpp)(-[\d.]+)?$|-linux-gnu-")


def _source_hash() -> str:
    h = hashlib.sha256()
    for top in SOURCES:
        path = ROOT / top
        for f in sorted([path] if path.is_file() else (p for p in path.rglob("*") if p.is_file())):
            if "__pycache__" in f.parts or f.suffix in (".so", ".pyc"):
                continue
            h.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _wheel_dir() -> Path:
    root = subprocess.run(
        [sys.executable, str(ROOT / "cmake" / "crt_cache.py"), "--print-root"], capture_output=True, text=True
    ).stdout.strip()
    return Path(root) / "wheels" / f"{sys.implementation.cache_tag}-{_source_hash()}"


def background_build() -> Build:
    """The wheel's build (nothing when this source's wheel is cached), run by tests/conftest.py
    in the background while the rest of the suite runs."""
    out = _wheel_dir()
    steps = [] if list(out.glob("s3torch-*.whl")) else [["bash", str(ROOT / "scripts" / "build_wheel.sh"), str(out)]]
    return Build("release wheel", steps, env={"PYTHON": sys.executable})


def _wheel() -> Path:
    outcome = RUNNER.result(background_build(), timeout=1500)
    assert outcome.returncode == 0, outcome.tail()
    found = sorted(_wheel_dir().glob("s3torch-*.whl"))
    assert found, outcome.tail()
    return found[0]


def _path_without_compilers(bindir: Path) -> str:
    """A PATH with every executable of this one except compilers, linkers and assemblers."""
    bindir.mkdir()
    for d in os.environ.get("PATH", "").split(os.pathsep):
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            src = os.path.join(d, name)
            if not COMPILERS.search(name) and not (bindir / name).exists() and os.access(src, os.X_OK):
                (bindir / name).symlink_to(src)
    return str(bindir)


def test_wheel_installs_without_a_compiler_and_passes_conformance(tmp_path: Path) -> None:
    wheel = _wheel()
    assert re.fullmatch(r"s3torch-[\d.]+-cp\d+-cp\d+-manylinux_2_(2[0-8]|1\d)_x86_64(\.[\w.]+)?\.whl", wheel.name)
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if "s3torch-bench" in n]
    assert any(re.fullmatch(r"s3torch/_crt\.cpython-.*\.so", n) for n in names)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    # torch, pytest and the servers from the environment running the tests (installing them
    # again would take minutes), as plain path entries after the venv's own site-packages. Not
    # --system-site-packages: that would also run the .pth hooks there, and an editable
    # install's import hook would serve s3torch from a source tree ahead of the wheel.
    site_dir = subprocess.run(
        [py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], capture_output=True, text=True
    ).stdout.strip()
    env = {k: v for k, v in os.environ.items() if k not in ("CC", "CXX", "PYTHONPATH")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{_path_without_compilers(tmp_path / 'bin')}"
    for compiler in ("cc", "gcc", "c++", "g++", "clang"):
        assert subprocess.run(["sh", "-c", f"command -v {compiler}"], env=env).returncode != 0, compiler
    subprocess.run(
        [py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-build-isolation", str(wheel)],
        env=env,
        check=True,
    )
    # Borrowed only now: with them on the path first, pip would find the s3torch installed in
    # the test environment (the same version) and install nothing.
    borrowed = [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and os.path.isdir(p)]
    (Path(site_dir) / "_s3torch_test_deps.pth").write_text("\n".join(borrowed) + "\n")
    where = subprocess.run(
        [py, "-c", "import s3torch, s3torch._crt as c; print(s3torch.__file__); print(c.__file__)"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert all(p.startswith(str(venv)) for p in where), where

    run_pytest = (
        "import sys, pytest, s3torch._crt as c\n"
        f"assert c.__file__.startswith({str(venv)!r}), c.__file__\n"
        "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', 'tests/integration/test_conformance.py']))"
    )
    r = subprocess.run(
        [py, "-c", run_pytest],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    assert re.search(r"\d+ passed", r.stdout) and "failed" not in r.stdout


def test_unsupported_arch_is_refused_naming_the_supported_ones(tmp_path: Path) -> None:
    r = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build_wheel.sh"), "--arch", "riscv64", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2, r.stderr
    assert "unsupported --arch 'riscv64'" in r.stderr and "x86_64, aarch64" in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()
