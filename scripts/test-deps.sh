#!/usr/bin/env bash
# Installs and starts what the test suites need on a Debian machine: the
# Docker engine with runc and gVisor (runsc), bubblewrap, and debootstrap
# for building the sandbox image. Idempotent; needs root. Prints what it
# could not do and exits non-zero, so CI fails loudly.
set -euo pipefail

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v runsc >/dev/null || need+=(runsc)
command -v bwrap >/dev/null || need+=(bubblewrap)
command -v debootstrap >/dev/null || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
  echo "test-deps: installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# gVisor is registered as the runsc runtime. On some kernels it cannot set
# up its own network stack, so sandboxes (which never have a network) run
# it with --network=none.
mkdir -p /etc/docker
want='{"runtimes":{"runsc":{"path":"/usr/bin/runsc","runtimeArgs":["--network=none"]}}}'
if [ ! -f /etc/docker/daemon.json ] || ! grep -q runsc /etc/docker/daemon.json; then
  echo "$want" > /etc/docker/daemon.json
fi

if ! docker info >/dev/null 2>&1; then
  # A dockerd killed without cleanup leaves its pid file behind.
  if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
    rm -f /var/run/docker.pid
  fi
  echo "test-deps: starting dockerd"
  nohup dockerd >/var/log/dockerd.log 2>&1 &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  docker info >/dev/null 2>&1 || { echo "test-deps: dockerd did not start; see /var/log/dockerd.log" >&2; tail -20 /var/log/dockerd.log >&2; exit 1; }
fi
docker info --format '{{json .Runtimes}}' | grep -q runsc || { echo "test-deps: runsc is not registered with dockerd" >&2; exit 1; }
echo "test-deps: docker $(docker version --format '{{.Server.Version}}'), runtimes $(docker info --format '{{range $k, $v := .Runtimes}}{{$k}} {{end}}')"
