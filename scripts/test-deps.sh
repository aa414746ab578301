#!/usr/bin/env bash
# Installs and starts what the test suites need on a Debian machine: the
# Docker engine with runc and gVisor (runsc), bubblewrap, debootstrap for
# building the sandbox image, and a PostgreSQL server for the shared
# approvals store. Idempotent; needs root. Prints what it
# could not do and exits non-zero, so CI fails loudly.
set -euo pipefail

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v runsc >/dev/null || need+=(runsc)
command -v bwrap >/dev/null || need+=(bubblewrap)
command -v debootstrap >/dev/null || need+=(debootstrap)
# bwrap sandboxes share the host's /usr: the egress and escape suites drive
# python3 inside them.
[ -x /usr/bin/python3 ] || need+=(python3)
# The worker's image (scripts/worker-image.sh) carries the host's CA bundle.
[ -s /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates)
command -v pg_ctlcluster >/dev/null && ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  echo "test-deps: installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# gVisor is registered as the runsc runtime. On some kernels it cannot set
# up its own network stack, so sandboxes (which never have a network) run
# it with --network=none; --host-uds=open lets a sandbox connect to the one
# host socket mounted into it, its egress proxy's.
mkdir -p /etc/docker
want='{"runtimes":{"runsc":{"path":"/usr/bin/runsc","runtimeArgs":["--network=none","--host-uds=open"]}}}'
if [ ! -f /etc/docker/daemon.json ] || [ "$(cat /etc/docker/daemon.json)" != "$want" ]; then
  echo "$want" > /etc/docker/daemon.json
  # A running dockerd reloads its runtimes on SIGHUP.
  if [ -f /var/run/docker.pid ] && kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
    kill -HUP "$(cat /var/run/docker.pid)"
    sleep 1
  fi
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

# PostgreSQL: the distribution's cluster, started without an init system,
# with a superuser role for the user running the tests (peer auth on the
# local socket), which tests create throw-away databases with.
cluster=$(pg_lsclusters --no-header 2>/dev/null | awk 'NR==1 {print $1" "$2}')
if [ -z "$cluster" ]; then
  ver=$(ls /usr/lib/postgresql | sort -n | tail -1)
  pg_createcluster "$ver" main >/dev/null
  cluster="$ver main"
fi
# shellcheck disable=SC2086
if ! pg_ctlcluster $cluster status >/dev/null 2>&1; then
  echo "test-deps: starting PostgreSQL $cluster"
  # shellcheck disable=SC2086
  pg_ctlcluster $cluster start
fi
user=${SUDO_USER:-$(id -un)}
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname = '$user'\"" | grep -q 1 ||
  su postgres -c "psql -qc 'CREATE ROLE \"$user\" SUPERUSER LOGIN'"
psql -h /var/run/postgresql -d postgres -qtAc 'SELECT 1' >/dev/null ||
  { echo "test-deps: cannot reach PostgreSQL on /var/run/postgresql as $user" >&2; exit 1; }
echo "test-deps: postgres $(psql -h /var/run/postgresql -d postgres -qtAc 'SHOW server_version')"
