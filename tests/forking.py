"""Running a function in an os.fork()ed child, for tests of what crosses a fork."""

from __future__ import annotations

import os
import signal
from typing import Any, Callable, Tuple


def fork_and_wait(child: Callable[[], Any], timeout_s: int = 60) -> Tuple[int, str]:
    """Run ``child()`` in an os.fork()ed process; return (exit status, what it wrote).

    The child leaves with os._exit (never through pytest) and is killed by SIGALRM if it
    hangs, so a hang shows up as a failure, not a stuck suite."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(r)
        code = 1
        try:
            signal.alarm(timeout_s)
            out = child()
            os.write(w, repr(out).encode())
            code = 0
        except BaseException as e:  # report it to the parent
            os.write(w, ("child raised " + repr(e)).encode())
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        text = f.read().decode()
    _, status = os.waitpid(pid, 0)
    return status, text
