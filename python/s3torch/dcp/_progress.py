"""One log line per DCP save/load: bytes, seconds, GB/s (off by default in library use)."""

from __future__ import annotations

import logging
import time
from typing import Optional

log = logging.getLogger("s3torch.dcp")


class Progress:
    def __init__(self, what: str, target: str, enabled: bool) -> None:
        self.what, self.target, self.enabled = what, target, enabled
        self.t0: Optional[float] = None
        self.bytes = 0

    def start(self) -> None:
        if self.t0 is None:
            self.t0 = time.perf_counter()

    def add(self, n: int) -> None:
        self.bytes += n

    def done(self) -> None:
        if not self.enabled or self.t0 is None:
            return
        secs = max(time.perf_counter() - self.t0, 1e-9)
        msg = (
            f"s3torch: {self.what} {self.target}: {self.bytes / 1e6:.1f} MB in {secs:.2f}s, "
            f"{self.bytes / 1e9 / secs:.2f} GB/s"
        )
        log.info(msg)
        if not log.isEnabledFor(logging.INFO):
            print(msg, flush=True)
