#!/usr/bin/env bash
# Installs r-nacos (crates.io `rnacos`), the reference the bench runs beside our
# cluster for instance registration and lookups, ONCE per machine into a cache
# directory outside any clone, keyed by its version, and prints the binary's path.
#
# Why a cache: `cargo install` compiles a few hundred crates (15-30 minutes on a
# loaded 2-core machine); doing that in every clone or every bench run would make
# the reference cost more than the measurement.
set -euo pipefail

VERSION="${RNACOS_VERSION:-0.8.8}"
CACHE_ROOT="${REGISTRY_BUILD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/registry-rs}"
root="$CACHE_ROOT/rnacos-$VERSION"
bin="$root/bin/rnacos"
if [[ -x "$bin" ]]; then
  echo "$bin"
  exit 0
fi

# Two bench runs started at once on a fresh machine would each compile r-nacos:
# the second waits for the first here and then finds the binary.
mkdir -p "$CACHE_ROOT"
if command -v flock >/dev/null 2>&1; then
  exec 9>"$CACHE_ROOT/.build-rnacos-$VERSION.lock"
  flock 9
  if [[ -x "$bin" ]]; then
    echo "$bin"
    exit 0
  fi
fi

echo "installing r-nacos $VERSION once into $root (15-30 minutes on 2 cores)..." >&2
# The project's build settings (RUSTFLAGS for the static triple, the RocksDB
# archive, a shared target dir) are for our workspace, not for this crate.
env -u ROCKSDB_LIB_DIR -u ROCKSDB_STATIC -u RUSTFLAGS -u CARGO_TARGET_DIR -u CARGO_BUILD_TARGET \
  cargo install rnacos --locked --version "=$VERSION" --root "$root" >&2
echo "$bin"
