#!/usr/bin/env bash
# Build the sandbox image prorl-sandbox:py3 OFFLINE: no container registry is contacted.
#   1. debootstrap a minimal Debian (bookworm + python3) from the Debian mirror apt already uses, `docker import`
#      it as prorl-sandbox-base:bookworm (cached: skipped when that image exists);
#   2. `docker build` docker/Dockerfile on top of it (adds the non-root user and the runner).
# Idempotent: the final image is labelled with a hash of its recipe (Dockerfile, this script and the runner digest)
# and the build is skipped when an image with that hash exists. Needs root (debootstrap) only when the base image is
# missing. The runner files and their digest come from prorl/sandbox/runner.py (RUNNER_FILES, runner_digest): the
# runner reports the same digest when it starts, and DockerSandbox refuses an image whose digest is not its own.
# Environment: IMAGE (default prorl-sandbox:py3), BASE_IMAGE, SUITE (bookworm), MIRROR (default: from apt), PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-prorl-sandbox:py3}
SUITE=${SUITE:-bookworm}
BASE_IMAGE=${BASE_IMAGE:-prorl-sandbox-base:$SUITE}
DOCKER=${DOCKER:-docker}
PYTHON=${PYTHON:-python3}

runner_files=$($PYTHON prorl/sandbox/runner.py files)
runner_digest=$($PYTHON prorl/sandbox/runner.py digest)
recipe_hash=$({ cat docker/Dockerfile docker/build.sh; echo "$runner_digest"; } | sha256sum | cut -c1-16)
if [ "$($DOCKER image inspect -f '{{ index .Config.Labels "prorl.recipe" }}' "$IMAGE" 2>/dev/null)" = "$recipe_hash" ]; then
    echo "build.sh: $IMAGE is up to date (recipe $recipe_hash)"
    exit 0
fi

if ! $DOCKER image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    if [ -z "${MIRROR:-}" ]; then
        # The first deb822 "URIs:" or one-line "deb URL" entry for the main Debian archive.
        MIRROR=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ {print $2}' | grep -v security | head -n1 || true)
        [ -n "$MIRROR" ] || MIRROR=$(grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
            | awk '{print $2}' | grep -E 'debian/?$' | head -n1 || true)
        MIRROR=${MIRROR:-http://deb.debian.org/debian}
    fi
    command -v debootstrap >/dev/null || { echo "build.sh: debootstrap is missing (apt-get install debootstrap)" >&2; exit 1; }
    rootfs=$(mktemp -d /var/tmp/prorl-rootfs.XXXXXX)
    trap 'rm -rf "$rootfs"' EXIT
    echo "build.sh: debootstrap $SUITE from $MIRROR (about a minute)"
    debootstrap --variant=minbase --include=python3 "$SUITE" "$rootfs" "$MIRROR" >/tmp/prorl-debootstrap.log 2>&1 \
        || { tail -n 30 /tmp/prorl-debootstrap.log >&2; exit 1; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | $DOCKER import -c 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
    trap - EXIT
fi

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp docker/Dockerfile "$context/"
for f in $runner_files; do cp "prorl/sandbox/$f" "$context/"; done
# The classic builder never contacts a registry for a FROM image that exists locally.
out=$(DOCKER_BUILDKIT=0 $DOCKER build -q --build-arg "BASE=$BASE_IMAGE" --label "prorl.recipe=$recipe_hash" \
    -t "$IMAGE" "$context" 2>&1) || { echo "$out" >&2; exit 1; }
echo "build.sh: built $IMAGE (recipe $recipe_hash, runner digest $runner_digest) on $BASE_IMAGE"
