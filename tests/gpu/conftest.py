"""GPU tests: DCP loads into (and saves from) CUDA state dicts through the staging ring.

They need CUDA and SeaweedFS's ``weed`` on PATH; CI has no GPU, so ``tests/conftest.py``
leaves this folder out of ``python -m pytest tests`` unless CUDA is available. Run them on a
GPU machine with::

    python -m pytest tests/gpu -q

(``../shared/gpu/README.md`` in this workplace says how to build there). Their CPU-side
counterparts, which CI runs, are tests/unit/test_staging.py and
tests/integration/test_staging.py.
"""

from __future__ import annotations

import pytest
import torch

if not torch.cuda.is_available():
    raise pytest.UsageError("tests/gpu needs CUDA: torch.cuda.is_available() is False on this machine")
