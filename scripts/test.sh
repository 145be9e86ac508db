#!/usr/bin/env bash
# Installs what is needed, builds, and runs every test: the ci build (warnings
# as errors, benchmarks as a smoke test), the AddressSanitizer +
# UndefinedBehaviorSanitizer build, a short fuzzing run, and the format check.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh clang-14 libclang-rt-14-dev clang-format
jobs=$(nproc)

echo "== ci build (warnings as errors)"
cmake --preset ci >/dev/null
cmake --build --preset ci -j"$jobs"
ctest --preset ci -j"$jobs"

echo "== asan + ubsan build"
cmake --preset asan >/dev/null
cmake --build --preset asan -j"$jobs"
ctest --preset asan -j"$jobs"

echo "== fuzz smoke (30 s, seeded with the catalog and tests/data)"
cmake --preset fuzz >/dev/null
cmake --build --preset fuzz -j"$jobs"
corpus=$(mktemp -d)
cp tests/data/fuzz-regressions/* "$corpus"/
for f in data/models/*.json; do cp "$f" "$corpus/$(basename "$f")"; done
build/fuzz/fuzz/config_fuzzer -max_total_time=30 -max_len=8192 -rss_limit_mb=1024 \
  -artifact_prefix="$corpus/crash-" "$corpus" 2>&1 | tail -n 2
rm -rf "$corpus"

echo "== clang-format"
files=$(git ls-files '*.cc' '*.h' 2>/dev/null || find src include tools tests bench fuzz -name '*.cc' -o -name '*.h')
clang-format --dry-run --Werror $files

echo "all test stages passed"
