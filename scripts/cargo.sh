#!/usr/bin/env bash
# Runs cargo with the prebuilt RocksDB archive (see rocksdb-lib.sh), so that no
# build in this workspace ever compiles RocksDB's C++ again.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/install-deps.sh"
ROCKSDB_LIB_DIR="$("$here/rocksdb-lib.sh")"
export ROCKSDB_LIB_DIR ROCKSDB_STATIC=1
exec cargo "$@"
