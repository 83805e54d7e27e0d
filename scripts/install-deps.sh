#!/usr/bin/env bash
# Installs the Debian packages runvm and its tests need, if missing.
. "$(dirname "$0")/lib.sh"
need_root
command -v cargo >/dev/null || die "cargo not found: install a Rust toolchain (1.88 or newer, e.g. with rustup) first"
# qemu-system-x86: the VMM; docker.io: engine, containerd and runc;
# libseccomp-dev (with libseccomp2): runvm compiles seccomp profiles with it,
# and virtiofsd's build needs it; libcap-ng-dev, pkg-config: to build virtiofsd;
# kmod: depmod for the guest kernel's modules; busybox-static: test images;
# iproute2, procps, util-linux (script): used by the tests; dnsmasq-base:
# the upstream DNS server of the network tests; shellcheck: make lint;
# e2fsprogs, xfsprogs: format the disks of RUNVM_DISKS; e2fsck-static: the
# guest's e2fsck, in its initramfs; podman: runvm under Podman (its table in
# make test), with netavark and aardvark-dns, its network stack the table
# runs on (without Recommends, Podman 4.3 would fall back to CNI's plugins);
# gcc, libc6-dev: cargo's linker and the static libc of the agent (and of
# virtiofsd's build), needed before the first cargo build.
apt_install qemu-system-x86 docker.io runc libseccomp-dev libcap-ng-dev pkg-config \
    kmod busybox-static iproute2 procps util-linux ca-certificates dnsmasq-base shellcheck \
    e2fsprogs xfsprogs e2fsck-static podman netavark aardvark-dns gcc libc6-dev
