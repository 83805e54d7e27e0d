#!/usr/bin/env bash
# Builds the local images the demo and the tests use (no registry needed).
#
# Each image carries a label with the hash of its recipe (this script and
# the binaries it copies: busybox and runvm's nettool, given as $1): an
# image built by an older recipe, on a machine with another busybox, or
# with another nettool, is rebuilt, never trusted.
. "$(dirname "$0")/lib.sh"
need_root
NETTOOL=${1:?usage: build-test-images.sh PATH-TO-STATIC-NETTOOL}
[ -x "$NETTOOL" ] || die "$NETTOOL is missing: run make images"
IMAGE=runvm-test/busybox
recipe=$( { cat "$0"; sha256sum /bin/busybox; sha256sum <"$NETTOOL"; } | sha256sum | cut -c1-16)
have=$(docker image inspect -f '{{index .Config.Labels "io.runvm.recipe"}}' "$IMAGE" 2>/dev/null || true)
if [ "$have" != "$recipe" ]; then
    say "building image $IMAGE from Debian's busybox-static (recipe $recipe)"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    mkdir -p "$tmp/bin" "$tmp/etc" "$tmp/tmp" "$tmp/root" "$tmp/home/user"
    chmod 1777 "$tmp/tmp"
    chown 1000:1000 "$tmp/home/user"
    cp /bin/busybox "$tmp/bin/busybox"
    cp "$NETTOOL" "$tmp/bin/nettool"
    for a in $(/bin/busybox --list); do
        [ "$a" = busybox ] || ln -s busybox "$tmp/bin/$a"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\nuser:x:1000:1000:user:/home/user:/bin/sh\n' >"$tmp/etc/passwd"
    printf 'root:x:0:\nusers:x:100:user\nuser:x:1000:\nnogroup:x:65534:\n' >"$tmp/etc/group"
    tar -C "$tmp" -c . | docker import \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c "LABEL io.runvm.recipe=$recipe" \
        -c 'CMD ["sh"]' - "$IMAGE" >/dev/null
fi
