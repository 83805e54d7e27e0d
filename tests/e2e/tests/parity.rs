//! What the workload sees, runc vs runvm: environment, identity, cwd, hostname, /etc files, ulimits, tmpfs
//! and volumes.

use std::os::unix::fs::MetadataExt;

use runvm_e2e::*;

/// [`same_sh`], and the command must succeed.
fn same_sh_ok(run_args: &[&str], script: &str) -> (Run, Run) {
    let (runc, runvm) = same_sh(run_args, script);
    runvm.assert_code(0, script);
    (runc, runvm)
}

/// Drops `HOME=` lines and sorts, for the checks that must hold while HOME
/// and the order are checked on their own (below), so a failure names its cause.
fn env_without_home_sorted(bytes: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(bytes);
    let mut lines: Vec<&str> = text.lines().filter(|l| !l.starts_with("HOME=")).collect();
    lines.sort_unstable();
    lines
        .iter()
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        .into_bytes()
}

#[e2e_test]
fn environment() {
    let (_, runvm) = same_sh_ok(&["-h", "samehost"], "env | sort");
    let env = runvm.stdout_str();
    assert!(env.contains("HOSTNAME=samehost\n"), "{env}");
    assert!(env.contains("HOME=/root\n"), "{env}");
}

#[e2e_test]
fn home_from_passwd() {
    // runc: HOME from the user's /etc/passwd entry, "/" if it has none
    // (the image's recipe, scripts/build-test-images.sh, has root, nobody
    // and user 1000 with /home/user).
    for (user, home) in [
        ("root", "/root"),
        ("nobody", "/nonexistent"),
        ("1000:1000", "/home/user"),
        ("4242:4242", "/"),
    ] {
        let (runc, runvm) = run_both(
            &["-u", user],
            &[IMAGE, "sh", "-c", "echo \"HOME=$HOME\""],
            None,
        );
        assert_same(&runc, &runvm, &format!("-u {user}: HOME"));
        assert_eq!(runvm.stdout_str(), format!("HOME={home}\n"));
    }
}

#[e2e_test]
fn environment_order() {
    let (runc, runvm) = run_both(&["-h", "samehost", "-e", "FOO=bar"], &[IMAGE, "env"], None);
    assert_same(&runc, &runvm, "-e FOO=bar env");
}

/// Guards the rest of the environment while the two bugs above are open.
#[e2e_test]
fn environment_except_home_and_order() {
    let (runc, runvm) = run_both(&["-h", "samehost", "-e", "FOO=bar"], &[IMAGE, "env"], None);
    assert_same_with(
        &runc,
        &runvm,
        "-e FOO=bar env (HOME dropped, sorted)",
        env_without_home_sorted,
    );
    let env = runvm.stdout_str();
    assert!(env.contains("FOO=bar\n"), "{}", runvm.describe());
    assert!(env.contains("HOSTNAME=samehost\n"), "{}", runvm.describe());
}

#[e2e_test]
fn identity() {
    let (_, runvm) = same_sh_ok(&[], "id");
    assert_eq!(
        runvm.stdout_str(),
        "uid=0(root) gid=0(root) groups=0(root)\n"
    );
}

#[e2e_test]
fn identity_with_u() {
    // user 1000 is in the image's passwd and group files; 4242 is not.
    let (runc, runvm) = run_both(&["-u", "1000:1000"], &[IMAGE, "id"], None);
    assert_same(&runc, &runvm, "-u 1000:1000 id");
    assert_eq!(
        runvm.stdout_str(),
        "uid=1000(user) gid=1000(user) groups=1000(user)\n"
    );
    let (runc, runvm) = run_both(&["-u", "4242:4242"], &[IMAGE, "id"], None);
    assert_same(&runc, &runvm, "-u 4242:4242 id");
    assert_eq!(runvm.stdout_str(), "uid=4242 gid=4242 groups=4242\n");
}

#[e2e_test]
fn working_directory() {
    let (_, runvm) = same_sh_ok(&[], "pwd");
    assert_eq!(runvm.stdout, b"/\n");
    let (runc, runvm) = run_both(&["-w", "/tmp"], &[IMAGE, "pwd"], None);
    assert_same(&runc, &runvm, "-w /tmp pwd");
    assert_eq!(runvm.stdout, b"/tmp\n");
}

#[e2e_test]
fn hostname_default_is_short_id() {
    // The default hostname is the container's short id, which assert_same
    // replaces by a placeholder on each side.
    let (_, runvm) = same_sh_ok(&[], "hostname");
    let id = runvm
        .container_id
        .clone()
        .expect("container id from --cidfile");
    assert_eq!(runvm.stdout_str(), format!("{}\n", &id[..12]));
}

#[e2e_test]
fn hostname_with_h() {
    let (runc, runvm) = run_both(&["-h", "myhost"], &[IMAGE, "hostname"], None);
    assert_same(&runc, &runvm, "-h myhost hostname");
    assert_eq!(runvm.stdout, b"myhost\n");
}

#[e2e_test]
fn etc_hosts() {
    // Each container has its own IP: compare with IPs replaced.
    let (runc, runvm) = run_both(&["-h", "samehost"], &[IMAGE, "cat", "/etc/hosts"], None);
    assert_same_with(&runc, &runvm, "cat /etc/hosts", normalise_ipv4);
    assert!(
        runvm
            .stdout_str()
            .lines()
            .any(|l| l.ends_with("\tsamehost")),
        "{}",
        runvm.describe()
    );
}

#[e2e_test]
fn etc_resolv_conf() {
    same_sh_ok(&[], "cat /etc/resolv.conf");
}

#[e2e_test]
fn ulimits() {
    let (_, runvm) = same_sh_ok(&["--ulimit", "nofile=1024:2048"], "ulimit -n; ulimit -Hn");
    assert_eq!(runvm.stdout, b"1024\n2048\n");
}

#[e2e_test]
fn tmpfs_mount() {
    let (_, runvm) = same_sh_ok(&["--tmpfs", "/scratch"], "touch /scratch/x && ls /scratch");
    assert_eq!(runvm.stdout, b"x\n");
}

/// Under `runtime`: root writes a file into a fresh named volume, uid 1000
/// writes another, a third container reads both; returns what it read and
/// the owners as seen from the host (the volume's directory) and from a runc
/// container.
fn volume_round_trip(runtime: &str) -> (String, String, String) {
    let vol = Volume::create(&format!("vol-{runtime}"));
    let v = format!("{}:/v", vol.name);
    run_one(
        runtime,
        &["-v", &v],
        &[
            IMAGE,
            "sh",
            "-c",
            "echo from-root > /v/root-file && chmod 777 /v",
        ],
        None,
    )
    .assert_code(0, &format!("{runtime}: root writes the volume"));
    run_one(
        runtime,
        &["-u", "1000:1000", "-v", &v],
        &[IMAGE, "sh", "-c", "echo from-1000 > /v/file"],
        None,
    )
    .assert_code(0, &format!("{runtime}: uid 1000 writes the volume"));
    let read = run_one(
        runtime,
        &["-v", &v],
        &[IMAGE, "cat", "/v/root-file", "/v/file"],
        None,
    );
    read.assert_code(0, &format!("{runtime}: reading the volume back"));

    let stat = run_one(
        "runc",
        &["-v", &v],
        &[
            IMAGE,
            "stat",
            "-c",
            "%n %u:%g %a",
            "/v/root-file",
            "/v/file",
        ],
        None,
    );
    stat.assert_code(0, "stat in a runc container");

    let mountpoint = docker(
        &["volume", "inspect", "-f", "{{.Mountpoint}}", &vol.name],
        None,
    );
    mountpoint.assert_code(0, "docker volume inspect");
    let dir = std::path::PathBuf::from(mountpoint.stdout_str().trim());
    let mut host = String::new();
    for f in ["root-file", "file"] {
        let m = std::fs::metadata(dir.join(f))
            .unwrap_or_else(|e| panic!("{runtime}: {f} in the volume on the host: {e}"));
        host += &format!("{f} {}:{} {:o}\n", m.uid(), m.gid(), m.mode() & 0o7777);
    }
    (read.stdout_str(), stat.stdout_str(), host)
}

#[e2e_test]
fn named_volume_contents_and_owners() {
    let runc = volume_round_trip("runc");
    let runvm = volume_round_trip("runvm");
    assert_eq!(
        runvm.0, "from-root\nfrom-1000\n",
        "volume contents under runvm"
    );
    assert_eq!(
        runvm.1, "/v/root-file 0:0 644\n/v/file 1000:1000 644\n",
        "owners written by runvm, seen from a runc container"
    );
    assert_eq!(
        runc, runvm,
        "runc vs runvm: (contents, stat in container, host view)"
    );
}

#[e2e_test]
fn default_open_files_limit() {
    same_sh_ok(&[], "ulimit -n; ulimit -Hn");
}

#[e2e_test]
fn capabilities() {
    same_sh_ok(&[], "grep ^Cap /proc/self/status");
    same_sh_ok(&["--cap-drop", "CHOWN"], "grep ^Cap /proc/self/status");
    // Behaviour, not just the numbers: without CAP_SYS_ADMIN mount fails.
    let (runc, runvm) = run_both(
        &[],
        &[
            IMAGE,
            "sh",
            "-c",
            "mount -t tmpfs none /tmp 2>/dev/null && echo mounted || echo denied",
        ],
        None,
    );
    assert_same(&runc, &runvm, "mount without CAP_SYS_ADMIN");
    assert_eq!(runvm.stdout, b"denied\n");
}

#[e2e_test]
fn read_only_root_with_a_new_tmpfs_and_a_volume() {
    // The tmpfs mount point does not exist in the image: it must be made
    // before the root becomes read-only; the volume stays writable.
    let vol = Volume::create("ro-root");
    let mount = format!("{}:/data", vol.name);
    let (runc, runvm) = run_both(
        &["--read-only", "--tmpfs", "/newtmp", "-v", &mount],
        &[
            IMAGE,
            "sh",
            "-c",
            "touch /newtmp/a && echo tmpfs-ok; touch /data/b && echo volume-ok; touch /x; echo root=$?",
        ],
        None,
    );
    assert_same(&runc, &runvm, "--read-only with --tmpfs and a volume");
    assert_eq!(runvm.stdout_str(), "tmpfs-ok\nvolume-ok\nroot=1\n");
}
