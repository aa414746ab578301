#!/usr/bin/env bash
# Builds the worker's container image from a static perimeter binary, with
# no base image and no network: the binary, the CA bundle it verifies the
# Anthropic API and egress upstreams with, an empty /tmp and the state
# directory's mount point. Usage: scripts/worker-image.sh BINARY TAG...
set -euo pipefail

if [ $# -lt 2 ]; then
  echo "usage: $0 BINARY TAG..." >&2
  exit 2
fi
bin=$1
shift
ca=/etc/ssl/certs/ca-certificates.crt
[ -x "$bin" ] || { echo "worker-image: $bin is not an executable (run make build)" >&2; exit 1; }
[ -s "$ca" ] || { echo "worker-image: no CA bundle at $ca (apt-get install ca-certificates)" >&2; exit 1; }
command -v docker >/dev/null || { echo "worker-image: no docker command (apt-get install docker.io)" >&2; exit 1; }

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
root=$ctx/rootfs
install -d "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/var/lib/perimeter" "$root/etc/perimeter"
install -d -m 1777 "$root/tmp"
install -m 0755 "$bin" "$root/usr/local/bin/perimeter"
install -m 0644 "$ca" "$root/etc/ssl/certs/ca-certificates.crt"
cat > "$root/etc/perimeter/perimeter.yaml" <<'YAML'
# The worker image's default config ($PERIMETER_CONFIG): mount your own over
# /etc/perimeter (examples/perimeter.yaml documents every key). The state
# directory must be the same path on the host, whose Docker engine mounts
# each session's workspace from it.
version: 1
worker:
  state_dir: /var/lib/perimeter
YAML
chmod 0644 "$root/etc/perimeter/perimeter.yaml"
cp "$(dirname "$0")/../deploy/Dockerfile" "$ctx/Dockerfile"

version=$("$bin" --version)
version=${version##* }
tags=()
for t in "$@"; do tags+=(-t "$t"); done
docker build -q "${tags[@]}" \
  --label org.opencontainers.image.title=perimeter \
  --label org.opencontainers.image.description="Perimeter environment worker for Claude Managed Agents" \
  --label org.opencontainers.image.version="$version" \
  "$ctx"
# The image has no libc: a binary built with cgo would not start in it.
if ! docker run --rm --network none "$1" --version >/dev/null; then
  echo "worker-image: $bin does not run in the image; build it static (CGO_ENABLED=0, as make build does)" >&2
  exit 1
fi
