//! The guest kernel's modules are in the guest at `/lib/modules/<version>`
//! (read-only, from runvm's kernel store, not from the image), so the
//! workload's `modprobe` works where its capabilities allow it.

use runvm_e2e::*;

#[e2e_test]
fn modprobe_loads_a_module_of_the_guest_kernel() {
    let script = "v=$(uname -r); test -f /lib/modules/$v/modules.dep && echo modules-there; \
                  touch /lib/modules/$v/x 2>/dev/null || echo read-only; \
                  modprobe dummy && ip link add d0 type dummy && echo dummy-loaded";
    let r = run_one(
        "runvm",
        &["--cap-add", "SYS_MODULE", "--cap-add", "NET_ADMIN"],
        &[IMAGE, "sh", "-c", script],
        None,
    );
    r.assert_code(0, "modprobe in the guest");
    assert_eq!(
        r.stdout_str(),
        "modules-there\nread-only\ndummy-loaded\n",
        "{}",
        r.describe()
    );
    // Without CAP_SYS_MODULE the workload may not load one, as under runc.
    let r = run_one(
        "runvm",
        &[],
        &[
            IMAGE,
            "sh",
            "-c",
            "modprobe dummy 2>/dev/null || echo refused",
        ],
        None,
    );
    assert_eq!(r.stdout_str(), "refused\n", "{}", r.describe());
    // Even root in the guest, remounting them read-write, cannot change
    // the store's modules, which every container shares: virtiofsd serves
    // them read-only.
    let r = run_one(
        "runvm",
        &["--privileged"],
        &[
            IMAGE,
            "sh",
            "-c",
            "v=$(uname -r); mount -o remount,rw /lib/modules/$v; \
             touch /lib/modules/$v/planted 2>/dev/null || echo refused",
        ],
        None,
    );
    assert_eq!(r.stdout_str(), "refused\n", "{}", r.describe());
    let planted = host_sh("ls /var/lib/runvm/kernel/*/lib/modules/*/planted 2>/dev/null | wc -l");
    assert_eq!(planted.stdout_str().trim(), "0");
}

/// `RUNVM_KERNEL_APPEND` adds parameters to the guest kernel's command
/// line, after runvm's own.
#[e2e_test]
fn kernel_parameters_reach_the_guest() {
    let r = run_one(
        "runvm",
        &[
            "-e",
            "RUNVM_KERNEL_APPEND=mitigations=off runvm_e2e_test.flag=1",
        ],
        &[IMAGE, "cat", "/proc/cmdline"],
        None,
    );
    r.assert_code(0, "RUNVM_KERNEL_APPEND");
    assert!(
        r.stdout_str()
            .trim_end()
            .ends_with(" mitigations=off runvm_e2e_test.flag=1"),
        "{}",
        r.describe()
    );
}

/// The kernel loads what it asks for by itself (a file system at mount, a
/// link type), from the kernel store, for any container; but a driver
/// asked for at the open of a device node only when the container may
/// open any device (`--privileged`), as runc's device cgroup refuses the
/// open otherwise. An image's own /sbin/modprobe is never the kernel's.
#[e2e_test]
fn the_kernel_loads_modules_on_request_within_the_device_cgroup() {
    let script = "printf '#!/bin/sh\\ntouch /tmp/image-modprobe-ran\\n' >/sbin/modprobe; \
                  chmod 755 /sbin/modprobe; \
                  ip link add br-e2e type bridge; \
                  mknod /tmp/nvram c 10 144; cat /tmp/nvram >/dev/null 2>&1; \
                  cut -d' ' -f1 /proc/modules | grep -E '^(bridge|nvram)$' | sort; \
                  test -e /tmp/image-modprobe-ran && echo image modprobe ran; true";
    let plain = run_one(
        "runvm",
        &["--cap-add", "NET_ADMIN"],
        &[IMAGE, "sh", "-c", script],
        None,
    );
    plain.assert_code(0, "unprivileged");
    assert_eq!(plain.stdout_str(), "bridge\n", "{}", plain.describe());
    let privileged = run_one(
        "runvm",
        &["--privileged"],
        &[IMAGE, "sh", "-c", script],
        None,
    );
    privileged.assert_code(0, "privileged");
    assert_eq!(
        privileged.stdout_str(),
        "bridge\nnvram\n",
        "{}",
        privileged.describe()
    );
}
