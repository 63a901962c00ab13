"""An IAM Identity Center (SSO) sign-in kept fresh, as boto3 keeps it.

``aws sso login`` caches an access token (``~/.aws/sso/cache/<sha1 of the session name>.json``)
that lasts hours, with a refresh token that lasts weeks. The CRT's SSO provider reads the
cached access token every time it fetches the role's credentials, but never refreshes it: a
job running past the token's expiry lost its credentials where boto3's would have refreshed
the token. This module does boto3's part: for a profile that signs in through an
``[sso-session]``, it refreshes the cached token with the refresh token (the SSO OIDC
service's CreateToken, ``https://oidc.<sso_region>.amazonaws.com/token``) when a client is made
within ``REFRESH_WINDOW_S`` of the expiry, and a thread of its own does it again before each
expiry while the process lives. The refreshed token is written back to the cache file, as the
AWS CLI and boto3 write it, where the CRT reads it.

Processes share the file: a refresh holds an exclusive lock on ``<cache>.lock`` and reads the
file again under it, so of several processes (DataLoader workers) one refreshes and the others
find the fresh token. A legacy profile (``sso_start_url`` without a session) has no refresh
token, as in boto3. A refresh that fails is logged and tried again later; requests fail only
once the token has expired, with the error saying to sign in again.
"""

from __future__ import annotations

import configparser
import datetime
import fcntl
import hashlib
import json
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from . import _crt

log = logging.getLogger("s3torch")

REFRESH_WINDOW_S = 15 * 60  # refresh a token this close to its expiry (boto3's window)
RETRY_S = 60.0  # after a failed refresh
TIMEOUT_S = 30.0  # one CreateToken request
_REGION = re.compile(r"[a-z0-9-]{1,40}")
_TIME = "%Y-%m-%dT%H:%M:%SZ"

_keepers: Dict[str, "_Keeper"] = {}  # cache file -> its keeper, in this process
_keepers_lock = threading.Lock()


def keep_fresh(profile: Optional[str]) -> None:
    """For a client of ``profile`` (None: the environment's): when the profile signs in through
    an sso-session, refresh its cached token now if it is due, and keep it fresh from then on.
    Never raises: a client is made either way."""
    try:
        in_use = _crt.profile_in_use(profile or "")
        if not in_use.get("sso"):
            return
        found = _session(in_use["config_file"], in_use["name"])
        if found is None:
            return
        name, region = found
        path = Path(os.path.expanduser("~/.aws/sso/cache")) / (hashlib.sha1(name.encode()).hexdigest() + ".json")
        ca = _crt.ca_bundle(profile or "")[0] or None
    except Exception as e:  # a config the CRT reads its own way: it reports what is wrong there
        log.debug("s3torch: no SSO refresh: %r", e)
        return
    with _keepers_lock:
        keeper = _keepers.get(str(path))
        if keeper is not None and keeper.alive():
            return
        keeper = _Keeper(path, region, ca, name)
        _keepers[str(path)] = keeper
    keeper.refresh_if_due()
    keeper.start()


def stop_all() -> None:
    """Stop this process's keepers (tests; a keeper is a daemon thread otherwise)."""
    with _keepers_lock:
        keepers = list(_keepers.values())
        _keepers.clear()
    for k in keepers:
        if k.pid == os.getpid():
            k.stop()


def _session(config_file: str, profile: str) -> Optional[Tuple[str, str]]:
    """(sso-session name, its sso_region) of ``profile``, None for a legacy profile."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.read(config_file)
    # "[profile NAME]"; the default profile is "[default]" or "[profile default]".
    sections = ("default", "profile default") if profile == "default" else (f"profile {profile}",)
    section = next((s for s in sections if parser.has_section(s)), sections[0])
    name = parser.get(section, "sso_session", fallback="").strip()
    if not name:
        return None
    region = parser.get(f"sso-session {name}", "sso_region", fallback="").strip()
    if not _REGION.fullmatch(region):
        raise ValueError(f"sso-session {name!r}: sso_region {region!r} is not a region")
    return name, region


def _expiry(token: Dict[str, Any]) -> float:
    text = str(token.get("expiresAt", ""))
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.timestamp()


def _now() -> float:
    return datetime.datetime.now(datetime.timezone.utc).timestamp()


class _Keeper:
    """Keeps one cache file's token fresh while the process lives."""

    def __init__(self, path: Path, region: str, ca: Optional[str], session: str) -> None:
        self.path, self.region, self.ca, self.session = path, region, ca, session
        self.pid = os.getpid()
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._failing = False

    def alive(self) -> bool:
        return self.pid == os.getpid() and self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="s3torch-sso-refresh", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        stop = self._stop
        while not stop.is_set():
            left = self._left()
            if left is None:  # no cache file (signed out): look again later
                stop.wait(RETRY_S)
            elif left > REFRESH_WINDOW_S:
                stop.wait(min(left - REFRESH_WINDOW_S, 3600.0))
            elif not self.refresh_if_due():
                stop.wait(RETRY_S)
            else:  # a token shorter-lived than the window: again at half its life, not at once
                left = self._left() or 0.0
                if left <= REFRESH_WINDOW_S:
                    stop.wait(max(left / 2, 1.0))

    def _left(self) -> Optional[float]:
        """Seconds the cached token has left (None: no readable cache file)."""
        try:
            return _expiry(self._read()) - _now()
        except (OSError, ValueError):
            return None

    def _read(self) -> Dict[str, Any]:
        with open(self.path) as f:
            token = json.load(f)
        if not isinstance(token, dict):
            raise ValueError(f"{self.path} is not a token")
        return token

    def refresh_if_due(self) -> bool:
        """Refresh the token if it is within the window of its expiry; False when it is due
        and could not be refreshed."""
        try:
            if _expiry(self._read()) - _now() > REFRESH_WINDOW_S:
                return True
            lock = os.open(str(self.path) + ".lock", os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)
                token = self._read()  # again, under the lock: another process may have refreshed it
                if _expiry(token) - _now() > REFRESH_WINDOW_S:
                    return True
                self._write(self._refreshed(token))
            finally:
                os.close(lock)
        except Exception as e:
            if not self._failing:
                log.warning(
                    "s3torch: could not refresh the IAM Identity Center sign-in of sso-session %r (%s); "
                    "trying again, and once it expires: aws sso login",
                    self.session,
                    e,
                )
            self._failing = True
            return False
        if self._failing:
            log.warning("s3torch: refreshed the IAM Identity Center sign-in of sso-session %r", self.session)
        self._failing = False
        return True

    def _refreshed(self, token: Dict[str, Any]) -> Dict[str, Any]:
        missing = [k for k in ("clientId", "clientSecret", "refreshToken") if not token.get(k)]
        if missing:
            raise ValueError(f"the cached sign-in has no {', '.join(missing)} (sign in again: aws sso login)")
        if token.get("registrationExpiresAt") and _expiry({"expiresAt": token["registrationExpiresAt"]}) <= _now():
            raise ValueError("the cached client registration has expired (sign in again: aws sso login)")
        body = json.dumps(
            {
                "grantType": "refresh_token",
                "clientId": token["clientId"],
                "clientSecret": token["clientSecret"],
                "refreshToken": token["refreshToken"],
            }
        ).encode()
        import ssl  # here: every client imports this module; few ever refresh (~30 ms a process)
        import urllib.request

        request = urllib.request.Request(
            f"https://oidc.{self.region}.amazonaws.com/token",
            data=body,
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        context = ssl.create_default_context(cafile=self.ca)
        opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context))  # proxies: the environment's
        started = _now()
        with opener.open(request, timeout=TIMEOUT_S) as response:
            answer = json.loads(response.read())
        if (
            not isinstance(answer, dict)
            or not answer.get("accessToken")
            or not isinstance(answer.get("expiresIn"), int)
        ):
            raise ValueError("CreateToken answered without an accessToken and expiresIn")
        fresh = dict(token)
        fresh["accessToken"] = answer["accessToken"]
        fresh["expiresAt"] = datetime.datetime.fromtimestamp(
            started + answer["expiresIn"], datetime.timezone.utc
        ).strftime(_TIME)
        if answer.get("refreshToken"):
            fresh["refreshToken"] = answer["refreshToken"]
        return fresh

    def _write(self, token: Dict[str, Any]) -> None:
        """Replace the cache file whole (readers see the old token or the new one), owner-only."""
        tmp = f"{self.path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(token, f)
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
