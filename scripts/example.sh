#!/usr/bin/env bash
# Builds llmem if needed and runs it on built-in examples (no files, no downloads):
# the inventory of OPT-1.3B, then the peak memory of QLoRA fine-tuning Llama-3.1-8B on an RTX 4090.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
bin=build/release/tools/llmem/llmem
if [ ! -x "$bin" ] || [ -n "$(find src include tools data cmake CMakeLists.txt -newer "$bin" -print -quit)" ]; then
  cmake --preset release >/dev/null
  cmake --build --preset release -j"$(nproc)" >/dev/null
fi
"$bin" inspect --model facebook/opt-1.3b
echo
"$bin" estimate --model meta-llama/Llama-3.1-8B --gpu RTX4090 --batch 2 --seq 2048 \
  --precision bf16-mixed --attention sdpa --grad-ckpt --quant nf4 --lora-rank 16
