#!/usr/bin/env bash
# Unpacks Debian's cloud kernel into runvm's data directory. The host's own
# boot kernel is never touched: the package is unpacked, not installed.
. "$(dirname "$0")/lib.sh"
need_root
KDIR="$RUNVM_DATA/kernel"
if ls "$KDIR"/*/boot/vmlinuz-* >/dev/null 2>&1; then
    exit 0
fi
apt_install kmod dpkg
[ -n "$APT_UPDATED" ] || { DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null; APT_UPDATED=1; }
pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$pkg" ] || die "cannot find the package behind linux-image-cloud-amd64 in apt's lists"
ver=${pkg#linux-image-}
say "unpacking $pkg into $KDIR/$ver"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download -q "$pkg" >/dev/null)
mkdir -p "$tmp/root"
dpkg-deb -x "$tmp"/*.deb "$tmp/root"
depmod -b "$tmp/root" "$ver"
mkdir -p "$KDIR"
rm -rf "$KDIR/$ver.partial"
mv "$tmp/root" "$KDIR/$ver.partial"
mv "$KDIR/$ver.partial" "$KDIR/$ver"
