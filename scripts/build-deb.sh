#!/usr/bin/env bash
# Builds target/runvm_<version>_amd64.deb from this tree: runvm in /usr/bin,
# its supervisor, guest agent and virtiofsd in /usr/lib/runvm, and runvm's
# guest kernel (the store's default, which `make kernel` built) in
# /usr/lib/runvm/kernel. Its maintainer scripts put the kernel into the
# store (/var/lib/runvm/kernel) and make it the default when the store has
# none, register the runtime with Docker (and reload dockerd) and with
# Podman; removing the package unregisters it, purging removes the store.
#
#   scripts/build-deb.sh AGENT   (make deb gives the static agent's path)
. "$(dirname "$0")/lib.sh"
AGENT=${1:?usage: build-deb.sh PATH-TO-STATIC-AGENT}
cd "$(dirname "$0")/.."
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
[ -n "$VERSION" ] || die "no version in Cargo.toml"
for f in target/release/runvm target/release/runvm-supervisor "$AGENT"; do
    [ -x "$f" ] || die "$f is missing: run make deb (it builds them)"
done
KERNEL=$(cat "$RUNVM_DATA/kernel/default" 2>/dev/null || true)
case "$KERNEL" in
    *-runvm-*) [ -d "$RUNVM_DATA/kernel/$KERNEL" ] || die "the default kernel $KERNEL is not in $RUNVM_DATA/kernel: run make kernel" ;;
    *) die "the kernel store's default ($KERNEL) is not one of runvm's builds: run make kernel" ;;
esac

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pkg=$tmp/runvm
install -d "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/usr/lib/runvm/kernel" "$pkg/usr/share/doc/runvm"
install -m 0755 target/release/runvm "$pkg/usr/bin/runvm"
install -m 0755 target/release/runvm-supervisor "$AGENT" "$pkg/usr/lib/runvm/"
RUNVM_PREFIX="$pkg/usr" scripts/install-virtiofsd.sh
cp -a "$RUNVM_DATA/kernel/$KERNEL" "$pkg/usr/lib/runvm/kernel/$KERNEL"
install -m 0644 README.md "$pkg/usr/share/doc/runvm/README.md"
size=$(du -sk "$pkg/usr" | cut -f1)

cat >"$pkg/DEBIAN/control" <<CONTROL
Package: runvm
Version: $VERSION
Architecture: amd64
Maintainer: runvm developers <runvm@localhost>
Installed-Size: $size
Depends: qemu-system-x86, runc, libseccomp2, libc6, e2fsck-static
Recommends: docker.io | podman
Section: admin
Priority: optional
Description: OCI runtime that runs containers as lightweight VMs
 runvm runs standard container images as VMs (QEMU, virtiofs) with
 docker run --runtime=runvm or podman run --runtime runvm, and no other
 change to images or command lines.
CONTROL

cat >"$pkg/DEBIAN/postinst" <<POSTINST
#!/bin/sh
set -e
if [ "\$1" = configure ]; then
    store=/var/lib/runvm/kernel
    mkdir -p "\$store"
    if [ ! -d "\$store/$KERNEL" ]; then
        cp -a /usr/lib/runvm/kernel/$KERNEL "\$store/$KERNEL.partial"
        mv "\$store/$KERNEL.partial" "\$store/$KERNEL"
    fi
    [ -s "\$store/default" ] || /usr/bin/runvm kernel default $KERNEL
    if command -v dockerd >/dev/null 2>&1; then
        /usr/bin/runvm docker-register /etc/docker/daemon.json
        pid=\$(pidof dockerd || true)
        [ -z "\$pid" ] || kill -HUP \$pid
    fi
    if command -v podman >/dev/null 2>&1; then
        /usr/bin/runvm podman-register
    fi
fi
POSTINST

cat >"$pkg/DEBIAN/prerm" <<'PRERM'
#!/bin/sh
set -e
if [ "$1" = remove ] || [ "$1" = purge ]; then
    /usr/bin/runvm docker-unregister /etc/docker/daemon.json || true
    /usr/bin/runvm podman-unregister || true
    pid=$(pidof dockerd || true)
    [ -z "$pid" ] || kill -HUP $pid || true
fi
PRERM

cat >"$pkg/DEBIAN/postrm" <<'POSTRM'
#!/bin/sh
set -e
if [ "$1" = purge ]; then
    rm -rf /var/lib/runvm /var/cache/runvm
fi
POSTRM
chmod 0755 "$pkg/DEBIAN/postinst" "$pkg/DEBIAN/prerm" "$pkg/DEBIAN/postrm"

out=target/runvm_${VERSION}_amd64.deb
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$out" >/dev/null
say "built $out ($(du -h "$out" | cut -f1))"
