#!/usr/bin/env bash
# Builds the two local images the container suites and compose/ use, with no
# registry and no base image:
#   xsite:local        target/release/xsite + the shared libraries `ldd` names
#   xsite-tansu:local  the tansu broker + its shared libraries, cwd /data (sqlite)
# Each is `FROM scratch` over a root made of the binary and its libraries copied
# (`cp -L`) to the paths ldd prints. Each image carries a label with the sha256 of
# everything that goes into it; an image whose label matches is not rebuilt, so a
# second run with nothing changed takes about a second.
#
# Usage: scripts/build-images.sh [xsite] [tansu]      (default: both)
# Environment:
#   XSITE_BIN=PATH       use this xsite binary and do not run cargo
#   XSITE_NO_CARGO=1     do not run cargo; use target/release/xsite as it is
#   XSITE_TANSU_BIN=PATH the tansu binary (default: ~/.cache/xsite/bin/tansu, else
#                        whatever scripts/setup.sh installs)
# Without XSITE_BIN/XSITE_NO_CARGO it runs `cargo build --release -p xsite-node
# --bin xsite` first: cargo's own freshness check rebuilds only when sources changed.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

# Bump when the image layout below changes, so old images are rebuilt.
LAYOUT_VERSION=1
LABEL_KEY=org.xsite.content-sha256

want_xsite=0; want_tansu=0
[ "$#" -eq 0 ] && { want_xsite=1; want_tansu=1; }
for arg in "$@"; do
  case "$arg" in
    xsite) want_xsite=1 ;;
    tansu) want_tansu=1 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "build-images: unknown image '$arg' (xsite, tansu)" >&2; exit 2 ;;
  esac
done

log() { echo "build-images: $*" >&2; }

# Absolute paths of the shared libraries a binary loads (the loader included).
libs_of() {
  ldd "$1" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }' | sort -u
}

# sha256 over the image's Dockerfile text and the path and content of every file.
content_hash() {
  local dockerfile="$1" bin="$2" dest="$3"
  {
    echo "layout $LAYOUT_VERSION"
    printf '%s\n' "$dockerfile"
    echo "$dest $(sha256sum < "$bin" | cut -d' ' -f1)"
    for lib in $(libs_of "$bin"); do
      echo "$lib $(sha256sum < "$lib" | cut -d' ' -f1)"
    done
  } | sha256sum | cut -d' ' -f1
}

# build_image TAG BINARY DEST_IN_IMAGE DOCKERFILE_TEXT
build_image() {
  local tag="$1" bin="$2" dest="$3" dockerfile="$4"
  [ -x "$bin" ] || { log "$bin is missing or not executable"; return 1; }
  local hash current
  hash="$(content_hash "$dockerfile" "$bin" "$dest")"
  current="$(docker image inspect -f "{{ index .Config.Labels \"$LABEL_KEY\" }}" "$tag" 2>/dev/null || true)"
  if [ "$current" = "$hash" ]; then
    log "$tag is up to date (${hash:0:12})"
    return 0
  fi
  local ctx
  ctx="$(mktemp -d)"
  # shellcheck disable=SC2064
  trap "rm -rf '$ctx'" RETURN
  mkdir -p "$ctx/rootfs$(dirname "$dest")" "$ctx/rootfs/data" "$ctx/rootfs/tmp" "$ctx/rootfs/etc"
  chmod 1777 "$ctx/rootfs/tmp"
  cp -L "$bin" "$ctx/rootfs$dest"
  chmod 0755 "$ctx/rootfs$dest"
  for lib in $(libs_of "$bin"); do
    mkdir -p "$ctx/rootfs$(dirname "$lib")"
    cp -L "$lib" "$ctx/rootfs$lib"
  done
  printf '%s\n' "$dockerfile" > "$ctx/Dockerfile"
  log "building $tag (${hash:0:12})"
  # The legacy builder: this engine has no buildx, and FROM scratch needs nothing else.
  if ! DOCKER_BUILDKIT=0 docker build -q -t "$tag" --label "$LABEL_KEY=$hash" -f "$ctx/Dockerfile" "$ctx" > "$ctx/build.log" 2>&1; then
    cat "$ctx/build.log" >&2
    log "building $tag failed"
    return 1
  fi
  log "built $tag: $(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}')"
}

if [ "$want_xsite" -eq 1 ]; then
  if [ -n "${XSITE_BIN:-}" ]; then
    xsite_bin="$XSITE_BIN"
  else
    if [ "${XSITE_NO_CARGO:-0}" != 1 ]; then
      log "cargo build --release -p xsite-node --bin xsite"
      cargo build --release -p xsite-node --bin xsite >&2
    fi
    xsite_bin="${CARGO_TARGET_DIR:-$root/target}/release/xsite"
  fi
  build_image xsite:local "$xsite_bin" /usr/local/bin/xsite "FROM scratch
COPY rootfs/ /
WORKDIR /data
EXPOSE 6379 9121
ENTRYPOINT [\"/usr/local/bin/xsite\"]
CMD [\"node\", \"--config\", \"/etc/xsite/node.toml\"]"
fi

if [ "$want_tansu" -eq 1 ]; then
  tansu_bin="${XSITE_TANSU_BIN:-$HOME/.cache/xsite/bin/tansu}"
  if [ ! -x "$tansu_bin" ]; then
    log "no tansu at $tansu_bin: running scripts/setup.sh"
    tansu_bin="$(bash "$root/scripts/setup.sh" | tail -n 1)"
  fi
  # The sqlite path is relative to the working directory, /data: mount a volume
  # there to keep the broker's data across container re-creation.
  build_image xsite-tansu:local "$tansu_bin" /usr/local/bin/tansu "FROM scratch
COPY rootfs/ /
WORKDIR /data
ENV STORAGE_ENGINE=sqlite://tansu.db
EXPOSE 9092
ENTRYPOINT [\"/usr/local/bin/tansu\"]
CMD [\"broker\"]"
fi
