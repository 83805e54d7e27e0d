#!/usr/bin/env bash
# Builds runvm's own guest kernel from Debian's linux-source-6.1 and
# kernel/runvm.config (a fragment on `make allnoconfig`), and adds it to
# the kernel store as <release> (6.1.N-runvm), with its modules.
#
# The build is cached: the store entry records the recipe it was built from
# (the fragment, this script, the source package's version) and is rebuilt
# only when that changes. Object files stay in $RUNVM_KBUILD so a changed
# fragment rebuilds only what it touches.
#
#   --check   print "current" or "stale" and exit, building nothing.
. "$(dirname "$0")/lib.sh"
need_root
# Run from make (make kernel), the outer make's flags would change the
# kernel's make output (directory lines in `make kernelrelease`).
unset MAKEFLAGS MFLAGS MAKELEVEL
ROOT=$(cd "$(dirname "$0")/.." && pwd)
FRAGMENT="$ROOT/kernel/runvm.config"
KDIR="$RUNVM_DATA/kernel"
BUILD="${RUNVM_KBUILD:-/var/cache/runvm/kbuild}"
SRC_PKG=linux-source-6.1
TARBALL=/usr/src/$SRC_PKG.tar.xz

if ! dpkg-query -W -f='${Status}' "$SRC_PKG" 2>/dev/null | grep -q 'ok installed'; then
    [ "${1:-}" = --check ] && { echo stale; exit 0; }
    say "installing $SRC_PKG and the kernel's build tools (about 140 MB)"
    apt_install "$SRC_PKG" bc bison flex libelf-dev libssl-dev gcc make xz-utils kmod cpio
fi
src_version=$(dpkg-query -W -f='${Version}' "$SRC_PKG")
recipe=$( { echo "$src_version"; cat "$FRAGMENT" "$0"; } | sha256sum | cut -c1-16)

current() { # the store entry built from this recipe, if there is one
    grep -lx "$recipe" "$KDIR"/*-runvm/.recipe 2>/dev/null | head -1
}
if [ "${1:-}" = --check ]; then
    if [ -n "$(current)" ]; then echo current; else echo stale; fi
    exit 0
fi
if [ -n "$(current)" ]; then
    exit 0
fi

tree="$BUILD/$SRC_PKG-$src_version"
if [ ! -f "$tree/.unpacked" ]; then
    say "unpacking $TARBALL into $tree"
    rm -rf "$tree"
    mkdir -p "$tree"
    tar -xf "$TARBALL" -C "$tree" --strip-components=1
    touch "$tree/.unpacked"
fi
out="$BUILD/out"
mkdir -p "$out"
jobs=$(nproc)
say "configuring the runvm guest kernel ($SRC_PKG $src_version, kernel/runvm.config)"
make -s -C "$tree" O="$out" ARCH=x86_64 allnoconfig >/dev/null
"$tree/scripts/kconfig/merge_config.sh" -m -O "$out" "$out/.config" "$FRAGMENT" >/dev/null
make -s -C "$tree" O="$out" ARCH=x86_64 olddefconfig >/dev/null

# Every line of the fragment must have stuck: a symbol whose dependencies
# are missing is dropped silently by kconfig.
unapplied=0
while IFS= read -r line; do
    case "$line" in
        CONFIG_*=*) want=$line ;;
        "# CONFIG_"*" is not set") want=$line ;;
        *) continue ;;
    esac
    sym=${want#\# }; sym=${sym%%[= ]*}
    got=$(grep -E "^(# )?${sym}[= ]" "$out/.config" || echo "# $sym is not set")
    if [ "$got" != "$want" ]; then
        echo "runvm: kernel/runvm.config asks for '$want' but the configuration has '$got' (a dependency is missing)" >&2
        unapplied=1
    fi
done <"$FRAGMENT"
[ "$unapplied" = 0 ] || die "kernel/runvm.config does not apply to $SRC_PKG $src_version: add the missing dependencies to it"

say "building the runvm guest kernel on $jobs cores (about 10 minutes on 2)"
t0=$(date +%s)
make -s -C "$tree" O="$out" ARCH=x86_64 -j"$jobs" bzImage modules
release=$(make -s --no-print-directory -C "$tree" O="$out" ARCH=x86_64 kernelrelease)
say "built $release in $(( $(date +%s) - t0 )) s"

tmp="$KDIR/$release.partial"
rm -rf "$tmp"; mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/boot"
cp "$out/arch/x86/boot/bzImage" "$tmp/boot/vmlinuz-$release"
# The uncompressed kernel, which QEMU boots at its PVH entry (no
# decompression): the store prefers it. Symbols are of no use there.
objcopy --strip-all "$out/vmlinux" "$tmp/boot/vmlinux-$release"
cp "$out/.config" "$tmp/boot/config-$release"
make -s -C "$tree" O="$out" ARCH=x86_64 INSTALL_MOD_PATH="$tmp" INSTALL_MOD_STRIP=1 DEPMOD=/bin/true modules_install
rm -f "$tmp/lib/modules/$release/build" "$tmp/lib/modules/$release/source"
depmod -b "$tmp" "$release"
echo "$recipe" >"$tmp/.recipe"
chmod 0755 "$tmp"
rm -rf "$KDIR/$release.old"
if [ -d "$KDIR/$release" ]; then
    mv "$KDIR/$release" "$KDIR/$release.old"
fi
mv "$tmp" "$KDIR/$release"
trap - EXIT
rm -rf "$KDIR/$release.old"
say "added kernel $release to the store $KDIR"
