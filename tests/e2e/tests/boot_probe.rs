//! `runvm boot-probe`: the default guest boots without a container, the
//! time is reported, and nothing is left behind; bad settings fail in one
//! line. (`make bench` uses it as the floor.)

use std::time::Duration;

use runvm_e2e::*;

/// The tests here compare the temp dir and the process table before and
/// after a probe: they run one at a time, or one sees another's probe.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Probe temp directories left in the temp dir.
fn probe_dirs() -> Vec<String> {
    std::fs::read_dir(std::env::temp_dir())
        .expect("read the temp dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("runvm-boot-probe-"))
        .collect()
}

/// QEMU processes booting a probe (their agent socket is in a probe dir).
fn probe_qemus() -> Vec<String> {
    let out = host_sh("pgrep -af 'runvm-boot-probe-' | grep -v pgrep || true");
    out.stdout_str().lines().map(str::to_owned).collect()
}

#[e2e_test]
fn the_default_guest_boots_without_a_container_and_is_timed() {
    let _one = one_at_a_time();
    let _slot = vm_slots(1);
    let before = probe_dirs();
    let run = run_cmd(
        &runvm_binary(),
        &["boot-probe"],
        None,
        Duration::from_secs(600),
    );
    run.assert_code(0, "runvm boot-probe");
    let out = run.stdout_str();
    let secs: f64 = out
        .strip_prefix("the guest agent was ready ")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no boot time in the output:\n{}", run.describe()));
    assert!(secs > 0.0 && secs < 600.0, "{}", run.describe());
    assert!(out.contains(" MiB, /"), "names memory and kernel: {out}");
    assert_eq!(probe_dirs(), before, "the probe's temp dir is removed");
    assert!(
        probe_qemus().is_empty(),
        "QEMU is gone: {:?}",
        probe_qemus()
    );
}

#[e2e_test]
fn an_unknown_kernel_fails_in_one_line_and_boots_nothing() {
    let _one = one_at_a_time();
    let before = probe_dirs();
    let run = run_cmd(
        "env",
        &["RUNVM_KERNEL=no-such-kernel", &runvm_binary(), "boot-probe"],
        None,
        Duration::from_secs(60),
    );
    run.assert_code(1, "runvm boot-probe with a bad RUNVM_KERNEL");
    let lines: Vec<String> = run
        .stderr_str()
        .lines()
        .filter(|l| l.contains("RUNVM_KERNEL"))
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 1, "{}", run.describe());
    assert!(
        lines[0].contains("give one of:"),
        "names the fix: {}",
        lines[0]
    );
    assert_eq!(probe_dirs(), before);
    assert!(probe_qemus().is_empty());
}

/// `runvm boot-probe` stopped while the VM boots (a `timeout`, a Ctrl-C, a
/// closed terminal): QEMU stops, runvm ends at once and removes its temp
/// dir. (It used to die at once and leave the dir behind, while the
/// supervisor and QEMU booted on without it.)
#[e2e_test]
fn a_probe_stopped_while_the_vm_boots_leaves_nothing_behind() {
    use std::process::{Command, Stdio};
    use std::time::Instant;
    let _one = one_at_a_time();
    let _slot = vm_slots(1);
    for signal in ["TERM", "INT", "HUP"] {
        let before = probe_dirs();
        let mut probe = Command::new(runvm_binary())
            .arg("boot-probe")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start runvm boot-probe");
        poll_until(
            "the probe's QEMU to start",
            Duration::from_secs(120),
            || (!probe_qemus().is_empty()).then_some(()),
        );
        host_sh(&format!("kill -{signal} {}", probe.id())).assert_code(0, "kill");
        let sent = Instant::now();
        let status = probe.wait().expect("wait for runvm boot-probe");
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut probe.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(
            sent.elapsed() < Duration::from_secs(10),
            "SIG{signal}: runvm took {:?} to end",
            sent.elapsed()
        );
        assert!(!status.success(), "SIG{signal}: {status}: {stderr}");
        assert!(
            stderr.contains(&format!("interrupted by SIG{signal}")),
            "SIG{signal}: says why: {stderr}"
        );
        assert_eq!(probe_dirs(), before, "SIG{signal}: the temp dir is removed");
        assert!(
            probe_qemus().is_empty(),
            "SIG{signal}: QEMU is gone: {:?}",
            probe_qemus()
        );
    }
}

/// The probe's VM is sized by the code that sizes a container's: settings
/// `runvm create` refuses are refused here too, in one line, before any
/// boot. (It booted 9 vCPUs on a 2-CPU host, and 64 MiB of RAM.)
#[e2e_test]
fn settings_a_container_could_not_have_fail_in_one_line() {
    let _one = one_at_a_time();
    let before = probe_dirs();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) + 1;
    for (setting, names) in [
        (format!("RUNVM_CPUS={cpus}"), "RUNVM_CPUS"),
        ("RUNVM_MEMORY=64m".to_owned(), "RUNVM_MEMORY"),
    ] {
        let run = run_cmd(
            "env",
            &[&setting, &runvm_binary(), "boot-probe"],
            None,
            Duration::from_secs(60),
        );
        run.assert_code(1, &format!("runvm boot-probe with {setting}"));
        let lines: Vec<String> = run
            .stderr_str()
            .lines()
            .filter(|l| l.contains(names))
            .map(str::to_owned)
            .collect();
        assert_eq!(lines.len(), 1, "{}", run.describe());
        assert_eq!(probe_dirs(), before);
        assert!(probe_qemus().is_empty());
    }
}
