#!/usr/bin/env bash
# Builds llmem if needed and runs it on a built-in example (no files, no downloads).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
if [ ! -x build/release/tools/llmem/llmem ] || [ -n "$(find src include tools data cmake CMakeLists.txt -newer build/release/tools/llmem/llmem -print -quit)" ]; then
  cmake --preset release >/dev/null
  cmake --build --preset release -j"$(nproc)" >/dev/null
fi
build/release/tools/llmem/llmem inspect --model facebook/opt-1.3b "$@"
