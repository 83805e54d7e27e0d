#!/usr/bin/env bash
# Builds the local images the demo and the tests use (no registry needed).
. "$(dirname "$0")/lib.sh"
need_root
if ! docker image inspect runvm-test/busybox >/dev/null 2>&1; then
    say "building image runvm-test/busybox from Debian's busybox-static"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    mkdir -p "$tmp/bin" "$tmp/etc" "$tmp/tmp" "$tmp/root"
    chmod 1777 "$tmp/tmp"
    cp /bin/busybox "$tmp/bin/busybox"
    for a in $(/bin/busybox --list); do
        [ "$a" = busybox ] || ln -s busybox "$tmp/bin/$a"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\nuser:x:1000:1000:user:/home/user:/bin/sh\n' >"$tmp/etc/passwd"
    printf 'root:x:0:\nusers:x:100:user\nuser:x:1000:\nnogroup:x:65534:\n' >"$tmp/etc/group"
    tar -C "$tmp" -c . | docker import \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'CMD ["sh"]' - runvm-test/busybox >/dev/null
fi
