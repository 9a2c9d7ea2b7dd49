#!/usr/bin/env bash
# Starts the lab (`docker compose up -d`; images must exist: scripts/lab-images.sh, or Compose
# builds them where base images can be pulled) and waits until it is healthy: every
# container's Docker healthcheck says healthy (the binaries' `health` subcommands), both DCs
# have a leader that all three servers agree on, both agents answer, and the demo service
# (docker/agent-config/demo.json, which each agent reads from its --config-dir) passes its HTTP
# check. Prints the time from `up` to healthy. Exit 1 if that takes over LAB_UP_TIMEOUT seconds
# (default 120).
#
# The steps, in order (each a function below):
#   start          compose up -d: lab-init makes the secrets, the servers start after it
#   wait_healthy   Docker healthchecks, leaders, agents
#   acl            ACLs are on with default deny: bootstrap dc1 (the management token is printed
#                  once and kept in .lab/acl/), the lab's policies, a token per agent and the
#                  replication token, handed out with PUT /v1/agent/token (acl_setup, lab-lib.sh)
#   export_tls     the CA and the host's client certificate to .lab/tls (for tls_curl)
#   demo_ready     the demo services registered from the config dir and passing
#
#   LAB_PROFILES="dc3" scripts/lab-up.sh    also the third datacenter (compose --profile dc3)
set -euo pipefail
source "$(dirname "$0")/lab-lib.sh"
limit="${LAB_UP_TIMEOUT:-120}"
profiles=()
for p in ${LAB_PROFILES:-}; do profiles+=(--profile "$p"); done

t0="$(date +%s.%N)"
elapsed() { python3 -c "print(f'{$(date +%s.%N) - $t0:.1f}')"; }
step() { # DESC CMD...
  local desc="$1"; shift
  if wait_for "$limit" "$@"; then
    printf '  %-52s after %5s s\n' "$desc" "$(elapsed)"
  else
    printf '  %-52s NOT within %s s\n' "$desc" "$limit" >&2
    echo "the lab is not healthy; logs: ${LAB_COMPOSE[*]} -p $LAB_PROJECT logs" >&2
    exit 1
  fi
}
dcs="dc1 dc2"
[[ " ${LAB_PROFILES:-} " == *" dc3 "* ]] && dcs="dc1 dc2 dc3"
agent_of() { case "$1" in dc1) echo "$DC1_AGENT" ;; dc2) echo "$DC2_AGENT" ;; dc3) echo "$DC3_AGENT" ;; esac; }

start() {
  # Compose returns once every container is created and started, which with depends_on
  # conditions means after lab-init completed and the servers turned healthy.
  compose "${profiles[@]}" up -d --remove-orphans
  printf '  %-52s after %5s s\n' "compose up returned (secrets made, containers started)" "$(elapsed)"
}

wait_healthy() {
  step "Docker healthchecks: every container healthy" all_containers_healthy
  local dc
  for dc in $dcs; do
    step "$dc: leader, all 3 servers agree" dc_has_leader "$dc"
    step "$dc agent answers ($(agent_of "$dc"))" agent_answers "$(agent_of "$dc")"
  done
}

acl() {
  acl_setup $dcs || exit 1
  printf '  %-52s after %5s s\n' "ACLs: bootstrapped, tokens handed out" "$(elapsed)"
}

export_tls() {
  export_lab_tls
  printf '  %-52s after %5s s\n' "CA + host client certificate in .lab/tls" "$(elapsed)"
}

demo_ready() {
  local dc
  for dc in $dcs; do
    step "$dc: demo service (from config dir)" demo_registered "$(agent_of "$dc")"
    step "$dc: demo passing its HTTP check" service_passing "$(agent_of "$dc")" demo
  done
}

start
wait_healthy
acl
export_tls
demo_ready
echo "lab healthy $(elapsed) s after 'compose up' (healthchecks, leaders in $dcs, agents answering, demo services passing)"
echo "  UI: http://127.0.0.1:8500/ui/ (reads work without a token; writes need one: Settings)"
echo "  DNS: dig @127.0.0.1 -p 8600 demo.service.dc2.consul SRV"
echo "  a token: LAB_TOKEN in .lab/acl/management.token (curl -H \"X-Consul-Token: \$(cat .lab/acl/management.token)\" ...)"

# Cross-DC routing is informative here (lab-test.sh checks it properly).
if wait_for "${LAB_WAN_TIMEOUT:-30}" service_passing "$DC2_AGENT" demo dc=dc1 &&
  wait_for 5 service_passing "$DC1_AGENT" demo dc=dc2; then
  echo "cross-DC lookups work ($(elapsed) s): curl '127.0.0.1:9500/v1/health/service/demo?dc=dc1&passing'"
else
  echo "WARNING: cross-DC lookups do not answer yet (last: HTTP $CODE ${BODY:0:120})" >&2
fi
