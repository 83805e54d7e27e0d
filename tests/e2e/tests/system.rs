//! System workloads: systemd as the container's init, `--privileged`
//! that is privileged in the guest only, and the guest's cgroup file
//! systems (`RUNVM_CGROUPFS`).

use std::time::{Duration, Instant};

use runvm_e2e::*;

/// Debian bookworm with systemd-sysv, `STOPSIGNAL SIGRTMIN+3` (made by
/// scripts/build-test-images.sh with mmdebstrap).
const SYSTEMD_IMAGE: &str = "runvm-test/debian-systemd";

/// Waits for systemd to finish booting; returns its state (`running`, or
/// `degraded` with the failed units listed).
fn wait_booted(c: &Container) -> String {
    poll_until(
        "systemd to finish booting",
        Duration::from_secs(240),
        || {
            let r = docker(
                &["exec", &c.name, "systemctl", "is-system-running", "--wait"],
                None,
            );
            let state = r.stdout_str().trim().to_string();
            match state.as_str() {
                "running" => Some(state),
                "degraded" => {
                    let failed = docker(
                        &["exec", &c.name, "systemctl", "--failed", "--no-legend"],
                        None,
                    );
                    Some(format!("degraded: {}", failed.stdout_str().trim()))
                }
                _ => None,
            }
        },
    )
}

/// `docker stop`, timed; returns (seconds, exit code).
fn stop(c: &Container) -> (f64, i32) {
    let start = Instant::now();
    docker(&["stop", &c.name], None).assert_code(0, "docker stop");
    let secs = start.elapsed().as_secs_f64();
    let code: i32 = c.inspect("{{.State.ExitCode}}").parse().unwrap();
    (secs, code)
}

#[e2e_test]
fn systemd_boots_answers_exec_logs_its_boot_and_stops_cleanly() {
    // The image's STOPSIGNAL (SIGRTMIN+3, halt), and plain SIGTERM (which
    // systemd would take as "re-execute"; runvm makes it a power-off).
    for stop_signal in [None, Some("SIGTERM")] {
        let mut args = vec!["--privileged"];
        if let Some(s) = stop_signal {
            args.extend(["--stop-signal", s]);
        }
        args.push(SYSTEMD_IMAGE);
        let c = Container::run_detached("systemd", "runvm", &args);
        let state = wait_booted(&c);
        assert!(
            state == "running" || state.starts_with("degraded"),
            "{state}"
        );
        eprintln!("systemd ({stop_signal:?}): {state}");
        let journal = docker(
            &[
                "exec",
                &c.name,
                "journalctl",
                "-b",
                "--no-pager",
                "-q",
                "-n",
                "5",
            ],
            None,
        );
        journal.assert_code(0, "journalctl in the container");
        let logs = c.logs();
        assert!(
            logs.stdout_str().contains("Welcome to Debian GNU/Linux 12"),
            "docker logs lacks systemd's boot output:\n{}",
            logs.describe()
        );
        let (secs, code) = stop(&c);
        assert_eq!(code, 0, "systemd's power-off is a clean exit");
        assert!(
            secs < 9.0,
            "docker stop took {secs:.1} s, the timeout is 10 s"
        );
        eprintln!("systemd ({stop_signal:?}): docker stop took {secs:.1} s");
    }
}

/// Without `--privileged` systemd cannot mount its cgroup file system:
/// what happens is what the README says.
#[e2e_test]
fn systemd_without_privileges_is_as_documented() {
    let c = Container::run_detached("systemd-plain", "runvm", &[SYSTEMD_IMAGE]);
    let code = c.wait_exit();
    let logs = c.logs();
    assert_ne!(code, 0, "{}", logs.describe());
    assert!(
        logs.stdout_str().contains("Failed to mount")
            || logs.stderr_str().contains("Failed to mount"),
        "{}",
        logs.describe()
    );
}

/// The CapEff of `pid` on the host.
fn host_cap_eff(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// What the host side of a runvm container has: the CapEff of its
/// supervisor and of QEMU, and the device nodes in the supervisor's /dev.
fn host_side(c: &Container) -> (String, String, String) {
    let supervisor: u32 = c.inspect("{{.State.Pid}}").parse().unwrap();
    let qemu = c.host_pids_of("qemu-system-x86");
    assert_eq!(qemu.len(), 1, "{qemu:?}");
    let devs = host_sh(&format!(
        "ls -1 /proc/{supervisor}/root/dev | sort | tr '\\n' ' '"
    ));
    (
        host_cap_eff(supervisor),
        host_cap_eff(qemu[0]),
        devs.stdout_str(),
    )
}

#[e2e_test]
fn privileged_is_privileged_in_the_guest_only() {
    let script = "grep CapEff /proc/self/status | cut -f2; touch /ready; sleep 600";
    let plain = Container::run_detached("unpriv", "runvm", &[IMAGE, "sh", "-c", script]);
    let privileged = Container::run_detached(
        "priv",
        "runvm",
        &["--privileged", IMAGE, "sh", "-c", script],
    );
    for c in [&plain, &privileged] {
        c.wait_for_file("the guest", "/ready", Duration::from_secs(120));
    }
    // In the guest: every capability Docker grants for --privileged (the
    // config's list: Docker 20.10 knows the 38 up to CAP_AUDIT_READ; the
    // guest kernel's newer ones, PERFMON, BPF, CHECKPOINT_RESTORE, are not
    // in it, as under runc).
    let guest_caps = privileged.logs().stdout_str().trim().to_string();
    let all_docker_knows = (1u64 << 38) - 1;
    assert_eq!(
        u64::from_str_radix(&guest_caps, 16).unwrap() & all_docker_knows,
        all_docker_knows,
        "the privileged workload's CapEff in the guest: {guest_caps}"
    );
    assert_ne!(plain.logs().stdout_str().trim(), guest_caps);
    // On the host: the same as without --privileged, and no host device.
    let (sup_plain, qemu_plain, dev_plain) = host_side(&plain);
    let (sup_priv, qemu_priv, dev_priv) = host_side(&privileged);
    assert_eq!(sup_priv, sup_plain, "the supervisor's CapEff");
    assert_eq!(qemu_priv, qemu_plain, "QEMU's CapEff");
    assert_eq!(qemu_priv, "0000000000000000", "QEMU has no capability");
    assert_eq!(dev_priv, dev_plain, "the host side's /dev");
    for host_only in ["sda", "vda", "nvme0", "mem", "kmsg"] {
        assert!(
            !dev_priv.split_whitespace().any(|d| d == host_only),
            "{host_only} in the host side's /dev: {dev_priv}"
        );
    }
}

#[e2e_test]
fn runvm_cgroupfs_mounts_what_it_names() {
    let show = |value: Option<&str>| {
        let mut args = vec![];
        let env;
        if let Some(v) = value {
            env = format!("RUNVM_CGROUPFS={v}");
            args.extend(["-e", env.as_str()]);
        }
        let r = run_one(
            "runvm",
            &args,
            &[
                IMAGE,
                "sh",
                "-c",
                "grep -E ' /sys/fs/cgroup' /proc/mounts | cut -d' ' -f2,3 | sort",
            ],
            None,
        );
        r.assert_code(0, "RUNVM_CGROUPFS");
        r.stdout_str()
    };
    assert_eq!(show(None), "/sys/fs/cgroup cgroup2\n");
    assert_eq!(show(Some("2")), "/sys/fs/cgroup cgroup2\n");
    assert_eq!(show(Some("none")), "");
    let v1 = show(Some("1"));
    assert!(v1.contains("/sys/fs/cgroup tmpfs\n"), "{v1}");
    assert!(v1.contains("/sys/fs/cgroup/cpu,cpuacct cgroup\n"), "{v1}");
    assert!(v1.contains("/sys/fs/cgroup/memory cgroup\n"), "{v1}");
    assert!(!v1.contains("cgroup2"), "{v1}");
    let hybrid = show(Some("hybrid"));
    assert!(
        hybrid.contains("/sys/fs/cgroup/memory cgroup\n"),
        "{hybrid}"
    );
    assert!(
        hybrid.contains("/sys/fs/cgroup/unified cgroup2\n"),
        "{hybrid}"
    );
}

/// `--init` as under runc: Docker's docker-init is PID 1 and the command
/// its child; orphans are reaped; a SIGTERM to PID 1 reaches the command,
/// whose death by it is the container's exit status.
#[e2e_test]
fn init_flag_behaves_as_under_runc() {
    let script = "tr '\\0' ' ' </proc/1/cmdline; echo; \
                  (sleep 0.2 &); sleep 1; \
                  echo zombies: $(ps -o stat | grep -c '^Z'); \
                  kill -TERM 1; sleep 5; echo not reached";
    let (runc, runvm) = same_sh(&["--init"], script);
    assert_eq!(runc.code, 143, "{}", runc.describe());
    assert!(
        runvm.stdout_str().starts_with("/sbin/docker-init -- sh -c"),
        "{}",
        runvm.describe()
    );
    assert!(runvm.stdout_str().contains("zombies: 0\n"));
}
