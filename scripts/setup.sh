#!/usr/bin/env bash
# Installs what the tests need on a fresh machine; fast when everything is there.
#   - Debian packages: redis-tools (redis-cli, redis-benchmark), redis-server (benchmarks),
#     pkg-config and zlib1g-dev (librdkafka's build), docker-compose, fuse3 (LazyFS).
#   - PyPI: redis-py 8.1.0 and pybreaker (the Sentinel and MultiDBClient tests).
#   - tansu 0.6.0 (Kafka-compatible broker): the ready build in ../shared/bin when
#     present and its checksum matches, else `cargo install` (about 14 minutes).
#   - LazyFS (power-loss tier): the ready build in ../shared/bin/lazyfs when present,
#     copied to $cache/bin/lazyfs; without it the power-loss tier says it is skipped.
# Prints the path of tansu on its last line.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${XSITE_CACHE:-$HOME/.cache/xsite}"
mkdir -p "$cache/bin"

need=()
for pkg in redis-tools redis-server pkg-config zlib1g-dev docker-compose fuse3; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
  echo "setup: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
# (Debian's redis-server package may start a server on 6379; no test uses that port.)

# redis-py (its Sentinel client and MultiDBClient, in the failover tests) and pybreaker.
if ! python3 -c 'import redis, pybreaker, sys; sys.exit(0 if int(redis.__version__.split(".")[0]) >= 7 else 1)' 2>/dev/null; then
  echo "setup: installing redis-py and pybreaker" >&2
  python3 -m pip install --quiet --disable-pip-version-check 'redis==8.1.0' 'pybreaker==1.4.1' >&2
fi

tansu="$cache/bin/tansu"
if [ ! -x "$tansu" ]; then
  shared="$root/../shared/bin"
  if [ -x "$shared/tansu" ] && (cd "$shared" && sha256sum -c SHA256SUMS >/dev/null 2>&1); then
    cp "$shared/tansu" "$tansu"
  else
    echo "setup: building tansu 0.6.0 with cargo install (about 14 minutes)" >&2
    cargo install tansu --version 0.6.0 --locked --features libsql,dynostore --root "$cache/tansu" >&2
    cp "$cache/tansu/bin/tansu" "$tansu"
  fi
fi
"$tansu" --version >/dev/null

# LazyFS has no source build here (its CMake fetches sources from the internet).
lazyfs_src="$root/../shared/bin/lazyfs"
if [ -x "$lazyfs_src/lazyfs" ]; then
  if ! diff -rq "$lazyfs_src" "$cache/bin/lazyfs" >/dev/null 2>&1; then
    rm -rf "$cache/bin/lazyfs"
    cp -R "$lazyfs_src" "$cache/bin/lazyfs"
    chmod -R u+w "$cache/bin/lazyfs" # the ready build is read-only; a later update replaces it
    echo "setup: installed LazyFS in $cache/bin/lazyfs" >&2
  fi
else
  echo "setup: no LazyFS build at $lazyfs_src; the power-loss tier will be skipped" >&2
fi
echo "$tansu"
