#!/usr/bin/env bash
# Installs target/runvm_*.deb on this machine as on one without runvm
# (after `make uninstall`), runs the smoke tests through Docker and Podman,
# purges the package and checks that nothing of it is left; then `make
# install` puts the tree's runvm back. The kernel store and the kernel
# build cache are moved aside meanwhile (not rebuilt) and restored.
#
#   make deb-test
. "$(dirname "$0")/lib.sh"
need_root
cd "$(dirname "$0")/.."
deb=$(find target -maxdepth 1 -name 'runvm_*_amd64.deb' | sort | tail -1)
[ -n "$deb" ] || die "no target/runvm_*_amd64.deb: run make deb"
aside=$(mktemp -d /var/tmp/runvm-deb-test.XXXXXX)
restore() {
    [ -d "$aside/kbuild" ] && { mkdir -p /var/cache/runvm; rm -rf /var/cache/runvm/kbuild; mv "$aside/kbuild" /var/cache/runvm/kbuild; }
    if [ -d "$aside/kernel" ]; then
        mkdir -p "$RUNVM_DATA"
        rm -rf "$RUNVM_DATA/kernel"
        mv "$aside/kernel" "$RUNVM_DATA/kernel"
    fi
    rm -rf "$aside"
}
trap restore EXIT
[ -d /var/cache/runvm/kbuild ] && mv /var/cache/runvm/kbuild "$aside/kbuild"
[ -d "$RUNVM_DATA/kernel" ] && mv "$RUNVM_DATA/kernel" "$aside/kernel"
make -s uninstall >/dev/null
[ ! -e /usr/local/bin/runvm ] || die "make uninstall left /usr/local/bin/runvm"

say "installing $deb"
DEBIAN_FRONTEND=noninteractive apt-get install -y -q "./$deb" >/dev/null
docker_ok || scripts/ensure-docker.sh >/dev/null
for _ in $(seq 50); do docker info --format '{{json .Runtimes}}' | grep -q '"runvm"' && break; sleep 0.2; done
/usr/bin/runvm check
host=$(uname -r)
guest=$(docker run --rm --runtime=runvm runvm-test/busybox uname -r)
say "docker: host kernel $host, guest kernel $guest"
if [ -z "$guest" ] || [ "$guest" = "$host" ]; then
    die "docker run --runtime=runvm did not run in a VM"
fi
code=0; docker run --rm --runtime=runvm runvm-test/busybox sh -c 'exit 7' || code=$?
[ "$code" = 7 ] || die "docker run --runtime=runvm: exit code $code, expected 7"
if command -v podman >/dev/null; then
    docker save runvm-test/busybox | podman load -q >/dev/null
    pguest=$(podman run --rm --runtime runvm runvm-test/busybox uname -r)
    say "podman: guest kernel $pguest"
    [ "$pguest" = "$guest" ] || die "podman run --runtime runvm did not run in a VM"
fi

say "purging runvm"
DEBIAN_FRONTEND=noninteractive apt-get purge -y -q runvm >/dev/null
left=()
for p in /usr/bin/runvm /usr/lib/runvm "$RUNVM_DATA" /etc/containers/containers.conf.d/runvm.conf; do
    [ ! -e "$p" ] || left+=("$p")
done
grep -q '"runvm"' /etc/docker/daemon.json 2>/dev/null && left+=("runvm in /etc/docker/daemon.json")
[ ${#left[@]} -eq 0 ] || die "the purge left: ${left[*]}"
say "the package installed, ran VMs under Docker and Podman, and purged cleanly"
trap - EXIT
restore
make -s install >/dev/null
