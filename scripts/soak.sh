#!/usr/bin/env bash
# runvm's soak test: many containers and many lifecycles, then a count of
# everything runvm could have left behind. Fails if anything leaked or any
# command gave the wrong result. Takes a while (not part of `make test`).
#
#  a. SOAK_CONCURRENT (20) detached containers at once; several `docker exec`
#     in each, some concurrent, outputs and exit codes checked; then half are
#     stopped and half killed, and removed;
#  b. SOAK_CYCLES (200) cycles, in turn: `docker run --rm IMG true`,
#     `run -d` + `stop`, `run -d` + `kill`, `run -d` + `rm -f`; every other
#     time the stop/kill/rm comes right away, while the VM still boots;
#  c. the leak table: processes, interfaces, sockets, mounts, cgroups and
#     files left by the soak's containers, initramfs temp files, containers
#     left, and host memory.
#
# Other people's containers may run at the same time: every leak is counted
# against the soak's own containers (their full ids, from --cidfile) or as
# the difference from a snapshot taken before the soak.
#
# SOAK_RUNTIME (runvm)  runtime name to test
# SOAK_CYCLES (200), SOAK_CONCURRENT (20), SOAK_JOBS (2: cycles run in
# that many lanes at once), SOAK_MEMORY (256m: docker run -m),
# SOAK_MEM_SLACK_MIB (1024: MemAvailable may drop that much before it counts
# as a leak; other VMs on the host move it too), SOAK_SETTLE (60 s to wait
# for things to go away before counting them).
. "$(dirname "$0")/lib.sh"
RT="${SOAK_RUNTIME:-runvm}"
CYCLES="${SOAK_CYCLES:-200}"
CONC="${SOAK_CONCURRENT:-20}"
JOBS="${SOAK_JOBS:-2}"
MEM="${SOAK_MEMORY:-256m}"
MEM_SLACK="${SOAK_MEM_SLACK_MIB:-1024}"
SETTLE="${SOAK_SETTLE:-60}"
IMG=runvm-test/busybox
NAME="runvm-soak-$$"
# Generous: 20 VMs boot at once on 2 cores under TCG.
T_BOOT=900 T_CMD=600

docker_ok || die "docker does not answer: start dockerd (make demo does)"
docker info --format '{{json .Runtimes}}' | grep -q "\"$RT\"" ||
    die "docker has no runtime \"$RT\": register it (make install) or set SOAK_RUNTIME"
docker image inspect "$IMG" >/dev/null 2>&1 || die "image $IMG is missing: run make images"

WORK=$(mktemp -d /tmp/runvm-soak.XXXXXX)
mkdir -p "$WORK/cid" "$WORK/times"
touch "$WORK/failures"
# shellcheck disable=SC2317  # run by the EXIT trap
cleanup() {
    docker ps -aq --filter "name=^$NAME-" | xargs -r docker rm -f >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }
elapsed() { echo "$(now) - $1" | bc -l; }
stats() { # prints "median min max n" of the numbers on stdin
    sort -g | awk '{a[NR]=$1} END {if (!NR) {print "- - - 0"; exit} m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.2f %.2f %.2f %d\n", m, a[1], a[NR], NR}'
}
fail() { echo "$*" >>"$WORK/failures"; printf '    FAIL: %s\n' "$*" >&2; }

# Runs the command with a timeout; records a failure unless it exits with
# the expected status and (if given) prints the expected stdout.
# usage: expect NAME STATUS STDOUT|- CMD...
expect() {
    local what=$1 want_rc=$2 want_out=$3 out rc=0 err; shift 3
    err=$(mktemp "$WORK/err.XXXXXX")
    out=$(timeout "$T_CMD" "$@" 2>"$err") || rc=$?
    if [ "$rc" != "$want_rc" ] || { [ "$want_out" != - ] && [ "$out" != "$want_out" ]; }; then
        fail "$what: exit $rc (want $want_rc), stdout '${out//$'\n'/\\n}' (want '${want_out//$'\n'/\\n}'), stderr '$(head -c 300 "$err" | tr '\n' ' ')'"
        rm -f "$err"
        return 1
    fi
    rm -f "$err"
}

# Workloads of detached containers: both print "up" once running. As the
# container's PID 1, `sleep` ignores SIGTERM (docker stop ends it with
# SIGKILL after the timeout: 137); the shell with a trap exits 3 (given a
# long timeout, as a VM starved of CPU by 19 others may take a while).
PLAIN='echo up; exec sleep 3600'
GRACEFUL='trap "exit 3" TERM; echo up; while :; do sleep 1; done'
run_d() { # name [workload]: starts a detached container
    timeout "$T_CMD" docker run -d --name "$1" --cidfile "$WORK/cid/$1" --runtime="$RT" -m "$MEM" \
        "$IMG" sh -c "${2:-$PLAIN}" >/dev/null 2>"$WORK/err.$1" ||
        { fail "docker run -d $1: $(head -c 300 "$WORK/err.$1" | tr '\n' ' ')"; rm -f "$WORK/err.$1"; return 1; }
    rm -f "$WORK/err.$1"
}

wait_up() { # name, deadline (epoch seconds)
    until docker logs "$1" 2>/dev/null | grep -q '^up$'; do
        if [ "$(docker inspect -f '{{.State.Running}}' "$1" 2>/dev/null)" != true ]; then
            fail "$1 ended before it was up: exit $(docker inspect -f '{{.State.ExitCode}}' "$1" 2>&1), log: $(docker logs "$1" 2>&1 | grep -m3 -iE 'panic|error|runvm:' | tr '\n' ' ' | head -c 400)"
            return 1
        fi
        if [ "$(date +%s)" -ge "$2" ]; then fail "$1 did not print 'up' in time"; return 1; fi
        sleep 1
    done
}

# --- what runvm could leave behind ----------------------------------------

ids_file() { # the full ids of every container the soak created
    find "$WORK/cid" -type f -exec sh -c 'cat "$1"; echo' _ {} \; | grep -E '^[0-9a-f]{64}$' >"$WORK/ids" || true
    echo "$WORK/ids"
}

# Processes that belong to the soak's containers: their cgroup or command
# line names one of its ids. Prints "pid comm".
our_processes() {
    local ids=$1 d pid
    [ -s "$ids" ] || return 0
    for d in /proc/[0-9]*; do
        pid=${d#/proc/}
        [ "$pid" = $$ ] || [ "$pid" = "$BASHPID" ] && continue
        if grep -qsF -f "$ids" "$d/cgroup" 2>/dev/null ||
            grep -qF -f "$ids" < <(tr '\0' ' ' 2>/dev/null <"$d/cmdline"); then
            echo "$pid $(cat "$d/comm" 2>/dev/null)"
        fi
    done
}

host_interfaces() { ip -o link | awk -F': ' '{sub(/@.*/, "", $2); print $2}' | grep -E '^(runvm|tap)' || true; }
runvm_root_mounts() { grep -F runvm-root /proc/self/mountinfo | awk '{print $5}' || true; }
initramfs_temps() { find "$RUNVM_DATA/cache" -maxdepth 2 \( -name '*.tmp' -o -name '*.runvm-tmp' \) 2>/dev/null || true; }
runvm_processes_anywhere() { # comm names of runvm's processes on the whole host
    cat /proc/[0-9]*/comm 2>/dev/null | grep -cE '^(qemu-system-x86|virtiofsd|runvm-superviso|runvm)$' || true
}
mem_available_mib() { awk '/^MemAvailable:/ {print int($2 / 1024)}' /proc/meminfo; }

# Counts every kind of leak; writes "count label" lines to $WORK/leaks and
# the details to $WORK/leak-details.
count_leaks() {
    local ids; ids=$(ids_file)
    : >"$WORK/leak-details"
    our_processes "$ids" >"$WORK/procs"
    local qemu virtiofsd sup rt other
    qemu=$(awk '$2 ~ /^qemu-system/' "$WORK/procs" | wc -l)
    virtiofsd=$(awk '$2 == "virtiofsd"' "$WORK/procs" | wc -l)
    sup=$(awk '$2 ~ /^runvm-superviso/' "$WORK/procs" | wc -l)
    rt=$(awk '$2 == "runvm"' "$WORK/procs" | wc -l)
    other=$(awk '$2 !~ /^(qemu-system|virtiofsd|runvm)/' "$WORK/procs" | wc -l)
    sed 's/^/process: /' "$WORK/procs" >>"$WORK/leak-details"

    local ifs; ifs=$(comm -13 "$WORK/before.ifs" <(host_interfaces | sort))
    [ -n "$ifs" ] && awk '{print "interface in the host netns: " $0}' <<<"$ifs" >>"$WORK/leak-details"

    # Unix sockets held open by the soak's processes (listed in each of
    # their network namespaces), and socket files left under its
    # containers' directories.
    local pids socks=0 pid
    pids=$(awk '{print $1}' "$WORK/procs" | paste -sd'|')
    : >"$WORK/socks"
    if [ -n "$pids" ]; then
        awk '{print $1}' "$WORK/procs" | while read -r pid; do
            echo "$(readlink "/proc/$pid/ns/net" 2>/dev/null) $pid"
        done | sort -u -k1,1 | while read -r _ pid; do
            nsenter -t "$pid" -n ss -xap 2>/dev/null | grep -E "pid=($pids)," || true
        done | sort -u >"$WORK/socks"
        socks=$(wc -l <"$WORK/socks")
        sed 's/^/socket: /' "$WORK/socks" >>"$WORK/leak-details"
    fi

    # Files: anything under the runtime's, containerd's and Docker's state
    # directories (and temp/log dirs) that names one of the soak's ids.
    # -xdev: a leaked rootfs mount is counted as a mount, not walked.
    { find /run /tmp /var/tmp /var/log "$RUNVM_DATA" /var/lib/docker/containers -xdev 2>/dev/null |
        grep -F -f "$ids" || true; } >"$WORK/files"
    local dirs roots logs sockfiles
    # Top-level leftovers: paths whose last component is an id.
    dirs=$(awk -F/ 'NR==FNR {id[$1]; next} ($NF in id) {print "file: " $0}' "$ids" "$WORK/files" |
        tee -a "$WORK/leak-details" | wc -l)
    roots=$(grep -c '/runvm-root$' "$WORK/files" || true)
    logs=$(grep -cE '(\.log|log\.json)$' "$WORK/files" || true)
    sockfiles=$(while read -r f; do if [ -S "$f" ]; then echo "socket file: $f"; fi; done <"$WORK/files" |
        tee -a "$WORK/leak-details" | wc -l)
    socks=$((socks + sockfiles))
    grep -E '/runvm-root$|(\.log|log\.json)$' "$WORK/files" | sed 's/^/file: /' >>"$WORK/leak-details" || true

    local mounts
    { grep -F -f "$ids" /proc/self/mountinfo | awk '{print $5}' || true; } >"$WORK/mounts"
    comm -13 "$WORK/before.roots" <(runvm_root_mounts | sort) >>"$WORK/mounts"
    mounts=$(sort -u "$WORK/mounts" | grep -c . || true)
    sort -u "$WORK/mounts" | sed 's/^/mount: /' >>"$WORK/leak-details"

    local cgroups
    cgroups=$({ find /sys/fs/cgroup -maxdepth 4 -type d 2>/dev/null | grep -F -f "$ids" || true; } |
        sed 's/^/cgroup: /' | tee -a "$WORK/leak-details" | wc -l)

    local temps; temps=$(comm -13 "$WORK/before.temps" <(initramfs_temps | sort))
    [ -n "$temps" ] && awk '{print "initramfs temp file: " $0}' <<<"$temps" >>"$WORK/leak-details"

    local containers
    containers=$(docker ps -aq --no-trunc | grep -cF -f "$ids" || true)
    docker ps -a --filter "name=^$NAME-" --format 'container: {{.Names}} {{.Status}}' >>"$WORK/leak-details"

    cat >"$WORK/leaks" <<EOF
$qemu processes: qemu-system-x86_64
$virtiofsd processes: virtiofsd
$sup processes: runvm-supervisor
$rt processes: runvm (runtime)
$other processes: other (shim, runc, workload)
$(grep -c . <<<"$ifs" || true) interfaces: tap*/runvm* in the host netns
$socks unix sockets
$mounts mounts (runvm-root, the containers' bundles)
$cgroups cgroups of the containers
$dirs files: state/bundle dirs of the containers
$roots files: runvm-root dirs
$logs files: runvm and container logs
$(grep -c . <<<"$temps" || true) files: initramfs temp files in $RUNVM_DATA/cache
$containers containers left (docker ps -a)
EOF
}

# --- the soak ---------------------------------------------------------------

say "soak of runtime '$RT': $CONC concurrent containers, $CYCLES cycles in $JOBS lanes, -m $MEM"
echo "== $(nproc) cores, $(uname -r), $(awk '/MemTotal/ {printf "%d MiB", $2/1024}' /proc/meminfo); $(runvm_processes_anywhere) runvm processes already running"
host_interfaces | sort >"$WORK/before.ifs"
runvm_root_mounts | sort >"$WORK/before.roots"
initramfs_temps | sort >"$WORK/before.temps"
MEM_BEFORE=$(mem_available_mib)
PROCS_BEFORE=$(runvm_processes_anywhere)
T_START=$(now)

# a. concurrent containers with execs
echo "== a. $CONC concurrent containers"
t0=$(now)
for i in $(seq 1 "$CONC"); do
    if ((i % 4 == 1)); then run_d "$NAME-c$i" "$GRACEFUL" & else run_d "$NAME-c$i" & fi
done
wait
printf '   %d started in %.1f s\n' "$CONC" "$(elapsed "$t0")"
deadline=$(($(date +%s) + T_BOOT))
for i in $(seq 1 "$CONC"); do wait_up "$NAME-c$i" "$deadline" & done
wait
printf '   all up after %.1f s\n' "$(elapsed "$t0")"

exec_round() { # i: several execs in container i, some at once
    local c="$NAME-c$1" t
    t=$(now)
    expect "exec echo in $c" 0 "hello-$1" docker exec "$c" echo "hello-$1" || return
    elapsed "$t" >"$WORK/times/exec.$1"
    for k in 1 2 3; do
        expect "concurrent exec $k in $c" 0 "par-$1-$k" docker exec "$c" sh -c "echo par-$1-$k" &
    done
    expect "exec with stdin in $c" 0 2 sh -c "printf 'a\nb\n' | docker exec -i $c wc -l" &
    wait
    expect "exec exit code in $c" 7 - docker exec "$c" sh -c 'exit 7'
    expect "exec stdout/stderr in $c" 0 out sh -c "docker exec $c sh -c 'echo out; echo err >&2' 2>$WORK/stderr.$1"
    [ "$(cat "$WORK/stderr.$1" 2>/dev/null)" = err ] || fail "exec stderr in $c: '$(cat "$WORK/stderr.$1" 2>/dev/null)' (want 'err')"
    expect "exec hostname in $c" 0 "$(docker inspect -f '{{.Config.Hostname}}' "$c")" docker exec "$c" hostname
}
t0=$(now)
for i in $(seq 1 "$CONC"); do exec_round "$i" & done
wait
printf '   %d execs in %.1f s\n' $((CONC * 8)) "$(elapsed "$t0")"

t0=$(now)
for i in $(seq 1 "$CONC"); do
    c="$NAME-c$i"
    if ((i % 2)); then
        want=137 grace=5
        ((i % 4 == 1)) && want=3 grace=60
        { expect "docker stop $c" 0 "$c" docker stop -t $grace "$c" &&
            expect "exit code of stopped $c" 0 $want docker inspect -f '{{.State.ExitCode}}' "$c"; } &
    else
        { expect "docker kill $c" 0 "$c" docker kill "$c" &&
            expect "exit code of killed $c" 0 137 docker wait "$c"; } &
    fi
done
wait
for i in $(seq 1 "$CONC"); do expect "docker rm $NAME-c$i" 0 "$NAME-c$i" docker rm "$NAME-c$i" & done
wait
printf '   stopped/killed and removed in %.1f s\n' "$(elapsed "$t0")"

# b. lifecycle cycles
echo "== b. $CYCLES cycles"
KINDS=(run-rm run-stop run-kill run-rmf)
cycle() { # n
    local n=$1 kind=${KINDS[$(($1 % 4))]} c="$NAME-$1" t ok=1 early="" workload=$PLAIN want=137 grace=5
    (($1 / 4 % 2)) && early=" (while booting)"
    (($1 / 8 % 2)) && workload=$GRACEFUL && want=3 && [ -z "$early" ] && grace=60
    t=$(now)
    case $kind in
        run-rm)
            expect "cycle $n: docker run --rm true" 0 "" \
                docker run --rm --name "$c" --cidfile "$WORK/cid/$c" --runtime="$RT" -m "$MEM" "$IMG" true || ok=
            early="" ;;
        *)
            run_d "$c" "$workload" || ok=
            if [ -n "$ok" ] && [ -z "$early" ]; then wait_up "$c" $(($(date +%s) + T_BOOT)) || ok=; fi
            case $kind in
                run-stop) expect "cycle $n: docker stop" 0 "$c" docker stop -t $grace "$c" &&
                    { [ -n "$early" ] || expect "cycle $n: exit code after docker stop" 0 $want \
                        docker inspect -f '{{.State.ExitCode}}' "$c"; } &&
                    expect "cycle $n: docker rm" 0 "$c" docker rm "$c" || ok= ;;
                run-kill) expect "cycle $n: docker kill" 0 "$c" docker kill "$c" &&
                    expect "cycle $n: docker wait" 0 137 docker wait "$c" &&
                    expect "cycle $n: docker rm" 0 "$c" docker rm "$c" || ok= ;;
                run-rmf) expect "cycle $n: docker rm -f" 0 "$c" docker rm -f "$c" || ok= ;;
            esac ;;
    esac
    local dt; dt=$(elapsed "$t")
    [ -n "$ok" ] && echo "$dt" >>"$WORK/times/$kind"
    printf '   cycle %3d/%d %-8s %6.1f s %s%s\n' "$n" "$CYCLES" "$kind" "$dt" "$([ -n "$ok" ] && echo ok || echo FAILED)" "$early"
}
lane() { # l: cycles l, l+JOBS, l+2*JOBS, ...
    local n
    for ((n = $1; n <= CYCLES; n += JOBS)); do cycle "$n"; done
}
t0=$(now)
for l in $(seq 1 "$JOBS"); do lane "$l" & done
wait
printf '   %d cycles in %.1f s\n' "$CYCLES" "$(elapsed "$t0")"

# c. leaks
echo "== c. leaks (waiting up to $SETTLE s for things to go away)"
deadline=$(($(date +%s) + SETTLE))
while :; do
    count_leaks
    total=$(awk '{s += $1} END {print s + 0}' "$WORK/leaks")
    [ "$total" = 0 ] || [ "$(date +%s)" -ge "$deadline" ] && break
    sleep 2
done
sleep 5 # page cache and freed memory settle
MEM_AFTER=$(mem_available_mib)
PROCS_AFTER=$(runvm_processes_anywhere)
mem_drop=$((MEM_BEFORE - MEM_AFTER))
mem_leak=0
((mem_drop > MEM_SLACK)) && mem_leak=$mem_drop

echo
echo "timings (seconds: median, min, max, n)"
for f in exec run-rm run-stop run-kill run-rmf; do
    if [ "$f" = exec ]; then
        read -r med min max n < <(cat "$WORK"/times/exec.* 2>/dev/null | stats)
        label="docker exec echo ($CONC VMs up)"
    else
        read -r med min max n < <(stats <"$WORK/times/$f" 2>/dev/null || echo "- - - 0")
        label="cycle $f"
    fi
    printf '  %-32s %7s  (%s-%s, n=%s)\n' "$label" "$med" "$min" "$max" "$n"
done
printf '  %-32s %7.1f\n' "whole soak" "$(elapsed "$T_START")"

echo
echo "leaks (each must be 0)"
while read -r n label; do printf '  %-58s %5d\n' "$label" "$n"; done <"$WORK/leaks"
printf '  %-58s %5d\n' "host MemAvailable drop beyond ${MEM_SLACK} MiB (MiB)" "$mem_leak"
printf '  (MemAvailable before %d MiB, after %d MiB, drop %d MiB; runvm processes on the host before %d, after %d)\n' \
    "$MEM_BEFORE" "$MEM_AFTER" "$mem_drop" "$PROCS_BEFORE" "$PROCS_AFTER"

status=0
if [ -s "$WORK/leak-details" ]; then
    echo
    echo "leaked:"
    sort -u "$WORK/leak-details" | head -100 | sed 's/^/  /'
fi
leaks=$(($(awk '{s += $1} END {print s + 0}' "$WORK/leaks") + mem_leak))
failures=$(wc -l <"$WORK/failures")
if [ "$failures" -gt 0 ]; then
    echo
    echo "$failures commands failed:"
    head -50 "$WORK/failures" | sed 's/^/  /'
fi
echo
if [ "$leaks" -gt 0 ] || [ "$failures" -gt 0 ]; then
    echo "SOAK FAILED: $leaks leaked, $failures failed commands"
    status=1
else
    echo "SOAK PASSED: nothing leaked, every command gave the expected result"
fi
exit $status
