#!/usr/bin/env bash
# Installs the system packages stoker builds and tests with, when any is missing (Debian/Ubuntu).
set -euo pipefail

# clang-14 and libclang-rt-14-dev (its libFuzzer and sanitizer runtimes) build the fuzz targets.
packages=(g++ make pkg-config libjpeg-dev libpng-dev libwebp-dev libjpeg-turbo-progs libgtest-dev
  clang-14 libclang-rt-14-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "setup: missing system packages (${missing[*]}) and no apt-get to install them" >&2
  exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "setup: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
