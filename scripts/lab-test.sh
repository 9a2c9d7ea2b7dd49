#!/usr/bin/env bash
# End-to-end test of the running two-datacenter lab (start it with `make lab`; `make lab-test`
# builds, starts, runs this and always tears down). Reports every check as PASS/FAIL and ends with
# "N passed, M failed"; exits 1 when anything failed.
#
#   1. a service registered with an HTTP check via the dc1 agent is read healthy via the dc2 agent
#      with ?dc=dc1, and the reverse; the agents' DNS (host ports 8600 and 9600) answers
#      `dig @127.0.0.1 -p 8600 demo.service.dc2.consul SRV` through the gateways;
#   2. docker kill the dc1 leader: a new leader within LAB_FAILOVER_BOUND s, nothing lost, writes
#      accepted; docker start it: it rejoins (3 peers, follows the new leader, has the new writes);
#   3. docker network disconnect one dc1 follower from dc1-lan: the other two serve reads and
#      writes; reconnect it (same IP): a ?stale read on it shows the write it missed;
#   4. docker stop dc1's gateway: dc2 asking ?dc=dc1 gets 500 "Remote DC has no server currently
#      reachable"; docker start it: cross-DC lookups recover;
#   5. docker compose down (volumes kept) and up -d: every registration is still there;
#   6. the shared key: a server container with another key (and the lab's certificates, so that
#      TLS lets it through), pointed at dc1's servers, never
#      joins (the servers log the refused handshake), and an agent with another key gets 403 for
#      everything it forwards, while unsigned requests to a server's RPC port and to a gateway
#      are refused too;
#   7. TLS: curl --cacert with a client certificate reads a server's HTTPS port (and ?dc=dc2
#      through the TLS gateways), without one the handshake is refused; a server container with
#      the right key but a certificate of another CA never joins, and an agent with the right key
#      but no certificate (plaintext) gets nothing from the servers and never enters the catalog;
#   8. names, not IPs: dc1-server2 is stopped, another container takes its IP, and it starts
#      again with a new one: the others reach it by name (it follows the leader and has the
#      writes made meanwhile), and `compose up -d --force-recreate` of it does the same;
#   9. the third datacenter (compose --profile dc3 up -d, on the running lab): its containers
#      turn healthy, and from dc1 `?dc=dc3` is answered although dc3's gateway joined only dc2's
#      (federation is transitive);
#  10. the web UI's demo service page in headless Chromium (--dump-dom) against this lab;
#  11. ACLs (default deny): without a token writes are 403 and KV reads too, while the
#      anonymous token's read policy serves catalog reads; a token made in dc1 works in dc2 by
#      replication, and carries ?dc=dc2 requests from dc1.
#
# Before 1, the Docker healthchecks (the binaries' `health` subcommands) of every container must
# say healthy (docker inspect), as `docker compose up` from a clean state left them.
#
# Every wait is a poll with a deadline (wait_for in lab-lib.sh); no sleep is taken as proof.
# Servers are reached through their published host ports (127.0.0.1:8501-8503 dc1,
# 9501-9503 dc2, 7501-7503 dc3): the images are FROM scratch, so there is no shell to
# `docker exec` into. Servers advertise their names: a leader is "dc1-server2:8300".
set -uo pipefail
source "$(dirname "$0")/lab-lib.sh"
# The management token lab-up.sh made (ACLs are on with default deny); every http call sends it.
acl_load

FAILOVER_BOUND="${LAB_FAILOVER_BOUND:-10}" # s from docker kill to a new leader agreed by both survivors
WAIT="${LAB_WAIT:-30}"                     # s for anything else to converge
DC1_LAN="${LAB_PROJECT}_dc1-lan"

passed=0 failed=0
pass() { passed=$((passed + 1)); printf '  PASS  %s\n' "$*"; }
fail() { failed=$((failed + 1)); printf '  FAIL  %s\n' "$*"; }
check() { # DESC SECONDS CMD... : PASS when CMD succeeds within SECONDS (with the time it took)
  local desc="$1" limit="$2"; shift 2
  if wait_for "$limit" "$@"; then pass "$desc ($WAITED s)"; return 0; fi
  fail "$desc (not within $limit s; last answer: HTTP $CODE ${BODY:0:200})"
  return 1
}
title() { printf '\n%s\n' "$*"; }
t_start=$SECONDS

# ---- predicates ---------------------------------------------------------------------------------
register_service() { # AGENT NAME
  http PUT "$1/v1/agent/service/register" "{
    \"ID\": \"$2\", \"Name\": \"$2\", \"Port\": 8080, \"Tags\": [\"lab-test\"],
    \"Check\": {\"HTTP\": \"http://127.0.0.1:8500/v1/status/leader\", \"Interval\": \"1s\", \"Timeout\": \"1s\"}
  }"
  [[ "$CODE" == 200 ]]
}
# passing_in AGENT NAME DC : passing instances of NAME, answered by DC
passing_in() {
  service_passing "$1" "$2" "dc=$3" &&
    [[ "$(json 'j[0]["Node"]["Datacenter"]' <<<"$BODY")" == "$3" ]]
}
catalog_write() { # URL NODE : registers an external node with one service through URL
  http PUT "$1/v1/catalog/register" "{\"Node\": \"$2\", \"Address\": \"192.0.2.10\",
    \"Service\": {\"Service\": \"$2\", \"Port\": 5432}}"
  [[ "$CODE" == 200 ]]
}
has_node() { # URL NODE [QUERY] : the catalog read through URL knows NODE
  http GET "$1/v1/catalog/node/$2${3:+?$3}"
  [[ "$CODE" == 200 ]] && [[ "$(json 'j["Node"]["Node"]' <<<"$BODY")" == "$2" ]] 2>/dev/null
}
services_of() { # URL -> sorted service names (default consistency)
  http GET "$1/v1/catalog/services"
  [[ "$CODE" == 200 ]] && json '" ".join(sorted(j))' <<<"$BODY"
}
new_leader() { # OLD URL URL : both survivors agree on a leader other than OLD
  local old="$1" a b
  a="$(leader_of "$2")"; b="$(leader_of "$3")"
  [[ -n "$a" && "$a" == "$b" && "$a" != "$old" ]] && NEW_LEADER="$a"
}
rejoined() { # URL OWN_ADDR LEADER NODE : 3 peers, follows LEADER, has NODE (stale read)
  http GET "$1/v1/status/peers"
  [[ "$CODE" == 200 && "$(json 'len(j)' <<<"$BODY")" == 3 ]] || return 1
  [[ "$(leader_of "$1")" == "$3" && "$3" != "$2" ]] || return 1
  has_node "$1" "$4" stale
}
# dns_srv PORT NAME : the agent whose DNS is on host PORT answers NAME's SRV query with an
# instance on port 8500 (the demo service) and its target's address (dig on the host).
dns_srv() {
  BODY="$(dig @127.0.0.1 -p "$1" "$2" SRV +time=2 +tries=1 2>&1)"
  CODE="$(grep -o 'status: [A-Z]*' <<<"$BODY" | head -1)"
  [[ "$CODE" == "status: NOERROR" ]] && grep -Eq 'IN[[:space:]]+SRV[[:space:]]+1 [0-9]+ 8500 ' <<<"$BODY" &&
    grep -Eq 'IN[[:space:]]+A[[:space:]]+10\.81\.' <<<"$BODY"
}
remote_unreachable() { # AGENT NAME DC
  http GET "$1/v1/catalog/service/$2?dc=$3"
  [[ "$CODE" == 500 && "$BODY" == *"Remote DC has no server currently reachable"* ]]
}
running() { [[ "$(docker inspect -f '{{.State.Running}}' "$1" 2>/dev/null)" == true ]]; }

# ---- 0. the lab is up ---------------------------------------------------------------------------
title "0. the lab is up"
check "Docker healthchecks: every container healthy (docker inspect)" "$WAIT" all_containers_healthy
for c in dc1-server1 dc1-server2 dc1-server3 dc1-gateway dc1-app dc2-server1 dc2-server2 dc2-server3 dc2-gateway dc2-app; do
  h="$(health_of "$c")"
  if [[ "$h" == healthy ]]; then pass "$c: healthy"; else fail "$c: health '$h'"; fi
done
init_done() { [[ "$(docker inspect -f '{{.State.Status}} {{.State.ExitCode}}' lab-init 2>/dev/null)" == "exited 0" ]]; }
if init_done; then pass "lab-init made the secrets and exited 0"; else fail "lab-init: $(docker inspect -f '{{.State.Status}} {{.State.ExitCode}}' lab-init 2>&1)"; fi
# The shared key is in the secrets volume only: in no container's environment, and in no log.
key_file="$(mktemp)"
if docker cp dc1-server1:/lab/encrypt.key "$key_file" 2>/dev/null && [[ -s "$key_file" ]]; then
  lab_key="$(tr -d '[:space:]' <"$key_file")"
  leaked=""
  for c in lab-init $(docker ps --format '{{.Names}}' --filter "label=com.docker.compose.project=$LAB_PROJECT"); do
    if docker logs "$c" 2>&1 | grep -qF "$lab_key" ||
      docker inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "$c" | grep -qF "$lab_key"; then
      leaked+="$c "
    fi
  done
  if [[ -z "$leaked" ]]; then pass "the shared key is in no container's log or environment"; else fail "the shared key shows in: $leaked"; fi
  unset lab_key
else
  fail "no shared key in the secrets volume (/lab/encrypt.key)"
fi
rm -f "$key_file"
check "dc1 has a leader" "$WAIT" dc_has_leader dc1
check "dc2 has a leader" "$WAIT" dc_has_leader dc2
check "dc1 agent answers on 127.0.0.1:8500" "$WAIT" agent_answers "$DC1_AGENT"
check "dc2 agent answers on 127.0.0.1:9500" "$WAIT" agent_answers "$DC2_AGENT"

# ---- 1. cross-DC --------------------------------------------------------------------------------
title "1. register in one DC, read healthy from the other"
check "register lab-web (HTTP check) via the dc1 agent" 10 register_service "$DC1_AGENT" lab-web
check "lab-web passing in dc1, read via the dc1 agent" "$WAIT" passing_in "$DC1_AGENT" lab-web dc1
check "lab-web passing, read via the dc2 agent with ?dc=dc1" "$WAIT" passing_in "$DC2_AGENT" lab-web dc1
check "register lab-api (HTTP check) via the dc2 agent" 10 register_service "$DC2_AGENT" lab-api
check "lab-api passing in dc2, read via the dc2 agent" "$WAIT" passing_in "$DC2_AGENT" lab-api dc2
check "lab-api passing, read via the dc1 agent with ?dc=dc2" "$WAIT" passing_in "$DC1_AGENT" lab-api dc2
if command -v dig >/dev/null; then
  check "DNS: dig @127.0.0.1 -p 8600 demo.service.dc2.consul SRV (dc1 agent, through the gateways)" \
    "$WAIT" dns_srv 8600 demo.service.dc2.consul
  check "DNS: dig @127.0.0.1 -p 9600 demo.service.consul SRV (dc2 agent)" "$WAIT" dns_srv 9600 demo.service.consul
else
  fail "DNS: dig is not installed (apt-get install dnsutils)"
fi

# ---- 2. leader failover -------------------------------------------------------------------------
title "2. kill the dc1 leader"
old_leader="$(leader_of http://127.0.0.1:8501)"
[[ -n "$old_leader" ]] || old_leader="$(leader_of http://127.0.0.1:8502)"
if [[ -z "$old_leader" ]]; then
  fail "no dc1 leader to kill"
else
  victim="$(addr_to_container "$old_leader")"
  survivors=()
  for c in dc1-server1 dc1-server2 dc1-server3; do [[ "$c" == "$victim" ]] || survivors+=("$(container_url "$c")"); done
  echo "        leader is $old_leader ($victim); survivors ${survivors[*]}"
  check "write lab-ext-before-kill via a follower" 10 catalog_write "${survivors[0]}" lab-ext-before-kill
  before="$(services_of "${survivors[0]}")"
  t_kill="$(date +%s.%N)"
  docker kill "$victim" >/dev/null
  if wait_for "$WAIT" new_leader "$old_leader" "${survivors[@]}"; then
    if python3 -c "import sys; sys.exit(0 if $WAITED <= $FAILOVER_BOUND else 1)"; then
      pass "new leader $NEW_LEADER $WAITED s after docker kill (bound $FAILOVER_BOUND s)"
    else
      fail "new leader $NEW_LEADER only after $WAITED s (bound $FAILOVER_BOUND s)"
    fi
  else
    fail "no new leader within $WAIT s of docker kill"
    NEW_LEADER=""
  fi
  if wait_for "$WAIT" catalog_write "${survivors[1]}" lab-ext-after-kill; then
    pass "write accepted $(python3 -c "print(f'{$(date +%s.%N) - $t_kill:.2f}')") s after docker kill"
  else
    fail "no write accepted within $WAIT s after the kill (HTTP $CODE ${BODY:0:200})"
  fi
  after="$(services_of "${survivors[1]}")"
  missing="$(comm -23 <(tr ' ' '\n' <<<"$before" | sort) <(tr ' ' '\n' <<<"$after" | sort) | tr '\n' ' ')"
  if [[ -n "$before" && -z "$missing" ]] && has_node "${survivors[0]}" lab-ext-before-kill &&
    passing_in "$DC1_AGENT" lab-web dc1; then
    pass "nothing lost: all $(wc -w <<<"$before") services, lab-ext-before-kill, lab-web still passing"
  else
    fail "lost after failover: [$missing] (before: $before; after: $after)"
  fi
  check "the dc1 agent keeps answering catalog reads" 10 has_node "$DC1_AGENT" lab-ext-after-kill
  if running "$victim"; then echo "        ($victim was already restarted by Docker)"; fi
  docker start "$victim" >/dev/null
  check "$victim restarted: 3 peers, follows $NEW_LEADER, has lab-ext-after-kill" 60 \
    rejoined "$(container_url "$victim")" "$old_leader" "$NEW_LEADER" lab-ext-after-kill
fi

# ---- 3. a follower cut off its LAN ------------------------------------------------------------
title "3. cut one dc1 follower off dc1-lan"
leader="$(leader_of http://127.0.0.1:8501)"
[[ -n "$leader" ]] || leader="$(leader_of http://127.0.0.1:8502)"
cut=""
for c in dc1-server1 dc1-server2 dc1-server3; do
  if [[ "$c:8300" != "$leader" ]]; then cut="$c"; break; fi
done
if [[ -z "$leader" || -z "$cut" ]]; then
  fail "no dc1 leader/follower found (leader: '$leader')"
else
  others=()
  for c in dc1-server1 dc1-server2 dc1-server3; do [[ "$c" == "$cut" ]] || others+=("$(container_url "$c")"); done
  cut_ip="$(container_ip "$cut" "$DC1_LAN")"
  echo "        leader $leader; cutting $cut ($cut_ip); the others: ${others[*]}"
  if docker network disconnect "$DC1_LAN" "$cut"; then
    pass "docker network disconnect $DC1_LAN $cut"
    unreachable() { HTTP_TIMEOUT=1 http GET "$1/v1/status/leader"; [[ "$CODE" == 000 ]]; }
    check "$cut is cut off (its published port no longer answers)" 10 unreachable "$(container_url "$cut")"
    check "write lab-ext-partition accepted by the two others" "$WAIT" catalog_write "${others[1]}" lab-ext-partition
    check "read lab-ext-partition from ${others[0]}" 10 has_node "${others[0]}" lab-ext-partition
    check "read lab-ext-partition from ${others[1]}" 10 has_node "${others[1]}" lab-ext-partition
    check "the dc1 agent serves reads and writes" 10 catalog_write "$DC1_AGENT" lab-ext-partition-agent
    # The same IP, so that the published port (bound to it) works again; a new IP is section 8.
    if docker network connect --ip "$cut_ip" "$DC1_LAN" "$cut"; then
      pass "docker network connect --ip $cut_ip $DC1_LAN $cut"
      check "$cut caught up: ?stale read on it shows the writes it missed" "$WAIT" \
        has_node "$(container_url "$cut")" lab-ext-partition-agent stale
      check "$cut follows the leader again" "$WAIT" rejoined "$(container_url "$cut")" "$cut:8300" \
        "$(leader_of "${others[0]}")" lab-ext-partition
      now="$(leader_of "${others[0]}")"
      echo "        leader after reconnecting: $now ($([[ "$now" == "$leader" ]] && echo unchanged || echo changed))"
    else
      fail "docker network connect $cut"
    fi
  else
    fail "docker network disconnect $DC1_LAN $cut"
  fi
fi

# ---- 4. dc1's gateway stopped -----------------------------------------------------------------
title "4. stop dc1's gateway"
t0=$SECONDS
docker stop dc1-gateway >/dev/null
echo "        docker stop dc1-gateway took $((SECONDS - t0)) s"
check "dc2 asking ?dc=dc1 gets 500 'Remote DC has no server currently reachable'" "$WAIT" \
  remote_unreachable "$DC2_AGENT" lab-web dc1
check "dc1 itself is unaffected (lab-web passing via the dc1 agent)" 10 passing_in "$DC1_AGENT" lab-web dc1
docker start dc1-gateway >/dev/null
check "gateway started: dc2 reads lab-web with ?dc=dc1 again" "$WAIT" passing_in "$DC2_AGENT" lab-web dc1
check "and dc1 reads lab-api with ?dc=dc2" "$WAIT" passing_in "$DC1_AGENT" lab-api dc2

# ---- 5. down and up, volumes kept -------------------------------------------------------------
title "5. docker compose down (volumes kept) and up -d"
if compose down >/dev/null 2>&1 && [[ -z "$(docker ps -aq --filter "label=com.docker.compose.project=$LAB_PROJECT")" ]]; then
  pass "compose down: no containers left; volumes: $(docker volume ls -q --filter "label=com.docker.compose.project=$LAB_PROJECT" | wc -l)"
else
  fail "compose down"
fi
t_up="$(date +%s.%N)"
if compose up -d >/dev/null 2>&1; then pass "compose up -d"; else fail "compose up -d"; fi
# Tokens handed out with PUT /v1/agent/token live in the processes only: hand them out again.
if acl_setup dc1 dc2 >/dev/null; then pass "ACL tokens handed out again after the restart"; else fail "acl_setup after up"; fi
check "dc1 has a leader again" 120 dc_has_leader dc1
check "dc2 has a leader again" 120 dc_has_leader dc2
check "both agents answer" "$WAIT" agent_answers "$DC1_AGENT"
check "  (dc2 agent)" "$WAIT" agent_answers "$DC2_AGENT"
echo "        up to leaders + agents: $(python3 -c "print(f'{$(date +%s.%N) - $t_up:.1f}')") s"
for n in lab-ext-before-kill lab-ext-after-kill lab-ext-partition lab-ext-partition-agent; do
  check "dc1 catalog still has $n" "$WAIT" has_node http://127.0.0.1:8501 "$n"
done
agent_has() { # AGENT ID...
  local a="$1" id; shift
  http GET "$a/v1/agent/services"
  [[ "$CODE" == 200 ]] || return 1
  for id in "$@"; do [[ "$(json "'$id' in j" <<<"$BODY")" == true ]] || return 1; done
}
check "dc1 agent still has demo (config dir) and lab-web (data dir)" "$WAIT" agent_has "$DC1_AGENT" demo lab-web
check "dc2 agent still has demo (config dir) and lab-api (data dir)" "$WAIT" agent_has "$DC2_AGENT" demo lab-api
check "demo and lab-web passing in dc1" "$WAIT" passing_in "$DC1_AGENT" lab-web dc1
check "  (demo)" "$WAIT" passing_in "$DC1_AGENT" demo dc1
check "demo and lab-api passing in dc2" "$WAIT" passing_in "$DC2_AGENT" lab-api dc2
check "  (demo)" "$WAIT" passing_in "$DC2_AGENT" demo dc2
check "cross-DC again: lab-web via dc2 with ?dc=dc1" "$WAIT" passing_in "$DC2_AGENT" lab-web dc1
check "cross-DC again: lab-api via dc1 with ?dc=dc2" "$WAIT" passing_in "$DC1_AGENT" lab-api dc2

# ---- 6. the shared key ---------------------------------------------------------------------
title "6. containers with the wrong key are refused"
wrong_key="$(new_key)"
intruders=(lab-intruder-server lab-intruder-agent)
docker rm -f "${intruders[@]}" >/dev/null 2>&1 || true
# With the lab's certificates, so that TLS lets them through and the key is what refuses them.
docker run -d --name lab-intruder-server --network "$DC1_LAN" --ip 10.81.1.91 -v "$LAB_SECRETS_VOLUME:/lab:ro" \
  -e REGISTRY_CA_FILE=/lab/tls/consul-agent-ca.pem -e REGISTRY_CERT_FILE=/lab/tls/dc1-server-consul-0.pem \
  -e REGISTRY_KEY_FILE=/lab/tls/dc1-server-consul-0-key.pem -e REGISTRY_VERIFY_INCOMING=true \
  -e REGISTRY_VERIFY_OUTGOING=true -e REGISTRY_VERIFY_SERVER_HOSTNAME=true \
  -e REGISTRY_ENCRYPT="$wrong_key" -e REGISTRY_NODE=intruder -e REGISTRY_DATACENTER=dc1 \
  -e REGISTRY_DATA_DIR=/data -e REGISTRY_ADVERTISE=10.81.1.91:8300 \
  -e REGISTRY_RETRY_JOIN=dc1-server1:8300,dc1-server2:8300,dc1-server3:8300 \
  registry-server:lab >/dev/null
docker run -d --name lab-intruder-agent --network "$DC1_LAN" --ip 10.81.1.92 -p 127.0.0.1:8599:8500 \
  -v "$LAB_SECRETS_VOLUME:/lab:ro" -e REGISTRY_CA_FILE=/lab/tls/consul-agent-ca.pem \
  -e REGISTRY_CERT_FILE=/lab/tls/dc1-client-consul-0.pem -e REGISTRY_KEY_FILE=/lab/tls/dc1-client-consul-0-key.pem \
  -e REGISTRY_VERIFY_OUTGOING=true -e REGISTRY_VERIFY_SERVER_HOSTNAME=true \
  -e REGISTRY_ENCRYPT="$wrong_key" -e REGISTRY_NODE=intruder-app -e REGISTRY_DATACENTER=dc1 \
  -e REGISTRY_DATA_DIR=/data -e REGISTRY_HTTP_ADDR=0.0.0.0:8500 -e REGISTRY_ADVERTISE=10.81.1.92 \
  -e REGISTRY_RETRY_JOIN=dc1-server1:8300,dc1-server2:8300,dc1-server3:8300 \
  registry-client:lab >/dev/null
intruder_refused() { # the intruder's own log: dc1's servers could not prove the key it has
  docker logs lab-intruder-server 2>&1 | grep -q "does not hold this cluster's key"
}
handshake_cut() { # a dc1 server logged the intruder's connection ending in the handshake
  local c
  for c in dc1-server1 dc1-server2 dc1-server3; do
    docker logs "$c" 2>&1 | grep "10\.81\.1\.91" | grep -q "handshake" && return 0
  done
  return 1
}
check "the intruder server finds dc1's servers do not share its key (its log says so)" "$WAIT" intruder_refused
check "dc1 servers log the intruder's connection cut in the handshake" "$WAIT" handshake_cut
intruder_absent() { # 15 s of dc1's Raft configuration without the intruder
  local until=$((SECONDS + 15))
  while ((SECONDS < until)); do
    http GET http://127.0.0.1:8501/v1/operator/raft/configuration
    [[ "$CODE" == 200 && "$BODY" != *10.81.1.91* ]] || return 1
    sleep 1
  done
}
if intruder_absent; then pass "the intruder is not in dc1's Raft configuration (watched 15 s)"; else fail "the intruder joined dc1: $BODY"; fi
agent_refused() { http GET http://127.0.0.1:8599/v1/catalog/services; [[ "$CODE" == 403 ]]; }
check "an agent with the wrong key gets 403 for what it forwards" "$WAIT" agent_refused
not_in_catalog() { ! has_node http://127.0.0.1:8501 intruder-app; }
if not_in_catalog; then pass "its node is not in dc1's catalog"; else fail "intruder-app registered itself in dc1"; fi
docker rm -f "${intruders[@]}" >/dev/null 2>&1 || true

# ---- 7. TLS ---------------------------------------------------------------------------------
title "7. TLS: curl --cacert, and containers without a valid certificate"
https_leader() { local out; out="$(tls_curl https://127.0.0.1:8511/v1/status/leader)" && [[ "$out" == *dc1-server* ]]; }
check "curl --cacert + client certificate: dc1-server1's HTTPS API (127.0.0.1:8511) names the leader" "$WAIT" https_leader
https_xdc() {
  local out
  out="$(tls_curl "https://127.0.0.1:8511/v1/health/service/demo?dc=dc2&passing")" &&
    [[ "$(json 'len(j)' <<<"$out")" -ge 1 ]] 2>/dev/null
}
check "?dc=dc2 over HTTPS is answered through the TLS gateways" "$WAIT" https_xdc
no_cert_refused() { ! curl -s --max-time 5 --cacert "$LAB_TLS/consul-agent-ca.pem" https://127.0.0.1:8511/v1/status/leader >/dev/null; }
check "without a client certificate the HTTPS port refuses the handshake" 5 no_cert_refused
rogue_pki="$(mktemp -d)"
make_pki "$rogue_pki" server:dc1
rogues=(lab-rogue-server lab-plain-agent)
docker rm -f "${rogues[@]}" >/dev/null 2>&1 || true
# The lab's key (from the secrets volume), but certificates of another CA.
docker run -d --name lab-rogue-server --network "$DC1_LAN" --ip 10.81.1.93 -v "$rogue_pki:/tls:ro" \
  -v "$LAB_SECRETS_VOLUME:/lab:ro" -e REGISTRY_ENCRYPT_FILE=/lab/encrypt.key \
  -e REGISTRY_NODE=rogue -e REGISTRY_DATACENTER=dc1 \
  -e REGISTRY_DATA_DIR=/data -e REGISTRY_ADVERTISE=10.81.1.93:8300 \
  -e REGISTRY_RETRY_JOIN=dc1-server1:8300,dc1-server2:8300,dc1-server3:8300 \
  -e REGISTRY_CA_FILE=/tls/consul-agent-ca.pem -e REGISTRY_CERT_FILE=/tls/dc1-server-consul-0.pem \
  -e REGISTRY_KEY_FILE=/tls/dc1-server-consul-0-key.pem -e REGISTRY_VERIFY_INCOMING=true \
  -e REGISTRY_VERIFY_OUTGOING=true -e REGISTRY_VERIFY_SERVER_HOSTNAME=true \
  registry-server:lab >/dev/null
docker run -d --name lab-plain-agent --network "$DC1_LAN" --ip 10.81.1.94 -p 127.0.0.1:8598:8500 \
  -v "$LAB_SECRETS_VOLUME:/lab:ro" -e REGISTRY_ENCRYPT_FILE=/lab/encrypt.key \
  -e REGISTRY_NODE=plain-app -e REGISTRY_DATACENTER=dc1 \
  -e REGISTRY_DATA_DIR=/data -e REGISTRY_HTTP_ADDR=0.0.0.0:8500 -e REGISTRY_ADVERTISE=10.81.1.94 \
  -e REGISTRY_RETRY_JOIN=dc1-server1:8300,dc1-server2:8300,dc1-server3:8300 \
  registry-client:lab >/dev/null
rogue_refused() { docker logs lab-rogue-server 2>&1 | grep -q "TLS handshake failed"; }
check "the server with another CA's certificate fails the TLS handshake with dc1 (its log says so)" "$WAIT" rogue_refused
rogue_absent() { # 15 s of dc1's Raft configuration without it
  local until=$((SECONDS + 15))
  while ((SECONDS < until)); do
    http GET http://127.0.0.1:8501/v1/operator/raft/configuration
    [[ "$CODE" == 200 && "$BODY" != *10.81.1.93* ]] || return 1
    sleep 1
  done
}
if rogue_absent; then pass "it is not in dc1's Raft configuration (watched 15 s)"; else fail "a server of another CA joined dc1: $BODY"; fi
plain_refused() { http GET http://127.0.0.1:8598/v1/catalog/services; [[ "$CODE" =~ ^5 ]]; }
check "an agent without a certificate gets no answer from the servers (5xx for what it forwards)" "$WAIT" plain_refused
if ! has_node http://127.0.0.1:8501 plain-app; then pass "its node is not in dc1's catalog"; else fail "plain-app registered itself in dc1"; fi
docker rm -f "${rogues[@]}" >/dev/null 2>&1 || true
rm -rf "$rogue_pki" "$rogue_pki.ca-key"

# ---- 8. names, not IPs -------------------------------------------------------------------
title "8. a server comes back with a new IP: the others find it by name"
# follows_cluster URL NODE : 3 peers, the same leader as dc1-server1 or dc1-server3 sees, and
# NODE in its own state (a stale read: what it has applied).
follows_cluster() {
  local l
  l="$(leader_of http://127.0.0.1:8501)"; [[ -n "$l" ]] || l="$(leader_of http://127.0.0.1:8503)"
  http GET "$1/v1/status/peers"
  [[ "$CODE" == 200 && "$(json 'len(j)' <<<"$BODY")" == 3 ]] || return 1
  [[ -n "$l" && "$(leader_of "$1")" == "$l" ]] || return 1
  has_node "$1" "$2" stale
}
is_healthy() { [[ "$(health_of "$1")" == healthy ]]; }
moved=dc1-server2
moved_url="$(container_url "$moved")"
old_ip="$(container_ip "$moved" "$DC1_LAN")"
if [[ -z "$old_ip" ]]; then
  fail "$moved has no address on $DC1_LAN"
else
  docker stop "$moved" >/dev/null
  # Another container takes its address, so that it cannot get it back.
  docker rm -f lab-ip-taker >/dev/null 2>&1 || true
  if docker run -d --name lab-ip-taker --network "$DC1_LAN" --ip "$old_ip" registry-client:lab >/dev/null; then
    pass "$moved stopped; lab-ip-taker holds its address $old_ip"
  else
    fail "could not start a container on $old_ip"
  fi
  check "write lab-ext-while-moved accepted by the two others" "$WAIT" catalog_write http://127.0.0.1:8501 lab-ext-while-moved
  docker start "$moved" >/dev/null
  new_ip="$(container_ip "$moved" "$DC1_LAN")"
  if [[ -n "$new_ip" && "$new_ip" != "$old_ip" ]]; then
    pass "$moved started again with a new IP: $old_ip -> $new_ip"
  else
    fail "$moved did not get a new IP (was $old_ip, now '$new_ip')"
  fi
  check "$moved (new IP) in the cluster by name: 3 peers, same leader, has lab-ext-while-moved" "$WAIT" \
    follows_cluster "$moved_url" lab-ext-while-moved
  check "$moved healthy again (its healthcheck)" "$WAIT" is_healthy "$moved"
  check "a write through $moved reaches the others" "$WAIT" catalog_write "$moved_url" lab-ext-via-moved
  check "  (read on dc1-server3)" "$WAIT" has_node http://127.0.0.1:8503 lab-ext-via-moved
  docker rm -f lab-ip-taker >/dev/null 2>&1 || true
  ip_before="$(container_ip "$moved" "$DC1_LAN")"
  if compose up -d --no-deps --force-recreate "$moved" >/dev/null 2>&1; then
    pass "compose up -d --no-deps --force-recreate $moved (IP $ip_before -> $(container_ip "$moved" "$DC1_LAN"))"
  else
    fail "compose up -d --force-recreate $moved"
  fi
  check "write lab-ext-after-recreate" "$WAIT" catalog_write http://127.0.0.1:8501 lab-ext-after-recreate
  check "recreated $moved in the cluster by name, has lab-ext-after-recreate" "$WAIT" \
    follows_cluster "$moved_url" lab-ext-after-recreate
  check "recreated $moved healthy (its healthcheck)" "$WAIT" is_healthy "$moved"
  check "the dc1 agent still reads and writes" "$WAIT" catalog_write "$DC1_AGENT" lab-ext-agent-after-moves
fi

# ---- 9. the third datacenter ------------------------------------------------------------
title "9. dc3 (--profile dc3), joined through dc2's gateway only"
t0=$SECONDS
if compose --profile dc3 up -d >/dev/null 2>&1; then
  pass "compose --profile dc3 up -d on the running lab ($((SECONDS - t0)) s)"
else
  fail "compose --profile dc3 up -d"
fi
for c in dc3-server1 dc3-server2 dc3-server3 dc3-gateway dc3-app; do
  check "$c healthy (its healthcheck)" 180 is_healthy "$c"
done
joins_only_dc2() {
  BODY="$(docker inspect -f '{{range .Config.Env}}{{println .}}{{end}}' dc3-gateway | grep '^REGISTRY_RETRY_JOIN_WAN=')"
  [[ "$BODY" == "REGISTRY_RETRY_JOIN_WAN=dc2-gateway:8302" ]]
}
if joins_only_dc2; then pass "dc3-gateway's only WAN join target is dc2-gateway:8302"; else fail "dc3-gateway joins: $BODY"; fi
check "dc3 has a leader" "$WAIT" dc_has_leader dc3
if acl_setup dc3 >/dev/null; then pass "dc3: replication and agent tokens handed out"; else fail "acl_setup dc3"; fi
check "dc3: demo passing via the dc3 agent" "$WAIT" passing_in "$DC3_AGENT" demo dc3
knows_dc3() {
  http GET "$DC1_AGENT/v1/catalog/datacenters"
  [[ "$CODE" == 200 && "$(json '"dc3" in j' <<<"$BODY")" == true ]]
}
check "dc1 lists dc3 in /v1/catalog/datacenters (learned through dc2's gateway)" 60 knows_dc3
check "from dc1: demo passing in dc3 (?dc=dc3)" 60 passing_in "$DC1_AGENT" demo dc3
check "from dc3: lab-web passing in dc1 (?dc=dc1)" "$WAIT" passing_in "$DC3_AGENT" lab-web dc1

# ---- 10. the web UI in a browser ---------------------------------------------------------
title "10. the web UI in headless Chromium"
UI_SHOTS="$LAB_ROOT/target/lab-ui"
mkdir -p "$UI_SHOTS"
# Through chromedriver (scripts/ui-probe.py): the UI's lists are live blocking queries, so a
# plain `chromium --dump-dom` never sees the page settle. No token: the anonymous token's reads.
ui_demo_page() {
  BODY="$(UI_SHOT="$UI_SHOTS/demo.png" timeout 90 "$LAB_ROOT/scripts/ui-probe.py" \
    "$DC1_AGENT/ui/#/dc/dc1/services/demo" app1 "agent reaches a leader" passing 2>&1)"
}
ui_dc2_from_dc1() {
  BODY="$(timeout 90 "$LAB_ROOT/scripts/ui-probe.py" "$DC1_AGENT/ui/#/dc/dc2/services/demo" app2 passing 2>&1)"
}
if ! command -v chromedriver >/dev/null; then
  fail "chromium-driver is not installed (scripts/install-deps.sh installs it)"
else
  check "UI: dc1's demo page shows its instance on app1 with its passing check (screenshot target/lab-ui/demo.png)" 120 ui_demo_page
  check "UI: dc2's demo page through dc1's agent (?dc=dc2)" 120 ui_dc2_from_dc1
fi

# ---- 11. ACLs -------------------------------------------------------------------------------
title "11. ACLs: default deny, the anonymous token's reads, replication to dc2"
anon() { LAB_TOKEN="" http "$@"; }
anon PUT "$DC1_AGENT/v1/kv/lab/acl" "x"
if [[ "$CODE" == 403 && "$BODY" == "Permission denied"* ]]; then pass "no token: KV write 403 ($BODY)"; else fail "no token: KV write got $CODE $BODY"; fi
http PUT "$DC1_AGENT/v1/kv/lab/acl" "x"
if [[ "$CODE" == 200 ]]; then pass "management token: KV write 200"; else fail "management token: KV write got $CODE $BODY"; fi
anon GET "$DC1_AGENT/v1/kv/lab/acl"
if [[ "$CODE" == 403 ]]; then pass "no token: KV read 403"; else fail "no token: KV read got $CODE"; fi
anon GET "$DC1_AGENT/v1/catalog/services"
if [[ "$CODE" == 200 && "$BODY" == *demo* ]]; then pass "no token: catalog read (anonymous-read policy)"; else fail "no token: catalog read got $CODE $BODY"; fi
anon PUT "$DC1_AGENT/v1/agent/service/register" '{"Name":"anon-svc"}'
if [[ "$CODE" == 403 ]]; then pass "no token: agent service register 403"; else fail "no token: agent register got $CODE"; fi
http PUT "http://127.0.0.1:8501/v1/acl/policy" '{"Name":"lab-test-web","Rules":"service \"lab-test-web\" {\n  policy = \"write\"\n}\nnode_prefix \"\" {\n  policy = \"write\"\n}"}'
[[ "$CODE" == 200 || "$BODY" == *"already exists"* ]] && pass "policy lab-test-web made in dc1" || fail "policy: $CODE $BODY"
http PUT "http://127.0.0.1:8501/v1/acl/token" '{"Description":"lab-test","Policies":[{"Name":"lab-test-web"}]}'
test_token="$(json 'j["SecretID"]' <<<"$BODY")"
as_test() { LAB_TOKEN="$test_token" http "$@"; }
dc2_knows() { as_test GET "http://127.0.0.1:9501/v1/acl/token/self"; [[ "$CODE" == 200 ]]; }
check "a token made in dc1 resolves in dc2 (replication)" 60 dc2_knows
as_test PUT "http://127.0.0.1:9501/v1/catalog/register" '{"Node":"lab-acl-node","Address":"10.0.0.7","Service":{"Service":"lab-test-web"}}'
if [[ "$CODE" == 200 ]]; then pass "dc2 accepts the replicated token's write"; else fail "dc2 write: $CODE $BODY"; fi
as_test PUT "http://127.0.0.1:9501/v1/catalog/register" '{"Node":"lab-acl-node","Address":"10.0.0.7","Service":{"Service":"other"}}'
if [[ "$CODE" == 403 ]]; then pass "dc2 denies what the token may not write"; else fail "dc2 denied write got $CODE"; fi
as_test PUT "$DC1_AGENT/v1/catalog/register?dc=dc2" '{"Node":"lab-acl-node","Address":"10.0.0.7","Service":{"Service":"other"}}'
if [[ "$CODE" == 403 ]]; then pass "?dc=dc2 from dc1 carries the token; dc2 decides (403)"; else fail "?dc=dc2 denied write got $CODE"; fi

printf '\n%d passed, %d failed (lab-test took %d s)\n' "$passed" "$failed" "$((SECONDS - t_start))"
((failed == 0))
