# Sourced (not run) by scripts/lab-images.sh, scripts/bench.sh and scripts/lab-chaos.sh: the one
# definition of how the static release binaries are built. All three must build with the same
# --target and RUSTFLAGS, because cargo keys artifacts on RUSTFLAGS: any difference would compile
# every dependency a second time on this 2-core machine.
#
# Sets TRIPLE, target_dir and STATIC_RUSTFLAGS; expects `root` (the repository) to be set.
#
# Why `-L native=$target_dir/lab-libs`: librocksdb-sys, when linked against a prebuilt archive
# (ROCKSDB_LIB_DIR), asks for `dylib=stdc++`, which makes the linker pick libstdc++.so and turns
# the crt-static build into a broken dynamic one. A search dir holding only libstdc++.a is
# searched before the system dirs, so the same request resolves to the static archive.
# That dir lives in the machine's build cache, not in the clone's target dir: its path is part
# of RUSTFLAGS, so a path per clone would make a target dir copied from another clone (or a
# worktree) useless and compile every release dependency again.
TRIPLE=x86_64-unknown-linux-gnu
target_dir="${CARGO_TARGET_DIR:-$root/target}"
_static_libs="${REGISTRY_BUILD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/registry-rs}/lab-libs"
mkdir -p "$_static_libs"
_stdcxx="$(${CXX:-g++} -print-file-name=libstdc++.a)"
if [[ "$_stdcxx" != /* ]]; then
  echo "libstdc++.a not found (install g++ / libstdc++-12-dev)" >&2
  exit 1
fi
ln -sf "$_stdcxx" "$_static_libs/libstdc++.a"
STATIC_RUSTFLAGS="-C target-feature=+crt-static -L native=$_static_libs"
