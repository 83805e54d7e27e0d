#!/usr/bin/env bash
# Builds runvm's own guest kernel from Debian's linux-source-6.1 and
# kernel/runvm.config (a fragment on `make allnoconfig`), adds it to the
# kernel store as <release>-<recipe> (e.g. 6.1.192-runvm-1a2b3c4d, version
# 6.1.192-runvm) with its modules, and makes it the store's default unless
# the administrator chose another with `runvm kernel default`.
#
# The build is cached: a store entry records the recipe it was built from
# (the fragment, this script, the source package's version) and is rebuilt
# only when that changes. A new build never replaces a kernel a running
# container boots: it is a new entry, and older runvm builds are removed
# only once no container uses them. Object files stay in $RUNVM_KBUILD,
# so a changed fragment rebuilds only what it touches.
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

if [ "${1:-}" != --check ]; then
    # The source (about 140 MB) and the build tools; apt_install skips
    # what is there.
    # lz4: kernel/runvm.config compresses the kernel with it (kbuild's
    # pipeline would not notice it missing; see the size check below).
    apt_install "$SRC_PKG" bc bison flex libelf-dev libssl-dev gcc make xz-utils kmod cpio lz4
elif ! dpkg-query -W -f='${Status}' "$SRC_PKG" 2>/dev/null | grep -q 'ok installed'; then
    echo stale
    exit 0
fi
src_version=$(dpkg-query -W -f='${Version}' "$SRC_PKG")
recipe=$( { echo "$src_version"; cat "$FRAGMENT" "$0"; } | sha256sum | cut -c1-16)

current() { # the store entry built from this recipe, if there is one
    local f
    for f in "$KDIR"/*/.recipe; do
        if [ -f "$f" ] && [ "$(cat "$f")" = "$recipe" ]; then
            dirname "$f"
            return 0
        fi
    done
}
if [ "${1:-}" = --check ]; then
    if [ -n "$(current)" ]; then echo current; else echo stale; fi
    exit 0
fi

# One build at a time (two checkouts on one machine share the build tree).
mkdir -p "$BUILD" "$KDIR"
exec 9>"$BUILD/.lock"
flock -n 9 || { say "waiting for another kernel build to finish ($BUILD/.lock)"; flock 9; }
# The default when this run began: a build it stops being the default of
# is removed only by a later run, never while a container being created
# may still have read its name.
initial_default=$(cat "$KDIR/default" 2>/dev/null || true)

# users DIR: the pids of the processes whose root has the kernel of store
# entry DIR at /runvm/vmlinuz (runvm binds it there at create, before the
# supervisor runs: every process is looked at, whatever its name).
users() {
    local f p want
    for f in "$1"/boot/vmlinuz-* "$1"/boot/vmlinux-*; do
        [ -f "$f" ] || continue
        want=$(stat -L -c %d:%i "$f")
        for p in /proc/[0-9]*; do
            if [ "$(stat -L -c %d:%i "$p/root/runvm/vmlinuz" 2>/dev/null || true)" = "$want" ]; then
                echo "${p#/proc/}"
            fi
        done
    done
    return 0
}

# set_default NAME: the store's default, unless the administrator picked
# a kernel that is not one of runvm's builds (Debian's, one added by
# hand): that choice stays. A default naming nothing in the store is
# replaced.
set_default() {
    local current
    current=$(cat "$KDIR/default" 2>/dev/null || true)
    if [ "$current" = "$1" ]; then
        return 0
    elif [ -z "$current" ] || [ ! -d "$KDIR/$current" ] || [ -f "$KDIR/$current/.recipe" ]; then
        printf '%s\n' "$1" >"$KDIR/.default.new"
        mv "$KDIR/.default.new" "$KDIR/default"
        say "default guest kernel: $1"
    else
        say "the default guest kernel stays $current (chosen with runvm kernel default); runvm's own is $1"
    fi
}

# prune_old KEEP: removes runvm's older builds (store entries with a
# .recipe) that no running container boots and that are not the default.
prune_old() {
    local d name pids
    for d in "$KDIR"/*/; do
        d=${d%/}
        name=${d##*/}
        if [ ! -f "$d/.recipe" ] || [ "$name" = "$1" ] || [ "$name" = "$initial_default" ] ||
            [ "$name" = "$(cat "$KDIR/default" 2>/dev/null || true)" ]; then
            continue
        fi
        pids=$(users "$d" | sort -u | tr '\n' ' ')
        if [ -n "$pids" ]; then
            say "keeping the older kernel $name: running containers boot it (pids $pids); run make kernel again once they have stopped"
        else
            rm -rf "$d"
            say "removed the older kernel $name"
        fi
    done
}

built=$(current)
if [ -n "$built" ]; then
    set_default "${built##*/}"
    prune_old "${built##*/}"
    exit 0
fi

tree="$BUILD/$SRC_PKG-$src_version"
if [ ! -f "$tree/.unpacked" ]; then
    # Trees of older source versions go: 1.5 GB each.
    find "$BUILD" -mindepth 1 -maxdepth 1 -type d -name "$SRC_PKG-*" ! -name "${tree##*/}" -exec rm -rf {} +
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
        echo "runvm: kernel/runvm.config asks for '$want' but the configuration has '$got'" >&2
        unapplied=1
    fi
done <"$FRAGMENT"
[ "$unapplied" = 0 ] || die "kernel/runvm.config does not apply to $SRC_PKG $src_version: a dependency of the lines above is missing from it, or the symbol was renamed or removed in this source version"

say "building the runvm guest kernel on $jobs cores (about 5 minutes on 2)"
t0=$(date +%s)
# The compressed payload is made anew: kbuild would keep one that an
# earlier build without the compressor left (see the size check below).
rm -f "$out"/arch/x86/boot/compressed/vmlinux.bin.* "$out/arch/x86/boot/bzImage"
make -s -C "$tree" O="$out" ARCH=x86_64 -j"$jobs" bzImage modules
release=$(make -s --no-print-directory -C "$tree" O="$out" ARCH=x86_64 kernelrelease)
say "built $release in $(( $(date +%s) - t0 )) s"
# kbuild pipes the kernel through its compressor inside a { …; } group whose
# status it does not check: a missing compressor leaves a bzImage of the
# decompressor alone (some 30 KB), which would halt every guest at boot.
bzimage_size=$(stat -c %s "$out/arch/x86/boot/bzImage")
[ "$bzimage_size" -gt $((1024 * 1024)) ] ||
    die "the built bzImage is $bzimage_size bytes, too small to hold a kernel: its compressor (lz4, for CONFIG_KERNEL_LZ4) failed or is missing; install lz4 and run make kernel again"

name="$release-${recipe:0:8}"
tmp="$KDIR/$name.partial"
rm -rf "$tmp"; mkdir -p "$tmp/boot"
trap 'rm -rf "$tmp"' EXIT
# Only the bzImage: its decompressor is what applies KASLR (an
# uncompressed boot/vmlinux-* would boot at its PVH entry, 70 ms faster
# under TCG, always at the same address).
cp "$out/arch/x86/boot/bzImage" "$tmp/boot/vmlinuz-$release"
cp "$out/.config" "$tmp/boot/config-$release"
make -s -C "$tree" O="$out" ARCH=x86_64 INSTALL_MOD_PATH="$tmp" INSTALL_MOD_STRIP=1 DEPMOD=/bin/true modules_install
rm -f "$tmp/lib/modules/$release/build" "$tmp/lib/modules/$release/source"
depmod -b "$tmp" "$release"
echo "$recipe" >"$tmp/.recipe"
chmod 0755 "$tmp"
rm -rf "${KDIR:?}/$name"
mv "$tmp" "$KDIR/$name"
trap - EXIT
say "added kernel $name ($release) to the store $KDIR"
set_default "$name"
prune_old "$name"
