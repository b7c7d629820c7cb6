#!/usr/bin/env bash
# Builds the extension with CMake alone and drops it into src/stoker, for machines where pip cannot
# build (no network, no scikit-build-core): then `PYTHONPATH=src python3 ...` imports stoker.
# Extra arguments go to CMake, e.g. -DSTOKER_WITH_WEBP=OFF.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
build=build/inplace
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DPython_EXECUTABLE="$(command -v "$python")" "$@" >/dev/null
cmake --build "$build" -j "$(nproc)"
cp "$build"/_native*.so src/stoker/
