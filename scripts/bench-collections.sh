#!/usr/bin/env bash
# Hashes, sets, sorted sets or lists: xsite against a real redis-server, side by side in one run.
#   redis: appendonly yes, appendfsync everysec     xsite: --durability everysec
# Prints requests/s of each and the ratio xsite/redis for redis-benchmark's HSET
# (50 clients, random fields of one hash), SADD (random members of one set), ZADD
# (random members of one sorted set) or LPUSH, LPOP and LRANGE_100 (one list),
# without and with -P 16; then memory per element of one hash of <elements> fields
# (16-byte values), one set, sorted set or list of <elements> members, INFO
# used_memory and RSS.
# Usage: bash scripts/bench-collections.sh hash|set|zset|list [requests per test, default 200000] [elements, default 1000000]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
kind="${1:?usage: bench-collections.sh hash|set|zset|list [requests] [elements]}"
case "$kind" in
  hash) tests=hset; count=hlen; what="fields of one hash (16-byte values)" ;;
  set) tests=sadd; count=scard; what="members of one set" ;;
  zset) tests=zadd; count=zcard; what="members of one sorted set" ;;
  list) tests="lpush lpop lrange_100"; count=llen; what="elements of one list (16-byte values)" ;;
  *) echo "bench-collections.sh: the type is hash, set, zset or list, not $kind" >&2; exit 2 ;;
esac
n="${2:-200000}"
fields="${3:-1000000}"
work="$(mktemp -d)"
redis_port=16381
xsite_port=16382
xsite="$root/target/release/xsite"
cargo build --release -p xsite-node --bin xsite >&2

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

wait_ping() {
  for _ in $(seq 1 6000); do
    [[ "$(redis-cli -p "$1" dbsize 2>/dev/null)" =~ ^[0-9]+$ ]] && return 0
    sleep 0.01
  done
  echo "port $1 did not answer" >&2; return 1
}

(cd "$work" && exec redis-server --port "$redis_port" --appendonly yes --appendfsync everysec --save "" --dir "$work" >"$work/redis.log" 2>&1) &
redis_pid=$!; pids+=("$redis_pid"); wait_ping "$redis_port"
XSITE_LOG=warn "$xsite" node --site bench --port "$xsite_port" --data-dir "$work/xsite" --durability everysec >"$work/xsite.log" 2>&1 &
xsite_pid=$!; pids+=("$xsite_pid"); wait_ping "$xsite_port"

rps() { # port, test, extra args -> requests/s of the test (LRANGE_100's needs its list: redis-benchmark pushes it first)
  redis-benchmark -p "$1" -c 50 -n "$n" -r 100000 -t "$2" --csv "${@:3}" 2>/dev/null | tail -n 1 | tr -d '"' | cut -d, -f2
}

echo "redis-benchmark $tests: $n requests per test, 50 clients, 100k random elements of one key"
printf '%-30s %12s %12s %8s\n' test redis xsite ratio
for test in $tests; do
  for pipe in 1 16; do
    for round in 1 2 3; do
      rv=$(rps "$redis_port" "$test" -P "$pipe"); xv=$(rps "$xsite_port" "$test" -P "$pipe")
      printf '%-30s %12.0f %12.0f %7.2fx\n' "${test^^} (-P $pipe) round $round" "$rv" "$xv" "$(echo "$xv / $rv" | bc -l)"
    done
  done
done

rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
used() { redis-cli -p "$1" info memory | tr -d '\r' | awk -F: '/^used_memory:/ {print $2}'; }
load_fields() { # port: one hash, set, sorted set or list, <elements> elements, 100 per command
  python3 - "$fields" "$kind" <<'PY' | redis-cli -p "$1" --pipe >/dev/null
import sys
n, kind = int(sys.argv[1]), sys.argv[2]; out = sys.stdout.buffer
for start in range(0, n, 100):
    args = [{"hash": b"HSET", "set": b"SADD", "zset": b"ZADD", "list": b"RPUSH"}[kind], b"big"]
    for i in range(start, min(n, start + 100)):
        args += {"hash": [b"field:%08d" % i, b"value:%010d" % i], "set": [b"member:%08d" % i],
                 "zset": [b"%d" % (i % 1000), b"member:%08d" % i], "list": [b"value:%010d" % i]}[kind]
    out.write(b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args))
PY
}
redis-cli -p "$redis_port" flushall >/dev/null
redis-cli -p "$xsite_port" flushall >/dev/null
sleep 1
r0=$(rss_kb "$redis_pid"); x0=$(rss_kb "$xsite_pid"); ru0=$(used "$redis_port"); xu0=$(used "$xsite_port")
load_fields "$redis_port"; load_fields "$xsite_port"
sleep 1
r1=$(rss_kb "$redis_pid"); x1=$(rss_kb "$xsite_pid"); ru1=$(used "$redis_port"); xu1=$(used "$xsite_port")
rf=$(( (r1 - r0) * 1024 / fields )); xf=$(( (x1 - x0) * 1024 / fields ))
ruf=$(( (ru1 - ru0) / fields )); xuf=$(( (xu1 - xu0) / fields ))
echo
echo "$fields $what, per element: RSS growth redis ${rf} B, xsite ${xf} B, ratio $(echo "$xf / $rf" | bc -l | cut -c1-4)x;"
echo "  INFO used_memory growth redis ${ruf} B, xsite ${xuf} B, ratio $(echo "$xuf / $ruf" | bc -l | cut -c1-4)x"
echo "$count: redis $(redis-cli -p "$redis_port" "$count" big), xsite $(redis-cli -p "$xsite_port" "$count" big)"
