#!/usr/bin/env bash
# Builds the lab's three images with no container registry at all:
#   1. static release binaries (static-pie, glibc, RocksDB and libstdc++ inside) of
#      registry-server, registry-client and wan-gateway, through scripts/cargo.sh (which links
#      the RocksDB archive prebuilt once per machine, so RocksDB's C++ is never compiled again);
#   2. a check that nothing is left dynamic (no ELF interpreter, no NEEDED entry; ldd agrees);
#   3. per image, a staging dir target/lab-images/<bin>/ with the stripped binary, an
#      /etc/passwd + /etc/group holding the unprivileged user registry (10001:10001), and empty
#      data/ and tmp/ dirs;
#   4. `docker build` of docker/<bin>.Dockerfile (FROM scratch) on that dir -> <bin>:lab.
#
#   scripts/lab-images.sh                 everything
#   scripts/lab-images.sh --binaries-only steps 1-3 (used by docker/Dockerfile.build)
#
# Environment: LAB_CARGO (default scripts/cargo.sh), LAB_TAG (default lab),
# LAB_BINS (default "registry-server registry-client wan-gateway").
#
# How the static binaries are built (target, RUSTFLAGS, the libstdc++.a search dir) is in
# scripts/static-env.sh, shared with scripts/bench.sh and scripts/lab-chaos.sh.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

binaries_only=false
[[ "${1:-}" == "--binaries-only" ]] && binaries_only=true

CARGO="${LAB_CARGO:-$root/scripts/cargo.sh}"
TAG="${LAB_TAG:-lab}"
read -r -a BINS <<<"${LAB_BINS:-registry-server registry-client wan-gateway}"
source "$root/scripts/static-env.sh"
out="$target_dir/$TRIPLE/release"
stage_root="$target_dir/lab-images"

step() { printf '\n==> %s\n' "$*" >&2; }

# ---- 1. static binaries --------------------------------------------------------------------
step "building static release binaries: ${BINS[*]}"
pkgs=()
for b in "${BINS[@]}"; do pkgs+=(-p "$b"); done
start=$SECONDS
RUSTFLAGS="$STATIC_RUSTFLAGS" \
  "$CARGO" build --release --target "$TRIPLE" "${pkgs[@]}"
echo "binaries built in $((SECONDS - start)) s" >&2

# ---- 2. nothing dynamic ----------------------------------------------------------------------
step "checking that the binaries are static"
for b in "${BINS[@]}"; do
  bin="$out/$b"
  kind="$(file -b "$bin" 2>/dev/null || true)"
  lddout="$(ldd "$bin" 2>&1 || true)"
  # Not `grep -q`: under pipefail its early exit kills readelf with SIGPIPE, and the failed
  # pipeline would pass a dynamic binary as static.
  if readelf -lW "$bin" | grep 'INTERP' >/dev/null || readelf -dW "$bin" | grep '(NEEDED)' >/dev/null; then
    echo "FAIL: $bin is dynamically linked:" >&2
    echo "$lddout" >&2
    exit 1
  fi
  case "$lddout" in
    *"not a dynamic executable"* | *"statically linked"*) ;;
    *) echo "FAIL: ldd does not call $bin static: $lddout" >&2; exit 1 ;;
  esac
  printf '  %-16s %s | ldd: %s\n' "$b" "$(grep -o -E 'static-pie linked|statically linked' <<<"$kind" || echo "$kind")" \
    "$(echo "$lddout" | tr -d '\t')" >&2
done

# ---- 3. staging dirs -------------------------------------------------------------------------
CA_BUNDLE="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
if [[ ! -s "$CA_BUNDLE" ]]; then
  echo "no CA bundle at $CA_BUNDLE (install ca-certificates, or set CA_BUNDLE)" >&2
  exit 1
fi
step "staging image contents under $stage_root"
for b in "${BINS[@]}"; do
  s="$stage_root/$b"
  rm -rf "$s"
  mkdir -p "$s/etc" "$s/data" "$s/tmp"
  cat >"$s/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
registry:x:10001:10001:registry:/data:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
EOF
  cat >"$s/etc/group" <<'EOF'
root:x:0:
registry:x:10001:
nogroup:x:65534:
EOF
  chmod 0644 "$s/etc/passwd" "$s/etc/group"
  # CA certificates: the agent's HTTP check runner (also embedded in every server) sets up its
  # TLS client even for plain http:// checks and fails every check with "No CA certificates were
  # loaded from the system" without them. Also needed for real https:// checks.
  mkdir -p "$s/etc/ssl/certs"
  cp "$CA_BUNDLE" "$s/etc/ssl/certs/ca-certificates.crt"
  chmod 0644 "$s/etc/ssl/certs/ca-certificates.crt"
  chmod 0750 "$s/data"
  chmod 1777 "$s/tmp"
  # Ownership is set again by COPY --chown; set it here too where we may (root, or the Dockerfile.build stage).
  if [[ $(id -u) -eq 0 ]]; then chown 10001:10001 "$s/data" "$s/tmp"; fi
  cp "$out/$b" "$s/$b"
  strip --strip-all "$s/$b" 2>/dev/null || true
  chmod 0755 "$s/$b"
  printf '  %-16s %s\n' "$b" "$(du -h "$s/$b" | cut -f1) (stripped)" >&2
done

if $binaries_only; then exit 0; fi

# ---- 4. images -------------------------------------------------------------------------------
step "building images FROM scratch"
for b in "${BINS[@]}"; do
  # The legacy builder (no buildx on these machines) is enough for FROM scratch + COPY; its
  # output is shown only when the build fails.
  if ! log="$(DOCKER_BUILDKIT="${DOCKER_BUILDKIT:-0}" docker build -f "$root/docker/$b.Dockerfile" \
    -t "$b:$TAG" "$stage_root/$b" 2>&1)"; then
    echo "$log" >&2
    echo "FAIL: docker build of $b:$TAG" >&2
    exit 1
  fi
done
# Rebuilding leaves the previous images untagged: drop those (only ours, by label).
docker image prune -f --filter label=io.github.registry-rs.lab=1 >/dev/null || true
docker images --format '{{.Repository}}:{{.Tag}}\t{{.Size}}' | grep -E "^($(IFS='|'; echo "${BINS[*]}")):$TAG\b" | sort >&2
