//! Bad `RUNVM_*` input fails `docker run` with one clear line and leaves
//! nothing behind.
//!
//! No test here boots a VM: this binary then never runs a VM of its own while it checks
//! for leftovers (cargo runs test binaries one after another), so any QEMU,
//! virtiofsd or supervisor process found is a leftover.

use std::time::Duration;

use runvm_e2e::*;

fn check_rejected(env: &str, must_mention: &[&str]) {
    check_refused(&["-e", env], must_mention);
}

/// `docker run --rm --runtime=runvm ARGS IMAGE true` fails with exit 125
/// and one line naming `must_mention`, and leaves nothing behind.
fn check_refused(args: &[&str], must_mention: &[&str]) {
    let c = Container::new("bad-input");
    let mut all = vec!["--name", &c.name];
    all.extend_from_slice(args);
    let run = run_one("runvm", &all, &[IMAGE, "true"], None);
    let what = format!("docker run --rm --runtime=runvm {}", args.join(" "));
    run.assert_code(125, &what);
    let stderr = run.stderr_str();
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains(must_mention[0]))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: expected exactly one line mentioning {}:\n{}",
        must_mention[0],
        run.describe()
    );
    for m in must_mention {
        assert!(
            lines[0].contains(m),
            "{what}: the error line should mention {m}:\n{}",
            run.describe()
        );
    }
    assert!(run.stdout.is_empty(), "{what}: stdout:\n{}", run.describe());

    c.wait_removed(&what, Duration::from_secs(10));
    assert_no_leftovers(&what, Duration::from_secs(10));
}

/// A VM cannot share the host's network stack nor another container's:
/// both modes are refused before anything is set up. (Under runc they
/// work; the host's network is left as it was.)
#[e2e_test]
fn network_modes_a_vm_cannot_share_are_refused() {
    let host_network = || {
        let r = host_sh("{ ip -o addr; ip route; ip -6 route; tc qdisc show; } | grep -v 'veth\\|br-' | sed 's/ linkdown//'");
        r.assert_code(0, "host network snapshot");
        r.stdout_str()
    };
    let before = host_network();
    check_refused(
        &["--network", "host"],
        &["--network host is not supported by runvm", "-p"],
    );
    let peer = Container::run_detached("net-peer", "runc", &[IMAGE, "sleep", "300"]);
    let mode = format!("container:{}", peer.name);
    check_refused(
        &["--network", &mode],
        &[
            "--network container:<name> is not supported by runvm",
            "user-defined network",
        ],
    );
    drop(peer);
    assert_eq!(host_network(), before, "the host's network changed");
}

#[e2e_test]
fn bad_runvm_options_fail_cleanly() {
    assert_no_leftovers("before the bad-input checks", Duration::from_secs(30));
    check_rejected(
        "RUNVM_ACCEL=warp",
        &["RUNVM_ACCEL=\"warp\"", "RUNVM_ACCEL=tcg"],
    );
    check_rejected(
        "RUNVM_KERNEL=/nonexistent/vmlinuz",
        &["/nonexistent/vmlinuz", "RUNVM_KERNEL"],
    );
    // A kernel is a name in runvm's store, never a host path.
    check_rejected("RUNVM_KERNEL=/etc/shadow", &["/etc/shadow", "kernel store"]);
    // Kernel parameters that would take the guest from runvm's agent.
    check_rejected(
        "RUNVM_KERNEL_APPEND=init=/bin/sh",
        &["RUNVM_KERNEL_APPEND", "runvm's own"],
    );
    check_rejected(
        "RUNVM_CGROUPFS=3",
        &["RUNVM_CGROUPFS", "none, 1, 2 or hybrid"],
    );
    check_rejected(
        "RUNVM_KERNEL=no-such-kernel",
        &["no-such-kernel", "kernel store", "give one of"],
    );
    // More than the engine granted.
    let c = Container::new("bad-memory");
    let run = run_one(
        "runvm",
        &["--name", &c.name, "-m", "300m", "-e", "RUNVM_MEMORY=4g"],
        &[IMAGE, "true"],
        None,
    );
    run.assert_code(125, "RUNVM_MEMORY above --memory");
    assert!(
        run.stderr_str()
            .lines()
            .any(|l| l.contains("RUNVM_MEMORY") && l.contains("300 MiB")),
        "{}",
        run.describe()
    );
    assert_no_leftovers("RUNVM_MEMORY above --memory", Duration::from_secs(10));
}

/// A kernel in the store whose modules.dep names a path outside its tree is
/// refused in one line, and nothing is written to the initramfs cache.
/// Each bad `RUNVM_DISKS` entry is refused with one line that names the
/// entry and the fix; no file is made (the volume stays empty).
#[e2e_test]
fn bad_disk_specs_fail_naming_the_entry_and_make_nothing() {
    let vol = Volume::create("bad-disks");
    let mount = format!("{}:/disks", vol.name);
    for (spec, mention) in [
        ("/disks/new.img,/data,ext4", "no size was given"),
        ("/disks/a.img,/data,zfs,1g", "unknown file system \"zfs\""),
        ("/disks/a.img,/data,ext4,10Q", "size \"10Q\" is not a size"),
        ("/disks/a.img,data,ext4,1g", "not an absolute path"),
        (
            "/proc/self/root/a.img,/data,ext4,1g",
            "outside the container's files",
        ),
        ("/disks/../../a.img,/data,ext4,1g", "without one"),
    ] {
        let env = format!("RUNVM_DISKS=/disks/ok.img,/ok,ext4,8m;{spec}");
        let first = if mention == "no size was given" {
            "/disks/new.img"
        } else {
            "entry 2"
        };
        check_refused(&["-v", &mount, "-e", &env], &[first, mention]);
        let r = host_sh(&format!(
            "ls -A \"$(docker volume inspect -f '{{{{.Mountpoint}}}}' {})\"",
            vol.name
        ));
        assert_eq!(r.stdout_str(), "", "{spec} left files behind");
    }
    check_rejected("RUNVM_ROOTDISK=lots", &["RUNVM_ROOTDISK", "not a size"]);
}

#[e2e_test]
fn a_kernel_whose_modules_leave_its_tree_is_refused() {
    let store = "/var/lib/runvm/kernel";
    let cache = "/var/lib/runvm/cache";
    let name = unique_name("evil-kernel");
    struct Remove(String);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let root = format!("{store}/{name}");
    let _guard = Remove(root.clone());
    // A copy of the installed kernel whose modules.dep names /etc/shadow.
    // Its version, 0-evil, sorts below every real one: containers started
    // meanwhile (by the other tests of this binary) keep the default kernel.
    let setup = host_sh(&format!(
        r#"set -e
src=$(ls -d {store}/*/boot/vmlinuz-* | grep -v runvm-e2e | head -1)
mods=$(dirname "$(dirname "$src")")/lib/modules/$(basename "$src" | sed s/vmlinuz-//)
mkdir -p {root}/boot {root}/lib/modules/0-evil
cp "$src" {root}/boot/vmlinuz-0-evil
sed 's#^kernel/fs/fuse/fuse.ko:#/etc/shadow:#; s# kernel/fs/fuse/fuse.ko# /etc/shadow#g' \
    "$mods/modules.dep" > {root}/lib/modules/0-evil/modules.dep
grep -q /etc/shadow {root}/lib/modules/0-evil/modules.dep"#
    ));
    setup.assert_code(0, "set up a kernel with a hostile modules.dep");
    let env = format!("RUNVM_KERNEL={name}");
    check_rejected(&env, &["/etc/shadow", "modules.dep"]);
    // Nothing was built for it (other tests of this binary may build
    // archives for the real kernel meanwhile).
    let built = host_sh(&format!("ls -A {cache} 2>/dev/null | grep -c 0-evil"));
    assert_eq!(
        built.stdout_str().trim(),
        "0",
        "an initramfs was built for the hostile kernel"
    );
}
