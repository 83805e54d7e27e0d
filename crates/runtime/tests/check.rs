//! `runvm check` on a host with and without each dependency: the binary is
//! pointed at fake or missing parts through its settings (RUNVM_QEMU,
//! RUNVM_VIRTIOFSD, RUNVM_RUNC, RUNVM_LIBEXEC_DIR, RUNVM_DATA_DIR), so no
//! root, QEMU or Docker is needed.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// An executable script at `path` that prints `version` and succeeds.
fn fake(path: &Path, version: &str) {
    std::fs::write(path, format!("#!/bin/sh\necho '{version}'\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn check(env: &[(&str, &Path)]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_runvm"));
    cmd.arg("check");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run runvm check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn line<'a>(out: &'a str, what: &str) -> &'a str {
    out.lines()
        .find(|l| {
            l.split_once(' ')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with(&format!("{what}:")))
        })
        .unwrap_or_else(|| panic!("no line for {what} in:\n{out}"))
}

#[test]
fn with_every_part_present_each_is_ok_with_its_version() {
    let dir = tempfile::tempdir().unwrap();
    let libexec = dir.path().join("libexec");
    std::fs::create_dir(&libexec).unwrap();
    fake(&libexec.join("runvm-supervisor"), "");
    fake(&libexec.join("runvm-agent"), "");
    let qemu = dir.path().join("qemu");
    fake(&qemu, "QEMU emulator version 9.9.9");
    let virtiofsd = dir.path().join("virtiofsd");
    fake(&virtiofsd, "virtiofsd backend 9.9.9");
    let runc = dir.path().join("runc");
    fake(&runc, "runc version 9.9.9");
    let (_, out) = check(&[
        ("RUNVM_LIBEXEC_DIR", &libexec),
        ("RUNVM_QEMU", &qemu),
        ("RUNVM_VIRTIOFSD", &virtiofsd),
        ("RUNVM_RUNC", &runc),
        ("RUNVM_DATA_DIR", dir.path()),
    ]);
    for (what, version) in [
        ("qemu", "QEMU emulator version 9.9.9"),
        ("virtiofsd", "9.9.9"),
        ("runc", "runc version 9.9.9"),
    ] {
        let l = line(&out, what);
        assert!(l.starts_with("ok "), "{l}");
        assert!(l.contains(version), "{l}");
    }
    assert!(line(&out, "supervisor").starts_with("ok "), "{out}");
}

#[test]
fn each_missing_part_is_named_with_its_fix_and_fails_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let nowhere = dir.path().join("nowhere");
    let (code, out) = check(&[
        ("RUNVM_LIBEXEC_DIR", &nowhere),
        ("RUNVM_QEMU", &nowhere),
        ("RUNVM_VIRTIOFSD", &nowhere),
        ("RUNVM_RUNC", &nowhere),
        ("RUNVM_DATA_DIR", dir.path()),
    ]);
    assert_eq!(code, 1, "{out}");
    for (what, fix) in [
        ("supervisor", "make install"),
        ("qemu", "make install"),
        ("virtiofsd", "RUNVM_VIRTIOFSD"),
        ("runc", "apt-get install runc"),
        ("guest kernel", "make kernel"),
    ] {
        let l = line(&out, what);
        assert!(l.starts_with("MISSING "), "{l}");
        assert!(l.contains("fix: "), "{l}");
        assert!(l.contains(fix), "{l}");
    }
}

#[test]
fn a_part_that_does_not_run_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let qemu = dir.path().join("qemu");
    std::fs::write(&qemu, "#!/bin/sh\nexit 3\n").unwrap();
    std::fs::set_permissions(&qemu, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (code, out) = check(&[("RUNVM_QEMU", &qemu), ("RUNVM_DATA_DIR", dir.path())]);
    assert_eq!(code, 1, "{out}");
    let l = line(&out, "qemu");
    assert!(
        l.starts_with("MISSING ") && l.contains("does not run"),
        "{l}"
    );
}
