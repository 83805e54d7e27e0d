//! `docker exec` and HEALTHCHECK, each compared with runc.

use std::time::{Duration, Instant};

use runvm_e2e::*;

const BOOT: Duration = Duration::from_secs(90);

/// A running container of `runtime`, ready for execs.
fn running(runtime: &str, extra: &[&str]) -> Container {
    let mut args = vec!["-h", "samehost"];
    args.extend_from_slice(extra);
    args.extend([IMAGE, "sh", "-c", "echo up; exec sleep 600"]);
    let c = Container::run_detached(&format!("exec-{runtime}"), runtime, &args);
    c.wait_for_log("up", BOOT);
    c
}

/// Runs `docker exec <opts> C <cmd>` against a runc and a runvm container
/// and asserts the same stdout, stderr and exit code.
fn same_exec(
    runc: &Container,
    runvm: &Container,
    opts: &[&str],
    cmd: &[&str],
    stdin: Option<&[u8]>,
) {
    let run = |c: &Container| {
        let mut a = vec!["exec"];
        a.extend_from_slice(opts);
        a.push(&c.name);
        a.extend_from_slice(cmd);
        let mut r = docker(&a, stdin);
        r.container_name = Some(c.name.clone());
        r
    };
    let a = run(runc);
    let b = run(runvm);
    assert_same(
        &a,
        &b,
        &format!("docker exec {} {}", opts.join(" "), cmd.join(" ")),
    );
}

#[e2e_test]
fn exec_identity_cwd_and_environment() {
    let _slots = vm_slots(1);
    let a = running("runc", &["-e", "FROM_RUN=1"]);
    let b = running("runvm", &["-e", "FROM_RUN=1"]);
    same_exec(&a, &b, &[], &["echo", "hi"], None);
    same_exec(&a, &b, &["-u", "1000:1000"], &["id"], None);
    same_exec(&a, &b, &["-u", "nobody"], &["id"], None);
    same_exec(&a, &b, &["-w", "/tmp"], &["pwd"], None);
    same_exec(&a, &b, &["-e", "A=1"], &["env"], None);
    let dir = tempfile::tempdir().expect("tempdir");
    let env_file = dir.path().join("env");
    std::fs::write(&env_file, "FROM_FILE=yes\nB=2\n").expect("write env file");
    let env_file = env_file.to_str().expect("utf-8").to_string();
    same_exec(&a, &b, &["--env-file", &env_file], &["env"], None);
    same_exec(
        &a,
        &b,
        &[],
        &["sh", "-c", "ulimit -n; grep Cap /proc/self/status"],
        None,
    );
}

#[e2e_test]
fn exec_streams_and_exit_codes() {
    let _slots = vm_slots(1);
    let a = running("runc", &[]);
    let b = running("runvm", &[]);
    same_exec(&a, &b, &[], &["sh", "-c", "echo out; echo err >&2"], None);
    for code in ["0", "1", "42"] {
        same_exec(&a, &b, &[], &["sh", "-c", &format!("exit {code}")], None);
    }
    // 126: not executable / a directory; 127: not found. Same message too.
    same_exec(&a, &b, &[], &["/etc/passwd"], None);
    same_exec(&a, &b, &[], &["/etc"], None);
    same_exec(&a, &b, &[], &["nonexist"], None);
    // An exec'd shell is not PID 1: it dies of its own SIGKILL.
    same_exec(&a, &b, &[], &["sh", "-c", "kill -9 $$"], None);
    // A user that does not exist: Docker's own error, same code.
    same_exec(&a, &b, &["-u", "nosuchuser"], &["id"], None);
    // Nothing was left running by the failed execs.
    same_exec(&a, &b, &[], &["ps", "-o", "comm"], None);
    let top = docker(&["top", &b.name, "-eo", "pid,comm"], None);
    let clients = top
        .stdout_str()
        .lines()
        .filter(|l| l.contains("runvm-supervi"))
        .count();
    assert_eq!(
        clients,
        1,
        "exec clients left in the container:\n{}",
        top.describe()
    );
}

#[e2e_test]
fn exec_stdin_bulk_and_detach() {
    let _slots = vm_slots(1);
    let b = running("runvm", &[]);
    let data = random_bytes(20_000_000);
    let r = docker(&["exec", "-i", &b.name, "sha256sum"], Some(&data));
    r.assert_code(0, "exec -i sha256sum");
    assert!(
        r.stdout_str().starts_with(&sha256_hex(&data)),
        "checksum of 20 MB of stdin:\n{}",
        r.describe()
    );
    let start = Instant::now();
    docker(
        &[
            "exec",
            "-d",
            &b.name,
            "sh",
            "-c",
            "sleep 2; touch /tmp/done",
        ],
        None,
    )
    .assert_code(0, "exec -d");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "exec -d returned at once"
    );
    b.wait_for_file(
        "the detached exec's file",
        "/tmp/done",
        Duration::from_secs(30),
    );
}

#[e2e_test]
fn exec_with_a_terminal() {
    let _slots = vm_slots(1);
    let b = running("runvm", &[]);
    // `script` gives docker a terminal; its input drives the shell.
    let cmd = format!("stty rows 20 cols 90; docker exec -it {} sh", b.name);
    let r = run_cmd(
        "script",
        &["-qc", &cmd, "/dev/null"],
        Some(b"tty; stty size; echo interactive-$((40+2))\nexit 3\n"),
        Duration::from_secs(120),
    );
    let out = r.stdout_str();
    assert!(
        out.contains("/dev/pts/"),
        "a pty in the guest:\n{}",
        r.describe()
    );
    assert!(
        out.contains("20 90"),
        "the terminal size docker set:\n{}",
        r.describe()
    );
    assert!(
        out.contains("interactive-42"),
        "the shell ran the input:\n{}",
        r.describe()
    );
}

#[e2e_test]
fn twenty_concurrent_execs_keep_their_output_and_codes() {
    let _slots = vm_slots(1);
    let b = running("runvm", &[]);
    let handles: Vec<_> = (1..=20)
        .map(|i| {
            let name = b.name.clone();
            std::thread::spawn(move || {
                let script = format!("yes line-{i} | head -c 1000000; exit {i}");
                (
                    i,
                    run_cmd_quiet(
                        "docker",
                        &["exec", &name, "sh", "-c", &script],
                        None,
                        COMMAND_TIMEOUT,
                    ),
                )
            })
        })
        .collect();
    for h in handles {
        let (i, r) = h.join().expect("exec thread");
        assert_eq!(r.code, i, "exec {i} exit code:\n{}", r.describe());
        assert_eq!(r.stdout.len(), 1_000_000, "exec {i} output size");
        let line = format!("line-{i}\n");
        let expected: Vec<u8> = line.bytes().cycle().take(1_000_000).collect();
        assert!(r.stdout == expected, "exec {i} got someone else's output");
    }
}

#[e2e_test]
fn exec_right_after_run_waits_for_the_vm() {
    let _slots = vm_slots(1);
    let c = Container::run_detached("exec-early", "runvm", &[IMAGE, "sleep", "600"]);
    let r = docker(&["exec", &c.name, "echo", "early"], None);
    r.assert_code(0, "exec while the VM boots");
    assert_eq!(r.stdout_str(), "early\n");
}

#[e2e_test]
fn execs_end_when_the_workload_exits() {
    let _slots = vm_slots(1);
    let outcome = |runtime: &str| {
        let c = Container::run_detached(
            &format!("exec-end-{runtime}"),
            runtime,
            &[IMAGE, "sh", "-c", "echo up; sleep 8"],
        );
        c.wait_for_log("up", BOOT);
        let start = Instant::now();
        let r = docker(&["exec", &c.name, "sleep", "100"], None);
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the exec ended with the container"
        );
        (r.code, c.wait_exit())
    };
    assert_eq!(outcome("runvm"), outcome("runc"));
}

#[e2e_test]
fn healthcheck_reports_healthy_and_unhealthy() {
    let _slots = vm_slots(2);
    build_image(
        "runvm-test/healthy",
        "FROM runvm-test/busybox\nHEALTHCHECK --interval=2s --timeout=10s --retries=2 CMD test -f /tmp/ok\nCMD [\"sh\", \"-c\", \"touch /tmp/ok; exec sleep 600\"]\n",
    );
    build_image(
        "runvm-test/unhealthy",
        "FROM runvm-test/busybox\nHEALTHCHECK --interval=2s --timeout=10s --retries=2 CMD test -f /tmp/never\nCMD [\"sleep\", \"600\"]\n",
    );
    let good = Container::run_detached("healthy", "runvm", &["runvm-test/healthy"]);
    let bad = Container::run_detached("unhealthy", "runvm", &["runvm-test/unhealthy"]);
    for (c, want) in [(&good, "healthy"), (&bad, "unhealthy")] {
        poll_until(
            &format!("{} to be {want}", c.name),
            Duration::from_secs(120),
            || (c.inspect("{{.State.Health.Status}}") == want).then_some(()),
        );
    }
}

/// No process of the container holds a descriptor of the container's
/// terminal but its stdio: the workload's own pty master was inherited by
/// the workload and by every exec, so `docker exec -u 1000 c sh -c 'echo
/// id >&12'` typed into the root shell of `docker run -it`.
#[e2e_test]
fn execs_and_the_workload_inherit_no_terminal_descriptor() {
    let _slots = vm_slots(1);
    let a = running("runc", &["-t"]);
    let b = running("runvm", &["-t"]);
    for user in ["0", "1000"] {
        same_exec(&a, &b, &["-u", user], &["ls", "/proc/self/fd"], None);
        same_exec(&a, &b, &["-t", "-u", user], &["ls", "/proc/self/fd"], None);
    }
    let (runc, runvm) = run_both(&["-t"], &[IMAGE, "ls", "/proc/self/fd"], None);
    assert_same(&runc, &runvm, "docker run -t ls /proc/self/fd");
}
