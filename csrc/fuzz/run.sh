#!/usr/bin/env bash
# Builds the fuzz targets, writes the seed corpus and runs every target (see docs/fuzzing.md).
#   run.sh smoke SECONDS  replays csrc/fuzz/regressions/<target>/, then fuzzes each target briefly;
#                         fails on the first crash
#   run.sh long SECONDS   fuzzes each target for SECONDS; crashes are minimized into
#                         csrc/fuzz/regressions/<target>/ and fail the run once all targets ran
# FUZZ_TARGETS (space-separated) narrows the run to some targets; FUZZ_JOBS (default 1) is the
# number of processes a long run keeps fuzzing each target.
set -euo pipefail
mode=$1
seconds=$2
cd "$(dirname "$0")/../.."
build=build/fuzz
targets=${FUZZ_TARGETS:-jpeg png webp kserve json http_request http_response}
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Debug \
  -DCMAKE_CXX_COMPILER=clang++-14 -DSTOKER_BUILD_PYTHON=OFF -DSTOKER_BUILD_FUZZERS=ON > /dev/null
cmake --build "$build" -j 2
rm -rf "$build/seeds"
"$build/csrc/fuzz/fuzz_seeds" "$build/seeds"

failed=()
for t in $targets; do
  bin=$build/csrc/fuzz/fuzz_$t
  regressions=csrc/fuzz/regressions/$t
  corpus=$build/corpus/$t
  artifacts=$build/artifacts/$t
  mkdir -p "$corpus" "$artifacts"
  echo "== fuzz_$t"
  if [ "$mode" = smoke ]; then
    # A file argument runs that one input once; every regression must pass.
    if compgen -G "$regressions/*" > /dev/null; then
      "$bin" "$regressions"/*
    fi
    "$bin" -max_total_time="$seconds" -timeout=10 -print_final_stats=1 \
      -artifact_prefix="$artifacts/" "$corpus" "$build/seeds/$t"
    continue
  fi
  # -fork keeps going after a crash, so one run may collect several.
  rm -f "$artifacts"/*
  "$bin" -max_total_time="$seconds" -timeout=10 -print_final_stats=1 -fork="${FUZZ_JOBS:-1}" \
    -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 -artifact_prefix="$artifacts/" \
    "$corpus" "$build/seeds/$t" || true
  # Inputs over -timeout (or flagged slow) are set aside, not kept as regressions: on a loaded
  # machine a legitimate input can run long; replay one alone to tell a hang from a slow
  # machine. They move out of the artifacts folder, which the next run empties.
  for slow in "$artifacts"/timeout-* "$artifacts"/slow-unit-*; do
    [ -e "$slow" ] || continue
    mkdir -p "$build/slow/$t"
    mv "$slow" "$build/slow/$t/"
    echo "fuzz_$t: slow input set aside as $build/slow/$t/$(basename "$slow")"
  done
  for crash in "$artifacts"/crash-* "$artifacts"/leak-* "$artifacts"/oom-*; do
    [ -e "$crash" ] || continue
    mkdir -p "$regressions"
    out=$regressions/$(basename "$crash")
    "$bin" -minimize_crash=1 -max_total_time=60 -exact_artifact_path="$out" "$crash" \
      > /dev/null 2>&1 || true
    [ -e "$out" ] || cp "$crash" "$out"
    echo "fuzz_$t: crash saved as $out"
    failed+=("$t")
  done
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crashes in ${failed[*]}; see csrc/fuzz/regressions/" >&2
  exit 1
fi
