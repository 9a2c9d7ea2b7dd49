#!/usr/bin/env bash
# What `make lab-test` runs after `make images`: a clean lab (down -v first), up + wait for
# healthy (lab-up.sh), the end-to-end test (lab-test.sh), and ALWAYS down -v afterwards, pass,
# fail or interrupt, leaving no containers, networks or volumes. Exits with the test's status
# (or 1 if the lab never became healthy, or if the teardown left something behind).
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
t0=$SECONDS
rc=1
teardown() {
  trap - EXIT INT TERM
  echo
  echo "==> tearing the lab down"
  if ! "$here/lab-down.sh"; then
    [[ $rc -ne 0 ]] || rc=1
  fi
  echo "lab-test: exit $rc after $((SECONDS - t0)) s (up, test, down)"
  exit "$rc"
}
trap teardown EXIT
trap 'rc=130; exit' INT TERM
echo "==> starting from a clean lab"
"$here/lab-down.sh" >/dev/null 2>&1 || true
echo "==> up"
if "$here/lab-up.sh"; then
  echo "==> lab-test.sh"
  "$here/lab-test.sh"
  rc=$?
else
  echo "the lab did not come up; its logs:" >&2
  source "$here/lab-lib.sh"
  compose logs --tail 30 >&2 || true
  rc=1
fi
