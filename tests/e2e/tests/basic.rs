//! Output and exit codes of simple commands, runc vs runvm.

use runvm_e2e::*;

#[e2e_test]
fn echo_hello_and_guest_kernel() {
    let (runc, runvm) = run_both(&[], &[IMAGE, "echo", "hello"], None);
    assert_same(&runc, &runvm, "echo hello");
    assert_eq!(runvm.stdout, b"hello\n", "{}", runvm.describe());

    // The kernel is the one inherent difference: runvm runs its own.
    let host = host_sh("uname -r");
    host.assert_code(0, "host uname -r");
    let (runc, runvm) = run_both(&[], &[IMAGE, "uname", "-r"], None);
    runc.assert_code(0, "uname -r under runc");
    runvm.assert_code(0, "uname -r under runvm");
    assert_eq!(runc.stdout, host.stdout, "runc shares the host kernel");
    assert!(
        !runvm.stdout_str().trim().is_empty(),
        "{}",
        runvm.describe()
    );
    assert_ne!(
        runvm.stdout, host.stdout,
        "runvm must run the guest kernel, not the host's"
    );
}

#[e2e_test]
fn stdout_and_stderr_stay_separate() {
    let (runc, runvm) = run_both(&[], &[IMAGE, "sh", "-c", "echo out; echo err >&2"], None);
    assert_same(&runc, &runvm, "stdout/stderr separation");
    assert_eq!(runvm.stdout, b"out\n", "{}", runvm.describe());
    assert_eq!(runvm.stderr, b"err\n", "{}", runvm.describe());
    assert_eq!(runvm.code, 0);
}

#[e2e_test]
fn exit_codes_plain() {
    for n in [0, 1, 3] {
        let script = format!("exit {n}");
        let (runc, runvm) = run_both(&[], &[IMAGE, "sh", "-c", &script], None);
        assert_same(&runc, &runvm, &script);
        assert_eq!(runvm.code, n, "{}", runvm.describe());
    }
}

/// Docker's error line for a command that cannot be started must be the same
/// and must not carry the container's name or id.
fn check_create_failure(cmd: &str, code: i32) {
    let (runc, runvm) = run_both(&[], &[IMAGE, cmd], None);
    for run in [&runc, &runvm] {
        let err = run.stderr_str();
        if let Some(name) = &run.container_name {
            assert!(
                !err.contains(name.as_str()),
                "container name in stderr:\n{}",
                run.describe()
            );
        }
        if let Some(id) = &run.container_id {
            assert!(
                !err.contains(&id[..12]),
                "container id in stderr:\n{}",
                run.describe()
            );
        }
    }
    assert_same(&runc, &runvm, &format!("command {cmd}"));
    assert_eq!(runvm.code, code, "{}", runvm.describe());
    assert!(
        runvm.stdout.is_empty(),
        "nothing on stdout expected:\n{}",
        runvm.describe()
    );
    assert!(
        runvm.stderr_str().contains(&format!("exec: \"{cmd}\"")),
        "{}",
        runvm.describe()
    );
}

#[e2e_test]
fn exit_code_126_not_executable() {
    check_create_failure("/etc/passwd", 126);
    check_create_failure("/etc", 126);
}

#[e2e_test]
fn exit_code_127_not_found() {
    check_create_failure("nonexist", 127);
    check_create_failure("/nonexist", 127);
}

#[e2e_test]
fn shell_signals_itself() {
    // Under runc the shell is PID 1 of its namespace: the kernel ignores
    // signals without a handler sent to it, so it exits 0. Whatever runc
    // gives, runvm must give.
    for sig in ["9", "15"] {
        let script = format!("kill -{sig} $$");
        let (runc, runvm) = run_both(&[], &[IMAGE, "sh", "-c", &script], None);
        assert_same(&runc, &runvm, &script);
    }
}

#[e2e_test]
fn child_killed_by_signal() {
    for (sig, code, msg) in [("9", 137, "Killed\n"), ("15", 143, "Terminated\n")] {
        // The plain form: busybox ash prints the job's fate ("Killed") only
        // if the child is reaped inside `wait`, which races with the kill
        // (runc too omits it about once in 40 runs), so stderr may be empty
        // or the message on either side.
        let script = format!("sleep 100 & kill -{sig} $!; wait $!");
        let (runc, runvm) = run_both(&[], &[IMAGE, "sh", "-c", &script], None);
        for run in [&runc, &runvm] {
            assert!(
                run.stderr.is_empty() || run.stderr == msg.as_bytes(),
                "{script}:\n{}",
                run.describe()
            );
        }
        assert_same_with(&runc, &runvm, &script, |b| {
            if b == msg.as_bytes() {
                Vec::new()
            } else {
                b.to_vec()
            }
        });
        assert_eq!(runvm.code, code, "{}", runvm.describe());

        // Deterministic form: the child dies while the shell blocks in
        // `wait`, so the message is always printed; compare everything.
        let script = format!("sleep 100 & p=$!; (sleep 1; kill -{sig} $p) & wait $p");
        let (runc, runvm) = run_both(&[], &[IMAGE, "sh", "-c", &script], None);
        assert_same(&runc, &runvm, &script);
        assert_eq!(runvm.code, code, "{}", runvm.describe());
        assert_eq!(runvm.stderr, msg.as_bytes(), "{}", runvm.describe());
    }
}
