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
