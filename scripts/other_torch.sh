#!/usr/bin/env bash
# Run the test suite on a torch release other than the dev venv's: by default 2.11.0, the
# oldest that pyproject.toml allows and the GPU machine's. It uses a venv of its own,
# build/torch-<version>, with the [test] extra's packages except its torch pin:
#   bash scripts/other_torch.sh [VERSION [pytest args...]]
# PyPI's wheels of torch before 2.13 bring their CUDA libraries (about 3 GB). The lint,
# typing, docs and wheel checks are left out: torch's version does not change them.
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-2.11.0}
shift || true
venv=build/torch-$version
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
# The [test] extra, read from pyproject.toml (one list), less its torch pin.
mapfile -t deps < <("$venv/bin/python" -c '
import tomllib
extra = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["test"]
print("\n".join(d for d in extra if not d.replace(" ", "").startswith("torch=")))')
"$venv/bin/pip" install -q "torch==$version"
"$venv/bin/pip" install -q -c <(echo "torch==$version") "${deps[@]}"
"$venv/bin/pip" install -q --no-deps --no-build-isolation .
"$venv/bin/python" -c 'import torch; print("torch", torch.__version__)'
if [ $# -eq 0 ]; then set -- tests; fi
exec "$venv/bin/python" -m pytest -p no:cacheprovider --ignore=tests/packaging \
  --ignore=tests/unit/test_lint.py --ignore=tests/unit/test_typing.py --ignore=tests/unit/test_docs.py "$@"
