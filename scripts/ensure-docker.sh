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
# The path dockerd has for the runvm runtime ("" if none).
runvm_path() { docker info --format '{{with index .Runtimes "runvm"}}{{.Path}}{{end}}' 2>/dev/null || true; }
if [ "${1:-}" = "--register" ]; then
    want="$RUNVM_PREFIX/bin/runvm"
    "$want" docker-register /etc/docker/daemon.json
    # Reloaded also when dockerd still has another path (a runvm removed
    # since, a package's /usr/bin/runvm): dockerd keeps a runtime that
    # daemon.json no longer names until it is named again.
    if [ "$(runvm_path)" != "$want" ]; then
        say "reloading dockerd's configuration"
        if [ -d /run/systemd/system ] && systemctl is-active --quiet docker 2>/dev/null; then
            systemctl reload docker || systemctl restart docker
        else
            kill -HUP "$(pidof dockerd)"
        fi
        for _ in $(seq 1 30); do
            [ "$(runvm_path)" = "$want" ] && break
            sleep 1
        done
    fi
    [ "$(runvm_path)" = "$want" ] || die "dockerd's runvm runtime is '$(runvm_path)', not $want, after a reload; see $DOCKERD_LOG"
fi
