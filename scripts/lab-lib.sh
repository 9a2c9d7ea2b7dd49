# Shared by scripts/lab-*.sh (sourced, not run). Bash + curl + python3 + docker only.

LAB_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LAB_PROJECT="${COMPOSE_PROJECT_NAME:-registry-lab}"

# Compose v2 plugin when present, else the v1 `docker-compose` (both read docker-compose.yml).
if docker compose version >/dev/null 2>&1; then
  LAB_COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  LAB_COMPOSE=(docker-compose)
else
  echo "neither 'docker compose' nor 'docker-compose' is installed" >&2
  exit 1
fi
compose() { "${LAB_COMPOSE[@]}" -p "$LAB_PROJECT" -f "$LAB_ROOT/docker-compose.yml" "$@"; }

# The lab's secrets (docker-compose.yml): the one-shot service lab-init (`registry-server init`)
# writes the shared key and the TLS files into the volume lab-secrets, which every container
# mounts read-only at /lab; nothing on the host is needed to start the lab. For the host's own
# HTTPS calls (tls_curl) and the test's extra containers, the CA certificate and the host's
# client certificate are copied out into .lab/tls (git-ignored) after `up` (export_lab_tls).
LAB_SECRETS_VOLUME="${LAB_PROJECT}_lab-secrets"
LAB_TLS="$LAB_ROOT/.lab/tls"
new_key() { python3 -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())'; }
# make_pki DIR ROLE... : a new CA in DIR and one certificate per "server|client:dc" (the
# test's certificates of ANOTHER CA); the CA key is moved out of DIR (DIR.ca-key/).
make_pki() {
  local dir="$1" spec; shift
  mkdir -p "$dir"
  docker run --rm --user 0 -v "$dir:/out" -w /out registry-server:lab tls ca create >/dev/null
  for spec in "$@"; do
    docker run --rm --user 0 -v "$dir:/out" -w /out registry-server:lab \
      tls cert create "--${spec%%:*}" --dc "${spec##*:}" >/dev/null
  done
  mkdir -p "$dir.ca-key" && chmod 0700 "$dir.ca-key"
  mv "$dir/consul-agent-ca-key.pem" "$dir.ca-key/"
  # The containers run as 10001:10001 (docker/Dockerfile.build); the keys stay mode 0600.
  chown -R 10001:10001 "$dir" 2>/dev/null || chmod 0644 "$dir"/*-key.pem
}
# export_lab_tls: the CA certificate and the host's client certificate (dc1-client-consul-1,
# which lab-init makes with --extra-client dc1) from the volume, through a running container.
export_lab_tls() {
  local f
  rm -rf "$LAB_TLS"
  mkdir -p "$LAB_TLS" && chmod 0700 "$LAB_TLS"
  for f in consul-agent-ca.pem dc1-client-consul-1.pem dc1-client-consul-1-key.pem; do
    docker cp "dc1-server1:/lab/tls/$f" "$LAB_TLS/$f" >/dev/null || return 1
  done
  chmod 0600 "$LAB_TLS"/*-key.pem
}
# curl as a client of the lab's CA with the host's own certificate (HTTPS ports 8511, 9511).
tls_curl() {
  curl -s --max-time 5 --cacert "$LAB_TLS/consul-agent-ca.pem" \
    --cert "$LAB_TLS/dc1-client-consul-1.pem" --key "$LAB_TLS/dc1-client-consul-1-key.pem" "$@"
}

# Host ports (see docker-compose.yml): agents, and each server's HTTP API.
DC1_AGENT=http://127.0.0.1:8500
DC2_AGENT=http://127.0.0.1:9500
DC3_AGENT=http://127.0.0.1:7500
dc_servers() { # dc1|dc2|dc3 -> the three servers' host URLs
  case "$1" in
    dc1) echo http://127.0.0.1:8501 http://127.0.0.1:8502 http://127.0.0.1:8503 ;;
    dc2) echo http://127.0.0.1:9501 http://127.0.0.1:9502 http://127.0.0.1:9503 ;;
    dc3) echo http://127.0.0.1:7501 http://127.0.0.1:7502 http://127.0.0.1:7503 ;;
  esac
}
# Servers advertise their service name: a leader "dc1-server2:8300" is container dc1-server2.
addr_to_container() { echo "${1%:*}"; } # dc1-server2:8300 -> dc1-server2
container_url() { # dc1-server2 -> http://127.0.0.1:8502
  local c="$1" dc i
  dc="${c%%-*}"; i="${c##*server}"
  case "$dc" in
    dc1) echo "http://127.0.0.1:$((8500 + i))" ;;
    dc2) echo "http://127.0.0.1:$((9500 + i))" ;;
    dc3) echo "http://127.0.0.1:$((7500 + i))" ;;
  esac
}
container_ip() { # CONTAINER NETWORK -> its IP on that network ("" if not attached)
  docker inspect -f "{{with index .NetworkSettings.Networks \"$2\"}}{{.IPAddress}}{{end}}" "$1" 2>/dev/null
}

# http METHOD URL [BODY] -> sets CODE and BODY (CODE=000 when nothing answered).
# http METHOD URL [DATA]: sets CODE and BODY. Sends LAB_TOKEN (the lab's management token, once
# acl_setup has run) as X-Consul-Token, unless it is empty; the header goes through curl's stdin
# (`-H @-`), never on its command line, where `ps` would show it.
http() {
  local method="$1" url="$2" data="${3-}" tmp header=""
  local -a args=(-s -o "" -w '%{http_code}' --max-time "${HTTP_TIMEOUT:-5}" -X "$method")
  tmp="$(mktemp)"
  args[2]="$tmp"
  [[ -n "$data" ]] && args+=(--data-binary "$data")
  if [[ -n "${LAB_TOKEN:-}" ]]; then
    args+=(-H @-)
    header="X-Consul-Token: $LAB_TOKEN"
  fi
  CODE="$(curl "${args[@]}" "$url" <<<"$header" 2>/dev/null)" || true
  [[ -n "$CODE" ]] || CODE=000
  BODY="$(cat "$tmp")"
  rm -f "$tmp"
}

# json EXPR: evaluates a Python expression on the JSON document on stdin (bound to `j`);
# prints the result (strings bare, everything else as JSON). Exit 1 when it cannot.
json() {
  python3 -c '
import json, sys
try:
    j = json.load(sys.stdin)
    r = eval(sys.argv[1])
except Exception:
    sys.exit(1)
print(r if isinstance(r, str) else json.dumps(r))
' "$1"
}

# leader_of URL -> the leader's RPC address ("" when none or no answer)
leader_of() {
  http GET "$1/v1/status/leader"
  if [[ "$CODE" == 200 ]]; then json 'j' <<<"$BODY" || true; fi
}

# wait_for SECONDS CMD... : runs CMD every 0.2 s until it succeeds or the deadline passes.
# Sets WAITED (seconds, 2 decimals). Returns CMD's last status.
wait_for() {
  local limit="$1"; shift
  local t0 now
  t0="$(date +%s.%N)"
  while true; do
    if "$@"; then
      now="$(date +%s.%N)"
      WAITED="$(python3 -c "print(f'{$now - $t0:.2f}')")"
      return 0
    fi
    now="$(date +%s.%N)"
    if python3 -c "import sys; sys.exit(0 if $now - $t0 > $limit else 1)"; then
      WAITED="$(python3 -c "print(f'{$now - $t0:.2f}')")"
      return 1
    fi
    sleep 0.2
  done
}

# ---- health predicates used by lab-up.sh and lab-test.sh ------------------------------------
dc_has_leader() { # every server of the DC that answers agrees on one non-empty leader, and all 3 answer
  local dc="$1" u l first=""
  for u in $(dc_servers "$dc"); do
    l="$(leader_of "$u")"
    [[ -n "$l" ]] || return 1
    [[ -z "$first" || "$first" == "$l" ]] || return 1
    first="$l"
  done
}
agent_answers() { http GET "$1/v1/agent/self"; [[ "$CODE" == 200 || ( "$CODE" == 403 && -z "${LAB_TOKEN:-}" ) ]]; } # 403: ACLs, no token yet
# service_passing AGENT_URL NAME [QUERY] : at least one passing instance of NAME
service_passing() {
  http GET "$1/v1/health/service/$2?passing${3:+&$3}"
  [[ "$CODE" == 200 ]] && [[ "$(json 'len(j)' <<<"$BODY")" -ge 1 ]] 2>/dev/null
}

demo_registered() { # AGENT_URL: the demo service, which the agent reads from its --config-dir
  http GET "$1/v1/agent/service/demo"
  [[ "$CODE" == 200 ]]
}

# Docker's view (the containers' healthchecks, docker-compose.yml): every running container of
# the lab that has a healthcheck reports healthy, and there is at least one. Sets BODY to the
# ones that do not (for the failure message).
all_containers_healthy() {
  local c status bad="" n=0
  CODE=docker
  for c in $(docker ps -q --filter "label=com.docker.compose.project=$LAB_PROJECT"); do
    status="$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$c" 2>/dev/null)"
    [[ "$status" == none ]] && continue
    n=$((n + 1))
    [[ "$status" == healthy ]] || bad+="$(docker inspect -f '{{.Name}}' "$c" | tr -d /)=$status "
  done
  BODY="${bad:-all $n healthy}"
  [[ $n -gt 0 && -z "$bad" ]]
}
# health_of CONTAINER -> Docker's health status (healthy, starting, unhealthy)
health_of() { docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$1" 2>/dev/null; }

# ---- ACLs (the lab runs with --acl-enabled and default deny: docker-compose.yml) -------------
# acl_setup DC...: once per lab, bootstraps dc1 (PUT /v1/acl/bootstrap) and keeps the
# management token in .lab/acl/management.token (0600, git-ignored); makes the lab's policies
# (anonymous-read: what DNS, the UI and health checks read without a token; replication;
# demo-service) and one token per agent (its node identity + demo-service) and per server's own
# agent (its node identity), kept in .lab/acl/; then hands them out with
# PUT /v1/agent/token/{agent,replication} to the given DCs' agents and servers. Tokens set that
# way are not persisted by the processes, so a restart needs acl_setup again (idempotent: it
# reuses what .lab/acl holds). Exports LAB_TOKEN (the management token) for http().
LAB_ACL="$LAB_ROOT/.lab/acl"
acl_fail() { echo "acl_setup: $*" >&2; return 1; }
acl_secret() { json 'j["SecretID"]' <<<"$BODY"; }
acl_token_file() { # NAME BODY : the SecretID of a token made once with BODY, kept in $LAB_ACL/NAME.token
  local f="$LAB_ACL/$1.token"
  if [[ ! -s "$f" ]]; then
    http PUT "http://127.0.0.1:8501/v1/acl/token" "$2"
    [[ "$CODE" == 200 ]] || { acl_fail "token $1: HTTP $CODE $BODY"; return 1; }
    (umask 077; acl_secret >"$f")
  fi
  cat "$f"
}
acl_policy() { # NAME RULES : made once (a 400 "already exists" is fine)
  local body
  body="$(python3 -c 'import json,sys; print(json.dumps({"Name": sys.argv[1], "Rules": sys.argv[2]}))' "$1" "$2")"
  http PUT "http://127.0.0.1:8501/v1/acl/policy" "$body"
  [[ "$CODE" == 200 || ( "$CODE" == 400 && "$BODY" == *"already exists"* ) ]] || acl_fail "policy $1: HTTP $CODE $BODY"
}
acl_set() { # URL KIND SECRET : PUT URL/v1/agent/token/KIND, retried while the process starts
  local body
  body="$(python3 -c 'import json,sys; print(json.dumps({"Token": sys.argv[1]}))' "$3")"
  set_it() { http PUT "$1/v1/agent/token/$2" "$body"; [[ "$CODE" == 200 ]]; }
  wait_for 60 set_it "$1" "$2" || acl_fail "set $2 token on $1: HTTP $CODE $BODY"
}
acl_setup() {
  mkdir -p "$LAB_ACL" && chmod 700 "$LAB_ACL"
  local mgmt_file="$LAB_ACL/management.token" printed=""
  LAB_TOKEN=""
  bootstrap() { http PUT "http://127.0.0.1:8501/v1/acl/bootstrap"; [[ "$CODE" == 200 || "$CODE" == 403 ]]; }
  wait_for 60 bootstrap || { acl_fail "bootstrap: HTTP $CODE $BODY"; return 1; }
  if [[ "$CODE" == 200 ]]; then
    (umask 077; acl_secret >"$mgmt_file")
    rm -f "$LAB_ACL"/*.token.tmp "$LAB_ACL"/[!m]*.token # a new lab: the old tokens are gone
    printed=yes
  fi
  [[ -s "$mgmt_file" ]] || { acl_fail "dc1 was bootstrapped before and .lab/acl/management.token is gone: make lab-down"; return 1; }
  export LAB_TOKEN="$(cat "$mgmt_file")"
  [[ -n "$printed" ]] && echo "  ACL management token (printed once; kept in .lab/acl/management.token): $LAB_TOKEN"
  acl_policy anonymous-read $'service_prefix "" {\n  policy = "read"\n}\nnode_prefix "" {\n  policy = "read"\n}' || return 1
  http PUT "http://127.0.0.1:8501/v1/acl/token/00000000-0000-0000-0000-000000000002" '{"Policies":[{"Name":"anonymous-read"}]}'
  [[ "$CODE" == 200 ]] || { acl_fail "anonymous token: HTTP $CODE $BODY"; return 1; }
  acl_policy replication 'acl = "write"' || return 1
  acl_policy demo-service $'service "demo" {\n  policy = "write"\n}' || return 1
  local repl dc i node secret url
  repl="$(acl_token_file replication '{"Description":"lab: ACL replication","Policies":[{"Name":"replication"}]}')" || return 1
  for dc in "$@"; do
    i=0
    for url in $(dc_servers "$dc"); do
      i=$((i + 1)); node="$dc-server$i"
      [[ "$dc" != dc1 ]] && { acl_set "$url" replication "$repl" || return 1; }
      secret="$(acl_token_file "$node" "{\"Description\":\"lab: agent of $node\",\"NodeIdentities\":[{\"NodeName\":\"$node\",\"Datacenter\":\"$dc\"}]}")" || return 1
      acl_set "$url" agent "$secret" || return 1
    done
    if [[ "$dc" != dc1 ]]; then
      # The agent resolves its token through its servers: wait until they replicated it.
      known() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H @<(printf 'X-Consul-Token: %s\n' "$2") "$1/v1/acl/token/self" | grep -q 200; }
      wait_for 60 known "$(dc_servers "$dc" | cut -d' ' -f1)" "$repl" || { acl_fail "$dc never replicated dc1's tokens"; return 1; }
    fi
    node="app${dc#dc}"
    secret="$(acl_token_file "$node" "{\"Description\":\"lab: agent of $node\",\"Policies\":[{\"Name\":\"demo-service\"}],\"NodeIdentities\":[{\"NodeName\":\"$node\",\"Datacenter\":\"$dc\"}]}")" || return 1
    case "$dc" in dc1) url="$DC1_AGENT" ;; dc2) url="$DC2_AGENT" ;; dc3) url="$DC3_AGENT" ;; esac
    acl_set "$url" agent "$secret" || return 1
  done
}
acl_load() { # LAB_TOKEN from .lab/acl (lab-test on a lab that lab-up started)
  [[ -s "$LAB_ACL/management.token" ]] && export LAB_TOKEN="$(cat "$LAB_ACL/management.token")"
  return 0
}
