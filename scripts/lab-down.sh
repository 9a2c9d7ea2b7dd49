#!/usr/bin/env bash
# Stops the lab and removes its containers, networks and volumes (docker compose down -v), then
# checks that nothing labelled with the lab's Compose project is left. Exit 1 if something is.
set -euo pipefail
source "$(dirname "$0")/lab-lib.sh"
# lab-test.sh's extra containers sit on the lab's networks; an interrupted test may leave them.
docker rm -f lab-intruder-server lab-intruder-agent lab-rogue-server lab-plain-agent lab-ip-taker \
  >/dev/null 2>&1 || true
# With every profile, so that dc3's containers (--profile dc3) go too.
compose --profile dc3 down -v --remove-orphans --timeout 10
# The host's copy of the certificates belonged to the volume just removed.
rm -rf "$LAB_TLS"
label="label=com.docker.compose.project=$LAB_PROJECT"
left="$(docker ps -aq --filter "$label"; docker network ls -q --filter "$label"; docker volume ls -q --filter "$label")"
if [[ -n "$left" ]]; then
  echo "left behind by the lab:" >&2
  echo "$left" >&2
  exit 1
fi
echo "lab down: no containers, networks or volumes of project $LAB_PROJECT left"
