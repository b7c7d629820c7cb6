# stoker's entry points. `make demo` and `make test` work on a fresh machine: both go through the
# idempotent `make setup` (system packages, .venv, an editable build of the extension).
SHELL := /bin/bash
PYTHON ?= python3
PY := .venv/bin/python
STAMPS := .stamps
NATIVE_SOURCES := CMakeLists.txt pyproject.toml $(shell find csrc/core csrc/bindings -name '*.[ch]pp')
ASAN_BUILD := build/asan
TSAN_BUILD := build/tsan
# The suites whose code runs on several threads: pool, arena, batcher, feeder, gateway, HTTP
# server and load generator.
TSAN_SUITES := ThreadPool.*:Batch.*:HostArena.*:Histogram.*:Batcher.*:Feeder.*:Gateway.*:HttpServer.*:HttpStream.*:LoadGenerator.*
CORPUS ?= $(abspath ../shared/corpus)

.PHONY: setup build demo test native-test tsan-test py-test lint format stubs bench bench-native clean

setup: $(STAMPS)/built

$(STAMPS)/system: tools/setup_system.sh
	bash tools/setup_system.sh
	@mkdir -p $(STAMPS) && touch $@

$(STAMPS)/venv: $(STAMPS)/system tools/setup_venv.sh requirements-dev.txt
	bash tools/setup_venv.sh $(PYTHON)
	@touch $@

$(STAMPS)/built: $(STAMPS)/venv $(NATIVE_SOURCES)
	$(PY) -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps \
	  -Ccmake.define.STOKER_WERROR=ON -e .
	@touch $@

build: setup

demo: setup
	$(PY) -m stoker demo

test: setup native-test tsan-test py-test

py-test: setup
	STOKER_CORPUS=$(CORPUS) $(PY) -m pytest -q

# The pure C++ core and its tests under AddressSanitizer and UBSan.
native-test: $(STAMPS)/system
	cmake -S . -B $(ASAN_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Debug -DSTOKER_BUILD_PYTHON=OFF \
	  -DSTOKER_BUILD_TESTS=ON -DSTOKER_SANITIZE=ON -DSTOKER_WERROR=ON -DCMAKE_MAKE_PROGRAM=$(abspath .venv/bin/ninja) \
	  > /dev/null
	cmake --build $(ASAN_BUILD) -j 2
	STOKER_CORPUS=$(CORPUS) ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  $(ASAN_BUILD)/stoker_core_tests --gtest_brief=1

# The same program under ThreadSanitizer, on the suites that exercise threads.
tsan-test: $(STAMPS)/system
	cmake -S . -B $(TSAN_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSTOKER_BUILD_PYTHON=OFF \
	  -DSTOKER_BUILD_TESTS=ON -DSTOKER_TSAN=ON -DSTOKER_WERROR=ON \
	  -DCMAKE_MAKE_PROGRAM=$(abspath .venv/bin/ninja) > /dev/null
	cmake --build $(TSAN_BUILD) -j 2
	TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" \
	  $(TSAN_BUILD)/stoker_core_tests --gtest_brief=1 --gtest_filter='$(TSAN_SUITES)'

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy
	.venv/bin/clang-format --dry-run -Werror $$(find csrc -name '*.[ch]pp')
	$(MAKE) --no-print-directory stubs
	git diff --exit-code -- src/stoker/_native.pyi

format: setup
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .
	.venv/bin/clang-format -i $$(find csrc -name '*.[ch]pp')

stubs: setup
	$(PY) -m nanobind.stubgen -q -m stoker._native -o src/stoker/_native.pyi
	.venv/bin/ruff format -q src/stoker/_native.pyi

bench: setup
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-bench.txt
	$(PY) benchmarks/bench_preprocess.py

# Native microbenchmarks (Release build, no sanitizers).
bench-native: $(STAMPS)/system
	cmake -S . -B build/bench -G Ninja -DCMAKE_BUILD_TYPE=Release -DSTOKER_BUILD_PYTHON=OFF \
	  -DSTOKER_BUILD_BENCHMARKS=ON -DCMAKE_MAKE_PROGRAM=$(abspath .venv/bin/ninja) > /dev/null
	cmake --build build/bench -j 2
	build/bench/bench_batcher
	build/bench/bench_scheduler

# Coverage-guided fuzzing of the native parsers and decoders (docs/fuzzing.md): a long run on
# demand that saves minimized crashes under csrc/fuzz/regressions/, and a short one for CI that
# replays them first.
FUZZ_SECONDS ?= 600
FUZZ_SMOKE_SECONDS ?= 20
.PHONY: fuzz fuzz-smoke

fuzz: $(STAMPS)/system
	bash csrc/fuzz/run.sh long $(FUZZ_SECONDS)

fuzz-smoke: $(STAMPS)/system
	bash csrc/fuzz/run.sh smoke $(FUZZ_SMOKE_SECONDS)

clean:
	rm -rf build $(STAMPS) .venv
