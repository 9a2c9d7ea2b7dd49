# Everything goes through scripts/cargo.sh, which installs missing build tools
# and links the RocksDB archive that scripts/rocksdb-lib.sh builds once per
# machine (about 16 minutes on 2 cores) under ~/.cache/registry-rs.
SHELL := /bin/bash
CARGO := scripts/cargo.sh
NEXTEST_PROFILE ?= $(if $(CI),ci,default)

.PHONY: all build release test fmt fmt-check lint run-dev clean rocksdb

all: build

rocksdb: ## Build the RocksDB archive once (cached outside the clone)
	@scripts/rocksdb-lib.sh

build: ## Debug build of every crate
	$(CARGO) build --workspace --all-targets

release: ## Optimised binaries in target/release
	$(CARGO) build --workspace --release

test: ## Every test: unit, integration, and the built-binary test
	$(CARGO) build --workspace --bins
	$(CARGO) nextest run --workspace --profile $(NEXTEST_PROFILE)

fmt: ## Format the code
	cargo fmt --all

fmt-check:
	cargo fmt --all -- --check

lint: ## Formatting and clippy with warnings as errors
	cargo fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

run-dev: ## One server in --dev mode on 127.0.0.1:8500
	$(CARGO) run --release -p registry-server -- --dev

clean:
	cargo clean
