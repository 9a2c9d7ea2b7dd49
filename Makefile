# Everything goes through scripts/cargo.sh, which installs missing build tools
# and links the RocksDB archive that scripts/rocksdb-lib.sh builds once per
# machine (about 16 minutes on 2 cores) under ~/.cache/registry-rs.
SHELL := /bin/bash
CARGO := scripts/cargo.sh
NEXTEST_PROFILE ?= $(if $(CI),ci,default)

.PHONY: all build release test fmt fmt-check lint run-dev clean rocksdb chaos prometheus-check

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

prometheus-check: ## Prometheus (Debian's package, installed if missing) scrapes a --dev server's metrics and reports it up
	@scripts/prometheus-check.sh

run-dev: ## One server in --dev mode on 127.0.0.1:8500
	$(CARGO) run --release -p registry-server -- --dev

clean:
	cargo clean

# ---- The lab (docker-compose.yml; README "The lab: docker compose up") ---------------------
# No container registry is needed: static-pie binaries go into FROM-scratch images.
.PHONY: images lab lab-down lab-test lab-chaos

images: ## Static release binaries + FROM-scratch images registry-server:lab, registry-client:lab, wan-gateway:lab
	@scripts/lab-images.sh

lab: images ## Build the images, docker compose up (dc1 + dc2; LAB_PROFILES=dc3 adds dc3), wait until healthy (prints the time it took)
	@scripts/lab-up.sh

lab-down: ## Stop the lab; remove its containers, networks and volumes
	@scripts/lab-down.sh

lab-test: images ## Build, start a clean lab, run scripts/lab-test.sh, ALWAYS tear down; the test's exit code
	@scripts/lab-e2e.sh

lab-chaos: images ## Seeded kill/disconnect/pause of dc1 servers in a clean lab, history checked from outside; ALWAYS tear down (LAB_CHAOS_SECONDS, LAB_CHAOS_SEED)
	@scripts/lab-chaos.sh

.PHONY: bench bench-quick

bench: ## Benchmark side by side with etcd and r-nacos (3+3+3 members on loopback); writes BENCHMARKS.md (~25 min once built; r-nacos compiles once per machine first, 10-40 min)
	scripts/bench.sh

bench-quick: ## The everyday benchmark variant (about 2.5 minutes once built)
	scripts/bench.sh --quick

chaos: ## Randomized fault schedules with fresh seeds (CHAOS_RUNS seeds of CHAOS_SECONDS each)
	CHAOS_SEEDS=random CHAOS_RUNS=$${CHAOS_RUNS:-20} CHAOS_SECONDS=$${CHAOS_SECONDS:-8} \
	  $(CARGO) nextest run -p registry-server --test chaos --profile chaos --no-capture
