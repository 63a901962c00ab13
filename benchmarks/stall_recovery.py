"""How long a connection that goes silent mid-answer holds a read: s3torch against
s3torchconnector, each with its defaults, in the same run.

    python benchmarks/stall_recovery.py [--repeat 3] [--out benchmarks/results/stalls]

SeaweedFS on loopback holds a 24 MiB object and a DCP checkpoint (6 x 8 MiB float32 tensors,
saved once by s3torch); both clients reach it through the tests' fault proxy
(``tests/faults/proxy.py``). In each timed run one GET's answer stops halfway on a connection
that stays open (the proxy's ``stall`` fault: no FIN, no RST), and the run ends when the bytes
are all read and checked. Scenarios: ``get`` (the whole object through each client's reader)
and ``dcp_load`` (``dcp.load`` of the checkpoint through each client's ``S3StorageReader``; the
first GET of a ``.distcp`` file stalls). Each client first reads once without a fault, so its
endpoint is known and its connections are warm, and that read's time is the baseline.
Printed, and written to ``--out``/``results.json``: the seconds of every run (docs/gen.py makes
the table of the Benchmarks page from it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.faults.proxy; s3torch itself comes from the venv

import torch  # noqa: E402
import torch.distributed.checkpoint as dcp  # noqa: E402

from s3torch import S3Client, S3ClientConfig  # noqa: E402
from s3torch._servers import ACCESS_KEY, REGION, SECRET_KEY, SeaweedFS  # noqa: E402
from tests.faults.proxy import Fault, FaultProxy  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from run import machine  # noqa: E402

BUCKET = "stalls"
MiB = 1024 * 1024
PEERS = ("s3torch", "s3torchconnector")


def _state(seed: int) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"w{i}": torch.randn(2048, 1024, generator=g) for i in range(6)}


def _ops(peer: str, endpoint: str, data: torch.Tensor, want: Dict[str, torch.Tensor]) -> Dict[str, Callable[[], None]]:
    if peer == "s3torch":
        client = S3Client(
            REGION,
            endpoint=endpoint,
            s3client_config=S3ClientConfig(
                force_path_style=True, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY
            ),
        )
    else:
        from s3torchconnector import S3ClientConfig as PeerConfig
        from s3torchconnector._s3client import S3Client as PeerClient

        client = PeerClient(REGION, endpoint=endpoint, s3client_config=PeerConfig(force_path_style=True))
    expected = data.numpy().tobytes()

    def get() -> None:
        got = client.get_object(BUCKET, "obj").read()
        assert bytes(got) == expected, f"{peer}: object bytes differ"

    def load() -> None:
        out = {k: torch.empty_like(v) for k, v in want.items()}
        if peer == "s3torch":
            from s3torch.dcp import S3StorageReader

            reader = S3StorageReader(
                REGION, f"s3://{BUCKET}/ckpt", endpoint=endpoint, s3client_config=client.s3client_config
            )
        else:
            from s3torchconnector.dcp import S3FileSystem
            from s3torchconnector.dcp import S3StorageReader as PeerReader

            # Its reader takes no endpoint: its file system gets the endpoint-aware client, with
            # the reader's own (dcp_optimized) constructor kept, as benchmarks/runner.py does.
            reader = PeerReader(REGION, f"s3://{BUCKET}/ckpt")
            reader.fs = S3FileSystem(REGION, s3_client=client, reader_constructor=reader.fs._reader_constructor)
        dcp.load(out, storage_reader=reader)
        assert all(torch.equal(out[k], want[k]) for k in want), f"{peer}: loaded tensors differ"

    return {"get": get, "dcp_load": load}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=None, help="folder for results.json and results.md")
    args = ap.parse_args()
    os.environ.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)  # s3torchconnector's
    import s3torchconnector

    import s3torch

    versions = {"s3torch": s3torch.__version__, "s3torchconnector": s3torchconnector.__version__}
    rows: Dict[str, Dict[str, Dict[str, List[float]]]] = {}
    with SeaweedFS(buckets=(BUCKET,)) as srv:
        cfg = S3ClientConfig(force_path_style=True, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY)
        direct = S3Client(REGION, endpoint=srv.endpoint, s3client_config=cfg)
        data = torch.randint(0, 256, (24 * MiB,), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
        direct.put(BUCKET, "obj", data)
        want = _state(2)
        from s3torch.dcp import S3StorageWriter

        dcp.save(
            want,
            storage_writer=S3StorageWriter(REGION, f"s3://{BUCKET}/ckpt", endpoint=srv.endpoint, s3client_config=cfg),
        )
        with FaultProxy.in_front_of(srv.endpoint) as proxy:
            ops = {peer: _ops(peer, proxy.endpoint, data, want) for peer in PEERS}
            targets = {"get": r"/obj", "dcp_load": r"/ckpt/__\d+_\d+\.distcp"}
            for scenario, target in targets.items():
                for peer in PEERS:
                    t0 = time.monotonic()
                    ops[peer][scenario]()
                    base = time.monotonic() - t0
                    rows.setdefault(scenario, {}).setdefault(peer, {"baseline_s": [base], "stalled_s": []})
                for r in range(args.repeat):
                    for peer in PEERS if r % 2 == 0 else PEERS[::-1]:
                        proxy.clear()
                        fault = proxy.add(Fault("stall", method="GET", path=target, times=1))
                        t0 = time.monotonic()
                        ops[peer][scenario]()
                        took = time.monotonic() - t0
                        assert fault.injected == 1, f"{peer} {scenario}: the stall was not hit"
                        rows[scenario][peer]["stalled_s"].append(took)
                        print(f"{scenario:9s} {peer:17s} {took:6.1f} s", flush=True)
                proxy.clear()
    command = f"python benchmarks/stall_recovery.py --repeat {args.repeat}"
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": command,
        "machine": machine(),
        "versions": versions,
        "stalls": rows,
    }
    print(json.dumps(result["stalls"], indent=1))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
