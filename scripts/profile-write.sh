#!/usr/bin/env bash
# Instructions per write, xsite against a real redis-server, under valgrind's
# callgrind: repeatable on a noisy machine (it counts instructions, not time), so it
# judges each change of the write path before and after.
#   redis: appendonly yes, appendfsync everysec     xsite: --durability everysec
# Each server runs under callgrind; once it answers, its counters are zeroed, the
# same redis-benchmark load is sent to it, and the counters are dumped: every
# instruction of every thread between the two, divided by the requests sent.
# Prints instructions per request of each, the ratio xsite/redis, and xsite's
# functions with the most instructions (inclusive of what they call).
# Usage: bash scripts/profile-write.sh [requests, default 20000] [test, default set] [pipeline, default 16]
#   PROFILE_TOP=N       functions to list (25)
#   PROFILE_OUT=DIR     keep xsite's callgrind files there (for callgrind_annotate)
#   XSITE_BIN=PATH      profile this xsite binary and do not run cargo
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
n="${1:-20000}"
test="${2:-set}"
pipe="${3:-16}"
top="${PROFILE_TOP:-25}"
work="$(mktemp -d)"
redis_port=16389
xsite_port=16390
xsite="${XSITE_BIN:-$root/target/release/xsite}"
[[ -n "${XSITE_BIN:-}" ]] || cargo build --release -p xsite-node --bin xsite >&2
for tool in valgrind callgrind_control callgrind_annotate redis-benchmark redis-server; do
  command -v "$tool" >/dev/null || { echo "profile-write: $tool is not installed (apt-get install valgrind redis-tools redis-server)" >&2; exit 2; }
done

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# Ready = answers DBSIZE with a number; under valgrind start-up takes seconds.
wait_ready() {
  for _ in $(seq 1 3000); do
    [[ "$(redis-cli -p "$1" dbsize 2>/dev/null)" =~ ^[0-9]+$ ]] && return 0
    sleep 0.1
  done
  echo "profile-write: port $1 did not answer" >&2; return 1
}

# Instructions (Ir) in the callgrind dump files of `pid` written after the zeroing.
dumped_ir() { # out-prefix
  cat "$1".* 2>/dev/null | awk '/^summary:/ {s += $2} END {printf "%d\n", s}'
}

profile() { # name port command... -> prints Ir per request; leaves $work/<name>.out.*
  local name="$1" port="$2"; shift 2
  local out="$work/$name.out"
  valgrind --tool=callgrind --callgrind-out-file="$out" --dump-line=no "$@" >"$work/$name.log" 2>&1 &
  local pid=$!; pids+=("$pid")
  wait_ready "$port"
  # Keys exist before the counted load (an insert and an overwrite differ).
  redis-benchmark -p "$port" -c 4 -n "$n" -r 100000 -t "$test" -P "$pipe" -q >/dev/null 2>&1
  callgrind_control -z "$pid" >/dev/null
  rm -f "$out".*
  redis-benchmark -p "$port" -c 4 -n "$n" -r 100000 -t "$test" -P "$pipe" -q >/dev/null 2>&1
  callgrind_control -d "$pid" >/dev/null
  local ir; ir="$(dumped_ir "$out")"
  kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
  echo $((ir / n))
}

redis_ir="$(profile redis "$redis_port" redis-server --port "$redis_port" --appendonly yes --appendfsync everysec --save "" --dir "$work")"
mkdir -p "$work/xsite"
xsite_ir="$(XSITE_LOG=warn profile xsite "$xsite_port" "$xsite" node --site bench --port "$xsite_port" --data-dir "$work/xsite" --durability everysec)"

echo "callgrind: $n ${test^^} requests, 4 clients, -P $pipe, 100k random keys (after a warm-up load)"
printf '%-12s %16s\n' server "instructions/req"
printf '%-12s %16d\n' redis "$redis_ir" xsite "$xsite_ir"
printf 'xsite / redis: %.2fx the instructions\n' "$(echo "$xsite_ir / $redis_ir" | bc -l)"
echo
echo "xsite, functions by inclusive instructions (top $top):"
files=("$work"/xsite.out.*)
if [[ -n "${PROFILE_OUT:-}" ]]; then mkdir -p "$PROFILE_OUT" && cp "${files[@]}" "$PROFILE_OUT"/; fi
callgrind_annotate --inclusive=yes "${files[@]}" 2>/dev/null \
  | awk -v n="$n" '/^ *[0-9,]+ \([0-9. ]+%\) / && !/PROGRAM TOTALS/ {
      ir = $1; gsub(",", "", ir); rest = substr($0, index($0, ")") + 1)
      sub(/^ +/, "", rest); sub(/^[^:]*:/, "", rest); sub(/ \[[^]]*\]$/, "", rest)
      printf "%10d/req  %s\n", ir / n, rest }' \
  | head -n "$top"
