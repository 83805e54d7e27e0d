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

#[e2e_test]
fn image_symlink_under_a_volume_cannot_replace_runvms_files() {
    let image = build_symlink_image();
    let run = run_one("runvm", &[], &[image], None);
    assert_ran_in_vm(&run, "image with /x -> /runvm and VOLUME /x");
}

#[e2e_test]
fn bind_mount_through_an_image_symlink_stays_in_the_image() {
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

#[e2e_test]
fn symlink_planted_by_the_guest_does_not_redirect_the_next_start() {
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

#[e2e_test]
fn a_mount_through_a_dangling_image_symlink_is_refused_in_one_line() {
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

fn status_field(pid: u32, field: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[e2e_test]
fn qemu_is_unprivileged_and_only_qemu_holds_the_taps() {
    let _slot = vm_slots(1);
    let c = Container::run_detached(
        "helpers",
        "runvm",
        &[
            "--cap-add",
            "SYS_ADMIN",
            IMAGE,
            "sh",
            "-c",
            "echo up; sleep 600",
        ],
    );
    c.wait_for_log("up", std::time::Duration::from_secs(120));
    let qemu = c.host_pids_of("qemu-system");
    assert_eq!(qemu.len(), 1, "one QEMU in the container: {qemu:?}");
    let uid = status_field(qemu[0], "Uid");
    assert!(
        uid.split_whitespace().all(|u| u != "0"),
        "QEMU runs as root: Uid {uid}"
    );
    assert_eq!(status_field(qemu[0], "CapEff"), "0000000000000000");
    assert_eq!(status_field(qemu[0], "CapPrm"), "0000000000000000");
    assert_eq!(status_field(qemu[0], "NoNewPrivs"), "1");
    let taps = |pid: u32| -> usize {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| {
                d.flatten()
                    .filter(|e| {
                        std::fs::read_link(e.path())
                            .is_ok_and(|t| t.to_string_lossy().contains("/dev/net/tun"))
                    })
                    .count()
            })
            .unwrap_or(0)
    };
    assert!(taps(qemu[0]) >= 1, "QEMU holds the container's tap");
    // Two virtiofsd: the container's files, and the kernel's modules.
    let vfs = c.host_pids_of("virtiofsd");
    assert_eq!(vfs.len(), 2, "two virtiofsd: {vfs:?}");
    for &pid in &vfs {
        assert_eq!(taps(pid), 0, "virtiofsd {pid} holds a tap");
    }
    // Once the VM runs, every thread of the supervisor holds CAP_KILL
    // (bit 5) and CAP_NET_ADMIN (bit 12, for networks connected while it
    // runs) at most, in every set.
    let sup = c.host_pids_of("runvm-superviso");
    assert_eq!(sup.len(), 1, "one supervisor: {sup:?}");
    for task in std::fs::read_dir(format!("/proc/{}/task", sup[0]))
        .expect("tasks")
        .flatten()
    {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        for set in ["CapEff", "CapPrm", "CapBnd"] {
            let v = status
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{set}:")))
                .map(str::trim)
                .unwrap_or_default();
            assert!(
                v.is_empty() || v == "0000000000001020",
                "supervisor thread {:?} {set} {v}",
                task.file_name()
            );
        }
    }
    // --cap-add is for the guest: the host side never gets SYS_ADMIN (21).
    for pid in c.host_pids_of("runvm-superviso").into_iter().chain(vfs) {
        let bnd = u64::from_str_radix(&status_field(pid, "CapBnd"), 16).expect("hex");
        assert_eq!(bnd & (1 << 21), 0, "pid {pid} may hold CAP_SYS_ADMIN");
    }
}

#[e2e_test]
fn the_images_modprobe_never_runs_as_a_kernel_helper() {
    // A device node of a driver nobody has makes the guest kernel ask
    // /sbin/modprobe for it; the image ships its own modprobe, which must
    // never run (under runc, opening the node fails and nothing runs).
    let tag = "runvm-test/boundary-modprobe";
    build_image(
        tag,
        &format!(
            "FROM {IMAGE}\nRUN mkdir -p /sbin && printf '#!/bin/sh\\nid > /tmp/pwned\\n' > /sbin/modprobe && chmod 755 /sbin/modprobe && mknod -m 666 /devnode c 240 7\n"
        ),
    );
    let run = run_one(
        "runvm",
        &["--user", "1000:1000"],
        &[
            tag,
            "sh",
            "-c",
            "cat /devnode 2>/dev/null; sleep 2; cat /tmp/pwned 2>/dev/null || echo not-run",
        ],
        None,
    );
    assert_eq!(
        run.stdout_str(),
        "not-run\n",
        "the image's /sbin/modprobe ran as a kernel helper:\n{}",
        run.describe()
    );
}
