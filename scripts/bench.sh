#!/usr/bin/env bash
# runvm's benchmark: figures and ratios, never pass/fail.
#
#  1. wall time of `docker run --rm IMG true` under runc and under runvm;
#  2. the floor: a bare QEMU boot of the same machine, kernel and
#     initramfs, until the guest agent is ready (`runvm boot-probe`);
#  3. host memory (PSS) of QEMU + virtiofsd + supervisor for one idle
#     container, against its guest RAM;
#  4. TCP throughput and HTTP request latency between two containers on a
#     user-defined network, for each pairing of runtimes, against
#     runc to runc (nettool, the test image's static tool).
# Medians with min-max over N runs (default 5): this machine is shared and
# noisy, single times mean little.
. "$(dirname "$0")/lib.sh"
N="${BENCH_RUNS:-5}"
IMG=runvm-test/busybox

now() { date +%s.%N; }
stats() { # prints "median min max" of the numbers on stdin
    sort -g | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.3f %.3f %.3f\n", m, a[1], a[NR]}'
}
time_cmd() { local t0 t1; t0=$(now); "$@" >/dev/null 2>&1; t1=$(now); echo "$t1 - $t0" | bc -l; }

declare -A MED
measure() { # name, command...
    local name=$1; shift
    local samples=()
    "$@" >/dev/null 2>&1 || true # warm-up (page cache, initramfs cache)
    for _ in $(seq 1 "$N"); do samples+=("$(time_cmd "$@")"); done
    read -r med min max < <(printf '%s\n' "${samples[@]}" | stats)
    MED[$name]=$med
    printf '%-34s median %7.3f s   (min %.3f, max %.3f, n=%d)\n' "$name" "$med" "$min" "$max" "$N"
}

command -v bc >/dev/null || apt_install bc

echo "== runvm benchmark ($(nproc) cores, $(uname -r), accelerator: $(runvm check | awk '/accelerator/ {print $3}' | tr -d :))"
measure "docker run true (runc)" docker run --rm --runtime=runc "$IMG" true
measure "docker run true (runvm)" docker run --rm --runtime=runvm "$IMG" true

# The floor: `runvm boot-probe` boots the machine a default container's VM
# is (the supervisor's own QEMU command line, the same kernel and
# initramfs) with no container and no root filesystem, until the agent is
# ready: what runvm costs beyond booting its VM.
measure "bare QEMU boot to agent ready" runvm boot-probe

echo
printf 'ratio runvm / runc        %6.1fx\n' "$(echo "${MED[docker run true (runvm)]} / ${MED[docker run true (runc)]}" | bc -l)"
printf 'ratio runvm / QEMU floor  %6.2fx   (runvm adds %.2f s to the bare boot)\n' \
    "$(echo "${MED[docker run true (runvm)]} / ${MED[bare QEMU boot to agent ready]}" | bc -l)" \
    "$(echo "${MED[docker run true (runvm)]} - ${MED[bare QEMU boot to agent ready]}" | bc -l)"

# docker exec latency, against a running container of each runtime.
echo
for rt in runc runvm; do
    c=runvm-bench-exec-$rt-$$
    docker run -d --rm --name "$c" --runtime=$rt "$IMG" sh -c 'echo up; sleep 600' >/dev/null
    for _ in $(seq 1 60); do docker logs "$c" 2>/dev/null | grep -q up && break; sleep 1; done
    measure "docker exec true ($rt)" docker exec "$c" true
    docker rm -f "$c" >/dev/null
done
printf 'ratio exec runvm / runc   %6.2fx\n' "$(echo "${MED[docker exec true (runvm)]} / ${MED[docker exec true (runc)]}" | bc -l)"

# Memory of one idle container.
echo
name=runvm-bench-mem-$$
docker run -d --rm --name "$name" --runtime=runvm "$IMG" sh -c 'echo up; sleep 600' >/dev/null
for _ in $(seq 1 60); do docker logs "$name" 2>/dev/null | grep -q up && break; sleep 1; done
sleep 2
pss_kib() { awk '/^Pss:/ {print $2}' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
total_pss=0; total_rss=0
for pid in $(docker top "$name" -eo pid | tail -n +2); do
    comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
    case "$comm" in
        qemu-system-x86*|virtiofsd|runvm-superviso*)
            p=$(pss_kib "$pid"); r=$(rss_kib "$pid")
            printf '  %-22s PSS %7d KiB   RSS %7d KiB\n' "$comm" "$p" "$r"
            total_pss=$((total_pss + p)); total_rss=$((total_rss + r)) ;;
    esac
done
guest_mib=$(grep -o '"memory_mib": [0-9]*' "/proc/$(docker inspect -f '{{.State.Pid}}' "$name")/root/runvm/vm.json" | awk '{print $2}')
docker rm -f "$name" >/dev/null
printf 'idle container host memory: PSS %d MiB (RSS %d MiB) for a guest of %d MiB RAM: %.0f%% of guest RAM\n' \
    $((total_pss / 1024)) $((total_rss / 1024)) "$guest_mib" "$(echo "$total_pss / 1024 * 100 / $guest_mib" | bc -l)"

# Networking between two containers on a user-defined network. The server
# runs nettool's TCP sink and HTTP server; the client sends for 5 s, then
# makes 200 requests one after another, each on a new connection.
echo
NET_RUNS="${BENCH_NET_RUNS:-3}"
net=runvm-bench-net-$$
docker network create "$net" >/dev/null
declare -A MBPS LAT
for pair in runc:runc runvm:runvm runc:runvm runvm:runc; do
    client=${pair%%:*} server=${pair##*:}
    s=runvm-bench-srv-$$
    docker run -d --rm --name "$s" --runtime="$server" --network "$net" "$IMG" \
        sh -c 'nettool tcp-sink 5001 & nettool http-serve 8080 & sleep 1; echo up; wait' >/dev/null
    for _ in $(seq 1 60); do docker logs "$s" 2>/dev/null | grep -q up && break; sleep 1; done
    ip=$(docker inspect -f "{{(index .NetworkSettings.Networks \"$net\").IPAddress}}" "$s")
    mbps=() lat=()
    for _ in $(seq 1 "$NET_RUNS"); do
        out=$(docker run --rm --runtime="$client" --network "$net" "$IMG" \
            sh -c "nettool tcp-send $ip 5001 5 && nettool http-latency $ip 8080 200" 2>&1 || true)
        mbps+=("$(echo "$out" | awk '/Mbit/ {print $1}')")
        lat+=("$(echo "$out" | awk '/^median/ {print $2}')")
    done
    docker rm -f "$s" >/dev/null
    read -r m mn mx < <(printf '%s\n' "${mbps[@]}" | stats)
    read -r l ln lx < <(printf '%s\n' "${lat[@]}" | stats)
    MBPS[$pair]=$m LAT[$pair]=$l
    printf '%-14s -> %-6s  TCP %9.1f Mbit/s (min %.1f, max %.1f)   HTTP median %7.0f us (min %.0f, max %.0f), n=%d\n' \
        "$client" "$server" "$m" "$mn" "$mx" "$l" "$ln" "$lx" "$NET_RUNS"
done
docker network rm "$net" >/dev/null
for pair in runvm:runvm runc:runvm runvm:runc; do
    printf 'ratio %-12s / runc:runc   throughput %5.2fx   request latency %5.2fx\n' "$pair" \
        "$(echo "${MBPS[$pair]} / ${MBPS[runc:runc]}" | bc -l)" \
        "$(echo "${LAT[$pair]} / ${LAT[runc:runc]}" | bc -l)"
done
