//! The container's confinement, runc vs runvm: masked and read-only paths,
//! read-only /sys, the container's seccomp profile (applied in the guest,
//! to the workload and to execs), and runvm's own seccomp profile on the
//! host side, which no container option lifts.

use std::time::Duration;

use runvm_e2e::*;

const BOOT: Duration = Duration::from_secs(90);

/// Whether the host kernel has `path`: runc's container shows the host's
/// /proc, runvm's the guest kernel's, and a kernel built without a feature
/// lacks its file (runc then skips the mask, and the file does not exist).
fn host_has(path: &str) -> bool {
    std::path::Path::new(path).exists()
}

/// Compares exit code and stdout, and stderr too when the host kernel has
/// `path`; without it runc's stderr says the file does not exist, where
/// runvm's guest has it and masks or protects it.
fn same_unless_host_lacks(path: &str, runc: &Run, runvm: &Run, what: &str) {
    if host_has(path) {
        assert_same(runc, runvm, what);
    } else {
        assert_eq!(
            runc.code,
            runvm.code,
            "{what}: {}\n{}",
            runc.describe(),
            runvm.describe()
        );
        assert_eq!(
            runc.stdout,
            runvm.stdout,
            "{what}: {}\n{}",
            runc.describe(),
            runvm.describe()
        );
    }
}

#[e2e_test]
fn proc_writes_fail_as_under_runc() {
    // /proc/sys and /proc/sysrq-trigger are Docker's read-only paths.
    let (_, runvm) = same_sh(&[], "echo x > /proc/sys/kernel/core_pattern");
    assert_ne!(runvm.code, 0, "core_pattern was writable");
    assert!(
        runvm.stderr_str().contains("Read-only file system"),
        "{}",
        runvm.describe()
    );
    let script = "echo 1 > /proc/sysrq-trigger";
    let (runc, runvm) = run_both(&[], &[IMAGE, "sh", "-c", script], None);
    same_unless_host_lacks("/proc/sysrq-trigger", &runc, &runvm, script);
    assert_ne!(runvm.code, 0, "sysrq-trigger was writable");
    assert!(
        runvm.stderr_str().contains("Read-only file system"),
        "{}",
        runvm.describe()
    );
}

#[e2e_test]
fn masked_paths_read_as_under_runc() {
    // Files read as /dev/null, directories as an empty tmpfs.
    let (_, runvm) = same_sh(
        &[],
        "cat /proc/timer_list; echo rc=$?; ls -A /sys/firmware; echo rc=$?",
    );
    assert_eq!(runvm.stdout_str(), "rc=0\nrc=0\n", "{}", runvm.describe());
    let script = "cat /proc/kcore | head -c1 | wc -c";
    let (runc, runvm) = run_both(&[], &[IMAGE, "sh", "-c", script], None);
    same_unless_host_lacks("/proc/kcore", &runc, &runvm, script);
    assert_eq!(runvm.stdout_str(), "0\n", "{}", runvm.describe());
    assert_eq!(runvm.stderr_str(), "", "{}", runvm.describe());
    // Masked directories are read-only.
    let (_, runvm) = same_sh(&[], "touch /sys/firmware/x");
    assert_ne!(runvm.code, 0);
}

#[e2e_test]
fn sys_is_read_only_as_under_runc() {
    let (_, runvm) = same_sh(&[], "touch /sys/x; echo 1 > /sys/kernel/uevent_helper");
    assert!(
        runvm.stderr_str().contains("Read-only file system"),
        "{}",
        runvm.describe()
    );
    // (/sys/fs/cgroup is read-only too, checked below: a runc container on
    // a cgroup v1 host has a writable tmpfs there, a guest has cgroup2.)
}

/// Mount options (`ro`/`rw`) of /sys and /sys/fs/cgroup, whether
/// /proc/timer_list shows its content, and the seccomp mode.
const SHOW_CONFINEMENT: &str =
    "grep -E ' /sys(/fs/cgroup)? (sysfs|cgroup2) ' /proc/mounts | cut -d' ' -f2,4 | cut -d, -f1; \
     head -c1 /proc/timer_list | grep -q . && echo timer_list-visible; \
     grep '^Seccomp:' /proc/self/status";

#[e2e_test]
fn the_guest_follows_the_config_whatever_it_says() {
    let show = |opts: &[&str]| {
        let r = run_one("runvm", opts, &[IMAGE, "sh", "-c", SHOW_CONFINEMENT], None);
        r.assert_code(0, &format!("runvm {}", opts.join(" ")));
        r.stdout_str()
    };
    // Docker's default: read-only kernel filesystems, masked paths, a filter.
    assert_eq!(show(&[]), "/sys ro\n/sys/fs/cgroup ro\nSeccomp:\t2\n");
    // No masked or read-only paths, same as runc.
    let (runc, runvm) = run_both(
        &["--security-opt", "systempaths=unconfined"],
        &[
            IMAGE,
            "sh",
            "-c",
            "head -c1 /proc/timer_list | grep -q . && echo visible; grep -c ' /proc/' /proc/mounts",
        ],
        None,
    );
    assert_same(&runc, &runvm, "systempaths=unconfined");
    assert_eq!(runvm.stdout_str(), "visible\n0\n", "{}", runvm.describe());

    // --privileged: Docker's config has no masked or read-only paths, a
    // read-write /sys and no seccomp profile, and the guest follows it.
    // (runc cannot run --privileged on hosts whose bounding set lacks a
    // capability, as this project's machines; runvm must, as the host side
    // never needs them: a failure here is a failure, not a skip.)
    let r = run_one(
        "runvm",
        &["--privileged"],
        &[IMAGE, "sh", "-c", SHOW_CONFINEMENT],
        None,
    );
    r.assert_code(0, "runvm --privileged");
    assert_eq!(
        r.stdout_str(),
        "/sys rw\n/sys/fs/cgroup rw\ntimer_list-visible\nSeccomp:\t0\n",
        "{}",
        r.describe()
    );
}

/// A profile that allows everything but mkdir/mkdirat (EPERM).
fn no_mkdir_profile() -> tempfile::NamedTempFile {
    let f = tempfile::Builder::new()
        .prefix("runvm-e2e-seccomp-")
        .suffix(".json")
        .tempfile()
        .expect("temp file");
    std::fs::write(
        f.path(),
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}"#,
    )
    .expect("write the profile");
    f
}

#[e2e_test]
fn a_custom_profile_applies_to_the_workload_and_to_execs() {
    let profile = no_mkdir_profile();
    let opt = format!("seccomp={}", profile.path().display());
    // The run: mkdir fails identically, the rest of the container works.
    let (_, runvm) = same_sh(
        &["--security-opt", &opt],
        "mkdir /tmp/x; echo rc=$?; echo ok > /tmp/y; cat /tmp/y",
    );
    assert!(
        runvm.stderr_str().contains("Operation not permitted"),
        "{}",
        runvm.describe()
    );
    assert_eq!(runvm.stdout_str(), "rc=1\nok\n");

    // An exec gets the container's filter too.
    same_execs(&["--security-opt", &opt]);
}

/// Starts a runc and a runvm container with `run_opts`, then compares
/// execs that hit the no-mkdir profile.
fn same_execs(run_opts: &[&str]) {
    let _slots = vm_slots(1);
    let start = |runtime: &str| {
        let mut args = run_opts.to_vec();
        args.extend([IMAGE, "sh", "-c", "echo up; exec sleep 600"]);
        let c = Container::run_detached(&format!("seccomp-{runtime}"), runtime, &args);
        c.wait_for_log("up", BOOT);
        c
    };
    let a = start("runc");
    let b = start("runvm");
    let exec = |c: &Container, opts: &[&str], cmd: &[&str]| {
        let mut args = vec!["exec"];
        args.extend_from_slice(opts);
        args.push(c.name.as_str());
        args.extend_from_slice(cmd);
        let mut r = docker(&args, None);
        r.container_name = Some(c.name.clone());
        r
    };
    for (opts, cmd) in [
        (&[][..], &["mkdir", "/tmp/z"][..]),
        (
            &[][..],
            &[
                "sh",
                "-c",
                "mkdir /tmp/z; echo rc=$?; grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status",
            ][..],
        ),
        (&["-u", "1000:1000"][..], &["mkdir", "/tmp/z"][..]),
        (&["-t"][..], &["mkdir", "/tmp/z"][..]),
    ] {
        let (ra, rb) = (exec(&a, opts, cmd), exec(&b, opts, cmd));
        assert_same(
            &ra,
            &rb,
            &format!("docker exec {} {}", opts.join(" "), cmd.join(" ")),
        );
        assert!(
            String::from_utf8_lossy(&rb.stdout).contains("Operation not permitted")
                || rb.stderr_str().contains("Operation not permitted"),
            "{}",
            rb.describe()
        );
    }
}

#[e2e_test]
fn a_custom_profile_with_no_new_privileges() {
    // With no-new-privileges the filter goes in last, after the user change.
    let profile = no_mkdir_profile();
    let opt = format!("seccomp={}", profile.path().display());
    let nnp = [
        "--security-opt",
        &opt,
        "--security-opt",
        "no-new-privileges",
    ];
    let mut user = nnp.to_vec();
    user.extend(["-u", "1000:1000"]);
    let (_, runvm) = same_sh(
        &user,
        "mkdir /tmp/x; echo rc=$?; grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status",
    );
    assert_eq!(
        runvm.stdout_str(),
        "rc=1\nNoNewPrivs:\t1\nSeccomp:\t2\n",
        "{}",
        runvm.describe()
    );
    same_execs(&nnp);
}

#[e2e_test]
fn dockers_default_profile_blocks_and_unconfined_lifts() {
    // Docker's default profile allows unshare only with CAP_SYS_ADMIN; a
    // user namespace needs no capability, so unconfined lets it through.
    let (runc, runvm) = same_sh(&[], "unshare -U true");
    assert_ne!(runc.code, 0, "{}", runc.describe());
    assert!(
        runvm.stderr_str().contains("Operation not permitted"),
        "{}",
        runvm.describe()
    );
    let (runc, _) = same_sh(
        &["--security-opt", "seccomp=unconfined"],
        "unshare -U true; echo rc=$?",
    );
    assert_eq!(runc.stdout_str(), "rc=0\n", "{}", runc.describe());
    same_sh(
        &[],
        "grep -E '^(Seccomp|Seccomp_filters):' /proc/self/status",
    );
}

#[e2e_test]
fn the_host_side_is_always_confined_by_runvms_profile() {
    // Whatever the container asks for, the supervisor and QEMU run under a
    // filter (runvm's own): never unconfined.
    let _slots = vm_slots(1);
    for opts in [
        &["--security-opt", "seccomp=unconfined"][..],
        &["--privileged"][..],
    ] {
        let c = Container::new("host-seccomp");
        let mut args = vec!["run", "-d", "--name", c.name.as_str(), "--runtime=runvm"];
        args.extend_from_slice(opts);
        args.extend([IMAGE, "sh", "-c", "echo up; exec sleep 600"]);
        let r = docker(&args, None);
        r.assert_code(0, &format!("docker run -d {opts:?}"));
        c.wait_for_log("up", BOOT);
        let pid = c.inspect("{{.State.Pid}}");
        let r = host_sh(&format!(
            "for p in {pid} $(cat /proc/{pid}/task/*/children); do \
               printf '%s %s\\n' \"$(cat /proc/$p/comm)\" \"$(grep '^Seccomp:' /proc/$p/status | cut -f2)\"; \
             done | sort -u"
        ));
        r.assert_code(0, "read the helpers' seccomp status");
        let out = r.stdout_str();
        assert!(out.contains("runvm-superviso 2\n"), "{opts:?}: {out}");
        assert!(out.contains("qemu-system-x86 2\n"), "{opts:?}: {out}");
        assert!(out.contains("virtiofsd 2\n"), "{opts:?}: {out}");
        assert!(
            !out.contains(" 0\n"),
            "{opts:?}: an unconfined helper: {out}"
        );
    }
}

/// A privileged workload (runc refuses --privileged on some hosts, so this
/// is runvm's side alone) cannot lift the limits the guest holds it to:
/// its cgroup is the root of its cgroup namespace, a delegation boundary
/// (nsdelegate); unmounting its /proc shows nothing of the VM's; its
/// image cannot trade the cgroup for v1 hierarchies.
#[e2e_test]
fn a_privileged_workload_cannot_lift_its_limits() {
    let script = "echo max > /sys/fs/cgroup/memory.max 2>/dev/null; echo mem=$?; \
                  echo max > /sys/fs/cgroup/pids.max 2>/dev/null; echo pids=$?; \
                  cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max; \
                  umount -l /proc; test -e /proc/1/cmdline; echo agent_visible=$?; \
                  dd if=/dev/zero of=/dev/null bs=100M count=1 2>/dev/null; echo dd=$?";
    let run = run_one(
        "runvm",
        &[
            "--privileged",
            "-m",
            "64m",
            "--memory-swap",
            "64m",
            "--pids-limit",
            "50",
        ],
        &[IMAGE, "sh", "-c", script],
        None,
    );
    run.assert_code(0, "a privileged workload with limits");
    assert_eq!(
        run.stdout_str(),
        "mem=1\npids=1\n67108864\n50\nagent_visible=1\ndd=137\n",
        "{}",
        run.describe()
    );
    let run = run_one(
        "runvm",
        &["--pids-limit", "10", "-e", "RUNVM_CGROUPFS=1"],
        &[IMAGE, "true"],
        None,
    );
    run.assert_code(125, "limits with RUNVM_CGROUPFS=1");
    assert!(
        run.stderr_str().contains("RUNVM_CGROUPFS=1 cannot hold"),
        "{}",
        run.describe()
    );
}
