"""The command line starts without importing torch (about 1.5 s of CPU per process): a verb
imports what it needs when it runs. ``s3torch cp`` of a 1 GB checkpoint ran at 0.28 instead of
0.68 GB/s when its checksum checks came in through s3torch.safetensors, which imports torch."""

from __future__ import annotations

import subprocess
import sys


def test_no_verb_module_imports_torch() -> None:
    code = (
        "import importlib, sys\n"
        "from s3torch.cli import _verb_names, build_parser\n"
        "assert len(_verb_names()) >= 9, _verb_names()\n"
        "for v in _verb_names(): importlib.import_module('s3torch.cli.' + v)\n"
        "build_parser()\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_import_and_a_client_leave_the_http_stack_unimported() -> None:
    """``import s3torch`` and a client of it (every DataLoader worker, every command line)
    import no HTTP stack of Python's: urllib.request, ssl and http.client were imported for an
    SSO refresh few processes make (~30 ms a process); a client of an ordinary profile needs
    none of them. Nor concurrent.futures (~10 ms), which only the removers' batches use."""
    code = (
        "import sys\n"
        "import s3torch\n"
        "s3torch.S3Client('us-east-1', endpoint='http://127.0.0.1:9')\n"
        "leaned = ('urllib.request', 'ssl', 'http.client', 'concurrent.futures')\n"
        "print(sorted(m for m in leaned if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
