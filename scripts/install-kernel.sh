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
    local pkg ver tmp
    pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    [ -n "$pkg" ] || die "cannot find the package behind linux-image-cloud-amd64 in apt's lists"
    ver=${pkg#linux-image-}
    say "unpacking $pkg into $KDIR/$ver"
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download -q "$pkg" >/dev/null)
    mkdir -p "$tmp/root"
    dpkg-deb -x "$tmp"/*.deb "$tmp/root"
    depmod -b "$tmp/root" "$ver"
    mkdir -p "$KDIR"
    rm -rf "$KDIR/$ver.partial"
    mv "$tmp/root" "$KDIR/$ver.partial"
    mv "$KDIR/$ver.partial" "$KDIR/$ver"
    rm -rf "$tmp"
}

cloud_kernel
"$(dirname "$0")/build-kernel.sh"

# The default: the newest runvm kernel, unless the administrator picked
# another one (`runvm kernel default NAME`), which stays.
newest=$(find "$KDIR" -mindepth 1 -maxdepth 1 -type d -name '*-runvm' -printf '%f\n' | sort -V | tail -1)
current=$(cat "$KDIR/default" 2>/dev/null || true)
case "$current" in
    "$newest") ;;
    "" | *-runvm)
        printf '%s\n' "$newest" >"$KDIR/.default.new"
        mv "$KDIR/.default.new" "$KDIR/default"
        say "default guest kernel: $newest" ;;
    *) say "default guest kernel stays $current (set by runvm kernel default; runvm's own is $newest)" ;;
esac
