# Shared by scripts/lab-*.sh (sourced, not run). Bash + curl + python3 only.

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

# The lab's shared key (--encrypt, REGISTRY_ENCRYPT in docker-compose.yml): made once per clone,
# kept out of git in .lab/encrypt.key, so that every script (and a `docker compose` by hand
# after `export REGISTRY_LAB_ENCRYPT="$(cat .lab/encrypt.key)"`) uses the same one.
new_key() { python3 -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())'; }
if [[ -z "${REGISTRY_LAB_ENCRYPT:-}" ]]; then
  if [[ ! -s "$LAB_ROOT/.lab/encrypt.key" ]]; then
    mkdir -p "$LAB_ROOT/.lab"
    (umask 077 && new_key >"$LAB_ROOT/.lab/encrypt.key")
  fi
  REGISTRY_LAB_ENCRYPT="$(cat "$LAB_ROOT/.lab/encrypt.key")"
fi
export REGISTRY_LAB_ENCRYPT

# The lab's TLS files (docker-compose.yml mounts .lab/tls read-only at /tls): a CA, a server
# certificate per DC (its servers and its gateway: server.<dc>.consul), a client certificate per
# DC (its agent) and a second dc1 client certificate for the host's curl. Made once per clone
# with the image's own `tls` subcommand (Consul's file names); git-ignored, never committed.
LAB_TLS="$LAB_ROOT/.lab/tls"
# make_pki DIR ROLE... : a new CA in DIR and one certificate per "server|client:dc".
make_pki() {
  local dir="$1" spec; shift
  mkdir -p "$dir"
  docker run --rm --user 0 -v "$dir:/out" -w /out registry-server:lab tls ca create >/dev/null
  for spec in "$@"; do
    docker run --rm --user 0 -v "$dir:/out" -w /out registry-server:lab \
      tls cert create "--${spec%%:*}" --dc "${spec##*:}" >/dev/null
  done
  # The CA's key signs nothing at run time: it leaves the mounted directory (DIR.ca-key/),
  # so no container can mint certificates.
  mkdir -p "$dir.ca-key" && chmod 0700 "$dir.ca-key"
  mv "$dir/consul-agent-ca-key.pem" "$dir.ca-key/"
  # The containers run as 10001:10001 (docker/Dockerfile.build); the keys stay mode 0600.
  chown -R 10001:10001 "$dir" 2>/dev/null || chmod 0644 "$dir"/*-key.pem
}
ensure_lab_tls() {
  [[ -s "$LAB_TLS/dc1-client-consul-1.pem" ]] && return 0
  rm -rf "$LAB_TLS" "$LAB_TLS.ca-key"
  make_pki "$LAB_TLS" server:dc1 server:dc2 client:dc1 client:dc2 client:dc1
}
# curl as a client of the lab's CA with the host's own certificate (HTTPS ports 8511, 9511).
tls_curl() {
  curl -s --max-time 5 --cacert "$LAB_TLS/consul-agent-ca.pem" \
    --cert "$LAB_TLS/dc1-client-consul-1.pem" --key "$LAB_TLS/dc1-client-consul-1-key.pem" "$@"
}

# Host ports (see docker-compose.yml): agents, and each server's HTTP API.
DC1_AGENT=http://127.0.0.1:8500
DC2_AGENT=http://127.0.0.1:9500
dc_servers() { # dc1|dc2 -> the three servers' host URLs
  case "$1" in
    dc1) echo http://127.0.0.1:8501 http://127.0.0.1:8502 http://127.0.0.1:8503 ;;
    dc2) echo http://127.0.0.1:9501 http://127.0.0.1:9502 http://127.0.0.1:9503 ;;
  esac
}
# A server's LAN IP (as in its advertised RPC address) -> container name and host URL.
ip_to_container() { # 10.81.1.12 -> dc1-server2
  local ip="$1" n dc
  dc="dc${ip#10.81.}"; dc="${dc%%.*}"
  n="${ip##*.}"
  echo "$dc-server$((n - 10))"
}
container_url() { # dc1-server2 -> http://127.0.0.1:8502
  local c="$1" dc i
  dc="${c%%-*}"; i="${c##*server}"
  if [[ "$dc" == dc1 ]]; then echo "http://127.0.0.1:$((8500 + i))"; else echo "http://127.0.0.1:$((9500 + i))"; fi
}
container_ip() { # dc1-server2 -> 10.81.1.12
  local c="$1" dc i
  dc="${c%%-*}"; i="${c##*server}"
  echo "10.81.${dc#dc}.$((10 + i))"
}

# http METHOD URL [BODY] -> sets CODE and BODY (CODE=000 when nothing answered).
http() {
  local method="$1" url="$2" data="${3-}" tmp
  tmp="$(mktemp)"
  if [[ -n "$data" ]]; then
    CODE="$(curl -s -o "$tmp" -w '%{http_code}' --max-time "${HTTP_TIMEOUT:-5}" -X "$method" --data-binary "$data" "$url" 2>/dev/null)" || true
  else
    CODE="$(curl -s -o "$tmp" -w '%{http_code}' --max-time "${HTTP_TIMEOUT:-5}" -X "$method" "$url" 2>/dev/null)" || true
  fi
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
agent_answers() { http GET "$1/v1/agent/self"; [[ "$CODE" == 200 ]]; }
# service_passing AGENT_URL NAME [QUERY] : at least one passing instance of NAME
service_passing() {
  http GET "$1/v1/health/service/$2?passing${3:+&$3}"
  [[ "$CODE" == 200 ]] && [[ "$(json 'len(j)' <<<"$BODY")" -ge 1 ]] 2>/dev/null
}

demo_registered() { # AGENT_URL: the demo service, which the agent reads from its --config-dir
  http GET "$1/v1/agent/service/demo"
  [[ "$CODE" == 200 ]]
}
