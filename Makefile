# shoal: set-up, build, tests and runs, from a fresh clone.
#
#   make run            build, then run examples/main_job.py
#   make test           build; C unit tests; Python tests; ASan+UBSan build with
#                       its C tests and the @pytest.mark.asan integration tests;
#                       fuzz corpus replay (+20 s of libFuzzer if clang is there)
#   make bench [SCENARIO=name]   side-by-side benchmarks (bench/)
#   make fuzz [FUZZ_SECONDS=300] libFuzzer run of the frame target (installs clang)
#   make deps | build | build-asan | test-c | test-python | test-asan | test-fuzz
#   make clean          build outputs; `make distclean` also removes .venv
#
# Every target sets up what it needs (`deps`): Debian packages through apt-get
# (sudo when not root), and a virtual environment in .venv whose site-packages
# has a .pth file putting python/ on sys.path, so .venv/bin/python can
# `import shoal` from the source tree.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.ONESHELL:
.NOTPARALLEL:
.DEFAULT_GOAL := build
.PHONY: deps build build-asan test test-c test-python test-asan test-fuzz fuzz \
        run bench clean distclean

REPO := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
VENV := $(REPO)/.venv
PY := $(VENV)/bin/python
export PATH := $(VENV)/bin:$(PATH)
NPROC := $(shell nproc 2>/dev/null || echo 2)

APT_PKGS := libuv1-dev libmsgpack-dev libcmocka-dev libssl-dev
PIP_PKGS := cloudpickle pytest pytest-timeout numpy pandas cmake ninja scikit-build-core msgpack
# The stamp's name changes with the requirements (and the checkout's path,
# which the .pth file holds), so a change re-runs the install.
DEPS_KEY := $(shell printf '%s|%s|%s' '$(APT_PKGS)' '$(PIP_PKGS)' '$(REPO)' | cksum | cut -d' ' -f1)
STAMP := $(VENV)/.shoal-deps-$(DEPS_KEY)

PYTEST_TIMEOUT ?= 120
PYTEST_ARGS ?=
FUZZ_DIRS ?=
FUZZ_CI_SECONDS ?= 20
FUZZ_SECONDS ?= 300
SCENARIO ?=

# apt_install PKG...: installs Debian packages as root, through sudo, or
# explains what to install and exits 2.
define APT_INSTALL_FN
apt_install() {
  if [ "$$(id -u)" = 0 ]; then sudo=""
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"
  elif command -v sudo >/dev/null 2>&1 && [ -t 0 ]; then sudo="sudo"
  else
    echo "make: missing Debian packages: $$*" >&2
    echo "make: as root, run: apt-get install -y --no-install-recommends $$*" >&2
    exit 2
  fi
  echo "    apt-get install $$*"
  $$sudo apt-get update -qq
  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$$@" >/dev/null
}
endef

# configure DIR CMAKE_ARGS...: configures DIR with Ninja unless it was already
# configured with these arguments (edits to CMakeLists and new sources then
# re-run cmake from ninja itself). Prints cmake's notes and warnings, and its
# whole output on failure.
define CONFIGURE_FN
configure() {
  local dir=$$1; shift
  local args="-DPython_EXECUTABLE=$(PY) CC=$${CC:-} $$*"
  if [ -f "$$dir/build.ninja" ] && [ "$$(cat "$$dir/.shoal-configure" 2>/dev/null)" = "$$args" ]; then
    return 0
  fi
  # A tree configured for another generator or source dir cannot be reused.
  if [ -f "$$dir/CMakeCache.txt" ] &&
     ! { grep -qx 'CMAKE_GENERATOR:INTERNAL=Ninja' "$$dir/CMakeCache.txt" &&
         grep -qx 'CMAKE_HOME_DIRECTORY:INTERNAL=$(REPO)' "$$dir/CMakeCache.txt"; }; then
    rm -rf "$$dir"
  fi
  mkdir -p "$$dir"
  if ! cmake -S "$(REPO)" -B "$$dir" -G Ninja --no-warn-unused-cli -DPython_EXECUTABLE="$(PY)" "$$@" >"$$dir/cmake.log" 2>&1; then
    cat "$$dir/cmake.log"; echo "make: cmake failed in $$dir" >&2; exit 1
  fi
  echo "$$args" >"$$dir/.shoal-configure"
  grep -E '^-- shoal:|^CMake (Warning|Deprecation)' "$$dir/cmake.log" | sed 's/^/    /' || true
}
endef

# ---------------------------------------------------------------- set-up

deps:
	@$(APT_INSTALL_FN)
	missing=""
	for p in $(APT_PKGS); do
	  dpkg -s "$$p" 2>/dev/null | grep -qx 'Status: install ok installed' || missing="$$missing $$p"
	done
	command -v python3 >/dev/null || { echo "make: python3 not found" >&2; exit 2; }
	if [ ! -x "$(PY)" ] && ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
	  missing="$$missing python3-venv" # Debian's own python3 splits venv out
	fi
	if [ -n "$$missing" ]; then
	  echo "==> deps: system packages:$$missing"
	  apt_install $$missing
	fi
	if [ ! -f "$(STAMP)" ]; then
	  echo "==> deps: Python environment .venv ($(PIP_PKGS))"
	  [ -x "$(PY)" ] || python3 -m venv "$(VENV)"
	  "$(PY)" -m pip install -q --disable-pip-version-check $(PIP_PKGS)
	  site=$$("$(PY)" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
	  echo "$(REPO)/python" > "$$site/shoal-src.pth"
	  "$(PY)" -c 'import sys; assert "$(REPO)/python" in sys.path, sys.path'
	  rm -f "$(VENV)"/.shoal-deps-*
	  touch "$(STAMP)"
	fi

# ---------------------------------------------------------------- builds

build: deps
	@$(CONFIGURE_FN)
	echo "==> build: build/ (RelWithDebInfo)"
	configure build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSHOAL_PYTHON=ON -DSHOAL_SANITIZE=OFF
	ninja -C build --quiet
	# Put the binary and the extension where the package looks for them.
	mkdir -p python/shoal/bin
	if [ -x build/shoal ]; then
	  ln -sfn ../../../build/shoal python/shoal/bin/shoal
	else
	  rm -f python/shoal/bin/shoal
	  echo "    no build/shoal: no daemon main() in src/node, src/head, src/cli yet"
	fi
	find python/shoal -maxdepth 1 -name '_core*.so' -type l -delete
	found=0
	for so in build/_core*.so; do
	  [ -e "$$so" ] || continue
	  ln -sfn "../../$$so" "python/shoal/$$(basename "$$so")"; found=1
	done
	[ $$found = 1 ] || echo "    no build/_core*.so: no extension sources in python/shoal/_core yet"

build-asan: $(if $(BUILT),deps,build)
	@$(CONFIGURE_FN)
	echo "==> build-asan: build-asan/ (ASan+UBSan, no extension)"
	configure build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSHOAL_SANITIZE=ON -DSHOAL_PYTHON=OFF
	ninja -C build-asan --quiet

# ---------------------------------------------------------------- tests

# Runs every stage even when an earlier test stage failed (not when the build
# did), then prints each stage's outcome and time; fails if any stage failed.
test:
	@lines=(); failed=""
	report() { echo "==> test: stages"; for l in "$${lines[@]}"; do echo "    $$l"; done; }
	trap report EXIT
	for stage in build test-c test-python test-asan test-fuzz; do
	  start=$$SECONDS; rc=0
	  $(MAKE) --no-print-directory $$stage BUILT=1 || rc=$$?
	  lines+=("$$(printf '%-12s %-6s %4ds' $$stage $$([ $$rc = 0 ] && echo ok || echo FAILED) $$((SECONDS - start)))")
	  if [ $$rc != 0 ]; then failed="$$failed $$stage"; [ $$stage != build ] || break; fi
	done
	if [ -n "$$failed" ]; then echo "make test: failed:$$failed" >&2; exit 1; fi
	echo "==> test: all stages passed"

# ctest DIR: the unit tests of DIR (everything but the fuzz label), output
# only for failures; fails when no test is registered.
define CTEST_FN
run_ctest() {
  local dir=$$1
  if ! ctest --test-dir "$$dir" --output-on-failure --no-tests=error -LE fuzz -j$(NPROC) >"$$dir/ctest.log" 2>&1; then
    cat "$$dir/ctest.log"; exit 1
  fi
  grep -E 'tests passed|tests failed' "$$dir/ctest.log" | sed 's/^/    /'
}
endef

test-c: $(if $(BUILT),,build)
	@$(CTEST_FN)
	echo "==> test-c: C unit tests (ctest, build/)"
	run_ctest build

test-python: $(if $(BUILT),,build)
	@echo "==> test-python: pytest tests/python (timeout $(PYTEST_TIMEOUT)s per test)"
	if ! find tests/python -name 'test_*.py' -o -name '*_test.py' 2>/dev/null | grep -q .; then
	  echo "    no Python tests yet"; exit 0
	fi
	rc=0
	"$(PY)" -m pytest tests/python -q -p no:cacheprovider --timeout=$(PYTEST_TIMEOUT) $(PYTEST_ARGS) || rc=$$?
	[ $$rc != 5 ] || { echo "    no tests collected"; rc=0; }
	exit $$rc

test-asan: build-asan
	@$(CTEST_FN)
	echo "==> test-asan: C unit tests under ASan+UBSan (build-asan/)"
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 run_ctest build-asan
	echo "==> test-asan: tests marked asan, SHOAL_BINARY=build-asan/shoal"
	if [ ! -x build-asan/shoal ]; then echo "    no build-asan/shoal (no daemon main yet): skipped"; exit 0; fi
	if ! find tests/python -name '*.py' 2>/dev/null | xargs -r grep -l 'mark.asan' | grep -q .; then
	  echo "    no tests marked asan yet"; exit 0
	fi
	logs="$(REPO)/build-asan/sanitizer-logs"
	rm -rf "$$logs"; mkdir -p "$$logs"
	rc=0
	SHOAL_BINARY="$(REPO)/build-asan/shoal" \
	ASAN_OPTIONS="log_path=$$logs/asan:detect_leaks=1" \
	UBSAN_OPTIONS="print_stacktrace=1:log_path=$$logs/ubsan" \
	  "$(PY)" -m pytest tests/python -q -p no:cacheprovider -m asan --timeout=$(PYTEST_TIMEOUT) $(PYTEST_ARGS) || rc=$$?
	[ $$rc != 5 ] || { echo "    no tests collected"; rc=0; }
	if [ -n "$$(ls -A "$$logs")" ]; then
	  for f in "$$logs"/*; do echo "---- $$f"; cat "$$f"; done
	  echo "make: the sanitizers reported errors in the daemon (logs above, in $$logs)" >&2
	  exit 1
	fi
	exit $$rc

# libfuzzer_build: configures build-fuzz with clang and builds frame_fuzz.
define LIBFUZZER_FN
libfuzzer_build() {
  CC=clang configure build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSHOAL_LIBFUZZER=ON -DSHOAL_TESTS=OFF -DSHOAL_PYTHON=OFF
  ninja -C build-fuzz --quiet frame_fuzz
}
# libfuzzer_run SECONDS: runs it on a scratch copy of the corpus; new inputs go
# to build-fuzz/new/, a crashing input to build-fuzz/artifacts/.
libfuzzer_run() {
  rm -rf build-fuzz/new build-fuzz/artifacts; mkdir -p build-fuzz/new build-fuzz/artifacts
  if ! build-fuzz/fuzz/frame_fuzz -max_total_time=$$1 -max_len=8192 -print_final_stats=1 \
       -artifact_prefix=build-fuzz/artifacts/ build-fuzz/new fuzz/corpus/frame $(FUZZ_DIRS) \
       >build-fuzz/fuzz.log 2>&1; then
    tail -40 build-fuzz/fuzz.log
    echo "make: the fuzzer found a failing input: $$(ls build-fuzz/artifacts/*)" >&2
    echo "make: replay it with build/fuzz/frame_replay FILE" >&2
    exit 1
  fi
  grep -E '^stat::number_of_executed_units' build-fuzz/fuzz.log | sed 's/^/    /' || true
  echo "    $$(ls build-fuzz/new | wc -l) new inputs in build-fuzz/new (not kept)"
}
endef

test-fuzz: $(if $(BUILT),,build)
	@$(CONFIGURE_FN)
	$(LIBFUZZER_FN)
	echo "==> test-fuzz: replay $(strip fuzz/corpus/frame $(FUZZ_DIRS)) (ASan+UBSan, gcc)"
	if ! ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
	     build/fuzz/frame_replay fuzz/corpus/frame $(FUZZ_DIRS) >build/fuzz-replay.log 2>&1; then
	  tail -40 build/fuzz-replay.log; exit 1
	fi
	tail -1 build/fuzz-replay.log | sed 's/^/    /'
	if command -v clang >/dev/null 2>&1; then
	  echo "==> test-fuzz: libFuzzer, $(FUZZ_CI_SECONDS)s (clang)"
	  libfuzzer_build
	  libfuzzer_run $(FUZZ_CI_SECONDS)
	else
	  echo "    clang not installed: libFuzzer run skipped (make fuzz installs it)"
	fi

fuzz: build
	@$(APT_INSTALL_FN)
	$(CONFIGURE_FN)
	$(LIBFUZZER_FN)
	command -v clang >/dev/null 2>&1 || apt_install clang
	# libFuzzer's runtime is a separate package on Debian 12 (libclang-rt-N-dev).
	if ! echo 'int LLVMFuzzerTestOneInput(const char *d, long n) { return 0; }' |
	     clang -x c -fsanitize=fuzzer -o /dev/null - 2>/dev/null; then
	  apt_install "libclang-rt-$$(clang -dumpversion | cut -d. -f1)-dev"
	fi
	echo "==> fuzz: libFuzzer on fuzz/corpus/frame for $(FUZZ_SECONDS)s"
	libfuzzer_build
	libfuzzer_run $(FUZZ_SECONDS)
	echo "    to keep a few: build-fuzz/fuzz/frame_fuzz -merge=1 DIR build-fuzz/new, then"
	echo "    copy chosen files to fuzz/corpus/frame/found-<what-it-shows>"

# ---------------------------------------------------------------- runs

run: build
	@[ -f examples/main_job.py ] || { echo "make run: examples/main_job.py does not exist yet" >&2; exit 1; }
	echo "==> run: examples/main_job.py"
	"$(PY)" examples/main_job.py

bench: build
	@[ -f bench/requirements.txt ] || { echo "make bench: bench/requirements.txt does not exist yet" >&2; exit 1; }
	echo "==> bench: installing bench/requirements.txt"
	# One peer at a time: a peer that cannot be installed is reported by
	# bench/run.py as "not installed" instead of stopping the whole run.
	grep -vE '^[[:space:]]*(#|$$)' bench/requirements.txt | while read -r req; do
	  "$(PY)" -m pip install -q --disable-pip-version-check "$$req" \
	    || echo "    could not install $$req: its rows will say 'not installed'" >&2
	done
	echo "==> bench: bench/run.py $(if $(SCENARIO),--scenario $(SCENARIO))"
	"$(PY)" bench/run.py $(if $(SCENARIO),--scenario $(SCENARIO))

clean:
	@echo "==> clean: build/ build-asan/ build-fuzz/ and the links into python/shoal"
	rm -rf build build-asan build-fuzz python/shoal/bin
	find python/shoal -maxdepth 1 -name '_core*.so' -type l -delete

distclean: clean
	@rm -rf "$(VENV)"
