"""The User-Agent s3torch sends: s3torchconnector's ``UserAgent`` API, s3torch's own product name.

``S3Client(..., user_agent=UserAgent(["my-app/1.0"]))`` sends
``s3torch/<version> ua/2.1 os/<os>#<release> lang/python#<version> md/arch#<arch>
md/pytorch#<version> (my-app/1.0)`` as the User-Agent of every request (aws-c-s3 appends its
own product token). The datasets, checkpoints, DCP and Lightning add their comments as
s3torchconnector's do (``md/dataset#map md/reader_type#sequential``, ``dcp; <torch>;
md/reader_type#...``, ``lightning; <version>``). The product token is ``s3torch``, never
``s3torchconnector``: servers and AWS see which library made the request.
"""

from __future__ import annotations

import functools
import platform
import sys
from typing import List, Optional

__all__ = ["UserAgent"]


@functools.lru_cache(maxsize=None)
def _torch_version() -> str:
    # Once a process (each client made reads torch's METADATA otherwise: ~2 ms).
    # Without importing torch (``import s3torch`` stays light), nor importlib.metadata until a
    # User-Agent is made (~12 ms a process: the command line, each DataLoader worker).
    version = getattr(sys.modules.get("torch"), "__version__", None)
    if isinstance(version, str):
        return str(version)
    from importlib import metadata

    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return "unknown"


class UserAgent:
    """A User-Agent prefix with optional comments (RFC 9110 ``product (comment; comment)``).

    Args:
        comments: strings joined with ``"; "`` in parentheses after the default prefix; empty
            ones are dropped. Anything but a list (or None) raises ValueError, as in
            s3torchconnector.
    """

    @staticmethod
    def get_default_prefix() -> str:
        """``s3torch/<version> ua/2.1 os/<os>#<release> lang/python#<version> md/arch#<arch>
        md/pytorch#<version>`` (``darwin`` is spelled ``macos``)."""
        from . import __version__

        os_name = platform.system().lower()
        if os_name == "darwin":
            os_name = "macos"
        return " ".join(
            [
                f"s3torch/{__version__}",
                "ua/2.1",
                f"os/{os_name}#{platform.release()}",
                f"lang/python#{platform.python_version()}",
                f"md/arch#{platform.machine().lower()}",
                f"md/pytorch#{_torch_version()}",
            ]
        )

    def __init__(self, comments: Optional[List[str]] = None) -> None:
        if comments is not None and not isinstance(comments, list):
            raise ValueError("Argument comments must be a List[str]")
        self._user_agent_prefix = UserAgent.get_default_prefix()
        self._comments = list(comments or [])

    @property
    def prefix(self) -> str:
        """The User-Agent string: the default prefix, then the comments in parentheses."""
        comments = "; ".join(c for c in self._comments if c)
        return f"{self._user_agent_prefix} ({comments})" if comments else self._user_agent_prefix


def prefix_of(user_agent: object) -> str:
    """The ``prefix`` of a UserAgent (s3torch's, s3torchconnector's, or anything with a str
    ``prefix``), or s3torch's default for None."""
    if user_agent is None:
        return UserAgent().prefix
    prefix = getattr(user_agent, "prefix", None)
    if not isinstance(prefix, str):
        raise TypeError(f"user_agent must be a UserAgent (with a str .prefix), got {type(user_agent).__name__}")
    return prefix
