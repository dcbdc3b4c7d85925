#!/usr/bin/env bash
# A private Docker daemon for tests on machines without one, with no bridge network:
# containers use --network=host and bind 127.0.0.1 (never -p, never compose).
#   docker/dockerd.sh start [DIR]   prints: export DOCKER_HOST=unix://DIR/docker.sock
#   docker/dockerd.sh stop [DIR]    stops it by its pid
# DIR (default $IMAGE_CLASSIFIER_DOCKER_DIR or /var/tmp/image-classifier-docker) keeps the
# images and build cache between runs on this machine.
set -euo pipefail
cmd=${1:?usage: dockerd.sh start|stop [DIR]}
dir=${2:-${IMAGE_CLASSIFIER_DOCKER_DIR:-/var/tmp/image-classifier-docker}}
sock="$dir/docker.sock"
client=${DOCKER:-/usr/bin/docker}

case "$cmd" in
start)
  command -v dockerd >/dev/null || { echo "dockerd not found (apt-get install docker.io)" >&2; exit 1; }
  [ "$(id -u)" = 0 ] || { echo "dockerd needs root" >&2; exit 1; }
  mkdir -p "$dir"
  if [ -f "$dir/dockerd.pid" ] && kill -0 "$(cat "$dir/dockerd.pid")" 2>/dev/null; then
    echo "export DOCKER_HOST=unix://$sock"; exit 0
  fi
  rm -f "$sock"
  dockerd --bridge=none --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false \
    --data-root "$dir/docker" --exec-root "$dir/exec" --pidfile "$dir/dockerd.pid" \
    -H "unix://$sock" >"$dir/dockerd.log" 2>&1 &
  for _ in $(seq 1 60); do
    DOCKER_HOST="unix://$sock" "$client" version >/dev/null 2>&1 && { echo "export DOCKER_HOST=unix://$sock"; exit 0; }
    sleep 0.5
  done
  echo "dockerd did not start; its log:" >&2; tail -20 "$dir/dockerd.log" >&2; exit 1 ;;
stop)
  [ -f "$dir/dockerd.pid" ] || exit 0
  pid=$(cat "$dir/dockerd.pid")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  umount "$dir/exec/netns/default" 2>/dev/null || true ;;
*) echo "usage: dockerd.sh start|stop [DIR]" >&2; exit 2 ;;
esac
