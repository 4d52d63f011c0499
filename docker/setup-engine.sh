#!/usr/bin/env bash
# Make a Docker engine answer and build the sandbox image (`make sandbox`). Idempotent:
#   - an engine already answers: nothing is installed or started;
#   - else, as root with apt-get: install Debian's docker.io and debootstrap when missing, start dockerd in the
#     background (log: /var/log/prorl-dockerd.log) and wait for it;
#   - then docker/build.sh (skips when the image of the same recipe exists).
# Without root/apt (a developer machine) it explains what is missing and exits 0, so the Docker tests skip with
# that reason; with CI=true a missing engine is an error.
set -euo pipefail
cd "$(dirname "$0")/.."

fail_or_skip() {
    echo "make sandbox: $1" >&2
    if [ -n "${CI:-}" ]; then
        echo "make sandbox: CI=true, so this is an error (the sandbox tests must run in CI)" >&2
        exit 1
    fi
    echo "make sandbox: the Docker sandbox tests will be skipped on this machine" >&2
    exit 0
}

engine_up() { docker info >/dev/null 2>&1; }

if ! engine_up; then
    if [ -n "${DOCKER_HOST:-}" ]; then
        fail_or_skip "the engine at DOCKER_HOST=$DOCKER_HOST does not answer"
    fi
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        fail_or_skip "no Docker engine answers, and installing one needs root and apt-get (install docker.io and debootstrap, start dockerd, then re-run make sandbox)"
    fi
    if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
        echo "make sandbox: installing docker.io and debootstrap from Debian"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q >/dev/null
        apt-get install -y -q docker.io debootstrap >/dev/null
    fi
    echo "make sandbox: starting dockerd in the background (log: /var/log/prorl-dockerd.log)"
    nohup dockerd >/var/log/prorl-dockerd.log 2>&1 &
    for _ in $(seq 1 60); do
        engine_up && break
        sleep 1
    done
    engine_up || { tail -n 20 /var/log/prorl-dockerd.log >&2; fail_or_skip "dockerd did not come up within 60 s"; }
fi
if ! docker/build.sh; then
    fail_or_skip "docker/build.sh failed to build the sandbox image"
fi
