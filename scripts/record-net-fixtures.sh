#!/usr/bin/env bash
# Records what netlink shows inside the network namespace of runc containers
# on Docker's usual networks, as the fixtures of the supervisor's network
# plan tests (crates/supervisor/tests/fixtures/net/<scenario>.netns.json).
#
#   scripts/record-net-fixtures.sh [OUTPUT_DIR]
#
# Needs root and a Docker daemon with the runvm-test/busybox image. It creates
# its own local networks and containers (named $NAME_PREFIX-*, default
# runvm-netfix) and removes them again; nothing talks to any outside address.
# Each fixture holds the raw output of `ip -j` (links with details,
# addresses, IPv4 and IPv6 routes of every table), which the tests convert
# into the supervisor's snapshot structs. In each container's namespace it
# then runs the supervisor's ignored test the_real_reader_sees_what_ip_shows,
# which checks that this conversion gives what the supervisor's own netlink
# reader sees.

set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$ROOT/crates/supervisor/tests/fixtures/net}
P=${NAME_PREFIX:-runvm-netfix}
IMAGE=runvm-test/busybox
mkdir -p "$OUT"

cleanup() {
    for c in default user two dualstack none host; do
        docker rm -f "$P-$c" >/dev/null 2>&1 || true
    done
    for n in user a b v6; do
        docker network rm "$P-$n" >/dev/null 2>&1 || true
    done
}
trap cleanup EXIT
cleanup

run() { # NAME DOCKER-RUN-ARGS...
    local name=$1
    shift
    docker run -d --runtime=runc --name "$P-$name" "$@" "$IMAGE" sleep 600 >/dev/null
}

docker network create "$P-user" >/dev/null
docker network create "$P-a" >/dev/null
docker network create "$P-b" >/dev/null
docker network create --ipv6 --subnet fd00:7::/64 "$P-v6" >/dev/null

run default
run user --network "$P-user"
# Two networks attached before the start, as `docker create` + `docker
# network connect` + `docker start` does it.
docker create --runtime=runc --name "$P-two" --network "$P-a" "$IMAGE" sleep 600 >/dev/null
docker network connect "$P-b" "$P-two"
docker start "$P-two" >/dev/null
run dualstack --network "$P-v6"
run none --network none
run host --network host

# IPv6 addresses of Docker's containers are added without DAD, but the
# kernel's link-local address needs a moment.
sleep 3

for c in default user two dualstack none host; do
    pid=$(docker inspect -f '{{.State.Pid}}' "$P-$c")
    in_ns() { nsenter -t "$pid" -n "$@"; }
    {
        printf '{"scenario":"%s",' "$c"
        printf '"recorded_with":"%s",' "docker $(docker version -f '{{.Server.Version}}'), runc, kernel $(uname -r), $(ip -V)"
        printf '"link":%s,' "$(in_ns ip -j -d link show)"
        printf '"addr":%s,' "$(in_ns ip -j addr show)"
        printf '"route4":%s,' "$(in_ns ip -4 -j -d route show table all)"
        printf '"route6":%s}' "$(in_ns ip -6 -j -d route show table all)"
    } | jq . >"$OUT/$c.netns.json"
    echo "recorded $OUT/$c.netns.json"
done

test_bin=$(cd "$ROOT" && cargo test -q --locked -p runvm-supervisor --no-run --message-format=json |
    jq -r 'select(.profile.test == true and .target.name == "runvm-supervisor") | .executable')
for c in default user two dualstack none; do
    pid=$(docker inspect -f '{{.State.Pid}}' "$P-$c")
    if ! nsenter -t "$pid" -n "$test_bin" --ignored --exact \
        network::tests::the_real_reader_sees_what_ip_shows >/dev/null 2>&1; then
        echo "the supervisor's reader and the ip conversion disagree in $c:" >&2
        nsenter -t "$pid" -n "$test_bin" --ignored --exact \
            network::tests::the_real_reader_sees_what_ip_shows >&2 || true
        exit 1
    fi
    echo "checked the reader in $c"
done
