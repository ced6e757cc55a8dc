#!/usr/bin/env bash
# Runs the commands of compose/README.md ("Two sites with docker-compose") and checks
# their results: builds the images, starts the two sites, writes at site-a with
# redis-cli, reads the value at site-b. Every wait is bounded; the deployment is
# always removed at the end (`docker-compose down -v`). Exit status 0 = it works.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"

READY_TIMEOUT_S=60       # nodes answering PING after `up -d`
REPLICATION_TIMEOUT_S=30 # the value written at site-a readable at site-b

fail() {
  echo "compose/test.sh: FAILED: $*" >&2
  (cd "$here" && docker-compose ps && docker-compose logs --tail 80) >&2 || true
  exit 1
}

# wait_for SECONDS DESCRIPTION COMMAND...: retry COMMAND until it succeeds.
wait_for() {
  local timeout="$1" what="$2"; shift 2
  local deadline=$(( $(date +%s) + timeout ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "$what: not within ${timeout}s"
    sleep 0.5
  done
}
pong() { [ "$(redis-cli -p "$1" ping)" = PONG ]; }
replicated() { [ "$(redis-cli -p 7002 get "$1")" = "$2" ]; }

start=$(date +%s)
cd "$root"
bash scripts/build-images.sh

cd "$here"
trap 'docker-compose down -v >/dev/null 2>&1 || true' EXIT
docker-compose down -v >/dev/null 2>&1 || true   # leftovers of an interrupted run
docker-compose up -d
wait_for "$READY_TIMEOUT_S" "site-a (127.0.0.1:7001) answering PING" pong 7001
wait_for "$READY_TIMEOUT_S" "site-b (127.0.0.1:7002) answering PING" pong 7002

out="$(redis-cli -p 7001 set k v)"
[ "$out" = OK ] || fail "redis-cli -p 7001 set k v answered '$out'"
wait_for "$REPLICATION_TIMEOUT_S" "k=v replicated to site-b" replicated k v
echo "redis-cli -p 7002 get k -> $(redis-cli -p 7002 get k)"

# The "useful while it runs" commands of the README: status, verify, cut off, heal.
curl -fsS 127.0.0.1:9121/status | grep -q '"site":"site-a"' || fail "GET /status of site-a"
xsite="${XSITE_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/xsite}"
"$xsite" verify --admin http://127.0.0.1:9121 --admin http://127.0.0.1:9122 || fail "xsite verify"
docker network disconnect compose_site-b compose_broker-a_1
docker network disconnect compose_site-a compose_broker-b_1
out="$(redis-cli -p 7001 set cut yes)"
[ "$out" = OK ] || fail "site-a does not take writes while cut off: '$out'"
sleep 3
[ -z "$(redis-cli -p 7002 get cut)" ] || fail "site-b got a write of site-a while site-a was cut off"
docker network connect --alias broker-a compose_site-b compose_broker-a_1
docker network connect --alias broker-b compose_site-a compose_broker-b_1
wait_for "$REPLICATION_TIMEOUT_S" "cut=yes replicated to site-b after the heal" replicated cut yes
"$xsite" verify --admin http://127.0.0.1:9121 --admin http://127.0.0.1:9122 || fail "xsite verify after the heal"

docker-compose down -v
trap - EXIT
echo "compose/test.sh: ok in $(( $(date +%s) - start ))s"
