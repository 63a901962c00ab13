"""One configuration per scenario: what it measures, against which server, with which peers,
at default and --quick sizes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

MiB = 1024 * 1024


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    server: str  # "nginx" (reads) or "seaweed" (writes)
    unit: str  # "GB/s" or "objects/s"
    peers: List[str]
    sizes: Dict[str, int] = field(default_factory=dict)
    quick: Dict[str, int] = field(default_factory=dict)
    needs_cuda: bool = False  # reported as not run where torch.cuda.is_available() is False
    baseline: str = "s3torch"  # the peer whose rate and CPU the others' are divided by


SCENARIOS: List[Scenario] = [
    Scenario(
        "get",
        "GET of one object into memory",
        "nginx",
        "GB/s",
        [
            "curl",
            "s3torch-bench",
            "s3torch",
            "s3torch-readinto",
            "s3torch-tensor",
            "s3torchconnector",
            "s3torchconnector-readinto",
            "boto3",
            "boto3-transfer",
            "fsspec-s3torch",
            "fsspec-s3fs",
        ],
        {"object_bytes": 1024 * MiB},
        {"object_bytes": 256 * MiB},
    ),
    Scenario(
        "ranged",
        "Random 1 MiB ranged reads",
        "nginx",
        "GB/s",
        ["s3torch", "s3torchconnector", "boto3", "fsspec-s3torch", "fsspec-s3fs"],
        {"object_bytes": 1024 * MiB, "reads": 200, "read_bytes": MiB},
        {"object_bytes": 256 * MiB, "reads": 40, "read_bytes": MiB},
    ),
    # A read of one and a half parts (a Parquet column chunk's size, a torch.load storage's):
    # its pieces start at once, where aws-c-s3 GETs the first part alone before the rest. Run
    # with --s3-like (90 MB/s per connection, as S3 gives) to see it; 20 ms to the first byte.
    Scenario(
        "ranged_mid",
        "Random 12 MiB ranged reads",
        "nginx",
        "GB/s",
        ["s3torch", "s3torchconnector", "boto3", "fsspec-s3torch", "fsspec-s3fs"],
        {"object_bytes": 1024 * MiB, "reads": 40, "read_bytes": 12 * MiB, "latency_ms": 20},
        {"object_bytes": 256 * MiB, "reads": 10, "read_bytes": 12 * MiB, "latency_ms": 20},
    ),
    Scenario(
        "put",
        "PUT of one object from memory",
        "seaweed",
        "GB/s",
        ["s3torch-bench", "s3torch", "s3torch-writer", "s3torchconnector", "boto3-transfer"],
        {"object_bytes": 1024 * MiB},
        {"object_bytes": 128 * MiB},
    ),
    Scenario(
        "dataset0",
        "100 KiB objects through a map dataset, DataLoader(num_workers=0)",
        "nginx",
        "objects/s",
        ["s3torch", "s3torchconnector"],
        {"objects": 10_000, "object_bytes": 100 * 1024, "workers": 0},
        {"objects": 1_000, "object_bytes": 100 * 1024, "workers": 0},
    ),
    Scenario(
        "dataset2",
        "100 KiB objects through a map dataset, DataLoader(num_workers=2)",
        "nginx",
        "objects/s",
        ["s3torch", "s3torchconnector"],
        {"objects": 10_000, "object_bytes": 100 * 1024, "workers": 2},
        {"objects": 1_000, "object_bytes": 100 * 1024, "workers": 2},
    ),
    Scenario(
        "iterable",
        "100 KiB objects through S3IterableDataset, DataLoader(num_workers=0)",
        "nginx",
        "objects/s",
        ["s3torch", "s3torchconnector"],
        {"objects": 1_000, "object_bytes": 100 * 1024, "workers": 0, "iterable": 1},
        {"objects": 1_000, "object_bytes": 100 * 1024, "workers": 0, "iterable": 1},
    ),
    Scenario(
        "ckpt_save",
        "torch.save through checkpoint helpers",
        "seaweed",
        "GB/s",
        ["s3torch", "s3torchconnector", "boto3-transfer"],
        {"state_bytes": 512 * MiB},
        {"state_bytes": 96 * MiB},
    ),
    Scenario(
        "ckpt_load",
        "torch.load through checkpoint helpers",
        "nginx",
        "GB/s",
        ["s3torch", "s3torchconnector", "boto3-transfer"],
        {"state_bytes": 512 * MiB},
        {"state_bytes": 96 * MiB},
    ),
    Scenario(
        "ckpt_load_model",
        "torch.load of a transformer state dict (hundreds of tensors) through checkpoint helpers",
        "nginx",
        "GB/s",
        ["s3torch", "s3torchconnector", "boto3-transfer"],
        {"layers": 14, "d_model": 1024, "vocab": 32000},
        {"layers": 2, "d_model": 512, "vocab": 8000},
    ),
    # `s3torch cp` and s5cmd copying one DCP checkpoint directory (the dcp_load model, written by
    # torch's FileSystemWriter) to S3 and back, each a process of its own: CPU is the child's;
    # peak RSS is not measured for them (the runner's own stays flat). "s3torch-2gbps" is
    # `s3torch cp --throughput-gbps 2`: fewer connections, for a server on the same cores.
    Scenario(
        "cp_up",
        "a DCP checkpoint directory copied to S3 by a command line",
        "seaweed",
        "GB/s",
        ["s3torch", "s3torch-2gbps", "s5cmd"],
        {"layers": 14, "d_model": 1024, "vocab": 32000},
        {"layers": 2, "d_model": 512, "vocab": 8000},
    ),
    Scenario(
        "cp_down",
        "a DCP checkpoint copied from S3 to a local directory by a command line",
        "seaweed",
        "GB/s",
        ["s3torch", "s3torch-2gbps", "s3torch-noverify", "s5cmd", "s5cmd-sync"],
        {"layers": 14, "d_model": 1024, "vocab": 32000},
        {"layers": 2, "d_model": 512, "vocab": 8000},
    ),
    Scenario(
        "dcp_save",
        "DCP save of a transformer state dict",
        "seaweed",
        "GB/s",
        ["s3torch", "s3torch-msc", "s3torchconnector", "fsspec-s3torch", "fsspec-s3fs", "msc"],
        {"layers": 14, "d_model": 1024, "vocab": 32000},
        {"layers": 2, "d_model": 512, "vocab": 8000},
    ),
    Scenario(
        "dcp_load",
        "DCP load of a transformer state dict",
        "nginx",
        "GB/s",
        ["s3torch", "s3torch-msc", "s3torchconnector", "fsspec-s3torch", "fsspec-s3fs", "msc"],
        {"layers": 14, "d_model": 1024, "vocab": 32000},
        {"layers": 2, "d_model": 512, "vocab": 8000},
    ),
    # A bf16 checkpoint written by torch's FileSystemWriter (per layer: up (4d, d), down (d, 4d),
    # norm (d,)); destinations per peer: "s3torch" and "s3torchconnector" load into CUDA
    # tensors, "s3torch-pinned" into pinned CPU memory, "s3torch-cpu" into plain CPU memory.
    # Every run is a fresh process; each row times the process's second load (warm: the
    # pooled ring is page-locked already) except "s3torch-cold" (CUDA), which times the
    # first, page-locking its ring, and "s3torch-pinned-cold" (the first load into pinned
    # memory: the same-run counterpart of a cold CUDA load) (runner.warmed).
    Scenario(
        "dcp_load_cuda",
        "DCP load of a bf16 checkpoint into a CUDA state dict",
        "nginx",
        "GB/s",
        ["s3torch", "s3torch-cold", "s3torch-pinned", "s3torch-pinned-cold", "s3torchconnector", "s3torch-cpu"],
        {"layers": 16, "d_model": 4096},
        {"layers": 2, "d_model": 1024},
        needs_cuda=True,
    ),
    # DCP save of a bf16 state dict of the dcp_load_cuda shapes (~4.3 GB at full size) to
    # SeaweedFS: "s3torch" and "s3torchconnector" from CUDA tensors (s3torch through its pinned
    # staging ring, s3torchconnector through torch's per-tensor copies to pageable memory),
    # "s3torch-cpu" from the same tensors in CPU memory. Peak RSS above the baseline is the
    # host memory the save took (the ring, the upload window, torch's copies).
    Scenario(
        "dcp_save_cuda",
        "DCP save of a bf16 CUDA state dict",
        "seaweed",
        "GB/s",
        ["s3torch", "s3torchconnector", "s3torch-cpu"],
        {"layers": 16, "d_model": 4096},
        {"layers": 2, "d_model": 1024},
        needs_cuda=True,
    ),
    # Model weights in the safetensors format into CPU memory (bf16, per layer: up (4d, d),
    # down (d, 4d), norm (d,)): one file, and the same tensors in 4 shards with an index.
    # "s3torch" is s3torch.safetensors (every file checked against the full-object CRC32C the
    # server sends, as S3 stores it; "s3torch-nocheck": verify_checksums=False), "runai"
    # runai-model-streamer's S3 backend (SafetensorsStreamer, pointed at the same endpoint),
    # "boto3" a GET of each file then safetensors.torch.load of its bytes.
    Scenario(
        "safetensors_load",
        "safetensors load of one bf16 model file into CPU memory",
        "nginx",
        "GB/s",
        ["s3torch", "s3torch-nocheck", "runai", "boto3"],
        {"layers": 16, "d_model": 4096, "shards": 1},
        {"layers": 4, "d_model": 2048, "shards": 1},
    ),
    Scenario(
        "safetensors_load_sharded",
        "safetensors load of a bf16 model in 4 shards (an index) into CPU memory",
        "nginx",
        "GB/s",
        ["s3torch", "s3torch-nocheck", "runai", "boto3"],
        {"layers": 16, "d_model": 4096, "shards": 4},
        {"layers": 4, "d_model": 2048, "shards": 4},
    ),
    # The sharded model of safetensors_load_sharded through dcp.load, as torchtitan loads a
    # Hugging Face checkpoint into its (here one-rank) state dict: S3HuggingFaceStorageReader
    # on the index, against the way to do it without s3torch, s5cmd copying the shards to local
    # disk and torch's HuggingFaceStorageReader reading them there (both timed, the copy
    # removed after).
    Scenario(
        "hf_dcp_load",
        "dcp.load of a bf16 Hugging Face checkpoint in 4 shards into a CPU state dict",
        "nginx",
        "GB/s",
        ["s3torch", "s3torch-nocheck", "s5cmd+torch"],
        {"layers": 16, "d_model": 4096, "shards": 4},
        {"layers": 4, "d_model": 2048, "shards": 4},
    ),
    # The sharded model of safetensors_load_sharded into a model's own (preallocated bf16)
    # parameters, as a serving process loads its weights: s3torch.safetensors.load_model on
    # the index, against s5cmd copying the shards to local disk then huggingface_hub's
    # load_torch_model (both timed, the copy removed after), and runai-model-streamer
    # streaming the tensors then model.load_state_dict.
    Scenario(
        "hf_model_load",
        "load of a bf16 Hugging Face checkpoint in 4 shards into a model's CPU parameters",
        "nginx",
        "GB/s",
        ["s3torch", "s3torch-nocheck", "s5cmd+hf", "runai"],
        {"layers": 16, "d_model": 4096, "shards": 4},
        {"layers": 4, "d_model": 2048, "shards": 4},
    ),
    # A bf16 model saved as a Hugging Face checkpoint (shards of at most 500 MB and an index):
    # s3torch.safetensors.save_torch_model straight to S3, against huggingface_hub's
    # save_torch_model to local disk then s5cmd copying the folder up (both timed).
    Scenario(
        "hf_model_save",
        "save of a bf16 model as a Hugging Face checkpoint (500 MB shards and an index)",
        "seaweed",
        "GB/s",
        ["s3torch", "hf+s5cmd"],
        {"layers": 6, "d_model": 4096, "shard_bytes": 500 * 10**6},
        {"layers": 2, "d_model": 2048, "shard_bytes": 20 * 10**6},
    ),
    # The hf_model_save model on a GPU: "s3torch" from its CUDA parameters (through the pinned
    # staging ring), "hf+s5cmd" huggingface_hub from the same CUDA parameters to local disk
    # (whole-tensor copies to host memory) then s5cmd up, "s3torch-cpu" the same model in CPU
    # memory. Peak RSS above the baseline is the host memory the save took.
    Scenario(
        "hf_model_save_cuda",
        "save of a bf16 CUDA model as a Hugging Face checkpoint (500 MB shards and an index)",
        "seaweed",
        "GB/s",
        ["s3torch", "hf+s5cmd", "s3torch-cpu"],
        {"layers": 16, "d_model": 4096, "shard_bytes": 500 * 10**6},
        {"layers": 2, "d_model": 2048, "shard_bytes": 20 * 10**6},
        needs_cuda=True,
    ),
    # dcp.save of the hf_model_save model's state dict as a Hugging Face checkpoint, as
    # torchtitan saves one (one rank here; fqn_to_index_mapping: 4 files):
    # S3HuggingFaceStorageWriter straight to S3, against torch's HuggingFaceStorageWriter to
    # local disk then s5cmd copying the folder up (both timed).
    Scenario(
        "hf_dcp_save",
        "dcp.save of a bf16 state dict as a Hugging Face checkpoint in 4 files",
        "seaweed",
        "GB/s",
        ["s3torch", "torch+s5cmd"],
        {"layers": 6, "d_model": 4096, "files": 4},
        {"layers": 2, "d_model": 2048, "files": 4},
    ),
    # The one-file model of safetensors_load into CUDA memory (through the pinned staging
    # ring) beside the same load into pinned and plain CPU memory (ranged GETs straight into
    # the tensors); warm and cold as in dcp_load_cuda. Every row checks each file against its
    # full-object CRC32C.
    Scenario(
        "safetensors_load_cuda",
        "safetensors load of one bf16 model file into CUDA memory",
        "nginx",
        "GB/s",
        ["s3torch", "s3torch-cold", "s3torch-pinned", "s3torch-pinned-cold", "s3torch-cpu"],
        {"layers": 16, "d_model": 4096, "shards": 1},
        {"layers": 4, "d_model": 2048, "shards": 1},
        needs_cuda=True,
    ),
    # The staging ring on CPU: "s3torch" and "s3torchconnector" load into transposed views
    # (nothing can land in place), "s3torch-direct" into contiguous tensors, "s3torch-fresh"
    # into contiguous tensors each load allocates (as after `model.to_empty()`).
    Scenario(
        "dcp_load_staged",
        "DCP load into transposed CPU destinations (staging ring)",
        "nginx",
        "GB/s",
        ["s3torch", "s3torch-direct", "s3torch-fresh", "s3torchconnector"],
        {"layers": 4, "d_model": 4096},
        {"layers": 1, "d_model": 1024},
    ),
]

# Many objects in flight: 100 KiB objects through both dataset kinds in batches of 32 (a map
# dataset's batch comes from __getitems__ where the dataset has it; an iterable one shards across
# workers), DataLoader with 0 and 2 workers, straight from nginx (0 ms) and through
# benchmarks/latency_proxy.py adding 20 ms before each response's first byte.
PREFETCH = []
for _latency in (0, 20):
    for _kind in ("map", "iter"):
        for _workers in (0, 2):
            _sizes = {
                "objects": 4_000 if _latency == 0 else 400,
                "object_bytes": 100 * 1024,
                "workers": _workers,
                "iterable": int(_kind == "iter"),
                "batch_size": 32,
                "latency_ms": _latency,
            }
            PREFETCH.append(
                Scenario(
                    f"prefetch_{_kind}{_workers}" + (f"_{_latency}ms" if _latency else ""),
                    "100 KiB objects through "
                    + ("S3MapDataset" if _kind == "map" else "S3IterableDataset")
                    + f", batches of 32, DataLoader(num_workers={_workers}), {_latency} ms added first-byte latency",
                    "nginx",
                    "objects/s",
                    ["s3torch", "s3torchconnector"],
                    _sizes,
                    {**_sizes, "objects": _sizes["objects"] // 4},
                )
            )
SCENARIOS += PREFETCH

# fsspec's bulk calls over many small objects (SeaweedFS: they list), the same calls on s3torch's
# filesystem and on s3fs; get also through benchmarks/latency_proxy.py adding 20 ms. (s3fs's
# uploads stall behind that proxy, so put is measured without it.)
# rm of a prefix: the objects are written before measuring; both delete in batches (DeleteObjects).
for _name, _latency, _objects in (
    ("fsspec_get_many", 0, 1_000),
    ("fsspec_get_many_20ms", 20, 400),
    ("fsspec_put_many", 0, 1_000),
    ("fsspec_rm_many", 0, 4_000),
    ("fsspec_rm_many_20ms", 20, 4_000),
):
    _verb = _name.split("_")[1]
    _sizes = {"objects": _objects, "object_bytes": 1024 if _verb == "rm" else 100 * 1024, "latency_ms": _latency}
    SCENARIOS.append(
        Scenario(
            _name,
            f"fsspec {_verb} of {_objects:,} x {_sizes['object_bytes'] // 1024} KiB objects"
            + (" (recursive, a prefix)" if _verb == "rm" else "")
            + (f", {_latency} ms added first-byte latency" if _latency else ""),
            "seaweed",
            "objects/s",
            ["fsspec-s3torch", "fsspec-s3fs"] + (["fsspec-s3torch-single"] if _verb == "rm" else []),
            _sizes,
            {**_sizes, "objects": _objects // 4},
            baseline="fsspec-s3torch",
        )
    )

# A new client's first request, 50 clients one after another in one process (each DCP save and
# load, Lightning save, safetensors load makes one), credentials from the default chain. nginx
# takes any signature, so the container endpoint can hand out a session token (SeaweedFS refuses
# one it did not issue, and botocore and the CRT of s3torchconnector's require one there).
for _name, _from in (("new_client", "the environment"), ("new_client_container", "a container credentials endpoint")):
    SCENARIOS.append(
        Scenario(
            _name,
            f"a new client's first request (a HEAD of a 1-byte object), credentials from {_from} (the default chain)",
            "nginx",
            "clients/s",
            ["s3torch", "s3torchconnector", "boto3"],
            {"clients": 50},
            {"clients": 10},
        )
    )

# zarr 3: s3torch's and s3fs's filesystems through zarr's FsspecStore (a store URL; s3torch's
# asynchronous=True instance runs each call on a thread of its pool, s3fs is async itself),
# and zarr's ObjectStore over obstore (Rust, async).
for _name, _verb, _latency in (("zarr_read", "read", 0), ("zarr_read_20ms", "read", 20), ("zarr_write", "write", 0)):
    SCENARIOS.append(
        Scenario(
            _name,
            f"zarr 3: {_verb} a 4,000 x 4,000 float32 array in 250 x 250 chunks (256 objects of 250 KB, "
            "uncompressed)" + (f", {_latency} ms added first-byte latency" if _latency else ""),
            "seaweed",
            "GB/s",
            ["zarr-s3torch", "zarr-s3fs", "zarr-obstore"],
            {"rows": 4000, "chunk_rows": 250, "latency_ms": _latency},
            {"rows": 1000, "chunk_rows": 250, "latency_ms": _latency},
            baseline="zarr-s3torch",
        )
    )

BY_NAME = {s.name: s for s in SCENARIOS}
# Names --scenarios also accepts for a group of scenarios.
GROUPS = {"prefetch": [s.name for s in PREFETCH]}


def bf16_shapes(layers: int, d: int) -> Dict[str, tuple]:
    """The tensors of the dcp_load_cuda / dcp_load_staged checkpoints (and of dcp_save_cuda)."""
    out: Dict[str, tuple] = {}
    for i in range(layers):
        out[f"l{i}.up"], out[f"l{i}.down"], out[f"l{i}.norm"] = (4 * d, d), (d, 4 * d), (d,)
    return out
