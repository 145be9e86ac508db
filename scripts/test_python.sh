#!/usr/bin/env bash
# The Python package as a user installs it: a venv on Debian's python3 (with
# its packages: setuptools, wheel, pytest), an offline
# `pip install --no-build-isolation .`, then pytest. The tests compare with
# the CLI of the ci build (build/ci/tools/llmem/llmem, or $LLMEM_CLI).
set -euo pipefail
cd "$(dirname "$0")/.."
python=/usr/bin/python3   # Debian's: the pyenv python3 on PATH lacks Debian's packages
venv=build/venv
[ -x "$venv/bin/python" ] || "$python" -m venv --system-site-packages "$venv"
"$venv/bin/pip" install --quiet --no-build-isolation --no-index .
# From another directory, so that `import llmem` finds the installed package.
cd build
LLMEM_CLI="${LLMEM_CLI:-$PWD/ci/tools/llmem/llmem}" "venv/bin/python" -m pytest -q ../python/tests "$@"
