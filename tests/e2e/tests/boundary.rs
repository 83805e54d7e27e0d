//! The VM boundary holds against a hostile image or guest: no path from the
//! image (symlinks it ships, symlinks a guest planted during an earlier
//! run) can send one of Docker's mounts over runvm's own files, so nothing
//! from the image ever runs outside the VM.

use runvm_e2e::*;

/// What the payload prints if it ever runs as the container's PID 1 on the
/// host side.
const PWNED: &str = "PWNED-ON-THE-HOST-SIDE";

fn payload_script() -> String {
    format!("#!/bin/sh\\necho {PWNED}\\nuname -r\\n")
}

fn host_kernel() -> String {
    let r = host_sh("uname -r");
    r.assert_code(0, "uname -r on the host");
    r.stdout_str().trim().to_string()
}

/// The workload ran in the VM: it printed a kernel that is not the host's,
/// and the payload never ran.
fn assert_ran_in_vm(run: &Run, what: &str) {
    run.assert_code(0, what);
    let out = run.stdout_str();
    assert!(
        !out.contains(PWNED) && !run.stderr_str().contains(PWNED),
        "{what}: the image's payload ran outside the VM:\n{}",
        run.describe()
    );
    let kernel = out.trim();
    assert!(
        !kernel.is_empty() && kernel != host_kernel(),
        "{what}: expected the guest's kernel, got {kernel:?}:\n{}",
        run.describe()
    );
}

/// An image whose `/x` is a symlink to `/runvm`, holding its own
/// `/runvm/bin/runvm-supervisor`, with `VOLUME /x`: Docker's copy-up fills
/// the volume with the payload.
fn build_symlink_image() -> &'static str {
    let tag = "runvm-test/boundary-symlink";
    build_image(
        tag,
        &format!(
            "FROM {IMAGE}\nRUN mkdir -p /runvm/bin && printf '{}' > /runvm/bin/runvm-supervisor && chmod 755 /runvm/bin/runvm-supervisor && ln -s /runvm /x\nVOLUME /x\nCMD [\"uname\", \"-r\"]\n",
            payload_script()
        ),
    );
    tag
}

#[test]
fn image_symlink_under_a_volume_cannot_replace_runvms_files() {
    if !e2e_enabled() {
        return;
    }
    let image = build_symlink_image();
    let run = run_one("runvm", &[], &[image], None);
    assert_ran_in_vm(&run, "image with /x -> /runvm and VOLUME /x");
}

#[test]
fn bind_mount_through_an_image_symlink_stays_in_the_image() {
    if !e2e_enabled() {
        return;
    }
    let image = build_symlink_image();
    let host = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(host.path().join("bin")).expect("mkdir");
    let payload = host.path().join("bin/runvm-supervisor");
    std::fs::write(&payload, payload_script()).expect("write payload");
    host_sh(&format!("chmod 755 {}", payload.display())).assert_code(0, "chmod");
    let bind = format!("{}:/x", host.path().display());
    let run = run_one("runvm", &["-v", &bind], &[image], None);
    assert_ran_in_vm(&run, "-v HOSTDIR:/x through the image's /x -> /runvm");
}

#[test]
fn symlink_planted_by_the_guest_does_not_redirect_the_next_start() {
    if !e2e_enabled() {
        return;
    }
    let _slot = vm_slots(1);
    let vol = Volume::create("planted");
    let c = Container::new("planted");
    // First run: put a payload on the volume and replace the directory
    // above the volume by a symlink to /runvm. Every later start finds the
    // symlink and just prints its kernel.
    let script = format!(
        "if [ -L /a ]; then uname -r; exit 0; fi; \
         printf '{}' > /a/bin/runvm-supervisor && chmod 755 /a/bin/runvm-supervisor && \
         mkdir -p /runvm && mv /a /a.old && ln -s /runvm /a && echo planted",
        payload_script()
    );
    let mount = format!("{}:/a/bin", vol.name);
    docker(
        &[
            "run",
            "--name",
            &c.name,
            "--runtime=runvm",
            "-v",
            &mount,
            IMAGE,
            "sh",
            "-c",
            &script,
        ],
        None,
    )
    .assert_code(0, "first run plants the symlink");
    assert!(
        c.logs().stdout_str().contains("planted"),
        "the first run did not plant its symlink:\n{}",
        c.logs().describe()
    );
    let again = docker(&["start", "-a", &c.name], None);
    assert_ran_in_vm(&again, "docker start after the guest planted /a -> /runvm");
}

#[test]
fn a_mount_through_a_dangling_image_symlink_is_refused_in_one_line() {
    if !e2e_enabled() {
        return;
    }
    let tag = "runvm-test/boundary-dangling";
    build_image(
        tag,
        &format!("FROM {IMAGE}\nRUN ln -s /nonexistent/dir /y\n"),
    );
    let vol = Volume::create("dangling");
    let mount = format!("{}:/y/sub", vol.name);
    let run = run_one("runvm", &["-v", &mount], &[tag, "true"], None);
    assert_ne!(run.code, 0, "{}", run.describe());
    let lines: Vec<String> = run
        .stderr_str()
        .lines()
        .filter(|l| l.contains("mount destination /y/sub"))
        .map(str::to_string)
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "one line naming the destination:\n{}",
        run.describe()
    );
    assert!(lines[0].contains("mount at another path"), "{}", lines[0]);
}
