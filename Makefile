# Thin wrapper around CMake so a fresh machine needs one command per job (see README.md).
BUILD ?= build
JOBS ?= 2

.PHONY: all deps build run train test test-blas test-asan test-tsan fuzz fuzz-deps format format-check clean

all: build

deps:
	@scripts/deps.sh

CONFIGURE = cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release -DWERROR=ON >/dev/null

# --no-print-directory: no "Entering directory" pair around every one of CMake's sub-makes.
build: deps
	@$(CONFIGURE)
	@cmake --build $(BUILD) -j$(JOBS) -- --no-print-directory

# The main job: evowidthd trains configs/default.json on Fashion-MNIST and serves the API
# (it prints the URL to poll; Ctrl-C checkpoints and exits; run again to resume).
# It builds only the daemon (and what it links), so the tests' build lines stay out of the way.
run: deps
	@$(CONFIGURE)
	@cmake --build $(BUILD) -j$(JOBS) --target evowidthd -- --no-print-directory
	$(BUILD)/evowidthd --config configs/default.json --state-dir $(BUILD)/state

# The same training in the foreground, with the final report.
train: deps
	@$(CONFIGURE)
	@cmake --build $(BUILD) -j$(JOBS) --target evowidth -- --no-print-directory
	$(BUILD)/evowidth train configs/default.json --report $(BUILD)/default-report.json -o $(BUILD)/default.evow

# The whole test suite (unit, slow and end-to-end); it also needs chromium and promtool.
test: build
	@scripts/deps.sh --test
	cd $(BUILD) && ctest -j$(JOBS) --output-on-failure --timeout 600

# The suite again on the other OpenBLAS core type: unset when the environment forces one
# (OPENBLAS_CORETYPE=Haswell on some machines), forced to Haswell otherwise. Nothing may
# depend on which kernel OpenBLAS picked.
test-blas: build
	cd $(BUILD) && if [ -n "$${OPENBLAS_CORETYPE:-}" ]; then \
	  echo "ctest with OPENBLAS_CORETYPE unset (was $$OPENBLAS_CORETYPE)"; \
	  env -u OPENBLAS_CORETYPE ctest -j$(JOBS) --output-on-failure --timeout 600 -LE 'e2e|slow'; \
	else \
	  echo "ctest with OPENBLAS_CORETYPE=Haswell"; \
	  OPENBLAS_CORETYPE=Haswell ctest -j$(JOBS) --output-on-failure --timeout 600 -LE 'e2e|slow'; \
	fi

# Address + undefined-behaviour sanitizers, and ThreadSanitizer for the daemon's two threads
# (the daemon's end-to-end tests: e2e_train runs the foreground trainer, which has no second
# thread, and e2e_mpi's ranks are that trainer too; they take 120 s and 46 s under TSan, and
# run in the Release and ASan stages).
test-asan: deps
	@scripts/deps.sh --test
	@cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSANITIZE="address;undefined" >/dev/null
	@cmake --build build-asan -j$(JOBS) -- --no-print-directory
	cd build-asan && ASAN_OPTIONS=detect_leaks=1 ctest -j$(JOBS) --output-on-failure --timeout 900 -LE slow

test-tsan: deps
	@scripts/deps.sh --test
	@cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSANITIZE=thread >/dev/null
	@cmake --build build-tsan -j$(JOBS) -- --no-print-directory
	cd build-tsan && ctest -j$(JOBS) --output-on-failure --timeout 900 -L e2e -E '^e2e_(train|mpi)$$'

# libFuzzer harnesses (tests/fuzz): clang + ASan + UBSan, each run FUZZ_SECONDS on a scratch
# copy of the committed seed corpus; a crash, leak, timeout or failed property fails the
# target and leaves the input in build-fuzz/crash-*. Only this target needs clang.
FUZZ_SECONDS ?= 20
fuzz-deps:
	@scripts/deps.sh clang libclang-rt-14-dev

fuzz: fuzz-deps
	@CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DEW_FUZZ=ON \
	  -DEW_OPENMP=OFF -DBUILD_TESTING=OFF -DSANITIZE="address;undefined" -DWERROR=ON >/dev/null
	@cmake --build build-fuzz -j$(JOBS)
	scripts/fuzz.sh build-fuzz $(FUZZ_SECONDS)

# Layout (.clang-format, clang-format 14): format rewrites the files in place, format-check
# (run by CI) fails naming each file that differs. scripts/format.sh lists what is left out.
format:
	@scripts/deps.sh clang-format-14
	@scripts/format.sh

format-check:
	@scripts/deps.sh clang-format-14
	@scripts/format.sh --check

clean:
	rm -rf build build-asan build-tsan build-fuzz
