# Build, run and test the host and its guests. `make help` lists the targets.

CARGO ?= cargo
RUSTUP ?= rustup
WASM_TARGET := wasm32-wasip2
# Every guest component in the workspace (a member with a cdylib target): the
# default app plus the test guests; those marked `[package.metadata.guest]
# bench = true` (several MB of generated code) only `make bench` builds.
GUESTS := $(shell $(CARGO) metadata --no-deps --format-version 1 | python3 scripts/guests.py test)
BENCH_GUESTS := $(shell $(CARGO) metadata --no-deps --format-version 1 | python3 scripts/guests.py bench)
GUEST_FLAGS := --release --target $(WASM_TARGET) $(addprefix -p ,$(GUESTS))

# Test-only tools from PyPI, in a virtualenv under target/ (nothing global).
TOOLS := target/tools

# Components other toolchains build (tests and `make bench` serve them as a
# user would bring them): Python with componentize-py (PyPI) and JavaScript
# with componentize-js (npm), both pinned and installed into $(TOOLS); the
# WASI 0.3 Rust app is the workspace guest p3-guest. Built from source in
# guests/, next to the Rust guests' output.
GUEST_OUT := target/$(WASM_TARGET)/release
FOREIGN_GUESTS := $(GUEST_OUT)/python_guest.wasm $(GUEST_OUT)/javascript_guest.wasm
COMPONENTIZE_PY := $(TOOLS)/bin/componentize-py
COMPONENTIZE_JS := $(TOOLS)/js/node_modules/.bin/componentize-js
# The WASI 0.2.12 WIT (copied from wasmtime-wasi-http 48.0.8) and the apps'
# world, `proxy`, which includes wasi:http/proxy.
GUEST_WIT := $(wildcard guests/wit/*.wit guests/wit/deps/*.wit)
# StarlingMonkey (componentize-js 0.23) is built against wasi:http 0.2.10 and
# exports incoming-handler@0.2.10; its WIT is ours with the http package
# renamed (same content), so the component mixes 0.2.10 and 0.2.12 imports.
JS_WIT := target/js-wit
KUBE_VALIDATE := $(TOOLS)/bin/kubernetes-validate

.PHONY: help wasm-target build-guest build-guests build run test tools redis-server lint fuzz fuzz-nightly bench bench-cluster fmt clean

help:
	@echo "build-guest   build the default guest (target/$(WASM_TARGET)/release/guest.wasm)"
	@echo "build-guests  build every guest, test guests included"
	@echo "build         build the host (release) and the default guest"
	@echo "run           serve the default guest on http://127.0.0.1:8080/"
	@echo "test          build all guests, the host and test tools, then run every test"
	@echo "lint          rustfmt check and clippy (host, tests, guests), warnings as errors"
	@echo "fuzz          fuzz every input parser for FUZZ_SECONDS each (default 60; cargo-fuzz, nightly)"
	@echo "bench         measure host vs native hyper vs wasmtime serve; updates BENCHMARKS.md"
	@echo "bench-cluster only the cluster section (3 replicas on Redis): convergence, throughput; prints it"

# rustup installs the toolchain that rust-toolchain.toml pins, but it does not
# add targets to a toolchain that is already installed: a machine with Rust
# 1.95 and no wasm32-wasip2 would fail with "can't find crate for `core`".
# Every target that builds guests depends on this one.
wasm-target:
	@$(RUSTUP) target list --installed | grep -qx '$(WASM_TARGET)' || { \
		echo "installing the $(WASM_TARGET) target (rustup target add $(WASM_TARGET))"; \
		$(RUSTUP) target add $(WASM_TARGET); }

build-guest: wasm-target
	$(CARGO) build --release --target $(WASM_TARGET) -p guest

build-guests: wasm-target $(FOREIGN_GUESTS)
	$(CARGO) build $(GUEST_FLAGS)

$(COMPONENTIZE_PY): guests/python/requirements.txt | $(TOOLS)/bin/pip
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check -r guests/python/requirements.txt
	touch $@

$(COMPONENTIZE_JS): guests/javascript/package.json guests/javascript/package-lock.json
	@command -v npm >/dev/null || { echo "the JavaScript test app needs Node.js 20 or later with npm"; exit 1; }
	mkdir -p $(TOOLS)/js
	cp guests/javascript/package.json guests/javascript/package-lock.json $(TOOLS)/js/
	cd $(TOOLS)/js && npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(GUEST_OUT)/python_guest.wasm: $(COMPONENTIZE_PY) guests/python/app.py $(GUEST_WIT)
	mkdir -p $(@D)
	PYTHONDONTWRITEBYTECODE=1 $(COMPONENTIZE_PY) -d guests/wit -w proxy componentize \
		-p guests/python app -o $@

$(GUEST_OUT)/javascript_guest.wasm: $(COMPONENTIZE_JS) guests/javascript/src/app.js $(GUEST_WIT)
	mkdir -p $(@D)
	rm -rf $(JS_WIT) && cp -r guests/wit $(JS_WIT)
	sed -i '1s/^package wasi:http@0\.2\.12;/package wasi:http@0.2.10;/' $(JS_WIT)/deps/http.wit
	sed -i 's|wasi:http/proxy@0\.2\.12|wasi:http/proxy@0.2.10|' $(JS_WIT)/world.wit
	$(COMPONENTIZE_JS) --wit $(JS_WIT) --world-name proxy -o $@ guests/javascript/src/app.js

build: build-guest
	$(CARGO) build --release -p host

run: build-guest
	$(CARGO) run -p host

SCHEMATHESIS := $(TOOLS)/bin/schemathesis

$(TOOLS)/bin/pip:
	python3 -m venv $(TOOLS)

$(KUBE_VALIDATE): | $(TOOLS)/bin/pip
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check kubernetes-validate==1.37.0

# The admin API's contract test (tests/e2e/contract.rs) runs it against the
# real binary.
$(SCHEMATHESIS): | $(TOOLS)/bin/pip
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check schemathesis==4.32.5

# The key-value tests (host/src/kv/tests.rs) run a real redis-server, each
# its own on a free loopback port, stopped when the test ends. Debian's, when
# it is missing (as root, or through sudo).
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

redis-server:
	@command -v redis-server >/dev/null || { \
		echo "installing redis-server from Debian (the key-value tests run it)"; \
		$(SUDO) apt-get install -y -qq redis-server >/dev/null 2>&1 || \
		{ $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq redis-server >/dev/null; }; }

# Real photos for the avatar example's tests and bench: the sample photos
# bundled in scikit-image's wheel (PyPI), extracted as they are; the tests
# and the bench make phone-style JPEGs and 3 and 12 MP mosaics of them
# (`avatar prepare`).
PHOTOS := $(TOOLS)/photos
SKIMAGE_PHOTOS := astronaut.png chelsea.png coffee.png motorcycle_left.png hubble_deep_field.jpg rocket.jpg
$(PHOTOS)/.done: | $(TOOLS)/bin/pip
	rm -rf $(TOOLS)/wheels && $(TOOLS)/bin/pip download --quiet --disable-pip-version-check \
		--no-deps --only-binary :all: --dest $(TOOLS)/wheels scikit-image==0.26.0
	mkdir -p $(PHOTOS)
	$(TOOLS)/bin/python -c "import glob, sys, zipfile; z = zipfile.ZipFile(glob.glob('$(TOOLS)/wheels/scikit_image-*.whl')[0]); \
		[open('$(PHOTOS)/' + n, 'wb').write(z.read('skimage/data/' + n)) for n in sys.argv[1:]]" $(SKIMAGE_PHOTOS)
	touch $@

tools: $(KUBE_VALIDATE) $(SCHEMATHESIS) redis-server $(PHOTOS)/.done

test: build-guests tools
	$(CARGO) build -p host -p avatar
	$(CARGO) test --workspace --exclude guest-sdk $(addprefix --exclude ,$(GUESTS) $(BENCH_GUESTS))

lint: wasm-target
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy $(GUEST_FLAGS) -p guest-sdk $(addprefix -p ,$(BENCH_GUESTS)) -- -D warnings

# Coverage-guided fuzzing of the host's input parsers: the targets in
# fuzz/fuzz_targets, one per `host::fuzzing` entry, with cargo-fuzz (pinned,
# installed into target/tools) on the machine's nightly toolchain. Each runs
# FUZZ_SECONDS on its working corpus fuzz/corpus/TARGET (kept between runs),
# with fuzz/seeds/TARGET and fuzz/regressions/TARGET as extra corpora. A
# crash or failed invariant stops the run, its input in fuzz/artifacts/TARGET
# (the full libFuzzer log of each run is fuzz/artifacts/TARGET.log);
# minimise it (cargo fuzz tmin) into fuzz/regressions/TARGET so that
# `make test` replays it on stable for good. Without nightly, `make fuzz`
# says so and replays the seeds and regressions on stable instead.
#
# --sanitizer none: the targets reach only safe Rust (none calls the host's
# few unsafe blocks: openat2, cached code, page sizes), so AddressSanitizer
# would find nothing a panic does not, and it is dear here. Measured on
# 2 cores: the cargo-fuzz defaults (ASan, one codegen unit, every crate at
# opt-level 3 with debug info) built cold in 27 min and ran 3-4x fewer
# exec/s (routing 27k vs 73k, multipart 7k vs 30k) at 500 MB RSS; this
# build (with fuzz/Cargo.toml's profile) takes 8-10 min.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := manifest deploy_settings routing outbound secret_source multipart
CARGO_FUZZ_VERSION := 0.13.2
CARGO_FUZZ := $(TOOLS)/bin/cargo-fuzz
FUZZ := $(RUSTUP) run nightly $(CARGO_FUZZ) fuzz
FUZZ_FLAGS := --fuzz-dir fuzz --sanitizer none --codegen-units 16

$(CARGO_FUZZ):
	$(CARGO) install cargo-fuzz --version $(CARGO_FUZZ_VERSION) --locked --root $(TOOLS)

fuzz:
	@if $(RUSTUP) run nightly rustc --version >/dev/null 2>&1; then \
		$(MAKE) --no-print-directory fuzz-nightly; \
	else \
		echo "make fuzz: no nightly toolchain, which cargo fuzz needs (rustup toolchain install nightly);"; \
		echo "make fuzz: replaying fuzz/seeds and fuzz/regressions on stable instead"; \
		$(CARGO) test -p host --lib fuzzing; \
	fi

fuzz-nightly: $(CARGO_FUZZ)
	$(FUZZ) build $(FUZZ_FLAGS)
	@mkdir -p fuzz/artifacts; for t in $(FUZZ_TARGETS); do \
		mkdir -p fuzz/corpus/$$t && cp -r fuzz/seeds/$$t/. fuzz/corpus/$$t/ || exit 1; \
		extra=; if [ -d fuzz/regressions/$$t ]; then extra=fuzz/regressions/$$t; fi; \
		log=fuzz/artifacts/$$t.log; \
		echo "fuzz $$t for $(FUZZ_SECONDS) s (log: $$log)"; \
		if $(FUZZ) run $(FUZZ_FLAGS) $$t fuzz/corpus/$$t fuzz/seeds/$$t $$extra -- \
			-max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
			>$$log 2>&1; then \
			grep -E 'DONE|average_exec_per_sec' $$log; \
		else \
			grep -v -E '^#[0-9]+[[:space:]]+(NEW|REDUCE|pulse|INITED)' $$log; exit 1; \
		fi; \
	done

# The bench runner (bench/src/runner, target/release/bench) measures the
# release host, native-hello and the guests built here: the default guest,
# the bench guests, and the Python, JavaScript and WASI 0.3 apps of
# build-guests. It installs wrk (Debian) and wasmtime-cli 48.0.8 (crates.io,
# into target/bench-tools) when missing; loopback only; stops what it starts.
# ROUNDS, DURATION, APPS, FOREIGN_APPS and BENCH_ONLY are read by the runner
# (see its doc); NO_BUILD=1 runs what is already in target/, building nothing.
BENCH_PREBUILT := $(filter-out 0,$(NO_BUILD))

bench: $(if $(BENCH_PREBUILT),,wasm-target build-guests) redis-server $(PHOTOS)/.done
ifndef BENCH_PREBUILT
	$(CARGO) build --release -p host -p bench -p avatar
	$(CARGO) build --release --target $(WASM_TARGET) -p guest $(addprefix -p ,$(BENCH_GUESTS))
	# The avatar guest once more without WebAssembly SIMD, to show what
	# simd128 buys (RUSTFLAGS overrides .cargo/config.toml's flags).
	RUSTFLAGS="-C target-feature=-simd128" $(CARGO) build --release --target $(WASM_TARGET) \
		-p avatar-guest --target-dir $(or $(CARGO_TARGET_DIR),target)/no-simd128
endif
	target/release/bench

# Only the cluster section of `make bench` (three replicas on one
# redis-server: convergence of 20 deploys, throughput); prints its report.
bench-cluster:
	BENCH_ONLY=cluster $(MAKE) bench

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
