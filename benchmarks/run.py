"""s3torch benchmark harness: every scenario runs s3torch and its peers against the same local
server in the same run, and reports ratios.

    python benchmarks/run.py [--quick] [--scenarios get,put,...] [--repeat 3] [--s3-like]

Starts what it needs on 127.0.0.1 (nginx for reads, SeaweedFS for writes), installs the
pinned peers (benchmarks/requirements.txt) into benchmarks/.venv (which sees the system
site-packages, where torch and s3torch are installed), runs each (scenario, peer) in a fresh
process ``--repeat`` times, and writes results.json, results.md and one PNG chart per scenario
to ``--out``. A peer or server that cannot run is reported with the reason; servers are always
stopped.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from scenarios import BY_NAME, GROUPS, SCENARIOS, Scenario, bf16_shapes  # noqa: E402

from s3torch._servers import free_port  # noqa: E402

VENV = HERE / ".venv"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- environment -------------------------------------------------------------------------


def build_bench_exe() -> str:
    """The C++ harness s3torch-bench, built into build/bench (not part of the wheel).

    Configured with the same CRT cache as the package, so only the harness and the core compile.
    """
    repo = HERE.parent
    build = repo / "build" / "bench"
    exe = build / "s3torch-bench"
    cfg = ["cmake", "-S", str(repo), "-B", str(build), "-DS3TORCH_BUILD_PYTHON=OFF", "-DS3TORCH_BUILD_BENCH=ON"]
    if shutil.which("ninja"):
        cfg += ["-G", "Ninja"]
    try:
        if not (build / "CMakeCache.txt").exists():
            log("configuring the C++ harness into build/bench")
            subprocess.run(cfg, check=True, stdout=subprocess.DEVNULL)
        build_cmd = ["cmake", "--build", str(build), "--target", "s3torch-bench"]
        subprocess.run(build_cmd, check=True, stdout=subprocess.DEVNULL)
    except (OSError, subprocess.CalledProcessError) as e:
        log(f"cannot build s3torch-bench ({e}); its rows will say so")
    return str(exe)


def ensure_venv(install: bool) -> str:
    py = VENV / "bin" / "python"
    if not py.exists():
        log(f"creating {VENV} (sees system site-packages: torch, s3torch)")
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(VENV)], check=True)
    if install:
        log("installing pinned peers from benchmarks/requirements.txt")
        r = subprocess.run(
            [str(py), "-m", "pip", "install", "-q", "-r", str(HERE / "requirements.txt"), "torch==" + _torch_version()],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            log("peer install failed (rows needing them will say so):\n" + r.stderr[-2000:])
    return str(py)


def _torch_version() -> str:
    import torch

    return torch.__version__.split("+")[0]


def versions(py: str) -> Dict[str, str]:
    code = (
        "import importlib.metadata as m, json\nout={}\n"
        "for p in ['torch','s3torch','s3torchconnector','s3torchconnectorclient','boto3','s3fs',"
        "'multi-storage-client','matplotlib','safetensors','runai-model-streamer']:\n"
        "    try: out[p]=m.version(p)\n    except Exception: out[p]=None\nprint(json.dumps(out))"
    )
    r = subprocess.run([py, "-c", code], capture_output=True, text=True)
    return json.loads(r.stdout) if r.returncode == 0 else {}


def machine() -> Dict[str, Any]:
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    out = {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
    if _cuda_available():
        import torch

        out["gpu"] = torch.cuda.get_device_name(0)
    return out


# --- servers -----------------------------------------------------------------------------


_NO_SUCH_KEY = (
    '<?xml version="1.0" encoding="UTF-8"?><Error><Code>NoSuchKey</Code>'
    "<Message>The specified key does not exist.</Message></Error>"
)


class Nginx:
    """nginx serving ROOT as path-style S3 GET/HEAD (Range, ETag), loopback only."""

    def __init__(self, root: Path, s3_like: bool) -> None:
        exe = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
        if exe is None:
            log("nginx not found: installing it from Debian's packages")
            subprocess.run(
                "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
                "--no-install-recommends nginx",
                shell=True,
                check=False,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            exe = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
        if exe is None:
            raise RuntimeError("nginx is not installed and could not be installed (apt-get install nginx)")
        self.dir = Path(tempfile.mkdtemp(prefix="s3torch-nginx-"))
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        rate = "limit_rate 90m;" if s3_like else ""
        (self.dir / "tmp").mkdir()
        self.exe = exe
        (self.dir / "checksums.map").write_text("")
        conf = f"""worker_processes 2; daemon on; pid {self.dir}/nginx.pid; error_log {self.dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off; sendfile on; tcp_nopush on; tcp_nodelay on; sendfile_max_chunk 4m;
  keepalive_requests 1000000; keepalive_timeout 300s; types {{ }} default_type application/octet-stream;
  client_body_temp_path {self.dir}/tmp/b; proxy_temp_path {self.dir}/tmp/p; fastcgi_temp_path {self.dir}/tmp/f;
  uwsgi_temp_path {self.dir}/tmp/u; scgi_temp_path {self.dir}/tmp/s;
  # The checksum S3 stores with an object (set_checksums): sent on a HEAD or a whole-object GET
  # of it, as S3 sends it in checksum mode; never on a ranged GET, which it does not cover (an
  # empty value sends no header).
  map_hash_bucket_size 256;
  map $uri $s3_stored_crc32c {{ default ""; include {self.dir}/checksums.map; }}
  map $http_range $s3_crc32c {{ "" $s3_stored_crc32c; default ""; }}
  map $s3_crc32c $s3_checksum_type {{ "" ""; default FULL_OBJECT; }}
  server {{
    listen 127.0.0.1:{self.port}; root {root}; etag on; {rate}
    add_header x-amz-checksum-crc32c $s3_crc32c; add_header x-amz-checksum-type $s3_checksum_type;
    location / {{ limit_except GET {{ deny all; }} error_page 404 = @nosuchkey; }}
    location @nosuchkey {{ default_type application/xml;
      return 404 '{_NO_SUCH_KEY}'; }}
  }}
}}
"""
        (self.dir / "nginx.conf").write_text(conf)
        subprocess.run(
            [exe, "-c", str(self.dir / "nginx.conf"), "-p", str(self.dir), "-e", str(self.dir / "error.log")],
            check=True,
        )
        time.sleep(0.3)

    def set_checksums(self, crc32c: Dict[str, str]) -> None:
        """Serve these full-object CRC32Cs (path "/bucket/key" -> base64), then reload."""
        lines = "".join(f'"{path}" "{value}";\n' for path, value in sorted(crc32c.items()))
        if (self.dir / "checksums.map").read_text() == lines:
            return
        (self.dir / "checksums.map").write_text(lines)
        conf = str(self.dir / "nginx.conf")
        r = subprocess.run(
            [self.exe, "-c", conf, "-p", str(self.dir), "-e", str(self.dir / "error.log"), "-s", "reload"],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            raise RuntimeError(f"nginx refused the checksums: {r.stderr.strip()[-500:]}")
        time.sleep(0.5)  # the new workers take over

    def stop(self) -> None:
        try:
            pid = int((self.dir / "nginx.pid").read_text())
            os.kill(pid, signal.SIGQUIT)
            for _ in range(50):
                try:
                    os.kill(pid, 0)
                    time.sleep(0.1)
                except ProcessLookupError:
                    break
        except (OSError, ValueError):
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


class LatencyProxyProcess:
    """benchmarks/latency_proxy.py in a process of its own, in front of `upstream`."""

    def __init__(self, upstream: str, delay_ms: float) -> None:
        hostport = upstream.split("://", 1)[-1]
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "latency_proxy.py"), "--upstream", hostport, "--delay-ms", str(delay_ms)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.endpoint = self.proc.stdout.readline().strip()
        if not self.endpoint.startswith("http://"):
            self.stop()
            raise RuntimeError("the latency proxy did not start")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# --- data --------------------------------------------------------------------------------


def write_random(path: Path, n: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    block = os.urandom(8 << 20)
    with open(path, "wb") as f:
        left = n
        while left:
            f.write(block[: min(left, len(block))])
            left -= min(left, len(block))


def model_checkpoint(bench: Path, sizes: Dict[str, int]) -> Path:
    """The dcp_load model's DCP checkpoint under ``bench``, written by torch's FileSystemWriter
    (torch's own format) unless there already."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemWriter

    from s3torch.demo import build_model

    path = bench / f"dcp-{sizes['layers']}-{sizes['d_model']}-{sizes['vocab']}"
    if not (path / ".metadata").exists():
        sd = build_model(sizes["layers"], sizes["d_model"], sizes["vocab"], 0).state_dict()
        import warnings

        warnings.filterwarnings("ignore")
        dcp.save(sd, storage_writer=FileSystemWriter(str(path), sync_files=False))
    return path


def prepare_cp_data(root: Path, sc: Scenario, sizes: Dict[str, int], endpoint: str) -> Dict[str, Any]:
    """cp_up / cp_down: the local checkpoint directory, and for cp_down its copy on the server
    (put file by file, the same for every peer)."""
    path = model_checkpoint(root / "bench", sizes)
    out: Dict[str, Any] = {"cp_dir": str(path)}
    if sc.name == "cp_down":
        prefix = f"cp-src/{path.name}"
        client = weed_client(endpoint)
        if not any(page.object_info for page in client.list_objects("bench", prefix + "/.metadata")):
            for f in sorted(path.iterdir()):
                client.put("bench", f"{prefix}/{f.name}", f.read_bytes())
        out["cp_prefix"] = prefix
    return out


def prepare_nginx_data(root: Path, sc: Scenario, sizes: Dict[str, int]) -> Dict[str, Any]:
    """Files under root/bench served by nginx; returns context keys for the runner."""
    bench = root / "bench"
    if sc.name in ("get", "ranged", "ranged_mid", "new_client", "new_client_container"):
        n = sizes.get("object_bytes", 1)
        key = f"obj-{n}"
        if not (bench / key).exists():
            write_random(bench / key, n)
        return {"key": key}
    if sc.name.startswith(("dataset", "prefetch")) or sc.name == "iterable":
        count, n = sizes["objects"], sizes["object_bytes"]
        keys = [f"ds-{n}/{i:06d}" for i in range(count)]
        d = bench / f"ds-{n}"
        if not d.exists() or len(os.listdir(d)) < count:
            d.mkdir(parents=True, exist_ok=True)
            payload = os.urandom(n)
            for k in keys:
                (bench / k).write_bytes(payload)
        return {"keys": keys}
    if sc.name == "ckpt_load":
        import torch

        key = f"ckpt-{sizes['state_bytes']}.pt"
        if not (bench / key).exists():
            per = sizes["state_bytes"] // 8
            bench.mkdir(parents=True, exist_ok=True)
            torch.save({f"t{i}": torch.full((per // 4,), float(i)) for i in range(8)}, bench / key)
        return {"key": key}
    if sc.name == "ckpt_load_model":
        import torch

        from s3torch.demo import build_model

        key = f"ckpt-model-{sizes['layers']}-{sizes['d_model']}-{sizes['vocab']}.pt"
        if not (bench / key).exists():
            bench.mkdir(parents=True, exist_ok=True)
            torch.save(build_model(sizes["layers"], sizes["d_model"], sizes["vocab"], 0).state_dict(), bench / key)
        return {"key": key}
    if sc.name == "dcp_load":
        return {"key": model_checkpoint(bench, sizes).name}
    if sc.name in ("dcp_load_cuda", "dcp_load_staged"):
        import warnings

        import torch
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint import FileSystemWriter

        key = f"dcp-bf16-{sizes['layers']}-{sizes['d_model']}"
        if not (bench / key / ".metadata").exists():
            # Cheap to make (the content does not change a read's speed), distinct per tensor.
            sd = {
                k: torch.full(s, (i % 97) / 97, dtype=torch.bfloat16)
                for i, (k, s) in enumerate(bf16_shapes(sizes["layers"], sizes["d_model"]).items())
            }
            warnings.filterwarnings("ignore")
            dcp.save(sd, storage_writer=FileSystemWriter(str(bench / key), sync_files=False))  # torch's own format
        return {"key": key}
    if sc.name.startswith("safetensors_load") or sc.name in ("hf_dcp_load", "hf_model_load"):
        return prepare_safetensors(bench, sizes)
    return {}


def prepare_safetensors(bench: Path, sizes: Dict[str, int]) -> Dict[str, Any]:
    """A bf16 model as safetensors files (one, or ``shards`` and an index), written a tensor
    at a time (the header from the shapes alone), so preparing it takes no memory."""
    import torch

    from s3torch.safetensors._dtypes import BY_TORCH
    from s3torch.safetensors._header import build_header, layout

    layers, d, shards = sizes["layers"], sizes["d_model"], sizes["shards"]
    shapes = list(bf16_shapes(layers, d).items())
    folder = f"st-{layers}-{d}-{shards}"
    (bench / folder).mkdir(parents=True, exist_ok=True)
    per = -(-len(shapes) // shards)
    files, weight_map = [], {}
    for s in range(shards):
        part = shapes[s * per : (s + 1) * per]
        name = "model.safetensors" if shards == 1 else f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        files.append(f"{folder}/{name}")
        weight_map.update({k: name for k, _ in part})
        path = bench / folder / name
        if path.exists():
            continue
        placed = layout([(k, BY_TORCH[torch.bfloat16], shape) for k, shape in part])
        with open(path, "wb") as f:
            f.write(build_header(placed, {"format": "pt"}))
            for i, (_name, _dtype, shape, _begin, _end) in enumerate(placed):
                # Cheap to make (the content does not change a read's speed), distinct per tensor.
                t = torch.full(shape, (i % 97) / 97, dtype=torch.bfloat16)
                t.reshape(-1).view(torch.uint8).numpy().tofile(f)
    # The CRC32C S3 would store with each file (s3torch's uploads write one): nginx sends it, and
    # s3torch.safetensors checks every file it reads whole against it (the others ignore it).
    checksums = {f"/bench/{k}": crc32c_of_file(bench / k) for k in files}
    if shards == 1:
        return {"files": files, "uri_key": files[0], "checksums": checksums}
    index = f"{folder}/model.safetensors.index.json"
    total = sum(2 * math.prod(shape) for _, shape in shapes)
    (bench / index).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return {"files": files, "uri_key": index, "checksums": checksums}


def crc32c_of_file(path: Path) -> str:
    """The file's CRC32C as S3 sends it (base64 of 4 big-endian bytes), cached beside it."""
    import base64

    from s3torch import _crt

    cache = path.with_name(path.name + ".crc32c")
    if cache.exists() and cache.stat().st_mtime >= path.stat().st_mtime:
        return cache.read_text()
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(64 << 20):
            crc = _crt.checksum("crc32c", chunk, crc)
    value = base64.b64encode(crc.to_bytes(4, "big")).decode()
    cache.write_text(value)
    return value


# --- running and reporting ---------------------------------------------------------------


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def weed_client(endpoint: str):  # type: ignore[no-untyped-def]
    """s3torch's own client to the SeaweedFS at ``endpoint`` (not boto3: a GPU machine without
    network has no boto3)."""
    from s3torch import S3Client, S3ClientConfig
    from s3torch._servers import ACCESS_KEY, SECRET_KEY

    return S3Client(
        "us-east-1",
        endpoint=endpoint,
        s3client_config=S3ClientConfig(force_path_style=True, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY),
    )


def warm_up(weed) -> None:  # type: ignore[no-untyped-def]
    """SeaweedFS allocates volumes on the first writes; do them before anything is measured."""
    s3 = weed_client(weed.endpoint)
    blob = os.urandom(16 << 20)
    for i in range(4):
        s3.put("bench", f"warmup/{i}", blob)


def run_one(py: str, ctx: Dict[str, Any], timeout: float) -> Dict[str, Any]:
    try:
        r = subprocess.run(
            [py, str(HERE / "runner.py")], input=json.dumps(ctx), capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    lines = [line for line in r.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"error": f"runner exited {r.returncode}: {(r.stderr or r.stdout).strip().splitlines()[-1:]}"}
    return json.loads(lines[-1])


def summarize(sc: Scenario, peer: str, runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"peer": peer, "error": runs[0].get("error", "no run") if runs else "not run"}
    per_gb = sc.unit == "GB/s"

    def rate(r: Dict[str, Any]) -> float:
        return (r["units"] / 1e9 if per_gb else r["units"]) / r["seconds"]

    def cpu(r: Dict[str, Any]) -> float:  # CPU-s per GB, or per 1000 objects
        return r["cpu_seconds"] / (r["units"] / 1e9 if per_gb else r["units"] / 1000)

    rates = [rate(r) for r in ok]
    cpus = [cpu(r) for r in ok]
    rss = [r["peak_rss_above_baseline"] for r in ok]
    out = {
        "peer": peer,
        "runs": len(ok),
        "rate_median": statistics.median(rates),
        "rate_min": min(rates),
        "rate_max": max(rates),
        "cpu_median": statistics.median(cpus),
        "cpu_min": min(cpus),
        "cpu_max": max(cpus),
        "peak_rss_above_baseline_mb": statistics.median(rss) / 1e6,
        "raw": ok,
    }
    if sc.name.startswith("safetensors") and not sc.needs_cuda:  # the load allocates the tensors: beyond them
        out["peak_rss_beyond_tensors_mb"] = (
            statistics.median(r["peak_rss_above_baseline"] - r["units"] for r in ok) / 1e6
        )
    if ok[0].get("state_bytes"):
        out["peak_rss_over_state"] = statistics.median(r["peak_rss"] for r in ok) / ok[0]["state_bytes"]
    if len(ok) < len(runs):
        out["failed_runs"] = [r.get("error") for r in runs if "error" in r]
    return out


def markdown(results: Dict[str, Any]) -> str:
    lines = [
        f"# s3torch benchmarks ({results['date']})",
        "",
        f"Machine: {results['machine']['cpus']} CPUs ({results['machine']['cpu_model']}), "
        f"{results['machine']['memory_gib']} GiB"
        + (f", {results['machine']['gpu']}" if results["machine"].get("gpu") else "")
        + f". Command: `{results['command']}`. "
        f"Median of {results['repeat']} runs (min-max); ratios are peer / s3torch (rate) and "
        "peer / s3torch (CPU), or / the baseline a table names."
        + (
            " s3torch's staging ring: {} MiB in {} MiB slots (S3TORCH_BENCH_RING).".format(
                *(int(x) >> 20 for x in results["ring"].split(","))
            )
            if results.get("ring")
            else ""
        ),
        "",
    ]
    for sc_res in results["scenarios"]:
        sc = BY_NAME[sc_res["name"]]
        cpu_unit = "CPU-s/GB" if sc.unit == "GB/s" else f"CPU-s/1000 {sc.unit.split('/')[0]}"
        lines += [
            f"## {sc.title} ({sc_res['server']}; {sc_res['sizes']})",
            "",
            f"| peer | {sc.unit} | rate vs {sc.baseline} | {cpu_unit} | CPU vs {sc.baseline} "
            "| peak RSS above baseline |",
            "|---|---|---|---|---|---|",
        ]
        if sc_res.get("error"):
            lines += [f"| (all) | could not run: {sc_res['error']} | | | | |", ""]
            continue
        base = next((p for p in sc_res["peers"] if p["peer"] == sc.baseline and "error" not in p), None)
        for p in sc_res["peers"]:
            if "error" in p:
                lines.append(f"| {p['peer']} | could not run: {p['error']} | | | | |")
                continue
            rr = f"{p['rate_median'] / base['rate_median']:.2f}x" if base else "-"
            cr = f"{p['cpu_median'] / base['cpu_median']:.2f}x" if base and base["cpu_median"] else "-"
            extra = f" ({p['peak_rss_over_state']:.2f}x state)" if "peak_rss_over_state" in p else ""
            if "peak_rss_beyond_tensors_mb" in p:
                extra = f" ({p['peak_rss_beyond_tensors_mb']:+.0f} MB beyond the tensors)"
            lines.append(
                f"| {p['peer']} | {p['rate_median']:.3f} ({p['rate_min']:.3f}-{p['rate_max']:.3f}) | {rr} | "
                f"{p['cpu_median']:.2f} | {cr} | {p['peak_rss_above_baseline_mb']:.0f} MB{extra} |"
            )
        lines.append("")
    return "\n".join(lines)


def charts(results: Dict[str, Any], out: Path, py: str) -> None:
    code = f"""
import json, matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
res = json.load(open({str(out / "results.json")!r}))
for sc in res["scenarios"]:
    peers = [p for p in sc.get("peers", []) if "error" not in p]
    if not peers: continue
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.5 + 0.45 * len(peers)))
    names = [p["peer"] for p in peers]
    per = "GB" if sc["unit"] == "GB/s" else "1000 objects"
    for ax, key, label in ((axes[0], "rate", sc["unit"]), (axes[1], "cpu", "CPU-s per " + per)):
        med = [p[key + "_median"] for p in peers]
        err = [[m - p[key + "_min"] for m, p in zip(med, peers)], [p[key + "_max"] - m for m, p in zip(med, peers)]]
        colors = ["tab:green" if n == "s3torch" or n.startswith("s3torch-") else "tab:gray" for n in names]
        ax.barh(names, med, xerr=err, color=colors)
        ax.set_xlabel(label); ax.invert_yaxis()
    fig.suptitle(sc["title"]); fig.tight_layout()
    fig.savefig({str(out)!r} + "/" + sc["name"] + ".png", dpi=90)
"""
    r = subprocess.run([py, "-c", code], capture_output=True, text=True)
    if r.returncode != 0:
        log("charts not drawn: " + (r.stderr.strip().splitlines() or ["?"])[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, one run each (under 3 minutes)")
    ap.add_argument("--scenarios", default=",".join(s.name for s in SCENARIOS))
    ap.add_argument("--peers", default="", help="comma-separated subset of peers (default: all)")
    ap.add_argument("--repeat", type=int, default=None, help="runs per peer (default 3, --quick 1)")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--s3-like", action="store_true", help="cap nginx at ~90 MB/s per connection, like S3")
    ap.add_argument("--no-install", action="store_true", help="do not pip install the peers")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument(
        "--python",
        default=None,
        help="run the peers with this interpreter instead of benchmarks/.venv (implies --no-install)",
    )
    args = ap.parse_args()
    repeat = args.repeat or (1 if args.quick else 3)
    wanted = [n for s in args.scenarios.split(",") if s.strip() for n in GROUPS.get(s.strip(), [s.strip()])]
    unknown = [w for w in wanted if w not in BY_NAME]
    if unknown:
        ap.error(f"unknown scenarios {unknown}; known: {[s.name for s in SCENARIOS]}")
    peer_filter = {p for p in args.peers.split(",") if p}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()

    py = args.python or ensure_venv(not args.no_install)
    # The C++ harness compiles the core: only when a scenario to run has its peer.
    needs_exe = any("s3torch-bench" in BY_NAME[w].peers for w in wanted) and (
        not peer_filter or "s3torch-bench" in peer_filter
    )
    bench_exe = build_bench_exe() if needs_exe else ""
    results: Dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python benchmarks/run.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "versions": versions(py),
        "repeat": repeat,
        "quick": args.quick,
        "s3_like": args.s3_like,
        "ring": os.environ.get("S3TORCH_BENCH_RING", ""),  # bytes,slot bytes: see runner.ring_kwargs
        "scenarios": [],
    }

    www = Path(tempfile.mkdtemp(prefix="s3torch-bench-www-"))
    os.chmod(www, 0o755)  # nginx's workers run unprivileged
    nginx: Optional[Nginx] = None
    weed = None
    nginx_error = weed_error = None
    try:
        if any(BY_NAME[w].server == "nginx" for w in wanted):
            try:
                nginx = Nginx(www, args.s3_like)
                log(f"nginx at {nginx.endpoint}")
            except Exception as e:
                nginx_error = f"nginx: {e}"
                log(nginx_error)
        if any(BY_NAME[w].server == "seaweed" for w in wanted):
            try:
                from s3torch._servers import SeaweedFS

                weed = SeaweedFS(buckets=("bench",))
                log(f"SeaweedFS at {weed.endpoint}")
            except Exception as e:
                weed_error = f"SeaweedFS: {e}"
                log(weed_error)
        from s3torch._servers import ACCESS_KEY, SECRET_KEY

        for name in wanted:
            sc = BY_NAME[name]
            sizes = sc.quick if args.quick else sc.sizes
            sc_res: Dict[str, Any] = {
                "name": sc.name,
                "title": sc.title,
                "server": sc.server,
                "unit": sc.unit,
                "baseline": sc.baseline,
                "sizes": sizes,
                "peers": [],
            }
            results["scenarios"].append(sc_res)
            server = nginx if sc.server == "nginx" else weed
            if sc.needs_cuda and not _cuda_available():
                sc_res["error"] = "needs CUDA (torch.cuda.is_available() is False here)"
                log(f"{sc.name}: {sc_res['error']}")
                continue
            if server is None:
                sc_res["error"] = nginx_error if sc.server == "nginx" else weed_error
                continue
            ctx: Dict[str, Any] = {
                "scenario": sc.name,
                "server": sc.server,
                "endpoint": server.endpoint,
                "bucket": "bench",
                "access_key": ACCESS_KEY,
                "secret_key": SECRET_KEY,
                "bench_exe": bench_exe,
                **sizes,
            }
            try:
                if sc.server == "nginx":
                    log(f"{sc.name}: preparing data")
                    ctx.update(prepare_nginx_data(www, sc, sizes))
                    assert nginx is not None
                    nginx.set_checksums(ctx.pop("checksums", {}))
                elif sc.name in ("cp_up", "cp_down"):
                    log(f"{sc.name}: preparing data")
                    ctx.update(prepare_cp_data(www, sc, sizes, server.endpoint))
            except Exception as e:
                sc_res["error"] = f"data preparation failed: {e}"
                continue
            peers = [p for p in sc.peers if not peer_filter or p in peer_filter]
            if sc.server == "seaweed":
                warm_up(weed)
            runs: Dict[str, List[Dict[str, Any]]] = {p: [] for p in peers}
            proxy = None
            if sizes.get("latency_ms"):
                # A process of its own, so its CPU is not counted as the client's.
                proxy = LatencyProxyProcess(server.endpoint, sizes["latency_ms"])
                ctx["endpoint"] = proxy.endpoint
                log(f"{sc.name}: through a proxy adding {sizes['latency_ms']} ms at {proxy.endpoint}")
            try:
                for rnd in range(repeat):  # interleaved, so drift on a shared machine hits every peer alike
                    # Each round starts with the next peer: a round's first run can be slowed by
                    # what the last one left (cp_down's s3torch row, first, ran 12-20% slower).
                    for peer in peers[rnd % len(peers) :] + peers[: rnd % len(peers)]:
                        if runs[peer] and "error" in runs[peer][-1]:
                            continue
                        r = run_one(py, {**ctx, "peer": peer}, args.timeout)
                        runs[peer].append(r)
                        if "error" in r:
                            log(f"{sc.name} / {peer}: {r['error']}")
            finally:
                if proxy is not None:
                    proxy.stop()
            for peer in peers:
                s = summarize(sc, peer, runs[peer])
                sc_res["peers"].append(s)
                if "error" not in s:
                    log(f"{sc.name} / {peer}: {s['rate_median']:.3f} {sc.unit}, {s['cpu_median']:.2f} CPU-s per unit")
            (out / "results.json").write_text(json.dumps(results, indent=1))
    finally:
        if weed is not None:
            weed.stop()
        if nginx is not None:
            nginx.stop()
        shutil.rmtree(www, ignore_errors=True)
    results["elapsed_seconds"] = round(time.monotonic() - t_start, 1)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(markdown(results))
    charts(results, out, py)
    log(f"done in {results['elapsed_seconds']}s: {out / 'results.md'}")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
