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

echo "== HTML report: self-contained, numbers equal the JSON's"
"$llmem" estimate --model meta-llama/Llama-3.1-8B --gpu RTX4090 --batch 2 --seq 2048 \
  --attention sdpa --grad-ckpt --quant nf4 --lora-rank 16 --format html >"$out/report.html"
if grep -Eq 'https?://|<script|<link' "$out/report.html"; then
  echo "report.html refers to something outside itself" >&2
  exit 1
fi

echo "== the page in headless Chromium"
$py tests/web/page_test.py "$llmem" "$out"
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1100,1900 \
  --screenshot="$out/report.png" "file://$(realpath "$out/report.html")" >/dev/null 2>&1
echo "screenshots: $out/web-*.png, $out/report.png"
