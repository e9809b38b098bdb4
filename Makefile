# Build, run and test the host and its guests. `make help` lists the targets.

CARGO ?= cargo
RUSTUP ?= rustup
WASM_TARGET := wasm32-wasip2
# Every guest component in the repo: the default app plus the test guests.
GUESTS := guest trap-guest spin-guest memhog-guest recurse-guest slow-guest counter-guest noresponse-guest \
          config-guest fetch-guest chatty-guest hostile-guest
GUEST_FLAGS := --release --target $(WASM_TARGET) $(addprefix -p ,$(GUESTS))
# Guests only `make bench` builds (several MB of generated code).
BENCH_GUESTS := big-guest

# Test-only tools from PyPI, in a virtualenv under target/ (nothing global).
TOOLS := target/tools
KUBE_VALIDATE := $(TOOLS)/bin/kubernetes-validate

.PHONY: help wasm-target build-guest build-guests build run test tools lint bench fmt clean

help:
	@echo "build-guest   build the default guest (target/$(WASM_TARGET)/release/guest.wasm)"
	@echo "build-guests  build every guest, test guests included"
	@echo "build         build the host (release) and the default guest"
	@echo "run           serve the default guest on http://127.0.0.1:8080/"
	@echo "test          build all guests, the host and test tools, then run every test"
	@echo "lint          rustfmt check and clippy (host, tests, guests), warnings as errors"
	@echo "bench         measure host vs native hyper vs wasmtime serve; updates BENCHMARKS.md"

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

build-guests: wasm-target
	$(CARGO) build $(GUEST_FLAGS)

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

tools: $(KUBE_VALIDATE) $(SCHEMATHESIS)

test: build-guests tools
	$(CARGO) build -p host
	$(CARGO) test --workspace --exclude guest-sdk $(addprefix --exclude ,$(GUESTS) $(BENCH_GUESTS))

lint: wasm-target
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy $(GUEST_FLAGS) -p guest-sdk $(addprefix -p ,$(BENCH_GUESTS)) -- -D warnings

# Installs wrk (Debian) and wasmtime-cli 48.0.8 (crates.io, into
# target/bench-tools) when missing. Loopback only; stops what it starts.
bench: wasm-target
	python3 scripts/bench.py

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
