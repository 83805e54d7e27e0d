#!/usr/bin/env bash
# Builds the local images the demo and the tests use (no registry needed).
#
# Each image carries a label with the hash of its recipe (the code that
# makes it and the binaries it copies: busybox and runvm's nettool, given as
# $1, and for the kernel image the Debian package it unpacks): an image built by an
# older recipe, on a machine with another busybox, or with another
# nettool or kernel package, is rebuilt, never trusted.
#
#   runvm-test/busybox        Debian's busybox-static, nettool, users
#   runvm-test/kernel-debian  the same plus a Debian 6.12 cloud kernel
#                             (/boot/vmlinuz-<ver>, /lib/modules/<ver> with
#                             its xz-compressed modules and modules.dep), a
#                             kernel other than runvm's default one
#   runvm-test/debian-systemd Debian bookworm booting systemd
#   runvm-test/dockerd        Debian bookworm with docker.io, running
#                             dockerd; /images/busybox.tar is the busybox
#                             image above, saved, for `docker load`
#   runvm-test/redis          (with --bench only) Debian bookworm running
#                             redis-server, for make bench's time to a
#                             server's first answer
#
# With --demo, only the first (what make demo runs).
. "$(dirname "$0")/lib.sh"
need_root
NETTOOL=${1:?usage: build-test-images.sh PATH-TO-STATIC-NETTOOL [--bench|--demo]}
BENCH=${2:-}
[ -x "$NETTOOL" ] || die "$NETTOOL is missing: run make images"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# have_recipe IMAGE RECIPE: whether IMAGE exists and was built by RECIPE.
# An image of another recipe is remembered, to be removed once rebuilt.
STALE=()
have_recipe() {
    local got
    got=$(docker image inspect -f '{{index .Config.Labels "io.runvm.recipe"}}' "$1" 2>/dev/null || true)
    [ "$got" = "$2" ] && return 0
    [ -n "$got" ] && STALE+=("$(docker image inspect -f '{{.Id}}' "$1")")
    return 1
}

# The images the rebuilt ones replaced, now untagged: removed, unless a
# container still uses one.
remove_stale() {
    local id
    for id in "${STALE[@]}"; do
        if [ "$(docker image inspect -f '{{len .RepoTags}}' "$id" 2>/dev/null)" = 0 ]; then
            docker rmi "$id" >/dev/null 2>&1 || true
        fi
    done
}

# busybox_root DIR: the busybox image's files.
busybox_root() {
    local d=$1
    mkdir -p "$d/bin" "$d/etc" "$d/tmp" "$d/root" "$d/home/user"
    chmod 1777 "$d/tmp"
    chown 1000:1000 "$d/home/user"
    cp /bin/busybox "$d/bin/busybox"
    cp "$NETTOOL" "$d/bin/nettool"
    for a in $(/bin/busybox --list); do
        [ "$a" = busybox ] || ln -s busybox "$d/bin/$a"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\nuser:x:1000:1000:user:/home/user:/bin/sh\n' >"$d/etc/passwd"
    printf 'root:x:0:\nusers:x:100:user\nuser:x:1000:\nnogroup:x:65534:\n' >"$d/etc/group"
}

# import DIR IMAGE RECIPE [LABEL…]: the directory as an image.
import() {
    local d=$1 image=$2 recipe=$3 label
    shift 3
    local changes=(
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
        -c "LABEL io.runvm.recipe=$recipe"
        -c 'CMD ["sh"]'
    )
    for label in "$@"; do
        changes+=(-c "LABEL $label")
    done
    tar -C "$d" -c . | docker import "${changes[@]}" - "$image" >/dev/null
}

# The busybox image's recipe is the code that makes it, not the whole
# script: adding another image does not rebuild it.
base_recipe=$( { declare -f busybox_root import; sha256sum /bin/busybox; sha256sum <"$NETTOOL"; } | sha256sum | cut -c1-16)
IMAGE=runvm-test/busybox
if ! have_recipe "$IMAGE" "$base_recipe"; then
    say "building image $IMAGE from Debian's busybox-static (recipe $base_recipe)"
    busybox_root "$tmp/busybox"
    import "$tmp/busybox" "$IMAGE" "$base_recipe"
fi
if [ "$BENCH" = --demo ]; then
    remove_stale
    exit 0
fi

# A Debian 6.12 cloud kernel from bookworm-backports (or -security): the
# newest one apt knows. Its modules are xz-compressed, so the image tests
# runvm's decompression too; the guest's busybox modprobe reads them as
# they are. The package is unpacked, never installed.
IMAGE=runvm-test/kernel-debian
apt_install dpkg kmod
kernel_pkgs() {
    apt-cache search --names-only '^linux-image-6\.12\.[0-9]+\+deb12-cloud-amd64$' | awk '{print $1}' | sort -V
}
pkgs=$(kernel_pkgs)
if [ -z "$pkgs" ] && [ -z "$APT_UPDATED" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    pkgs=$(kernel_pkgs)
fi
pkg=$(tail -1 <<<"$pkgs")
[ -n "$pkg" ] || die "apt knows no linux-image-6.12.*+deb12-cloud-amd64 package: add bookworm-backports to apt's sources"
kver=${pkg#linux-image-}
pkg_version=$(apt-cache show --no-all-versions "$pkg" | awk '/^Version:/ {print $2; exit}')
recipe=$( { cat "$0"; echo "$base_recipe $pkg=$pkg_version"; } | sha256sum | cut -c1-16)
if ! have_recipe "$IMAGE" "$recipe"; then
    say "building image $IMAGE with $pkg $pkg_version (recipe $recipe)"
    mkdir -p "$tmp/deb" "$tmp/pkg"
    (cd "$tmp/deb" && apt-get download -q "$pkg=$pkg_version" >/dev/null 2>&1) \
        || die "cannot download $pkg $pkg_version with apt-get download"
    dpkg-deb -x "$tmp"/deb/*.deb "$tmp/pkg"
    # Debian's package has no modules.dep: its postinst runs depmod.
    depmod -b "$tmp/pkg" "$kver"
    for f in "boot/vmlinuz-$kver" "lib/modules/$kver/modules.dep"; do
        [ -f "$tmp/pkg/$f" ] || die "$pkg has no /$f"
    done
    busybox_root "$tmp/kernel"
    mkdir -p "$tmp/kernel/boot" "$tmp/kernel/lib/modules"
    cp -a "$tmp/pkg/boot/vmlinuz-$kver" "$tmp/pkg/boot/config-$kver" "$tmp/kernel/boot/"
    cp -a "$tmp/pkg/lib/modules/$kver" "$tmp/kernel/lib/modules/"
    import "$tmp/kernel" "$IMAGE" "$recipe" "io.runvm.kernel=$kver"
fi

# A Debian bookworm system with systemd as its init, made by mmdebstrap
# from Debian's packages (no registry): what the system-workload tests
# boot. STOPSIGNAL SIGRTMIN+3, as systemd images declare it.
IMAGE=runvm-test/debian-systemd
systemd_root() {
    mmdebstrap --quiet --variant=apt \
        --include=systemd-sysv,dbus,iproute2,procps,kmod,e2fsprogs bookworm "$1"
}
recipe=$(declare -f systemd_root | sha256sum | cut -c1-16)
if ! have_recipe "$IMAGE" "$recipe"; then
    apt_install mmdebstrap
    say "building image $IMAGE with mmdebstrap (recipe $recipe)"
    systemd_root "$tmp/systemd.tar"
    docker import -c 'CMD ["/sbin/init"]' "$tmp/systemd.tar" "$IMAGE:base" >/dev/null
    # (docker build's stderr holds a notice about BuildKit: shown only if
    # the build fails.)
    printf 'FROM %s\nLABEL io.runvm.recipe=%s\nSTOPSIGNAL SIGRTMIN+3\n' "$IMAGE:base" "$recipe" |
        docker build -q -t "$IMAGE" - >/dev/null 2>"$tmp/build.err" ||
        { cat "$tmp/build.err" >&2; die "cannot build $IMAGE"; }
    docker rmi "$IMAGE:base" >/dev/null
fi

# A Debian bookworm system with Debian's docker.io, whose command is
# dockerd: the container-engine-in-a-VM tests. The busybox image, saved
# with `docker save`, is baked in at /images/busybox.tar so that the inner
# dockerd has an image to run without a registry; the recipe includes the
# busybox image's, so a new busybox image makes a new tarball.
IMAGE=runvm-test/dockerd
dockerd_root() {
    mmdebstrap --quiet --variant=apt \
        --include=docker.io,iptables,kmod,procps,iproute2,e2fsprogs \
        --customize-hook="mkdir -p \"\$1/images\"" \
        --customize-hook="copy-in $2 /images" \
        bookworm "$1"
}
recipe=$( { declare -f dockerd_root; echo "$base_recipe"; } | sha256sum | cut -c1-16)
if ! have_recipe "$IMAGE" "$recipe"; then
    apt_install mmdebstrap
    say "building image $IMAGE with mmdebstrap (recipe $recipe)"
    docker save -o "$tmp/busybox.tar" runvm-test/busybox
    dockerd_root "$tmp/dockerd.tar" "$tmp/busybox.tar"
    docker import -c 'CMD ["dockerd"]' -c "LABEL io.runvm.recipe=$recipe" \
        "$tmp/dockerd.tar" "$IMAGE" >/dev/null
fi

# Debian's redis-server, listening on every address without protected
# mode (the benchmark asks it from the host): a real server for `make
# bench`, which alone builds it.
IMAGE=runvm-test/redis
redis_root() {
    mmdebstrap --quiet --variant=apt --include=redis-server bookworm "$1"
}
recipe=$(declare -f redis_root | sha256sum | cut -c1-16)
if [ "$BENCH" = --bench ] && ! have_recipe "$IMAGE" "$recipe"; then
    apt_install mmdebstrap
    say "building image $IMAGE with mmdebstrap (recipe $recipe)"
    redis_root "$tmp/redis.tar"
    docker import -c 'CMD ["redis-server", "--protected-mode", "no", "--bind", "0.0.0.0", "--save", ""]' \
        -c "LABEL io.runvm.recipe=$recipe" "$tmp/redis.tar" "$IMAGE" >/dev/null
fi

remove_stale
