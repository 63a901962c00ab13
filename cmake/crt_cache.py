#!/usr/bin/env python3
"""Obtain and build the AWS CRT C libraries once, into a cache that survives rebuilds.

The libraries (aws-c-common, -cal, -io, -http, -compression, -auth, -sdkutils, -s3,
aws-checksums, s2n-tls, aws-lc) come from the ``awscrt`` source distribution on PyPI,
which carries them under ``crt/``. This script:

1. downloads that sdist with pip, at a pinned version, in hash-checking mode;
2. verifies the sha256 again itself;
3. builds the C libraries as static, position-independent archives and installs them
   into ``<cache>/<key>/install``;
4. prints that install prefix on stdout (the last line), which CMake reads.

A finished build is marked by ``install/.s3torch-complete``; later calls return at once.
A file lock makes concurrent builds (two ``pip install`` runs) wait for each other.

Cache root: ``$S3TORCH_CRT_CACHE``, else ``$XDG_CACHE_HOME/s3torch``, else ``~/.cache/s3torch``.
``$S3TORCH_CRT_TOOLCHAIN`` (set by scripts/build_wheel.sh, e.g. ``zig-0.13.0-x86_64-linux-gnu.2.28``)
names the toolchain in the cache directory, so libraries built for a release wheel never mix
with the ones the system compiler built. ``--toolchain-file`` (cmake/crt.cmake passes the
extension build's ``CMAKE_TOOLCHAIN_FILE``) cross-compiles them for the target it names.
Nothing from the sdist is vendored into the repository.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

AWSCRT_VERSION = "0.38.1"
AWSCRT_SHA256 = "0dcebfaa70cf079133cd2352119e3d05e9b8ca1d1621736cfb54c03f3d5fef0f"
# Bump when the way the libraries are configured changes, so old caches are not reused.
RECIPE_VERSION = "2"


def log(msg: str) -> None:
    print(f"[s3torch-crt] {msg}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    env = os.environ.get("S3TORCH_CRT_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "s3torch"


def canonical_compiler(c_compiler: str) -> str:
    """The compiler's real path. CMake names one compiler by whichever name it found first
    (pip's build of the extension said /usr/bin/gcc, the fuzz build /usr/bin/cc: both links
    to the same gcc), and two names must not cost two builds of the CRT."""
    if not c_compiler:
        return ""
    return os.path.realpath(shutil.which(c_compiler) or c_compiler)


def cache_key(c_compiler: str, build_type: str, toolchain_file: str = "") -> str:
    toolchain = os.environ.get("S3TORCH_CRT_TOOLCHAIN", "")
    compiler = canonical_compiler(c_compiler)
    ident = f"{AWSCRT_VERSION}|{AWSCRT_SHA256}|{RECIPE_VERSION}|{compiler}|{build_type}|{os.uname().machine}"
    if toolchain:
        ident += f"|{toolchain}"
    if toolchain_file:  # only cross builds have one: native keys stay as they were
        ident += f"|{toolchain_file}"
    h = hashlib.sha256(ident.encode()).hexdigest()[:12]
    return f"awscrt-{AWSCRT_VERSION}-{build_type.lower()}-{toolchain + '-' if toolchain else ''}{h}"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download_sdist(dest: Path) -> Path:
    """pip, hash-checking mode, source distribution only, no dependencies."""
    dest.mkdir(parents=True, exist_ok=True)
    existing = dest / f"awscrt-{AWSCRT_VERSION}.tar.gz"
    if existing.exists() and sha256_of(existing) == AWSCRT_SHA256:
        return existing
    with tempfile.TemporaryDirectory() as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text(f"awscrt=={AWSCRT_VERSION} --hash=sha256:{AWSCRT_SHA256}\n")
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--require-hashes",
            "-r",
            str(req),
            "-d",
            str(dest),
        ]
        log("downloading awscrt sdist: " + " ".join(cmd))
        subprocess.run(cmd, check=True, stdout=sys.stderr)
    if not existing.exists():
        raise SystemExit(f"pip did not produce {existing}")
    got = sha256_of(existing)
    if got != AWSCRT_SHA256:
        existing.unlink()
        raise SystemExit(f"awscrt sdist sha256 mismatch: got {got}, want {AWSCRT_SHA256}")
    return existing


def extract_crt(sdist: Path, src: Path) -> Path:
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    prefix = f"awscrt-{AWSCRT_VERSION}/crt/"
    with tarfile.open(sdist) as tf:
        members = [m for m in tf.getmembers() if m.name.startswith(prefix)]
        for m in members:
            m.name = m.name[len(prefix) :]
        tf.extractall(src, members=[m for m in members if m.name], filter="data")
    return src


def build(src: Path, build_dir: Path, install: Path, c_compiler: str, build_type: str, toolchain_file: str) -> None:
    if build_dir.exists():
        shutil.rmtree(build_dir)
    env = dict(os.environ)
    env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
    cmake = os.environ.get("CMAKE_COMMAND") or shutil.which("cmake") or "cmake"
    cfg = [
        cmake,
        "-S",
        str(src),
        "-B",
        str(build_dir),
        f"-DCMAKE_INSTALL_PREFIX={install}",
        f"-DCMAKE_BUILD_TYPE={build_type}",
        "-DBUILD_SHARED_LIBS=OFF",
        "-DCMAKE_POSITION_INDEPENDENT_CODE=ON",
        "-DBUILD_TESTING=OFF",
        "-DCMAKE_INSTALL_LIBDIR=lib",
        # Hide the CRT's symbols inside our extension module.
        "-DCMAKE_C_VISIBILITY_PRESET=hidden",
        # AWS's S3 endpoint rules (access point ARNs, partitions, FIPS, dual-stack), which
        # csrc/s3torch/aws_endpoint.cpp resolves AWS endpoints with.
        "-DAWS_ENABLE_S3_ENDPOINT_RESOLVER=ON",
    ]
    if c_compiler:
        cfg.append(f"-DCMAKE_C_COMPILER={c_compiler}")
    if toolchain_file:
        cfg.append(f"-DCMAKE_TOOLCHAIN_FILE={toolchain_file}")
    ninja = shutil.which("ninja")
    if ninja:
        cfg += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
    log("configuring: " + " ".join(cfg))
    subprocess.run(cfg, check=True, env=env, stdout=sys.stderr)
    log("building (once; later builds reuse the cache)")
    subprocess.run([cmake, "--build", str(build_dir), "--target", "install"], check=True, env=env, stdout=sys.stderr)


def ensure(c_compiler: str, build_type: str, toolchain_file: str = "") -> Path:
    root = cache_root()
    key = cache_key(c_compiler, build_type, toolchain_file)
    work = root / key
    install = work / "install"
    marker = install / ".s3torch-complete"
    if marker.exists():
        return install
    work.mkdir(parents=True, exist_ok=True)
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists():  # another process finished it while we waited
            return install
        t0 = time.monotonic()
        sdist = download_sdist(root / "sdist")
        src = extract_crt(sdist, work / "src")
        if install.exists():
            shutil.rmtree(install)
        build(src, work / "build", install, c_compiler, build_type, toolchain_file)
        shutil.rmtree(work / "build", ignore_errors=True)
        shutil.rmtree(src, ignore_errors=True)
        marker.write_text(f"awscrt {AWSCRT_VERSION} sha256 {AWSCRT_SHA256}\n")
        log(f"CRT built into {install} in {time.monotonic() - t0:.0f}s")
    return install


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--c-compiler", default=os.environ.get("CC", ""))
    ap.add_argument("--build-type", default="Release")
    ap.add_argument("--toolchain-file", default="", help="a CMake toolchain file: cross-compile the CRT")
    ap.add_argument("--print-root", action="store_true", help="print the cache root and exit")
    args = ap.parse_args()
    if args.print_root:
        print(cache_root())
        return
    print(ensure(args.c_compiler, args.build_type, args.toolchain_file))


if __name__ == "__main__":
    main()
