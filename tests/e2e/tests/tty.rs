//! `docker run -t`.

use std::time::Duration;

use runvm_e2e::*;

/// Runs `cmd` inside `script`, so that the docker client has a real terminal
/// of 100 columns and 30 rows; returns its output without `\r`.
fn in_terminal(cmd: &str) -> (Run, String) {
    let line = format!("stty cols 100 rows 30; {cmd}");
    let run = run_cmd(
        "script",
        &["-qc", &line, "/dev/null"],
        None,
        COMMAND_TIMEOUT,
    );
    let text = String::from_utf8_lossy(&strip_cr(&run.stdout)).into_owned();
    (run, text)
}

fn has_pts_line(text: &str) -> bool {
    text.lines().any(|l| {
        l.strip_prefix("/dev/pts/")
            .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
    })
}

#[e2e_test]
fn tty_size_and_output() {
    let name = Container::new("tty");
    let cmd = format!(
        "docker run --rm -t --name {} --runtime={} {IMAGE} sh -c 'tty; stty size; echo tty-echo-ok'",
        name.name,
        runvm_runtime()
    );
    let (run, text) = {
        let _slot = vm_slots(1);
        in_terminal(&cmd)
    };
    let shown = format!("{}\ntext: {text:?}", run.describe());
    run.assert_code(0, "docker run -t under script");
    assert!(has_pts_line(&text), "expected a /dev/pts/N line:\n{shown}");
    // runc's `stty size` fails inside `script` on this machine, so compare
    // with the terminal's known size instead.
    assert!(
        text.lines().any(|l| l == "30 100"),
        "expected `30 100`:\n{shown}"
    );
    assert!(
        text.lines().any(|l| l == "tty-echo-ok"),
        "echo lost:\n{shown}"
    );

    // The same without size under runc: the tty and echo lines match.
    let name = Container::new("tty-runc");
    let cmd = format!(
        "docker run --rm -t --name {} --runtime=runc {IMAGE} sh -c 'tty; echo tty-echo-ok'",
        name.name
    );
    let (run, text) = in_terminal(&cmd);
    let shown = format!("{}\ntext: {text:?}", run.describe());
    assert!(
        has_pts_line(&text),
        "runc: expected a /dev/pts/N line:\n{shown}"
    );
    assert!(
        text.lines().any(|l| l == "tty-echo-ok"),
        "runc: echo lost:\n{shown}"
    );
}

#[e2e_test]
fn tty_bytes_same_as_runc() {
    // -t without a terminal on the client side: the bytes (with the pty's
    // \r\n line endings) must be the same.
    let (runc, runvm) = run_both(
        &["-t"],
        &[IMAGE, "sh", "-c", "tty; echo hi; echo err >&2; exit 5"],
        None,
    );
    assert_same(&runc, &runvm, "docker run -t");
    assert_eq!(runvm.code, 5);
    assert!(
        runvm.stdout_str().contains("hi\r\n"),
        "{}",
        runvm.describe()
    );
}

/// An interactive shell on a terminal: typed commands run, and a window
/// resize reaches the workload (`stty size` follows), for `docker run -it`
/// and `docker exec -it`, under runc and runvm alike.
#[e2e_test]
fn interactive_shell_follows_window_resizes() {
    let _slots = vm_slots(1);
    for runtime in ["runc", "runvm"] {
        let rt = if runtime == "runvm" {
            format!("--runtime={}", runvm_runtime())
        } else {
            format!("--runtime={runtime}")
        };
        let name = unique_name(&format!("resize-{runtime}"));
        let _guard = Container::adopt(&name);
        let mut s = PtySession::spawn(
            "docker",
            &["run", "-it", "--rm", "--name", &name, &rt, IMAGE, "sh"],
            24,
            80,
        );
        resize_round(&mut s, runtime, "run");
        s.type_text("exit 5\r");
        assert_eq!(
            s.wait(Duration::from_secs(60)),
            5,
            "{runtime}: docker run -it exit code"
        );

        let c = Container::run_detached(
            &format!("resize-exec-{runtime}"),
            runtime,
            &[IMAGE, "sh", "-c", "echo up; exec sleep 600"],
        );
        c.wait_for_log("up", Duration::from_secs(90));
        let mut s = PtySession::spawn("docker", &["exec", "-it", &c.name, "sh"], 24, 80);
        resize_round(&mut s, runtime, "exec");
        s.type_text("exit 6\r");
        assert_eq!(
            s.wait(Duration::from_secs(60)),
            6,
            "{runtime}: docker exec -it exit code"
        );
    }
}

fn resize_round(s: &mut PtySession, runtime: &str, how: &str) {
    eprintln!("[{runtime} {how}] waiting for the shell");
    s.type_text("echo READY$((1+1))\r");
    s.read_until("READY2", Duration::from_secs(120));
    s.type_text("stty size\r");
    s.read_until("24 80", Duration::from_secs(30));
    s.resize(30, 100);
    // Docker relays the new size asynchronously: ask until it shows.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        s.type_text("stty size\r");
        let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            s.read_until("30 100", Duration::from_secs(2))
        }));
        if got.is_ok() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{runtime} {how}: the resize never reached the shell"
        );
    }
}
