#!/usr/bin/env bash
# Starts the two-datacenter lab (images must exist: scripts/lab-images.sh) and waits until it is
# healthy: both DCs have a leader that all three servers agree on, both agents answer, and the
# demo service (docker/agent-config/demo.json, which each agent reads from its --config-dir)
# passes its HTTP check. Prints the time from `docker compose up` to healthy. Exit 1 if that takes over
# LAB_UP_TIMEOUT seconds (default 120).
set -euo pipefail
source "$(dirname "$0")/lab-lib.sh"
limit="${LAB_UP_TIMEOUT:-120}"

ensure_lab_tls
t0="$(date +%s.%N)"
compose up -d --remove-orphans
elapsed() { python3 -c "print(f'{$(date +%s.%N) - $t0:.1f}')"; }
printf '  %-46s after %5s s\n' "containers created and started" "$(elapsed)"

step() { # DESC CMD...
  local desc="$1"; shift
  if wait_for "$limit" "$@"; then
    printf '  %-46s after %5s s\n' "$desc" "$(elapsed)"
  else
    printf '  %-46s NOT within %s s\n' "$desc" "$limit" >&2
    echo "the lab is not healthy; logs: ${LAB_COMPOSE[*]} -p $LAB_PROJECT logs" >&2
    exit 1
  fi
}
step "dc1: leader, all 3 servers agree" dc_has_leader dc1
step "dc2: leader, all 3 servers agree" dc_has_leader dc2
step "dc1 agent answers (127.0.0.1:8500)" agent_answers "$DC1_AGENT"
step "dc2 agent answers (127.0.0.1:9500)" agent_answers "$DC2_AGENT"
step "dc1: demo service (from config dir)" demo_registered "$DC1_AGENT"
step "dc2: demo service (from config dir)" demo_registered "$DC2_AGENT"
step "dc1: demo passing its HTTP check" service_passing "$DC1_AGENT" demo
step "dc2: demo passing its HTTP check" service_passing "$DC2_AGENT" demo
echo "lab healthy $(elapsed) s after 'compose up' (leaders in both DCs, agents answering, demo services passing)"

# Cross-DC routing is informative here (lab-test.sh checks it properly).
if wait_for "${LAB_WAN_TIMEOUT:-30}" service_passing "$DC2_AGENT" demo dc=dc1 &&
  wait_for 5 service_passing "$DC1_AGENT" demo dc=dc2; then
  echo "cross-DC lookups work ($(elapsed) s): curl '127.0.0.1:9500/v1/health/service/demo?dc=dc1&passing'"
else
  echo "WARNING: cross-DC lookups do not answer yet (last: HTTP $CODE ${BODY:0:120})" >&2
fi
