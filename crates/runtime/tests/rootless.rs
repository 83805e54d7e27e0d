//! A rootless engine is refused at `create` with one line that says why and
//! what to do, before anything is written (no root, QEMU or Docker needed).

use std::process::Command;

/// Runs `runvm create` for a bundle that does not exist, behind `prefix`
/// (say, `unshare -r`), and returns its exit code and stderr.
fn create(prefix: &[&str], globals: &[&str]) -> Option<(i32, String)> {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    let runvm = env!("CARGO_BIN_EXE_runvm");
    let mut argv: Vec<&str> = prefix.to_vec();
    argv.push(runvm);
    argv.extend(globals);
    argv.extend([
        "create",
        "--bundle",
        bundle.to_str().unwrap(),
        "rootless-probe",
    ]);
    let out = Command::new(argv[0]).args(&argv[1..]).output().ok()?;
    assert!(!bundle.exists(), "nothing is left behind");
    Some((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn assert_refused(code: i32, stderr: &str, why: &str) {
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.starts_with("runvm: not root on the host ("),
        "{stderr}"
    );
    assert!(stderr.contains(why), "{why} in {stderr}");
    assert!(
        stderr.contains("sudo podman run --runtime runvm"),
        "{stderr}"
    );
}

#[test]
fn the_rootless_flag_is_refused() {
    let (code, stderr) = create(&[], &["--rootless", "true"]).unwrap();
    assert_refused(code, &stderr, "--rootless true");
}

#[test]
fn a_user_namespace_root_is_refused() {
    let probe = Command::new("unshare").args(["-r", "true"]).status();
    if !probe.is_ok_and(|s| s.success()) {
        println!(
            "SKIP a_user_namespace_root_is_refused: `unshare -r` cannot make a user namespace here"
        );
        return;
    }
    let (code, stderr) = create(&["unshare", "-r"], &[]).unwrap();
    assert_refused(code, &stderr, "user namespace");
}

#[test]
fn a_plain_user_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        let (code, stderr) = create(&[], &[]).unwrap();
        assert_refused(code, &stderr, "runs as uid");
        return;
    }
    // As root: `setpriv` runs it as an unprivileged uid.
    let probe = Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "true",
        ])
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        println!("SKIP a_plain_user_is_refused: setpriv cannot change uid here");
        return;
    }
    let (code, stderr) = create(
        &[
            "setpriv",
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
        ],
        &[],
    )
    .unwrap();
    assert_refused(code, &stderr, "runs as uid 65534");
}
