//! Faults end the container cleanly: virtiofsd or QEMU killed, the guest
//! kernel panicking. Output the guest sent is kept, a message names the
//! cause, nothing of the container is left running. Also: execs whose
//! client Docker killed (timed-out health checks) end in the guest, exec
//! with an environment beyond the kernel's 128 KiB per string, and
//! `docker kill -s PIPE`.

use std::time::{Duration, Instant};

use runvm_e2e::*;

const BOOT: Duration = Duration::from_secs(120);
/// How soon a fault must end the container.
const FAULT_LIMIT: Duration = Duration::from_secs(60);

/// The host pid of the container's process whose name starts with `comm`.
/// The helper called `comm`; for virtiofsd, the one that serves the
/// container's files (another serves the kernel's modules).
fn helper_pid(procs: &[(u32, String)], comm: &str) -> u32 {
    procs
        .iter()
        .filter(|(_, c)| c.starts_with(comm))
        .find(|(pid, _)| {
            comm != "virtiofsd"
                || std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains("--shared-dir=/rootfs"))
        })
        .unwrap_or_else(|| panic!("no {comm} among the container's processes: {procs:?}"))
        .0
}

/// Whether `pid` is still the process called `comm` (not a reused pid).
fn still_running(pid: u32, comm: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim() == comm)
        .unwrap_or(false)
}

/// Waits until the container has stopped, at most `limit` from `since`;
/// returns its exit code.
fn exited_within(c: &Container, since: Instant, limit: Duration) -> i32 {
    poll_until(
        &format!("{} to stop after the fault", c.name),
        limit.saturating_sub(since.elapsed()),
        || (c.inspect("{{.State.Status}}") == "exited").then_some(()),
    );
    c.inspect("{{.State.ExitCode}}")
        .parse()
        .expect("exit code is a number")
}

/// None of `procs` (the container's processes before the fault) runs.
fn assert_all_gone(procs: &[(u32, String)]) {
    poll_until(
        "the container's processes to end",
        Duration::from_secs(10),
        || {
            procs
                .iter()
                .all(|(pid, comm)| !still_running(*pid, comm))
                .then_some(())
        },
    );
}

/// Kills the helper `comm` of a running container and checks that the
/// container ends in time with exit code 255 and a message containing
/// `expected`. Returns the logs.
fn kill_helper_and_expect_the_end(c: &Container, comm: &str, expected: &str) -> Run {
    let procs = c.host_processes();
    let pid = helper_pid(&procs, comm);
    let start = Instant::now();
    host_sh(&format!("kill -9 {pid}")).assert_code(0, "kill -9");
    let code = exited_within(c, start, FAULT_LIMIT);
    eprintln!("the container ended {:?} after the fault", start.elapsed());
    let logs = c.logs();
    assert_eq!(code, 255, "exit code after the fault\n{}", logs.describe());
    assert!(
        logs.stderr_str().contains(expected),
        "docker logs names the cause ({expected:?}):\n{}",
        logs.describe()
    );
    assert_all_gone(&procs);
    logs
}

#[e2e_test]
fn killing_virtiofsd_ends_the_container() {
    let _slot = vm_slots(1);
    let c = Container::run_detached(
        "fault-virtiofsd",
        "runvm",
        &[IMAGE, "sh", "-c", "echo up; sleep 600"],
    );
    c.wait_for_log("up", BOOT);
    let logs = kill_helper_and_expect_the_end(&c, "virtiofsd", "virtiofsd");
    assert!(logs.stderr_str().contains("SIGKILL"), "{}", logs.describe());
    assert_eq!(logs.stdout_str(), "up\n");
}

#[e2e_test]
fn killing_qemu_keeps_the_output_already_sent() {
    let _slot = vm_slots(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("printed");
    let bind = format!("{}:/vol", dir.path().display());
    // The marker appears a second after the last line was printed: by then
    // the guest has sent all of it, whatever the host has done with it.
    let c = Container::run_detached(
        "fault-qemu",
        "runvm",
        &[
            "-v",
            &bind,
            IMAGE,
            "sh",
            "-c",
            "seq 1 1000; sleep 1; touch /vol/printed; sleep 600",
        ],
    );
    poll_until("the workload's marker", BOOT, || {
        marker.exists().then_some(())
    });
    let logs = kill_helper_and_expect_the_end(&c, "qemu", "QEMU exited");
    let expected: String = (1..=1000).map(|i| format!("{i}\n")).collect();
    assert!(
        logs.stdout_str() == expected,
        "all 1000 lines in docker logs, in order:\n{}",
        logs.describe()
    );
}

#[e2e_test]
fn a_guest_kernel_panic_ends_the_container() {
    let _slot = vm_slots(1);
    // systempaths=unconfined lifts Docker's read-only /proc/sysrq-trigger
    // (which under runvm is the guest's anyway).
    let c = Container::run_detached(
        "fault-panic",
        "runvm",
        &[
            "--security-opt",
            "systempaths=unconfined",
            IMAGE,
            "sh",
            "-c",
            "echo up; sleep 1; echo c > /proc/sysrq-trigger; sleep 600",
        ],
    );
    c.wait_for_log("up", BOOT);
    let procs = c.host_processes();
    let start = Instant::now();
    let code = exited_within(&c, start, FAULT_LIMIT);
    let logs = c.logs();
    assert_eq!(code, 255, "{}", logs.describe());
    assert!(
        logs.stderr_str().contains("the guest kernel panicked"),
        "docker logs names the panic:\n{}",
        logs.describe()
    );
    assert!(
        logs.stderr_str().contains("last guest console lines"),
        "{}",
        logs.describe()
    );
    assert_eq!(logs.stdout_str(), "up\n");
    assert_all_gone(&procs);
}

#[e2e_test]
fn timed_out_health_checks_leave_no_processes_behind() {
    let _slot = vm_slots(1);
    let c = Container::run_detached(
        "fault-health",
        "runvm",
        &[
            "--health-cmd",
            r#"trap "" TERM; sleep 100"#,
            "--health-interval",
            "2s",
            "--health-timeout",
            "1s",
            IMAGE,
            "sh",
            "-c",
            "echo up; exec sleep 600",
        ],
    );
    c.wait_for_log("up", BOOT);
    std::thread::sleep(Duration::from_secs(40));
    let streak: u32 = c
        .inspect("{{.State.Health.FailingStreak}}")
        .parse()
        .expect("a number");
    assert!(
        streak >= 5,
        "the health check ran and timed out repeatedly (failing streak {streak})"
    );
    let ps = docker(&["exec", &c.name, "ps", "-o", "args"], None);
    ps.assert_code(0, "docker exec ps");
    let probes = ps
        .stdout_str()
        .lines()
        .filter(|l| l.trim() == "sleep 100")
        .count();
    assert!(
        probes <= 1,
        "timed-out health checks linger in the guest ({probes}):\n{}",
        ps.describe()
    );
    // Nor do their exec clients linger in the container on the host: the
    // supervisor, perhaps one probe and the ps exec above just ended.
    let clients = c
        .host_processes()
        .iter()
        .filter(|(_, comm)| comm.starts_with("runvm-supervis"))
        .count();
    assert!(
        clients <= 3,
        "{clients} supervisor processes in the container"
    );
}

#[e2e_test]
fn an_exec_whose_client_is_killed_while_the_vm_boots_never_lingers() {
    let _slot = vm_slots(1);
    let c = Container::run_detached(
        "exec-client-killed",
        "runvm",
        &[IMAGE, "sh", "-c", "echo up; sleep 600"],
    );
    let init: u32 = c.inspect("{{.State.Pid}}").parse().expect("a pid");
    docker(&["exec", "-d", &c.name, "sleep", "100"], None).assert_code(0, "docker exec -d");
    // The exec client: a supervisor process other than the container's
    // PID 1. Killing it is what Docker does to a timed-out health check.
    let client = poll_until("the exec client", Duration::from_secs(30), || {
        c.host_processes()
            .into_iter()
            .find(|(pid, comm)| *pid != init && comm.starts_with("runvm-supervis"))
    });
    host_sh(&format!("kill -9 {}", client.0)).assert_code(0, "kill -9 the exec client");
    c.wait_for_log("up", BOOT);
    poll_until(
        "no exec'd sleep in the guest",
        Duration::from_secs(30),
        || {
            let ps = docker(&["exec", &c.name, "ps", "-o", "args"], None);
            (ps.code == 0 && !ps.stdout_str().lines().any(|l| l.trim() == "sleep 100"))
                .then_some(())
        },
    );
}

#[e2e_test]
fn exec_with_variables_beyond_128_kib_in_total_matches_runc() {
    let a = format!("A={}", "a".repeat(70_000));
    let b = format!("B={}", "b".repeat(70_000));
    // One value near the kernel's 128 KiB limit for a single string.
    let big = format!("C={}", "c".repeat(128 * 1024 - 100));
    let outcome = |runtime: &str| {
        let _slot = (runtime == "runvm").then(|| vm_slots(1));
        let c = Container::run_detached(
            &format!("big-env-{runtime}"),
            runtime,
            &["-e", &a, "-e", &b, IMAGE, "sh", "-c", "echo up; sleep 600"],
        );
        c.wait_for_log("up", BOOT);
        let two = docker(&["exec", &c.name, "sh", "-c", "echo ${#A} ${#B}"], None);
        let near_limit = docker(
            &["exec", "-e", &big, &c.name, "sh", "-c", "echo ${#C} ${#A}"],
            None,
        );
        (two, near_limit)
    };
    let runc = outcome("runc");
    let runvm = outcome("runvm");
    runvm.0.assert_code(0, "exec with two 70 KB variables");
    assert_eq!(runvm.0.stdout_str(), "70000 70000\n");
    assert_same(&runc.0, &runvm.0, "exec with two 70 KB variables");
    assert_same(&runc.1, &runvm.1, "exec with a 128 KiB variable");
}

#[e2e_test]
fn docker_kill_pipe_reaches_the_workload() {
    let outcome = |runtime: &str| {
        let _slot = (runtime == "runvm").then(|| vm_slots(1));
        let c = Container::run_detached(
            &format!("pipe-{runtime}"),
            runtime,
            &[
                IMAGE,
                "sh",
                "-c",
                r#"trap "echo got PIPE" PIPE; echo ready; while :; do sleep 1; done"#,
            ],
        );
        c.wait_for_log("ready", BOOT);
        docker(&["kill", "-s", "PIPE", &c.name], None).assert_code(0, "docker kill -s PIPE");
        c.wait_for_log("got PIPE", Duration::from_secs(30))
            .stdout_str()
    };
    assert_eq!(outcome("runvm"), outcome("runc"));
}
