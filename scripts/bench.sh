#!/usr/bin/env bash
# Builds the release binaries the benchmark drives, then runs it.
#   scripts/bench.sh          full benchmark (make bench, ~20 minutes of measurements: 1,191 s on 2026-12-01)
#   scripts/bench.sh --quick  everyday variant (make bench-quick, about 2.5 minutes once built)
# Extra arguments go to registry-bench (see `registry-bench --help`).
#
# The binaries are built exactly as scripts/lab-images.sh builds the lab's (same --target and
# RUSTFLAGS, hence the same lab-libs search dir): cargo keys artifacts on RUSTFLAGS, so
# any difference would compile every dependency a second time on this 2-core machine.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

source "$root/scripts/static-env.sh"
export RUSTFLAGS="$STATIC_RUSTFLAGS"

# The same package set as the lab images first (so that both builds share one feature
# resolution and one set of artifacts), then the bench itself, in its own profile (release
# without the whole-program LTO: Cargo.toml says why).
scripts/cargo.sh build --release --target "$TRIPLE" -p registry-server -p registry-client -p wan-gateway
scripts/cargo.sh build --profile bench-client --target "$TRIPLE" -p registry-bench

# r-nacos for measurement 12, installed once per machine outside the clone (the first time
# compiles it: 15-30 minutes). If that fails the bench still runs and says it was not installed.
rnacos=()
if rnacos_bin="$(scripts/rnacos-bin.sh)"; then
  rnacos=(--rnacos-bin "$rnacos_bin")
else
  echo "r-nacos could not be installed (scripts/rnacos-bin.sh); measurement 12 is skipped" >&2
fi

exec "$target_dir/$TRIPLE/bench-client/registry-bench" --bin-dir "$target_dir/$TRIPLE/release" "${rnacos[@]}" "$@"
