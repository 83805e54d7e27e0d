#!/usr/bin/env bash
# Makes sure a Docker daemon runs, and that it knows the runvm runtime.
. "$(dirname "$0")/lib.sh"
need_root
if ! docker_ok; then
    if [ -d /run/systemd/system ] && systemctl list-unit-files docker.service >/dev/null 2>&1; then
        say "starting docker with systemd"
        systemctl start docker
    else
        say "starting dockerd in the background (log: $DOCKERD_LOG)"
        nohup dockerd >"$DOCKERD_LOG" 2>&1 &
    fi
    for _ in $(seq 1 60); do docker_ok && break; sleep 1; done
    docker_ok || die "dockerd did not come up; see $DOCKERD_LOG"
fi
if [ "${1:-}" = "--register" ]; then
    "$RUNVM_PREFIX/bin/runvm" docker-register /etc/docker/daemon.json
    if ! docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q '"runvm"'; then
        say "reloading dockerd's configuration"
        if [ -d /run/systemd/system ] && systemctl is-active --quiet docker 2>/dev/null; then
            systemctl reload docker || systemctl restart docker
        else
            kill -HUP "$(pidof dockerd)"
        fi
        for _ in $(seq 1 30); do
            docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q '"runvm"' && break
            sleep 1
        done
    fi
    docker info --format '{{json .Runtimes}}' | grep -q '"runvm"' || die "dockerd does not list the runvm runtime after a reload"
fi
