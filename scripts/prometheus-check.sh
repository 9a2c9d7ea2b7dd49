#!/usr/bin/env bash
# `make prometheus-check`: Prometheus itself (Debian's `prometheus` package, installed here
# when missing) scrapes a `registry-server --dev` at /v1/agent/metrics?format=prometheus every
# second; passes once Prometheus reports the target up and answers a query for one of our
# metrics. Bounded: gives up after PROM_CHECK_SECONDS (default 90) and prints what Prometheus
# said. Everything it starts runs on loopback ports of its own and is stopped on exit.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
limit="${PROM_CHECK_SECONDS:-90}"

if ! command -v prometheus >/dev/null; then
  echo "installing prometheus with apt-get..." >&2
  if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >&2
fi

scripts/cargo.sh build -p registry-server --bin registry-server
server_bin="$here/target/debug/registry-server"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
http_port="$(free_port)"
rpc_port="$(free_port)"
prom_port="$(free_port)"
work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

server_args=(--dev --http-addr "127.0.0.1:$http_port" --rpc-addr "127.0.0.1:$rpc_port")
# The DNS interface listens on 8600 by default; give it a port of its own when it exists.
# (grep reads all of --help: with -q it could close the pipe early, and pipefail would fail it.)
if "$server_bin" --help 2>&1 | grep -- '--dns-addr' >/dev/null; then
  server_args+=(--dns-addr "127.0.0.1:$(free_port)")
fi
"$server_bin" "${server_args[@]}" >"$work/server.log" 2>&1 &
pids+=($!)

deadline=$((SECONDS + limit))
until [[ "$(curl -fsS "http://127.0.0.1:$http_port/v1/status/leader" 2>/dev/null || true)" == \"*:*\" ]]; do
  if ((SECONDS > deadline)); then
    echo "registry-server did not elect itself in ${limit}s:" >&2
    tail -20 "$work/server.log" >&2
    exit 1
  fi
  sleep 0.5
done

cat >"$work/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: registry
    metrics_path: /v1/agent/metrics
    params:
      format: [prometheus]
    static_configs:
      - targets: ["127.0.0.1:$http_port"]
EOF
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/data" \
  --web.listen-address="127.0.0.1:$prom_port" >"$work/prometheus.log" 2>&1 &
pids+=($!)
prom="http://127.0.0.1:$prom_port"

targets=""
until grep -q '"health":"up"' <<<"$targets"; do
  if ((SECONDS > deadline)); then
    echo "Prometheus did not report the target up in ${limit}s; its targets:" >&2
    echo "$targets" >&2
    tail -20 "$work/prometheus.log" >&2
    exit 1
  fi
  sleep 1
  targets="$(curl -fsS "$prom/api/v1/targets" 2>/dev/null || true)"
done
echo "prometheus-check: target up"

# One of our metrics, read back through Prometheus' query API.
query="consul_raft_state_leader_total"
answer=""
until grep -q '"value":\[' <<<"$answer"; do
  if ((SECONDS > deadline)); then
    echo "Prometheus has no $query after ${limit}s: $answer" >&2
    exit 1
  fi
  sleep 1
  answer="$(curl -fsS "$prom/api/v1/query?query=$query" 2>/dev/null || true)"
done
echo "prometheus-check: $query = $(grep -o '"value":\[[^]]*\]' <<<"$answer")"
echo "prometheus-check: OK"
