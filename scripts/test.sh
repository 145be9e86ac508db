#!/usr/bin/env bash
# Installs what is needed, builds, and runs every test: the ci build (warnings
# as errors, benchmarks as a smoke test), the AddressSanitizer +
# UndefinedBehaviorSanitizer build, a short fuzzing run, the Python package
# (installed with pip into a venv, then pytest), and the format check.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh libyaml-cpp-dev clang-14 libclang-rt-14-dev clang-format python3-torch \
  pybind11-dev python3-pybind11 python3-dev python3-venv python3-setuptools python3-wheel \
  python3-pip python3-pytest chromium
jobs=$(nproc)

echo "== ci build (warnings as errors)"
cmake --preset ci >/dev/null
cmake --build --preset ci -j"$jobs"
ctest --preset ci -j"$jobs"

echo "== web: llmem serve's API, the page in headless Chromium, the HTML report"
bash scripts/test_web.sh build/ci/tools/llmem/llmem

echo "== Python package (venv, offline pip install --no-build-isolation ., pytest)"
LLMEM_BUILD_JOBS="$jobs" bash scripts/test_python.sh

echo "== asan + ubsan build"
cmake --preset asan >/dev/null
cmake --build --preset asan -j"$jobs"
ctest --preset asan -j"$jobs"

echo "== fuzz smoke (20 s per target, seeded with the catalog, recipes, requests and tests/data)"
cmake --preset fuzz >/dev/null
cmake --build --preset fuzz -j"$jobs"
fuzz() {  # target seconds seed-files...
  local target=$1 seconds=$2 corpus
  shift 2
  corpus=$(mktemp -d)
  cp "$@" "$corpus"/
  build/fuzz/fuzz/"$target" -max_total_time="$seconds" -max_len=8192 -rss_limit_mb=1024 \
    -artifact_prefix="$corpus/crash-" "$corpus" 2>&1 | tail -n 2
  rm -rf "$corpus"
}
fuzz config_fuzzer 20 tests/data/fuzz-regressions/* data/models/*.json
fuzz recipe_fuzzer 20 tests/data/recipes/*.yaml
fuzz request_fuzzer 20 tests/data/fuzz-seeds/requests/*.json

echo "== CPU tier: harness self-test, a fresh measurement matrix, and llmem validate on it"
# Debian's interpreter has Debian's torch (the pyenv python3 on PATH may not).
/usr/bin/python3 validation/harness/test_harness.py
/usr/bin/python3 validation/harness/test_gpu_dryrun.py   # the GPU tier's plumbing, on CPU
/usr/bin/python3 validation/harness/run_cpu_matrix.py --no-distributed --out build/cpu_tier_live.csv
build/ci/tools/llmem/llmem validate build/cpu_tier_live.csv --max-median 1 --max-error 3 | tail -n 1

echo "== clang-format"
files=$(git ls-files '*.cc' '*.h' 2>/dev/null || find src include tools tests bench fuzz -name '*.cc' -o -name '*.h')
clang-format --dry-run --Werror $files

echo "all test stages passed"
