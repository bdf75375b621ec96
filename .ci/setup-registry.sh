#!/usr/bin/env bash
# Set up everything the registry tests and benchmarks need, without pulling any image:
#   - Debian's docker-registry (distribution 2.8), htpasswd, openssl, curl, skopeo;
#   - rootful podman with runc, serving a Docker-compatible API on a unix socket, so that
#     testcontainers can start a real registry container;
#   - a registry image built from the Debian binary (podman import, no pull).
# Writes .ci/cache/registry-env.sh; source it before running pytest:
#   .ci/setup-registry.sh && . .ci/cache/registry-env.sh && pytest tests/test_registry.py
# Idempotent: a second run only checks that the socket answers (about a second).
# Set MCPKIT_NO_PODMAN=1 to install only the registry binary and tools.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="$HERE/cache"
W="$CACHE/podman"
IMG="${MCPKIT_TEST_REGISTRY_IMAGE:-localhost/mcpkit-test-registry:2}"
SOCK="$W/podman.sock"
ENV_FILE="$CACHE/registry-env.sh"
mkdir -p "$W"
export DEBIAN_FRONTEND=noninteractive

say() { echo "setup-registry: $*" >&2; }

# 1. packages
PKGS=(docker-registry apache2-utils openssl curl skopeo)
if [ "${MCPKIT_NO_PODMAN:-0}" != 1 ]; then
  PKGS+=(podman runc fuse-overlayfs slirp4netns netavark aardvark-dns uidmap iptables)
fi
missing=()
for p in "${PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  apt-get update -qq
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ "${MCPKIT_NO_PODMAN:-0}" = 1 ]; then
  : > "$ENV_FILE"
  say "registry binary ready (podman skipped); env file: $ENV_FILE"
  exit 0
fi

# 2. engine config:
#    - no CAP_SYS_RESOURCE here: podman's default nofile/nproc limits fail with
#      "setrlimit RLIMIT_NOFILE: Operation not permitted", so clamp them to our hard limits
#      (nproc also to kernel.pid_max, which podman lowers its own limit to);
#    - crun fails on hybrid cgroup v1/v2 hosts ("cgroups in hybrid mode not supported"): use runc.
NOFILE=$(ulimit -Hn)
NPROC=$(ulimit -Hu); PIDMAX=$(cat /proc/sys/kernel/pid_max)
if [ "$NOFILE" = unlimited ]; then NOFILE=1048576; fi
if [ "$NPROC" = unlimited ] || [ "$NPROC" -gt "$PIDMAX" ]; then NPROC=$PIDMAX; fi
CONF="$(cat <<CONF
[containers]
default_ulimits = ["nofile=$NOFILE:$NOFILE", "nproc=$NPROC:$NPROC"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
)"
mkdir -p /etc/containers
if [ "$(cat /etc/containers/containers.conf 2>/dev/null || true)" != "$CONF" ]; then
  say "writing /etc/containers/containers.conf"
  printf '%s\n' "$CONF" > /etc/containers/containers.conf
fi

# 3. the registry image, imported from the Debian binary (no pull)
if ! podman image exists "$IMG"; then
  say "building image $IMG from /usr/bin/docker-registry"
  R="$W/rootfs"
  rm -rf "$R" && mkdir -p "$R/bin" "$R/etc/docker/registry" "$R/var/lib/registry" "$R/tmp"
  cp /usr/bin/docker-registry "$R/bin/registry"
  for l in $(ldd /usr/bin/docker-registry | grep -o '/[^ ]*'); do
    mkdir -p "$R$(dirname "$l")"; cp -L "$l" "$R$l"
  done
  chmod 1777 "$R/tmp"
  touch "$R/etc/hosts" "$R/etc/resolv.conf"
  echo 'root:x:0:0:root:/:/bin/registry' > "$R/etc/passwd"
  echo 'root:x:0:' > "$R/etc/group"
  cat > "$R/etc/docker/registry/config.yml" <<'YML'
version: 0.1
log:
  fields:
    service: registry
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: /var/lib/registry
  delete:
    enabled: true
http:
  addr: 0.0.0.0:5000
  headers:
    X-Content-Type-Options: [nosniff]
YML
  tar -C "$R" --numeric-owner --owner=0 --group=0 -cf "$W/registry-rootfs.tar" .
  podman import -q \
    --change 'ENTRYPOINT ["/bin/registry","serve"]' \
    --change 'CMD ["/etc/docker/registry/config.yml"]' \
    --change 'EXPOSE 5000/tcp' \
    "$W/registry-rootfs.tar" "$IMG" >/dev/null
  rm -rf "$R" "$W/registry-rootfs.tar"
fi

# 4. Docker-compatible API on a unix socket
ping() { curl -sf --max-time 2 --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1; }
if ! ping; then
  if [ -f "$W/service.pid" ] && kill -0 "$(cat "$W/service.pid")" 2>/dev/null; then
    kill "$(cat "$W/service.pid")" || true
  fi
  rm -f "$SOCK"
  say "starting podman system service on $SOCK"
  nohup podman system service --time=0 "unix://$SOCK" > "$W/service.log" 2>&1 &
  echo $! > "$W/service.pid"
  for _ in $(seq 100); do ping && break; sleep 0.1; done
  ping || { say "podman service did not answer; see $W/service.log"; exit 1; }
fi

cat > "$ENV_FILE" <<ENV
# written by .ci/setup-registry.sh -- source me
export DOCKER_HOST=unix://$SOCK
export TESTCONTAINERS_RYUK_DISABLED=true
export TESTCONTAINERS_CONNECTION_MODE=docker_host
export TC_HOST=127.0.0.1
export MCPKIT_TEST_REGISTRY_IMAGE=$IMG
ENV
say "ready; source $ENV_FILE (podman service pid $(cat "$W/service.pid"))"
