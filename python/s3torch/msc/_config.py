"""multi-storage-client configuration: where MSC looks for its file, and what an S3 profile in
it means to s3torch (bucket, key prefix, endpoint, region, credentials).

Only the parts of the format that place bytes on S3 are read: ``profiles`` whose storage
provider is S3 or S3-compatible, their static credentials, and ``path_mapping`` of ``s3://``
prefixes to profiles. Everything is checked when a path is resolved, so a reader or writer
built on a bad profile fails at construction with an :class:`MSCConfigError` that names the
file and the profile.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from .._config import S3ClientConfig, default_region
from .._uri import split_bucket

MSC_SCHEME = "msc://"
# Storage provider types whose options are MSC's S3StorageProvider options over the S3 API.
S3_PROVIDER_TYPES = ("s3", "s8k")
_UNRESOLVED = re.compile(r"\$\{[^}]+\}|\$[A-Za-z_][A-Za-z0-9_]*")


class MSCConfigError(ValueError):
    """A multi-storage-client path or profile s3torch cannot use. ``config_file`` and
    ``profile`` name where the problem is (None where there is none)."""

    def __init__(self, message: str, *, config_file: Optional[str] = None, profile: Optional[str] = None) -> None:
        where = []
        if config_file:
            where.append(f"MSC config {config_file}")
        if profile is not None:
            where.append(f"profile {profile!r}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
        self.config_file = config_file
        self.profile = profile


def config_search_paths() -> List[str]:
    """MSC 1.3.1's search order (``StorageClientConfig.read_msc_config``): ``$MSC_CONFIG``,
    then ``$XDG_CONFIG_HOME/msc/config.{yaml,json}``, ``~/.msc_config.{yaml,json}``,
    ``~/.config/msc/config.{yaml,json}``, ``<each of $XDG_CONFIG_DIRS or /etc/xdg>/msc/config.{yaml,json}``,
    ``/etc/msc_config.{yaml,json}``. The first file that exists is used."""
    paths: List[str] = []
    env = os.environ.get("MSC_CONFIG")
    if env is not None:
        paths.append(env)
    home = os.environ.get("XDG_CONFIG_HOME")
    if home:
        paths += [os.path.join(home, "msc", "config.yaml"), os.path.join(home, "msc", "config.json")]
    user = os.environ.get("HOME")
    if user:
        paths += [
            os.path.join(user, ".msc_config.yaml"),
            os.path.join(user, ".msc_config.json"),
            os.path.join(user, ".config", "msc", "config.yaml"),
            os.path.join(user, ".config", "msc", "config.json"),
        ]
    for d in (os.environ.get("XDG_CONFIG_DIRS") or "/etc/xdg").split(":"):
        if d.strip():
            paths += [os.path.join(d.strip(), "msc", "config.yaml"), os.path.join(d.strip(), "msc", "config.json")]
    paths += ["/etc/msc_config.yaml", "/etc/msc_config.json"]
    return [os.path.abspath(p) for p in paths]


@dataclass(frozen=True)
class S3Target:
    """Where a profile's objects live and how to reach them: one S3 client per distinct target."""

    region: str
    endpoint: Optional[str]
    config: S3ClientConfig


@dataclass(frozen=True)
class Resolved:
    """A checkpoint path resolved to S3: ``url`` is ``s3://bucket/key``; ``profile`` is the MSC
    profile it went through (None for an ``s3://`` URL no path_mapping entry matched)."""

    url: str
    target: S3Target
    profile: Optional[str]


def _expand(value: Any, file: Optional[str], profile: str) -> Any:
    """``${VAR}`` references expanded as MSC does; an unset variable is an error."""
    if isinstance(value, dict):
        return {k: _expand(v, file, profile) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, file, profile) for v in value]
    if isinstance(value, str):
        out = os.path.expandvars(value)
        unresolved = _UNRESOLVED.findall(out)
        if unresolved:
            raise MSCConfigError(
                f"environment variables {unresolved} are not set; set them or write the values into the file",
                config_file=file,
                profile=profile,
            )
        return out
    return value


class MSCConfig:
    """One MSC configuration file, read once. ``file`` is None when no file was found."""

    def __init__(
        self,
        data: Dict[str, Any],
        file: Optional[str],
        searched: List[str],
        profile_files: Optional[Dict[str, str]] = None,
    ) -> None:
        self.file = file
        self.searched = searched
        profiles = data.get("profiles") or {}
        if not isinstance(profiles, dict):
            raise MSCConfigError("'profiles' must be a mapping of profile names to profiles", config_file=file)
        self.profiles: Dict[str, Any] = profiles
        self.profile_files = profile_files or {}  # profile -> the included file defining it
        mapping = data.get("path_mapping") or {}
        if not isinstance(mapping, dict):
            raise MSCConfigError("'path_mapping' must be a mapping of source prefixes to msc:// URLs", config_file=file)
        # (bucket, key prefix, profile), longest prefix first, as MSC
        # matches them; entries MSC would skip (no trailing "/", not msc://) are skipped too.
        self.s3_mapping: List[Tuple[str, str, str]] = []
        for src, dst in mapping.items():
            if not (isinstance(src, str) and isinstance(dst, str) and src.endswith("/") and dst.startswith(MSC_SCHEME)):
                continue
            if not src.startswith("s3://") or not dst.endswith("/"):
                continue
            bucket, key_prefix = split_bucket(src[len("s3://") :])
            profile, _, sub = dst[len(MSC_SCHEME) :].partition("/")
            if not profile or sub:
                raise MSCConfigError(
                    f"path_mapping {src!r}: {dst!r} must be msc://<profile>/ (a profile, no path; as MSC's schema)",
                    config_file=file,
                )
            self.s3_mapping.append((bucket, key_prefix, profile))
        self.s3_mapping.sort(key=lambda m: len(m[1]), reverse=True)

    @classmethod
    def load(cls) -> "MSCConfig":
        """The first configuration file on MSC's search path (see :func:`config_search_paths`).
        ``$MSC_CONFIG`` naming a file that does not exist is an error (MSC would silently go on
        searching)."""
        searched = config_search_paths()
        env = os.environ.get("MSC_CONFIG")
        if env is not None and not os.path.exists(env):
            raise MSCConfigError(
                f"MSC_CONFIG={env!r} names a file that does not exist; point it at your MSC config file or unset it",
                config_file=os.path.abspath(env),
            )
        for path in searched:
            if os.path.exists(path):
                data = _read(path)
                profile_files = _merge_includes(path, data)
                return cls(data, path, searched, profile_files)
        return cls({}, None, searched)

    def resolve(self, path: Any) -> Resolved:
        """``msc://profile/path`` or ``s3://bucket/key`` as an S3 URL and the target to reach it."""
        if isinstance(path, os.PathLike):
            path = os.fspath(path)
        if not isinstance(path, str):
            raise TypeError(f"expected an msc:// or s3:// path as str, got {type(path).__name__}")
        if path.startswith("s3:/") and not path.startswith("s3://"):
            path = "s3://" + path[4:]  # pathlib collapses "//"
        if path.startswith("msc:/") and not path.startswith(MSC_SCHEME):
            path = MSC_SCHEME + path[5:]
        if path.startswith(MSC_SCHEME):
            profile, _, sub = path[len(MSC_SCHEME) :].partition("/")
            if not profile:
                raise MSCConfigError(f"{path!r} names no profile; write msc://<profile>/<path>", config_file=self.file)
            return self._resolve_profile(profile, sub)
        if path.startswith("s3://"):
            bucket, key = split_bucket(path[len("s3://") :])
            if not bucket:
                raise MSCConfigError(f"{path!r} names no bucket; write s3://<bucket>/<prefix>")
            for m_bucket, m_prefix, profile in self.s3_mapping:
                if m_bucket == bucket and key.startswith(m_prefix):
                    return self._resolve_profile(profile, key[len(m_prefix) :], via=path)
            return Resolved(path, S3Target(default_region(), None, S3ClientConfig()), None)
        raise MSCConfigError(
            f"{path!r} is neither msc://<profile>/<path> nor s3://<bucket>/<prefix>; s3torch.msc reads and writes "
            "S3 only (for local paths use torch.distributed.checkpoint.FileSystemReader/FileSystemWriter)"
        )

    def _resolve_profile(self, profile: str, sub: str, via: Optional[str] = None) -> Resolved:
        file = self.profile_files.get(profile, self.file)
        raw = self.profiles.get(profile)
        if raw is None and profile.startswith("_s3-") and len(profile) > 4:
            # MSC's implicit profile for an unmapped s3:// URL: the bucket, environment credentials.
            raw = {"storage_provider": {"type": "s3", "options": {"base_path": profile[4:]}}}
        if raw is None:
            hint = f" (reached through path_mapping from {via!r})" if via else ""
            if file is None:
                raise MSCConfigError(
                    f"no MSC config file found{hint}; searched {', '.join(self.searched)}. Write one there or "
                    "set MSC_CONFIG to its path",
                    profile=profile,
                )
            known = ", ".join(sorted(map(str, self.profiles))) or "none"
            raise MSCConfigError(
                f"no such profile{hint} (profiles in the file: {known}); add it under 'profiles' or fix the URL",
                config_file=file,
                profile=profile,
            )
        if not isinstance(raw, dict):
            raise MSCConfigError(
                "a profile must be a mapping with a 'storage_provider'", config_file=file, profile=profile
            )
        raw = _expand(raw, file, profile)
        provider = raw.get("storage_provider")
        if not isinstance(provider, dict) or not isinstance(provider.get("type"), str):
            raise MSCConfigError(
                "has no 'storage_provider' with a 'type'; add "
                "storage_provider: {type: s3, options: {base_path: <bucket>}}",
                config_file=file,
                profile=profile,
            )
        ptype = provider["type"]
        if ptype not in S3_PROVIDER_TYPES:
            what = (
                "a POSIX ('file') profile: load and save it with torch.distributed.checkpoint.FileSystemReader/"
                "FileSystemWriter on its base_path"
                if ptype == "file"
                else f"its storage provider type is {ptype!r}"
            )
            raise MSCConfigError(
                f"{what}; s3torch.msc supports storage provider types {list(S3_PROVIDER_TYPES)} only "
                "(use multistorageclient's own classes for this profile)",
                config_file=file,
                profile=profile,
            )
        options = provider.get("options") or {}
        if not isinstance(options, dict):
            raise MSCConfigError("storage_provider.options must be a mapping", config_file=file, profile=profile)
        base = str(options.get("base_path") or "").strip("/")
        bucket, _, base_prefix = base.partition("/")
        if not bucket:
            raise MSCConfigError(
                "storage_provider.options.base_path names no bucket; set base_path: <bucket> or <bucket>/<prefix>",
                config_file=file,
                profile=profile,
            )
        key = _join(base_prefix, sub)
        return Resolved(f"s3://{bucket}/{key}", self._target(profile, options, raw), profile)

    def _target(self, profile: str, options: Dict[str, Any], raw: Dict[str, Any]) -> S3Target:
        file = self.profile_files.get(profile, self.file)
        cfg: Dict[str, Any] = {}
        if options.get("signature_version") == "UNSIGNED":
            cfg["unsigned"] = True
        if isinstance(options.get("s3"), dict) and options["s3"].get("addressing_style") == "path":
            cfg["force_path_style"] = True
        verify = options.get("verify")
        if isinstance(verify, str):
            cfg["ca_file"] = verify
        elif verify is False:
            raise MSCConfigError(
                "storage_provider.options.verify: false is not supported by s3torch (TLS is always verified); "
                "give the path of a CA bundle instead",
                config_file=file,
                profile=profile,
            )
        if options.get("multipart_chunksize"):
            chunk = options["multipart_chunksize"]
            if isinstance(chunk, bool) or not isinstance(chunk, (int, str)) or not str(chunk).strip().isdigit():
                raise MSCConfigError(
                    "storage_provider.options.multipart_chunksize must be a number of bytes, "
                    f"got {type(chunk).__name__}",
                    config_file=file,
                    profile=profile,
                )
            cfg["part_size"] = int(str(chunk).strip())
        # botocore's timeouts, in seconds: read_timeout is how long a read may wait for a byte,
        # which is what stall_timeout_s bounds (whole seconds, at least 1).
        read_timeout = _seconds(options, "read_timeout", file, profile)
        if read_timeout is not None:
            cfg["stall_timeout_s"] = max(1, math.ceil(read_timeout))
        connect_timeout = _seconds(options, "connect_timeout", file, profile)
        if connect_timeout is not None:
            cfg["connect_timeout_ms"] = max(1, math.ceil(connect_timeout * 1000))
        # botocore's retries: {max_attempts: retries after the first, total_max_attempts: all of
        # them}. A count the user chose is kept as one: attempts decide, not s3torch's budget
        # of time (docs/retries.md).
        retries = options.get("retries")
        if retries is not None:
            if not isinstance(retries, dict):
                raise MSCConfigError(
                    "storage_provider.options.retries must be a mapping (max_attempts, total_max_attempts, mode)",
                    config_file=file,
                    profile=profile,
                )
            total = _count(retries, "total_max_attempts", 1, file, profile)
            more = _count(retries, "max_attempts", 0, file, profile)
            attempts = total if total is not None else (more + 1 if more is not None else None)
            if attempts is not None:
                cfg["max_attempts"] = attempts
                cfg["retry_timeout_s"] = 0
        # Upload checksums. botocore's when_required sends none unless asked (servers that
        # refuse the headers); a CRC32 or CRC32C checksum_algorithm is s3torch's own choice.
        # SHA1, SHA256 and CRC64NVME are not among s3torch's: its default (CRC32C) is kept.
        calculation = options.get("request_checksum_calculation")
        if calculation is not None:
            if str(calculation).lower() not in ("when_supported", "when_required"):
                raise MSCConfigError(
                    "storage_provider.options.request_checksum_calculation must be when_supported or "
                    f"when_required, got {_shown(calculation)}",
                    config_file=file,
                    profile=profile,
                )
            if str(calculation).lower() == "when_required":
                cfg["checksums"] = "off"
        algorithm = str(options.get("checksum_algorithm") or "").lower()
        if algorithm in ("crc32", "crc32c"):
            cfg["checksums"] = algorithm
        creds = raw.get("credentials_provider")
        if creds is not None:
            ctype = creds.get("type") if isinstance(creds, dict) else None
            copts = (creds.get("options") or {}) if isinstance(creds, dict) else {}
            if ctype != "S3Credentials":
                raise MSCConfigError(
                    f"credentials provider type {ctype!r} is not supported by s3torch.msc; use S3Credentials "
                    "(access_key, secret_key, session_token) or remove credentials_provider to use the environment's",
                    config_file=file,
                    profile=profile,
                )
            if not isinstance(copts, dict):
                raise MSCConfigError(
                    "credentials_provider.options must be a mapping", config_file=file, profile=profile
                )
            if not copts.get("access_key") or not copts.get("secret_key"):
                raise MSCConfigError(
                    "S3Credentials needs options access_key and secret_key", config_file=file, profile=profile
                )
            cfg["access_key_id"] = str(copts["access_key"])
            cfg["secret_access_key"] = str(copts["secret_key"])
            if copts.get("session_token"):
                cfg["session_token"] = str(copts["session_token"])
        elif options.get("profile_name"):
            cfg["profile"] = str(options["profile_name"])
        try:
            config = S3ClientConfig(**cfg)
        except (ValueError, TypeError) as e:
            raise MSCConfigError(
                f"storage_provider options are not valid for S3: {e}", config_file=file, profile=profile
            ) from e
        region = str(options.get("region_name") or "") or default_region(config.profile)
        endpoint = str(options.get("endpoint_url") or "") or None
        return S3Target(region, endpoint, config)


def _seconds(options: Dict[str, Any], name: str, file: Optional[str], profile: str) -> Optional[float]:
    """``options[name]``, a positive number of seconds (a number, or its text after ``${VAR}``
    expansion), or None when absent."""
    value = options.get(name)
    if value is None:
        return None
    try:
        if isinstance(value, bool):
            raise ValueError
        seconds = float(value)
        if not (0 < seconds < math.inf):
            raise ValueError
    except (TypeError, ValueError):
        shown = repr(value) if isinstance(value, (int, float)) else type(value).__name__
        raise MSCConfigError(
            f"storage_provider.options.{name} must be a positive number of seconds, got {shown}",
            config_file=file,
            profile=profile,
        ) from None
    return seconds


def _count(options: Dict[str, Any], name: str, least: int, file: Optional[str], profile: str) -> Optional[int]:
    """``options[name]``, a whole number of at least ``least`` (a number, or its text after
    ``${VAR}`` expansion), or None when absent."""
    value = options.get(name)
    if value is None:
        return None
    text = str(value).strip()
    if isinstance(value, (bool, float)) or not text.isdigit() or int(text) < least:
        raise MSCConfigError(
            f"storage_provider.options.retries.{name} must be a whole number of at least {least}, got {_shown(value)}",
            config_file=file,
            profile=profile,
        )
    return int(text)


def _shown(value: Any) -> str:
    """A config value in a message: numbers as they are, other values by type only (a value
    may be a secret put in the wrong place)."""
    return repr(value) if isinstance(value, (int, float)) else type(value).__name__


def _join(a: str, b: str) -> str:
    a, b = a.strip("/"), b.lstrip("/")
    return f"{a}/{b}" if a and b else a or b


def _parse_error(e: Exception) -> str:
    """What is wrong and where, without the file's text: PyYAML's message quotes the line,
    which may hold a secret key."""
    mark = getattr(e, "problem_mark", None)
    if mark is not None:
        problem = getattr(e, "problem", None) or getattr(e, "context", None) or "syntax error"
        return f"{type(e).__name__}: {problem} at line {mark.line + 1}, column {mark.column + 1}"
    if isinstance(e, json.JSONDecodeError):
        return f"JSONDecodeError: {e.msg} at line {e.lineno}, column {e.colno}"
    if isinstance(e, UnicodeDecodeError):
        return f"UnicodeDecodeError: {e.reason} at byte {e.start}"
    return type(e).__name__


def _read(path: str) -> Dict[str, Any]:
    try:
        with open(path) as f:
            if path.endswith(".json"):
                data = json.load(f)
            else:
                try:
                    import yaml
                except ImportError as e:
                    raise MSCConfigError(
                        "reading a YAML config needs PyYAML: pip install pyyaml (or write the config as JSON)",
                        config_file=path,
                    ) from e
                data = yaml.safe_load(f)
    except MSCConfigError:
        raise
    except Exception as e:
        raise MSCConfigError(f"cannot be parsed ({_parse_error(e)}); fix its syntax", config_file=path) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise MSCConfigError(
            f"the top level must be a mapping (with 'profiles'), not {type(data).__name__}", config_file=path
        )
    return data


def _merge_includes(path: str, data: Dict[str, Any]) -> Dict[str, str]:
    """MSC's ``include``: one level of other files (paths relative to this one) whose
    ``profiles`` and ``path_mapping`` are merged into ``data``; the same name defined
    differently in two files is an error. Returns which included file defines each profile."""
    includes = data.pop("include", None) or []
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise MSCConfigError("'include' must be a list of file paths", config_file=path)
    profile_files: Dict[str, str] = {}
    for inc in includes:
        inc_path = os.path.abspath(os.path.join(os.path.dirname(path), os.path.expanduser(inc)))
        if not os.path.exists(inc_path):
            raise MSCConfigError(f"includes {inc_path}, which does not exist; fix the path", config_file=path)
        other = _read(inc_path)
        if "include" in other:
            raise MSCConfigError(
                f"is included by {path} and has an 'include' itself; MSC allows one level of includes",
                config_file=inc_path,
            )
        for section in ("profiles", "path_mapping"):
            theirs = other.get(section) or {}
            ours = data.get(section) or {}
            if not isinstance(theirs, dict) or not isinstance(ours, dict):
                raise MSCConfigError(f"'{section}' must be a mapping", config_file=inc_path)
            for name, value in theirs.items():
                if name in ours and ours[name] != value:
                    raise MSCConfigError(
                        f"{section} entry {name!r} is defined differently in {path} and {inc_path}; keep one",
                        config_file=path,
                    )
                if name not in ours and section == "profiles":
                    profile_files[name] = inc_path
                ours[name] = value
            if ours:
                data[section] = ours
    return profile_files
