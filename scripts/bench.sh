#!/usr/bin/env bash
# runvm's benchmark: figures and ratios, never pass/fail.
#
#  1. wall time of `docker run --rm IMG true` under runc and under runvm,
#     with each kernel of the store, and the floor: a bare QEMU boot of
#     the same machine, kernel and initramfs, until the guest agent is
#     ready (`runvm boot-probe`);
#  2. where runvm's start spends its time: the median of each phase
#     (RUNVM_DEBUG=phases), as a table and as a timeline chart (SVG) beside
#     runc's whole run;
#  3. `docker exec` latency;
#  4. host memory (PSS) of QEMU + virtiofsd + supervisor for one idle
#     container, against what the guest has touched and its RAM;
#  5. file throughput: virtiofs (runvm's root) against runc's overlayfs;
#  6. time until a real server answers (redis-server: from `docker run -d`
#     until it answers PING, asked from the host);
#  7. TCP throughput and HTTP request latency between two containers on a
#     user-defined network, for each pairing of runtimes, against
#     runc to runc (nettool, the test image's static tool).
# Medians with min-max over N runs (default 5): this machine is shared and
# noisy, single times mean little. BENCH_OUT (default target/bench) gets
# the timeline chart.
. "$(dirname "$0")/lib.sh"
N="${BENCH_RUNS:-5}"
IMG=runvm-test/busybox
OUT="${BENCH_OUT:-$(dirname "$0")/../target/bench}"
mkdir -p "$OUT"

now() { date +%s.%N; }
now_ms() { date +%s%3N; }
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
    printf '%-44s median %7.3f s   (min %.3f, max %.3f, n=%d)\n' "$name" "$med" "$min" "$max" "$N"
}
ratio() { echo "$1 / $2" | bc -l; }

# Whatever this run started goes, however it ends.
cleanup() {
    docker ps -aq --filter name="runvm-bench-.*-$$" | xargs -r docker rm -f >/dev/null 2>&1 || true
    docker network rm "runvm-bench-net-$$" >/dev/null 2>&1 || true
}
trap cleanup EXIT

command -v bc >/dev/null || apt_install bc
command -v python3 >/dev/null || apt_install python3

default_kernel=$(runvm kernel default | awk '{print $1}')
echo "== runvm benchmark ($(nproc) cores, host $(uname -r), accelerator: $(runvm check | awk '/accelerator/ {print $3}' | tr -d :))"
echo "   $(qemu-system-x86_64 --version | head -1); default guest kernel: $default_kernel"
echo
measure "docker run true (runc)" docker run --rm --runtime=runc "$IMG" true
measure "docker run true (runvm)" docker run --rm --runtime=runvm "$IMG" true
# The floor: `runvm boot-probe` boots the machine a default container's VM
# is (the supervisor's own QEMU command line, the same kernel and
# initramfs) with no container and no root filesystem, until the agent is
# ready: what runvm costs beyond booting its VM.
measure "bare QEMU boot to agent ready" runvm boot-probe
printf 'ratio runvm / runc        %6.1fx\n' "$(ratio "${MED[docker run true (runvm)]}" "${MED[docker run true (runc)]}")"
printf 'ratio runvm / QEMU floor  %6.2fx   (runvm adds %.2f s to the bare boot)\n' \
    "$(ratio "${MED[docker run true (runvm)]}" "${MED[bare QEMU boot to agent ready]}")" \
    "$(echo "${MED[docker run true (runvm)]} - ${MED[bare QEMU boot to agent ready]}" | bc -l)"
# The store's other kernels, for comparison.
for k in $(runvm kernel list | awk 'NR > 1 {print $1}'); do
    [ "$k" = "$default_kernel" ] && continue
    echo
    measure "docker run true (runvm, kernel $k)" docker run --rm --runtime=runvm -e RUNVM_KERNEL="$k" "$IMG" true
    measure "bare QEMU boot (kernel $k)" env RUNVM_KERNEL="$k" runvm boot-probe
    printf 'ratio runvm / QEMU floor  %6.2fx   with kernel %s\n' \
        "$(ratio "${MED[docker run true (runvm, kernel $k)]}" "${MED[bare QEMU boot (kernel $k)]}")" "$k"
done

# Where the time goes: each run prints its phases on stderr.
echo
echo "== phases of docker run --rm $IMG true under runvm (median of $N runs)"
phases=$(mktemp)
for _ in $(seq 1 "$N"); do
    t0=$(now_ms)
    line=$(docker run --rm --runtime=runvm -e RUNVM_DEBUG=phases "$IMG" true 2>&1 >/dev/null | grep 'phases' || true)
    t1=$(now_ms)
    echo "$t0 $t1 $line" >>"$phases"
    t0=$(now_ms)
    docker run --rm --runtime=runc "$IMG" true >/dev/null 2>&1
    t1=$(now_ms)
    echo "runc $t0 $t1" >>"$phases"
done
python3 "$(dirname "$0")/bench-phases.py" "$OUT/phases.svg" <"$phases" || true
rm -f "$phases"

# docker exec latency, against a running container of each runtime.
echo
for rt in runc runvm; do
    c=runvm-bench-exec-$rt-$$
    docker run -d --rm --name "$c" --runtime=$rt "$IMG" sh -c 'echo up; sleep 600' >/dev/null
    for _ in $(seq 1 60); do docker logs "$c" 2>/dev/null | grep -q up && break; sleep 1; done
    measure "docker exec true ($rt)" docker exec "$c" true
    docker rm -f "$c" >/dev/null
done
printf 'ratio exec runvm / runc   %6.2fx\n' "$(ratio "${MED[docker exec true (runvm)]}" "${MED[docker exec true (runc)]}")"

# Memory of one idle container: each helper's PSS, and how much of it is
# guest RAM the guest has touched (the resident part of the shared guest
# memory, which QEMU and virtiofsd both map): the rest is runvm's own cost.
echo
name=runvm-bench-mem-$$
docker run -d --rm --name "$name" --runtime=runvm "$IMG" sh -c 'echo up; sleep 600' >/dev/null
for _ in $(seq 1 60); do docker logs "$name" 2>/dev/null | grep -q up && break; sleep 1; done
sleep "${BENCH_IDLE_SECS:-10}"
pss_kib() { awk '/^Pss:/ {print $2}' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
# guest_kib PID: resident KiB of the guest-RAM mapping (memfd "mem").
guest_kib() { awk '/^[0-9a-f]+-[0-9a-f]+ / {g = ($0 ~ /memfd:mem/)} g && /^Rss:/ {s += $2} END {print s + 0}' "/proc/$1/smaps" 2>/dev/null || echo 0; }
total_pss=0; total_rss=0; touched=0
for pid in $(docker top "$name" -eo pid | tail -n +2); do
    comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
    case "$comm" in
        qemu-system-x86*|virtiofsd|runvm-superviso*)
            p=$(pss_kib "$pid"); r=$(rss_kib "$pid")
            printf '  %-22s PSS %7d KiB   RSS %7d KiB\n' "$comm" "$p" "$r"
            total_pss=$((total_pss + p)); total_rss=$((total_rss + r))
            case "$comm" in qemu-system-x86*) touched=$(guest_kib "$pid") ;; esac ;;
    esac
done
guest_mib=$(grep -o '"memory_mib": [0-9]*' "/proc/$(docker inspect -f '{{.State.Pid}}' "$name")/root/runvm/vm.json" | awk '{print $2}')
docker rm -f "$name" >/dev/null
printf 'idle container host memory: PSS %d MiB (RSS %d MiB) for a guest of %d MiB RAM (%.0f%%)\n' \
    $((total_pss / 1024)) $((total_rss / 1024)) "$guest_mib" "$(echo "$total_pss / 1024 * 100 / $guest_mib" | bc -l)"
printf 'guest RAM touched: %d MiB; runvm'"'"'s own cost beyond it: %d MiB (target <= 32 MiB)\n' \
    $((touched / 1024)) $(((total_pss - touched) / 1024))

# File throughput of the container's root: runvm's virtiofs against
# runc's overlayfs. Sequential: 256 MiB written (fsync'd) then read back
# (after dropping the guest's cache, so the read goes to the host);
# metadata: 2000 files created, listed with their attributes, removed.
# The read comes from the host's page cache in both: runc reads it there
# directly; runvm's guest drops its own cache first (privileged inside the
# VM only), so the read crosses virtiofs.
echo
# (Times from /proc/uptime, in ms: busybox's date has no %N.)
# shellcheck disable=SC2016 # expanded by the container's shell
fsbench='ms() { awk "{print int(\$1*1000)}" /proc/uptime; }; cd /tmp && t0=$(ms); dd if=/dev/zero of=big bs=1M count=256 conv=fsync 2>/dev/null; t1=$(ms);
echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; t2=$(ms); cat big > /dev/null; t3=$(ms); rm big;
mkdir m; t4=$(ms); i=0; while [ $i -lt 2000 ]; do : > m/f$i; i=$((i+1)); done; ls -l m > /dev/null; rm -r m; t5=$(ms);
echo $(( 256000 / (t1-t0+1) )) $(( 256000 / (t3-t2+1) )) $(( 2000000 / (t5-t4+1) ))'
for rt in runc runvm; do
    w=() r=() m=()
    for _ in $(seq 1 3); do
        priv=(); [ "$rt" = runvm ] && priv=(--privileged)
        read -r a b c < <(docker run --rm --runtime=$rt "${priv[@]}" "$IMG" sh -c "$fsbench" 2>/dev/null || echo 0 0 0)
        w+=("$a"); r+=("$b"); m+=("$c")
    done
    read -r wm _ _ < <(printf '%s\n' "${w[@]}" | stats)
    read -r rm_ _ _ < <(printf '%s\n' "${r[@]}" | stats)
    read -r mm _ _ < <(printf '%s\n' "${m[@]}" | stats)
    MED[fs-w-$rt]=$wm MED[fs-r-$rt]=$rm_ MED[fs-m-$rt]=$mm
    printf '%-6s root fs: write %6.0f MB/s   read %6.0f MB/s   metadata %6.0f files/s (median of 3)\n' "$rt" "$wm" "$rm_" "$mm"
done
printf 'ratio runvm / runc: write %.2fx   read %.2fx   metadata %.2fx\n' \
    "$(ratio "${MED[fs-w-runvm]}" "${MED[fs-w-runc]}")" "$(ratio "${MED[fs-r-runvm]}" "${MED[fs-r-runc]}")" \
    "$(ratio "${MED[fs-m-runvm]}" "${MED[fs-m-runc]}")"

# Time until a real server answers: from `docker run -d` of
# redis-server until it answers PING on its address (asked from the host,
# over bash's /dev/tcp, every 20 ms).
echo
redis_ping() { # ip: whether redis answers +PONG
    local reply=""
    { exec 3<>"/dev/tcp/$1/6379"; } 2>/dev/null || return 1
    printf 'PING\r\n' >&3
    read -r -t 1 reply <&3 || true
    exec 3<&-
    [ "${reply%$'\r'}" = +PONG ]
}
for rt in runc runvm; do
    samples=()
    for _ in $(seq 1 "$N"); do
        c=runvm-bench-redis-$$
        t0=$(now)
        docker run -d --rm --name "$c" --runtime=$rt runvm-test/redis >/dev/null
        ip=$(docker inspect -f '{{.NetworkSettings.IPAddress}}' "$c")
        answered=no
        for _ in $(seq 1 3000); do redis_ping "$ip" && { answered=yes; break; }; sleep 0.02; done
        t1=$(now)
        docker rm -f "$c" >/dev/null
        [ "$answered" = yes ] || { echo "redis-server under $rt never answered: sample dropped" >&2; continue; }
        samples+=("$(echo "$t1 - $t0" | bc -l)")
    done
    read -r med min max < <(printf '%s\n' "${samples[@]}" | stats)
    MED[redis-$rt]=$med
    printf '%-44s median %7.3f s   (min %.3f, max %.3f, n=%d)\n' "redis-server first answer ($rt)" "$med" "$min" "$max" "$N"
done
printf 'ratio redis first answer runvm / runc %6.2fx\n' "$(ratio "${MED[redis-runvm]}" "${MED[redis-runc]}")"

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

# VM templating, an experiment (not a runvm feature): restoring a VM
# saved with its agent ready, against a cold boot (TCG).
echo
echo "== VM templating (experiment): the default kernel, restored from a saved VM against booted"
read -r kname kversion < <(runvm kernel default | tr -d '()')
initrd=$(find "$RUNVM_DATA/cache" -maxdepth 1 -name "initramfs-$kversion-[0-9a-f]*.img" -printf "%T@ %p\n" 2>/dev/null | sort -rn | head -1 | cut -d" " -f2-)
if [ -n "$initrd" ]; then
    python3 "$(dirname "$0")/bench-templating.py" "$RUNVM_DATA/kernel/$kname/boot/vmlinuz-$kversion" "$initrd" || true
else
    echo "no initramfs of $kversion in the cache yet: run a container first"
fi
