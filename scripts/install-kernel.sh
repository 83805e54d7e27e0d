#!/usr/bin/env bash
# The kernel store: runvm's own guest kernel (built by build-kernel.sh from
# Debian's linux-source and kernel/runvm.config; the default) and Debian's
# cloud kernel, unpacked (the compatible choice: RUNVM_KERNEL=<its name>).
# The host's own boot kernel is never touched: nothing is installed as the
# host's kernel.
. "$(dirname "$0")/lib.sh"
need_root
KDIR="$RUNVM_DATA/kernel"

cloud_kernel() {
    if ls "$KDIR"/*-cloud-amd64/boot/vmlinuz-* >/dev/null 2>&1; then
        return 0
    fi
    apt_install kmod dpkg
    [ -n "$APT_UPDATED" ] || { DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null; APT_UPDATED=1; }
    local pkg ver
    pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}' || true)
    [ -n "$pkg" ] || die "apt knows no linux-image-cloud-amd64: add Debian bookworm's main suite to apt's sources (/etc/apt/sources.list.d) and run make again"
    ver=${pkg#linux-image-}
    say "unpacking $pkg into $KDIR/$ver"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    chmod 755 "$tmp" # apt's download user writes there
    (cd "$tmp" && apt-get download -q "$pkg" >/dev/null)
    mkdir -p "$tmp/root"
    dpkg-deb -x "$tmp"/*.deb "$tmp/root"
    depmod -b "$tmp/root" "$ver"
    mkdir -p "$KDIR"
    rm -rf "${KDIR:?}/$ver.partial" "${KDIR:?}/$ver"
    mv -T "$tmp/root" "$KDIR/$ver.partial"
    mv -T "$KDIR/$ver.partial" "$KDIR/$ver"
    rm -rf "$tmp"
    trap - EXIT
}

cloud_kernel
# runvm's own, built once and cached; the store's default (see there).
"$(dirname "$0")/build-kernel.sh"
