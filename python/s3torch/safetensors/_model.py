"""A model's weights between S3 and the model itself: the safetensors package's
``save_model``/``load_model``, and huggingface_hub's ``save_torch_state_dict``,
``save_torch_model`` and ``load_torch_model`` (a folder of shards and their index), named and
called as theirs so code switches by its import.

Loading reads into the model's own tensors (``_into.py``): a parameter on the host, of the
stored dtype and shape, takes the ranged GETs itself (nothing allocated, nothing copied); one on
a GPU or of another floating-point dtype takes its bytes through the staging ring, cast on the
way; the others (non-contiguous) are read a batch at a time into host memory and copied in. Every name,
shape and dtype is checked before the first byte is read, so a checkpoint that does not fit
the model leaves it untouched. A model whose modules load their state in their own way
(``_load_from_state_dict`` overridden, but for torch's batch norms, whose override the direct
load does itself; load-state-dict hooks; tensors on the meta device or of a tensor subclass)
is loaded as the packages load it: every tensor read, then ``model.load_state_dict``.
"""

from __future__ import annotations

import os
from typing import Dict, List, NamedTuple, Optional, Set, Tuple, Union

import torch
from torch import nn

from .._client import S3Client
from .._config import S3ClientConfig
from .._progress import Progress
from .._uri import parse_s3_uri, s3_path
from ._into import Loaders, Placement, read_into
from ._open import Device, client_of, device_of, safe_open
from ._save import plan, write
from ._sharded_save import save_folder
from ._shards import DEFAULT_MAX_SHARD_SIZE, DEFAULT_PATTERN, check_pattern, parse_size, split
from ._shared import drop_shared, duplicate_names
from ._source import FILE_SUFFIX, INDEX_SUFFIX, _list

URI = Union[str, "os.PathLike[str]"]
BATCH_BYTES = 1 << 30  # host memory for tensors that cannot be read in place, per batch


class IncompatibleKeys(NamedTuple):
    """What :func:`load_torch_model` returns, as ``torch.nn.Module.load_state_dict`` does."""

    missing_keys: List[str]
    unexpected_keys: List[str]


# --- save -----------------------------------------------------------------------------------
def save_model(
    model: nn.Module,
    filename: URI,
    metadata: Optional[Dict[str, str]] = None,
    force_contiguous: bool = False,
    *,
    client: Optional[S3Client] = None,
    region: Optional[str] = None,
    endpoint: Optional[str] = None,
    s3client_config: Optional[S3ClientConfig] = None,
) -> None:
    """Save a model's state dict as one safetensors object, like ``safetensors.torch.save_model``.

    Tensors that share memory (tied weights) are saved once: the other names are recorded in
    the metadata (``dropped -> kept``), and :func:`load_model` fills them.

    Args:
        model: the module.
        filename: ``s3://bucket/key.safetensors``.
        metadata: str -> str for the header's ``__metadata__`` (not changed here).
        force_contiguous: save a non-contiguous tensor's contiguous copy (else it is refused).
        client: an :class:`~s3torch.S3Client` (see :class:`safe_open`).
        region: for a client made here.
        endpoint: for a client made here.
        s3client_config: for a client made here.
    """
    state, meta = drop_shared(model.state_dict(), metadata)
    if force_contiguous:
        state = {k: v.contiguous() for k, v in state.items()}
    planned = plan(state, meta)
    bucket, key = parse_s3_uri(s3_path(filename), need_key=True)
    write(client_of(client, region, endpoint, s3client_config), bucket, key, state, planned)


def save_torch_state_dict(
    state_dict: Dict[str, torch.Tensor],
    save_directory: URI,
    *,
    filename_pattern: Optional[str] = None,
    force_contiguous: bool = True,
    max_shard_size: Union[int, str] = DEFAULT_MAX_SHARD_SIZE,
    metadata: Optional[Dict[str, str]] = None,
    safe_serialization: bool = True,
    is_main_process: bool = True,
    shared_tensors_to_discard: Optional[List[str]] = None,
    overwrite: bool = True,
    progress: bool = False,
    client: Optional[S3Client] = None,
    region: Optional[str] = None,
    endpoint: Optional[str] = None,
    s3client_config: Optional[S3ClientConfig] = None,
) -> List[str]:
    """Save a state dict as safetensors shards and their index under an S3 folder, like
    ``huggingface_hub.save_torch_state_dict``: the same file names, tensors in each file, file
    bytes and index.

    Shards are uploaded concurrently, each streamed from the tensors' memory. The folder loads
    as the earlier save until the new one is complete (docs/safetensors.md, "Save a model"):
    the index is written last, then the earlier save's other files are deleted.

    Args:
        state_dict: name -> tensor (not changed here). Tensors sharing memory are saved once
            (see :func:`save_model`).
        save_directory: ``s3://bucket/folder/``.
        filename_pattern: file names, with ``{suffix}`` (default ``"model{suffix}.safetensors"``).
        force_contiguous: save non-contiguous tensors' contiguous copies (else they are refused).
        max_shard_size: bytes a shard may hold (``"5GB"``: units of 1000); a larger tensor
            gets a shard of its own.
        metadata: str -> str for the index (or the one file's header).
        safe_serialization: True (s3torch writes no pickles).
        is_main_process: False: write, but delete nothing (other processes of a job).
        shared_tensors_to_discard: names to drop first among tensors that share memory.
        overwrite: False: ``FileExistsError`` when the folder holds files of this pattern, and
            every write is create-only.
        progress: report the save: a live bar (bytes, GB/s, ETA) when stderr is a terminal,
            else a line every 5 s; then one summary line.
        client: an :class:`~s3torch.S3Client` (see :class:`safe_open`).
        region: for a client made here.
        endpoint: for a client made here.
        s3client_config: for a client made here.

    Returns:
        The ``s3://`` URIs written.
    """
    if safe_serialization is not True:
        raise ValueError("s3torch.safetensors writes safetensors only: safe_serialization must be True")
    if not isinstance(state_dict, dict):
        raise ValueError(f"Expected a dict of [str, torch.Tensor] but received {type(state_dict)}")
    pattern = check_pattern(DEFAULT_PATTERN if filename_pattern is None else filename_pattern)
    limit = parse_size(max_shard_size)
    bucket, folder = _folder(save_directory)
    state, meta = drop_shared(state_dict, metadata, shared_tensors_to_discard or ())
    if force_contiguous:
        state = {k: v.contiguous() for k, v in state.items()}
    layout = split(state, pattern, limit)
    s3 = client_of(client, region, endpoint, s3client_config)
    where = f"s3://{bucket}/{folder}"
    keys = save_folder(
        s3,
        bucket,
        folder,
        state,
        layout,
        pattern,
        dict(meta or {}),
        overwrite,
        is_main_process,
        Progress("save to", where, progress),
    )
    return [f"s3://{bucket}/{k}" for k in keys]


def save_torch_model(
    model: nn.Module,
    save_directory: URI,
    *,
    filename_pattern: Optional[str] = None,
    force_contiguous: bool = True,
    max_shard_size: Union[int, str] = DEFAULT_MAX_SHARD_SIZE,
    metadata: Optional[Dict[str, str]] = None,
    safe_serialization: bool = True,
    is_main_process: bool = True,
    shared_tensors_to_discard: Optional[List[str]] = None,
    overwrite: bool = True,
    progress: bool = False,
    client: Optional[S3Client] = None,
    region: Optional[str] = None,
    endpoint: Optional[str] = None,
    s3client_config: Optional[S3ClientConfig] = None,
) -> List[str]:
    """:func:`save_torch_state_dict` of ``model.state_dict()``, like
    ``huggingface_hub.save_torch_model``; the ``s3://`` URIs written."""
    return save_torch_state_dict(
        model.state_dict(),
        save_directory,
        filename_pattern=filename_pattern,
        force_contiguous=force_contiguous,
        max_shard_size=max_shard_size,
        metadata=metadata,
        safe_serialization=safe_serialization,
        is_main_process=is_main_process,
        shared_tensors_to_discard=shared_tensors_to_discard,
        overwrite=overwrite,
        progress=progress,
        client=client,
        region=region,
        endpoint=endpoint,
        s3client_config=s3client_config,
    )


def _folder(uri: URI) -> Tuple[str, str]:
    bucket, key = parse_s3_uri(s3_path(uri))
    if key.endswith(FILE_SUFFIX) or key.endswith(".json"):
        raise ValueError(
            f"{s3_path(uri)} names a file: save_torch_state_dict writes into a folder (s3://bucket/folder/); "
            "save_file writes one file"
        )
    return bucket, key if key == "" or key.endswith("/") else key + "/"


# --- load -----------------------------------------------------------------------------------
def load_model(
    model: nn.Module,
    filename: URI,
    strict: bool = True,
    device: Device = "cpu",
    *,
    client: Optional[S3Client] = None,
    region: Optional[str] = None,
    endpoint: Optional[str] = None,
    s3client_config: Optional[S3ClientConfig] = None,
    verify_checksums: bool = True,
    progress: bool = False,
) -> Tuple[List[str], List[str]]:
    """Load safetensors weights from S3 into a model, like ``safetensors.torch.load_model``:
    straight into the model's own tensors (see docs/safetensors.md, "Load into a model").

    Names, shapes and dtypes are checked before anything is read, so a checkpoint that does
    not fit leaves the model as it was: ``strict`` (missing or unexpected names) and shape
    mismatches raise ``RuntimeError``. Tied weights saved once (:func:`save_model`) are filled
    by the name kept.

    Args:
        model: the module.
        filename: a file, an index or a folder, as :func:`load_file` takes.
        strict: every name of the model in the file, and no other.
        device: where tensors are read before ``load_state_dict`` copies them, for a model
            loaded as the package loads it (see the module's docstring); otherwise each tensor
            goes where its parameter is.
        client: an :class:`~s3torch.S3Client` (see :class:`safe_open`).
        region: for a client made here.
        endpoint: for a client made here.
        s3client_config: for a client made here.
        verify_checksums: as :class:`safe_open`'s.
        progress: report the load (as :func:`save_torch_state_dict`'s).

    Returns:
        ``(missing, unexpected)``: the model's names the file lacks, the file's the model lacks.
    """
    f = safe_open(
        filename,
        device="cpu",
        client=client,
        region=region,
        endpoint=endpoint,
        s3client_config=s3client_config,
        verify_checksums=verify_checksums,
    )
    return _load_into(model, f, strict, device, progress)


def load_torch_model(
    model: nn.Module,
    checkpoint_path: URI,
    *,
    strict: bool = False,
    safe: bool = True,
    weights_only: bool = True,
    map_location: Optional[Device] = None,
    mmap: bool = False,
    filename_pattern: Optional[str] = None,
    client: Optional[S3Client] = None,
    region: Optional[str] = None,
    endpoint: Optional[str] = None,
    s3client_config: Optional[S3ClientConfig] = None,
    verify_checksums: bool = True,
    progress: bool = False,
) -> IncompatibleKeys:
    """Load a file, or a folder of shards, into a model, like ``huggingface_hub.load_torch_model``
    (``strict`` defaults to False, as there); loaded as :func:`load_model` loads.

    Args:
        model: the module.
        checkpoint_path: a ``.safetensors`` file, or a folder: its index
            ``filename_pattern.format(suffix="") + ".index.json"``, else its one
            ``*.safetensors`` file.
        strict: every name of the model in the checkpoint, and no other.
        safe: True (s3torch loads no pickles).
        weights_only: accepted; safetensors holds weights only.
        map_location: as :func:`load_model`'s ``device``.
        mmap: accepted; nothing is mapped.
        filename_pattern: the index to look for (default ``"model{suffix}.safetensors"``).
        client: an :class:`~s3torch.S3Client` (see :class:`safe_open`).
        region: for a client made here.
        endpoint: for a client made here.
        s3client_config: for a client made here.
        verify_checksums: as :class:`safe_open`'s.
        progress: report the load (as :func:`save_torch_state_dict`'s).

    Returns:
        ``(missing_keys, unexpected_keys)``.
    """
    if safe is not True:
        raise ValueError("s3torch.safetensors loads safetensors only: safe must be True (pickles run code)")
    del weights_only, mmap
    pattern = check_pattern(DEFAULT_PATTERN if filename_pattern is None else filename_pattern)
    uri = s3_path(checkpoint_path)
    bucket, key = parse_s3_uri(uri)
    s3 = client_of(client, region, endpoint, s3client_config)
    if not key.endswith(FILE_SUFFIX) and not key.endswith(".json"):
        folder = key if key == "" or key.endswith("/") else key + "/"
        listed = _list(s3._get_native(), bucket, folder)
        index = folder + pattern.format(suffix="") + ".index.json"
        files = [k for k in listed if k.endswith(FILE_SUFFIX)]
        if index in listed:
            uri = f"s3://{bucket}/{index}"
        elif len(files) == 1:
            uri = f"s3://{bucket}/{files[0]}"
        else:
            raise ValueError(
                f"{uri}: expected an index {index[len(folder) :]!r} or one {FILE_SUFFIX} file, "
                f"found {len(files)} {FILE_SUFFIX} files and {sum(k.endswith(INDEX_SUFFIX) for k in listed)} indexes"
            )
    f = safe_open(uri, device="cpu", client=s3, verify_checksums=verify_checksums)
    missing, unexpected = _load_into(model, f, strict, map_location or "cpu", progress)
    return IncompatibleKeys(missing, unexpected)


# Overrides of _load_from_state_dict whose work the direct load does itself: torch's batch
# norms (BatchNorm1d/2d/3d, SyncBatchNorm, LazyBatchNorm) fill a missing num_batches_tracked
# with its current value (a checkpoint written before it existed loads), which is what
# leaving it out of the missing names does (_kept_if_absent).
_PLAIN_LOADING = (nn.Module._load_from_state_dict, nn.modules.batchnorm._NormBase._load_from_state_dict)


def _custom_loading(model: nn.Module, state: Dict[str, torch.Tensor]) -> bool:
    """Whether the model loads its state some way of its own, which only
    ``model.load_state_dict`` does right."""
    if type(model).load_state_dict is not nn.Module.load_state_dict:
        return True
    for m in model.modules():
        if type(m)._load_from_state_dict not in _PLAIN_LOADING:
            return True
        if m._load_state_dict_pre_hooks or m._load_state_dict_post_hooks:
            return True
    return any(type(t) is not torch.Tensor or t.device.type == "meta" for t in state.values())


def _kept_if_absent(model: nn.Module) -> Set[str]:
    """The names ``load_state_dict`` never reports missing: the ``num_batches_tracked`` of a
    batch norm tracking running stats (its ``_load_from_state_dict`` keeps the current value)."""
    return {
        f"{prefix}.num_batches_tracked" if prefix else "num_batches_tracked"
        for prefix, m in model.named_modules()
        if type(m)._load_from_state_dict is nn.modules.batchnorm._NormBase._load_from_state_dict
        and getattr(m, "track_running_stats", False)
    }


def _load_into(
    model: nn.Module, f: safe_open, strict: bool, device: Device, progress: bool
) -> Tuple[List[str], List[str]]:
    state = model.state_dict()
    names = f.offset_keys()
    in_file = set(names)
    # Names the model shares memory under: the file holds one (the one it kept on save).
    tied = duplicate_names(state, preferred=names)
    dropped = {n for group in tied.values() for n in group}
    kept = _kept_if_absent(model)
    missing = [k for k in state if k not in in_file and k not in dropped and k not in kept]
    unexpected = [n for n in names if n not in state]
    unexpected += [n for n in sorted(dropped) if n in in_file]  # saved twice: the model holds one
    if strict and (missing or unexpected):
        raise RuntimeError(_key_errors(model, missing, unexpected))
    wanted = [n for n in names if n in state and n not in dropped]
    report = Progress("load into a model from", f.uri, progress)
    report.set_total(sum(f._entry(n)[1].nbytes for n in wanted))
    if _custom_loading(model, state):
        loader = f._loader(device_of(device), None, False)
        loader.on_progress = report.add
        with report:
            loaded = loader.load([f._entry(n) for n in wanted])
            model.load_state_dict(loaded, strict=False)
        return missing, unexpected
    errors = []
    for n in wanted:
        _, info = f._entry(n)
        shape = info.torch_shape(n)
        if tuple(state[n].shape) != shape:
            errors.append(
                f"size mismatch for {n}: copying a param with shape {torch.Size(shape)} from checkpoint, "
                f"the shape in current model is {state[n].shape}."
            )
    if errors:
        raise RuntimeError(f"Error(s) in loading state_dict for {type(model).__name__}:\n\t" + "\n\t".join(errors))
    placements = [Placement(*f._entry(n), state[n]) for n in wanted]
    loaders = Loaders(f._client._get_native(), f._bucket, report.add)
    try:
        with report:
            read_into(loaders, placements, BATCH_BYTES)
    finally:
        f.last_load_stats, f.last_load_checksums = loaders.results()
    return missing, unexpected


def _key_errors(model: nn.Module, missing: List[str], unexpected: List[str]) -> str:
    parts = []
    if missing:
        parts.append("Missing key(s) in state_dict: " + ", ".join(f'"{k}"' for k in missing) + ".")
    if unexpected:
        parts.append("Unexpected key(s) in state_dict: " + ", ".join(f'"{k}"' for k in unexpected) + ".")
    return f"Error(s) in loading state_dict for {type(model).__name__}:\n\t" + "\n\t".join(parts)
