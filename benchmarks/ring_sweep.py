"""Staging-ring sizes for loads into CUDA, in one process (device time is short).

    python benchmarks/ring_sweep.py [--quick] [--repeat 3] [--out DIR]

Serves the dcp_load_cuda checkpoint and the safetensors_load_cuda model file from nginx (the
harness's data and server), then loads each into CUDA through rings of several (ring, slot)
sizes, beside the same load into pinned and plain CPU memory; every configuration once per
round, ``--repeat`` rounds (drift hits all alike), medians. Each ring row also reports how
long the loading thread spent waiting for GETs (native ``wait_any``): a loading thread that
hardly waits is what bounds the load, not the network. Writes ``ring_sweep.json`` and
``ring_sweep.md`` to ``--out``. The harness (run.py) stays the source of the reported
figures, each run in a fresh process; this picks the sizes it should be run with.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import Nginx, log, prepare_nginx_data  # noqa: E402
from scenarios import BY_NAME, bf16_shapes  # noqa: E402

MiB = 1024 * 1024
# (ring bytes, slot bytes); the first is the default.
RINGS: List[Tuple[int, int]] = [
    (256 * MiB, 8 * MiB),
    (256 * MiB, 16 * MiB),
    (512 * MiB, 8 * MiB),
    (512 * MiB, 16 * MiB),
    (512 * MiB, 32 * MiB),
    (1024 * MiB, 16 * MiB),
    (1024 * MiB, 32 * MiB),
]


class _WaitClock:
    """Wraps the native client a RingLoad gets: times its wait_any calls."""

    seconds = 0.0

    def __init__(self, native: Any) -> None:
        self._native = native

    def wait_any(self, handles: Any, *a: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self._native.wait_any(handles, *a)
        finally:
            _WaitClock.seconds += time.perf_counter() - t0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._native, name)


def _clock_ring_waits() -> None:
    from s3torch.dcp import _staging

    init = _staging.RingLoad.__init__

    def timed(self: Any, native: Any, *a: Any, **k: Any) -> None:
        init(self, _WaitClock(native), *a, **k)  # type: ignore[arg-type]

    _staging.RingLoad.__init__ = timed  # type: ignore[method-assign]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default="/tmp/ring-sweep")
    ap.add_argument("--device", default="cuda", help="cpu: a smoke test of this script where CUDA is not at hand")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import torch
    import torch.distributed.checkpoint as dcp

    from s3torch import S3Client, S3ClientConfig
    from s3torch.dcp import S3StorageReader, release_staging_memory
    from s3torch.safetensors import safe_open

    dev = args.device
    if dev == "cuda" and not torch.cuda.is_available():
        log("ring_sweep needs CUDA (--device cpu: a smoke test of the script)")
        return 2
    if dev == "cpu":  # nothing here needs CUDA
        torch.cuda.synchronize = lambda *a: None  # type: ignore[assignment]
    _clock_ring_waits()
    www = Path(tempfile.mkdtemp(prefix="s3torch-sweep-www-"))
    www.chmod(0o755)
    nginx = Nginx(www, False)
    results: Dict[str, Any] = {"rings": RINGS, "rows": []}
    try:
        cfg = S3ClientConfig(unsigned=True, force_path_style=True)
        dcp_sc, st_sc = BY_NAME["dcp_load_cuda"], BY_NAME["safetensors_load_cuda"]
        dcp_sizes = dcp_sc.quick if args.quick else dcp_sc.sizes
        st_sizes = st_sc.quick if args.quick else st_sc.sizes
        log("preparing data")
        dcp_ctx = prepare_nginx_data(www, dcp_sc, dcp_sizes)
        st_ctx = prepare_nginx_data(www, st_sc, st_sizes)
        nginx.set_checksums(st_ctx.pop("checksums", {}))
        client = S3Client("us-east-1", endpoint=nginx.endpoint, s3client_config=cfg)
        shapes = bf16_shapes(dcp_sizes["layers"], dcp_sizes["d_model"])
        st_shapes = bf16_shapes(st_sizes["layers"], st_sizes["d_model"])
        size = {
            w: sum(2 * torch.Size(s).numel() for s in sh.values())
            for w, sh in (("dcp", shapes), ("safetensors", st_shapes))
        }

        def dest(kind: str) -> Dict[str, torch.Tensor]:
            if kind == "cuda":
                return {k: torch.empty(s, dtype=torch.bfloat16, device=dev) for k, s in shapes.items()}
            pin = kind == "pinned" and dev == "cuda"
            return {k: torch.empty(s, dtype=torch.bfloat16, pin_memory=pin) for k, s in shapes.items()}

        dests = {k: dest(k) for k in ("cuda", "pinned", "cpu")}
        torch.cuda.synchronize()

        def dcp_load(kind: str, ring: Tuple[int, int]) -> Callable[[], None]:
            r = S3StorageReader(
                "us-east-1",
                f"s3://bench/{dcp_ctx['key']}",
                endpoint=nginx.endpoint,
                s3client_config=cfg,
                staging_bytes=ring[0],
                staging_slot_bytes=ring[1],
            )
            return lambda: dcp.load(dests[kind], storage_reader=r)

        def st_load(kind: str, ring: Tuple[int, int]) -> Callable[[], None]:
            uri = f"s3://bench/{st_ctx['uri_key']}"

            def op() -> None:
                with safe_open(
                    uri,
                    client=client,
                    device=dev if kind == "cuda" else "cpu",
                    pin_memory=kind == "pinned" and dev == "cuda",
                    staging_bytes=ring[0],
                    staging_slot_bytes=ring[1],
                ) as f:
                    f.get_tensors()
                    if set(f.last_load_checksums.values()) != {"CRC32C checked"}:
                        raise RuntimeError(f"not every file was checked: {f.last_load_checksums}")

            return op

        configs: List[Tuple[str, str, Tuple[int, int], bool]] = []  # (what, kind, ring, cold)
        for what in ("dcp", "safetensors"):
            for kind in ("pinned", "cpu"):
                configs.append((what, kind, RINGS[0], False))
            for ring in RINGS:
                configs.append((what, "cuda", ring, False))
            configs.append((what, "cuda", RINGS[0], True))
        runs: Dict[int, List[Tuple[float, float]]] = {i: [] for i in range(len(configs))}
        for what, kind, ring, _cold in configs:  # one warm-up each (pools the ring)
            (dcp_load if what == "dcp" else st_load)(kind, ring)()
        for rnd in range(args.repeat):
            for i, (what, kind, ring, cold) in enumerate(configs):
                op = (dcp_load if what == "dcp" else st_load)(kind, ring)
                if cold:
                    release_staging_memory()
                torch.cuda.synchronize()
                _WaitClock.seconds = 0.0
                t0 = time.perf_counter()
                op()
                torch.cuda.synchronize()
                dt = time.perf_counter() - t0
                runs[i].append((dt, _WaitClock.seconds))
            log(f"round {rnd + 1} of {args.repeat} done")
        lines = [
            f"# Staging-ring sweep (DCP {size['dcp'] / 1e9:.2f} GB, safetensors {size['safetensors'] / 1e9:.2f} GB, "
            f"bf16, nginx, median of {args.repeat})",
            "",
            "| load | into | ring / slot (MiB) | GB/s | vs pinned | loading thread waiting |",
            "|---|---|---|---|---|---|",
        ]
        pinned_rate: Dict[str, float] = {}
        for i, (what, kind, ring, cold) in enumerate(configs):
            nbytes = size[what]
            dt = statistics.median(r[0] for r in runs[i])
            wait = statistics.median(r[1] / r[0] for r in runs[i])
            rate = nbytes / dt / 1e9
            if kind == "pinned":
                pinned_rate[what] = rate
            row = {"load": what, "into": kind, "ring": ring, "cold": cold, "gbps": rate, "wait_fraction": wait}
            row["runs"] = runs[i]
            results["rows"].append(row)
            ratio = rate / pinned_rate[what] if what in pinned_rate else float("nan")
            ring_s = f"{ring[0] // MiB} / {ring[1] // MiB}" if kind == "cuda" else "-"
            lines.append(
                f"| {what} | {kind}{' (cold)' if cold else ''} | {ring_s} | {rate:.3f} "
                f"({min(nbytes / r[0] / 1e9 for r in runs[i]):.2f}-{max(nbytes / r[0] / 1e9 for r in runs[i]):.2f}) "
                f"| {ratio:.2f}x | {wait * 100:.0f}% |"
            )
        # The ring to run the harness with: the best mean of (CUDA / pinned) over both loads;
        # within 2% of the best, the least memory.
        score = {
            ring: statistics.mean(
                r["gbps"] / pinned_rate[r["load"]]
                for r in results["rows"]
                if r["into"] == "cuda" and not r["cold"] and tuple(r["ring"]) == ring
            )
            for ring in RINGS
        }
        top = max(score.values())
        best = min((r for r in RINGS if score[r] >= 0.98 * top), key=lambda r: (r[0], r[1]))
        results["best_ring"] = best
        lines += ["", f"Best ring for the harness: {best[0] // MiB} MiB in {best[1] // MiB} MiB slots."]
        (out / "best_ring").write_text(f"{best[0]},{best[1]}\n")
        md = "\n".join(lines) + "\n"
        (out / "ring_sweep.md").write_text(md)
        (out / "ring_sweep.json").write_text(json.dumps(results, indent=1))
        print(md)
    finally:
        nginx.stop()
        import shutil

        shutil.rmtree(www, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
