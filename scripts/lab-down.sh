#!/usr/bin/env bash
# Stops the lab and removes its containers, networks and volumes (docker compose down -v), then
# checks that nothing labelled with the lab's Compose project is left. Exit 1 if something is.
set -euo pipefail
source "$(dirname "$0")/lab-lib.sh"
# lab-test.sh's wrong-key containers sit on the lab's network; an interrupted test may leave them.
docker rm -f lab-intruder-server lab-intruder-agent >/dev/null 2>&1 || true
compose down -v --remove-orphans --timeout 10
label="label=com.docker.compose.project=$LAB_PROJECT"
left="$(docker ps -aq --filter "$label"; docker network ls -q --filter "$label"; docker volume ls -q --filter "$label")"
if [[ -n "$left" ]]; then
  echo "left behind by the lab:" >&2
  echo "$left" >&2
  exit 1
fi
echo "lab down: no containers, networks or volumes of project $LAB_PROJECT left"
