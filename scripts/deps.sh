#!/usr/bin/env bash
# Installs the Debian packages llmem needs, only when some are missing.
# Usage: scripts/deps.sh [extra-package ...]
set -euo pipefail
packages=(cmake g++ make pkg-config nlohmann-json3-dev libcli11-dev libgtest-dev libgmock-dev
          libbenchmark-dev libcpp-httplib-dev "$@")
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
