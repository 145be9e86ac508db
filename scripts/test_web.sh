#!/usr/bin/env bash
# The web half as a user meets it: the JSON API of `llmem serve` against a real
# server (urllib, several threads), the page in headless Chromium (numbers equal
# the CLI's; screenshots in build/web/), and the self-contained HTML report.
# Usage: scripts/test_web.sh [path/to/llmem]   (default: the ci build)
set -euo pipefail
cd "$(dirname "$0")/.."
llmem=$(realpath "${1:-build/ci/tools/llmem/llmem}")
out=build/web
mkdir -p "$out"
py=/usr/bin/python3

echo "== API against a running server"
$py tests/web/api_test.py "$llmem"

echo "== the page in headless Chromium, and the HTML report"
$py tests/web/page_test.py "$llmem" "$out"
echo "screenshots: $out/web-*.png, $out/report.png"
