#!/usr/bin/env bash
# Builds the Jaeger all-in-one (collector, query API and in-memory storage in
# one process) that e2e/jaeger_test.go exports traces to, and prints the
# binary's path. The version is pinned by tools/jaeger/go.mod, a module of its
# own so Jaeger's dependencies stay out of Perimeter's go.mod. The build takes
# minutes, so the binary is kept in a cache directory and reused:
#
#	PERIMETER_JAEGER=$(scripts/jaeger.sh) go test -run Jaeger ./e2e/
#
# PERIMETER_JAEGER_CACHE overrides the cache directory. Progress goes to
# stderr; stdout is only the path.
set -euo pipefail

version=v1.76.0
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${PERIMETER_JAEGER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/perimeter/jaeger-$version}
bin=$dir/jaeger-all-in-one

# The pin in go.mod and the cache directory's name must not drift apart,
# or a stale binary would be reused under the new version's name.
grep -q "github.com/jaegertracing/jaeger $version\b" "$root/tools/jaeger/go.mod" ||
  { echo "jaeger.sh: tools/jaeger/go.mod does not pin jaeger $version" >&2; exit 1; }

if [ ! -x "$bin" ]; then
  mkdir -p "$dir"
  echo "jaeger.sh: building jaeger all-in-one $version into $dir (takes a few minutes once)" >&2
  start=$SECONDS
  # Built to a temporary name and renamed, so an interrupted build never
  # leaves a binary that later runs would take as complete.
  tmp=$(mktemp "$dir/.jaeger-all-in-one.XXXXXX")
  trap 'rm -f "$tmp"' EXIT
  CGO_ENABLED=0 go build -C "$root/tools/jaeger" -mod=readonly -trimpath -ldflags "-s -w" \
    -o "$tmp" github.com/jaegertracing/jaeger/cmd/all-in-one
  chmod 0755 "$tmp"
  mv "$tmp" "$bin"
  trap - EXIT
  echo "jaeger.sh: built in $((SECONDS - start))s" >&2
fi
echo "$bin"
