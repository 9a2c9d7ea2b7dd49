#!/usr/bin/env bash
# Builds the RocksDB C++ library bundled with the `librocksdb-sys` crate ONCE per
# machine, into a cache directory outside any clone, keyed by the crate version,
# and prints that directory. The Makefile exports it as ROCKSDB_LIB_DIR (with
# ROCKSDB_STATIC=1) so that debug tests, release builds and the static images all
# link the same archive and never compile RocksDB again.
#
# Why: compiling RocksDB takes 16 (release) to 26 (debug) minutes on a 2-core
# machine; doing that inside every fresh clone would eat most of CI's budget.
set -euo pipefail

# Keep in step with Cargo.lock (checked below when a lock file is present).
VERSION="${LIBROCKSDB_SYS_VERSION:-0.17.3+10.4.2}"
here="$(cd "$(dirname "$0")/.." && pwd)"
if [[ -f "$here/Cargo.lock" ]]; then
  locked="$(awk '/^name = "librocksdb-sys"$/{getline; gsub(/version = |"/,""); print}' "$here/Cargo.lock")"
  if [[ -n "$locked" ]]; then VERSION="$locked"; fi
fi

CACHE_ROOT="${REGISTRY_BUILD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/registry-rs}"
dir="$CACHE_ROOT/librocksdb-sys-$VERSION"
if [[ -f "$dir/librocksdb.a" ]]; then
  echo "$dir"
  exit 0
fi
# The build needs libclang (bindgen) and a C++ compiler: `make rocksdb` comes
# here without scripts/cargo.sh, which installs them. Its output goes to stderr.
"$here/scripts/install-deps.sh"

# Two builds started at once on a fresh machine (make test runs several cargo
# commands, helpers run their own) would each compile RocksDB for 16 minutes:
# the second waits for the first here and then finds the archive.
mkdir -p "$CACHE_ROOT"
if command -v flock >/dev/null 2>&1; then
  exec 9>"$CACHE_ROOT/.build-$VERSION.lock"
  flock 9
  if [[ -f "$dir/librocksdb.a" ]]; then
    echo "$dir"
    exit 0
  fi
fi

mkdir -p "$dir/build/src"
cat >"$dir/build/Cargo.toml" <<TOML
[package]
name = "rocksdb-prebuild"
version = "0.0.0"
edition = "2021"
publish = false
[dependencies]
librocksdb-sys = { version = "=$VERSION", default-features = false, features = ["bindgen-runtime"] }
[profile.release]
debug = false
TOML
echo "" >"$dir/build/src/lib.rs"
echo "building RocksDB $VERSION once into $dir (about 16 minutes on 2 cores)..." >&2
(
  cd "$dir/build"
  env -u ROCKSDB_LIB_DIR -u ROCKSDB_STATIC -u RUSTFLAGS -u CARGO_TARGET_DIR \
    cargo build --release --quiet >&2
)
archive="$(find "$dir/build/target/release/build" -path '*librocksdb-sys-*/out/librocksdb.a' | head -n1)"
if [[ -z "$archive" ]]; then
  echo "librocksdb.a not found after the build" >&2
  exit 1
fi
cp "$archive" "$dir/librocksdb.a.tmp" && mv "$dir/librocksdb.a.tmp" "$dir/librocksdb.a"
rm -rf "$dir/build/target"
echo "$dir"
