#!/usr/bin/env bash
# What `make lab-chaos` runs after `make images`: builds the lab-chaos binary
# (registry-bench/src/bin/lab-chaos), starts a clean lab (down -v first, then lab-up.sh, as
# lab-e2e.sh does), runs lab-chaos against it from the host, and ALWAYS tears the lab down
# (down -v) afterwards, pass, fail or interrupt. Exits with lab-chaos's status: 0 every property
# held, 1 a violation (seed, fault log and the failing key's history are printed), 2 it could
# not run; 1 also when the lab never came up or the teardown left something behind.
#
#   scripts/lab-chaos.sh [lab-chaos flags]      e.g. --seconds 60 --seed 42
#   LAB_CHAOS_SECONDS=60 LAB_CHAOS_SEED=42 make lab-chaos
#
# Also read by lab-chaos: LAB_CHAOS_CLIENTS, LAB_CHAOS_KEYS, LAB_CHAOS_NO_XDC (see --help).
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$root"

# Built as scripts/bench.sh builds registry-bench (same --target and RUSTFLAGS as the lab's
# images), so the dependencies the images compiled are reused rather than compiled again.
source "$root/scripts/static-env.sh"
echo "==> building lab-chaos"
RUSTFLAGS="$STATIC_RUSTFLAGS" \
  "$here/cargo.sh" build --profile bench-client --target "$TRIPLE" -p registry-bench --bin lab-chaos || exit 1
bin="$target_dir/$TRIPLE/bench-client/lab-chaos"

# Empty variables would reach clap as empty values: drop them.
for v in LAB_CHAOS_SECONDS LAB_CHAOS_SEED LAB_CHAOS_CLIENTS LAB_CHAOS_KEYS LAB_CHAOS_NO_XDC; do
  [[ -n "${!v-}" ]] || unset "$v"
done

t0=$SECONDS
rc=1
teardown() {
  trap - EXIT INT TERM
  echo
  echo "==> tearing the lab down"
  if ! "$here/lab-down.sh"; then
    [[ $rc -ne 0 ]] || rc=1
  fi
  echo "lab-chaos: exit $rc after $((SECONDS - t0)) s (up, chaos, down)"
  exit "$rc"
}
trap teardown EXIT
trap 'rc=130; exit' INT TERM
echo "==> starting from a clean lab"
"$here/lab-down.sh" >/dev/null 2>&1 || true
echo "==> up"
if "$here/lab-up.sh"; then
  echo "==> lab-chaos $*"
  # The lab runs with ACLs on (default deny): lab-chaos sends the management token lab-up made.
  REGISTRY_HTTP_TOKEN="$(cat "$root/.lab/acl/management.token")" "$bin" "$@"
  rc=$?
else
  echo "the lab did not come up; its logs:" >&2
  source "$here/lab-lib.sh"
  compose logs --tail 30 >&2 || true
  rc=1
fi
