#!/usr/bin/env bash
# Creates .venv with the build and dev tools and torch. Machines without an NVIDIA GPU get the CPU
# build of torch that the CPU machines keep on local disk; set STOKER_TORCH to choose another.
set -euo pipefail
python=${1:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
if [ -n "${STOKER_TORCH:-}" ]; then
  torch="$STOKER_TORCH"
elif command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  torch="torch>=2.2"
else
  torch="torch==2.13.0"
fi
"${pip[@]}" "$torch"
"${pip[@]}" -r requirements-dev.txt
