//! `RUNVM_DISKS` and `RUNVM_ROOTDISK`: block devices with a file system of
//! the guest's own, backed by files inside the container, made on first
//! start, kept across restarts and containers, refused while another
//! container uses them, and repaired after a crash.

use std::time::Duration;

use runvm_e2e::*;

/// The host's view of a file in a volume: (apparent size, bytes used).
fn file_size_on_host(volume: &Volume, file: &str) -> (u64, u64) {
    let r = host_sh(&format!(
        "stat -c '%s %b %B' \"$(docker volume inspect -f '{{{{.Mountpoint}}}}' {})/{file}\"",
        volume.name
    ));
    r.assert_code(0, "stat the backing file");
    let f: Vec<u64> = r
        .stdout_str()
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    (f[0], f[1] * f[2])
}

/// `df -k <dir>`'s size in KiB.
fn df_kib(out: &str, dir: &str) -> u64 {
    out.lines()
        .find(|l| l.ends_with(&format!(" {dir}")))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no df line for {dir} in:\n{out}"))
}

#[e2e_test]
fn disks_are_made_filled_kept_and_hidden_from_the_guest() {
    let vol = Volume::create("disks");
    let disks = "RUNVM_DISKS=/disks/home.img,/home,ext4,1g;/disks/data.img,/data,xfs,512m";
    // First start: both files are made (sparse), formatted, and /home is
    // filled with what the image has there (user's home, owned by 1000).
    let script = "df -k /home /data; grep -E ' /(home|data) ' /proc/mounts | cut -d' ' -f2,3; \
                  stat -c '%u %n' /home/user; ls -A /disks | wc -l; \
                  cat /data/kept 2>/dev/null || echo none; echo kept-data > /data/kept; \
                  echo kept-home > /home/user/kept; \
                  dd if=/dev/zero of=/data/direct bs=4096 count=16 oflag=direct 2>/dev/null \
                  && echo direct-io";
    let c = Container::new("disks");
    let mount = format!("{}:/disks", vol.name);
    let r = docker(
        &[
            "run",
            "--name",
            &c.name,
            &format!("--runtime={}", runvm_runtime()),
            "-v",
            &mount,
            "-e",
            disks,
            IMAGE,
            "sh",
            "-c",
            script,
        ],
        None,
    );
    r.assert_code(0, "first start with two new disks");
    let out = r.stdout_str();
    let home = df_kib(&out, "/home");
    let data = df_kib(&out, "/data");
    // The file systems' own metadata takes a little of the size asked for.
    assert!(
        (900 * 1024..=1024 * 1024).contains(&home),
        "ext4 /home is {home} KiB for 1g:\n{out}"
    );
    assert!(
        (400 * 1024..=512 * 1024).contains(&data),
        "xfs /data is {data} KiB for 512m:\n{out}"
    );
    assert!(out.contains("/home ext4\n"), "{}", r.describe());
    assert!(out.contains("/data xfs\n"), "{}", r.describe());
    assert!(
        out.contains("1000 /home/user\n"),
        "not filled from the image:\n{out}"
    );
    // The backing files never reach the guest.
    assert!(out.contains("\n0\nnone\n"), "{}", r.describe());
    let (apparent, used) = file_size_on_host(&vol, "home.img");
    assert_eq!(apparent, 1 << 30);
    assert!(
        used < 200 << 20,
        "home.img is not sparse: {used} bytes used"
    );

    // docker start: the same files, untouched.
    let r = docker(&["start", "-a", &c.name], None);
    r.assert_code(0, "second start");
    assert!(r.stdout_str().contains("kept-data\n"), "{}", r.describe());

    // Another container on the same volume sees the data.
    let r = run_one(
        "runvm",
        &["-v", &mount, "-e", disks],
        &[IMAGE, "sh", "-c", "cat /data/kept /home/user/kept"],
        None,
    );
    r.assert_code(0, "a new container on the same disks");
    assert_eq!(r.stdout_str(), "kept-data\nkept-home\n", "{}", r.describe());
}

#[e2e_test]
fn a_disk_in_use_is_refused_and_free_again_once_stopped() {
    let vol = Volume::create("disk-lock");
    let mount = format!("{}:/disks", vol.name);
    let env = "RUNVM_DISKS=/disks/shared.img,/data,ext4,64m";
    let holder = Container::run_detached(
        "disk-holder",
        &runvm_runtime(),
        &[
            "-v",
            &mount,
            "-e",
            env,
            IMAGE,
            "sh",
            "-c",
            "trap 'exit 0' TERM; touch /data/ready; sleep 600 & wait",
        ],
    );
    holder.wait_for_file(
        "the first container's disk",
        "/data/ready",
        Duration::from_secs(120),
    );
    let r = run_one("runvm", &["-v", &mount, "-e", env], &[IMAGE, "true"], None);
    r.assert_code(125, "a second container on a disk in use");
    let lines: Vec<String> = r
        .stderr_str()
        .lines()
        .filter(|l| l.contains("in use by another running container"))
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 1, "{}", r.describe());
    assert!(lines[0].contains("/disks/shared.img"), "{}", r.describe());

    // docker stop: the guest unmounts the disk cleanly (nothing synced by
    // hand), and the next container may use it.
    docker(&["stop", &holder.name], None).assert_code(0, "stop the holder");
    let r = run_one(
        "runvm",
        &["-v", &mount, "-e", env, "-e", "RUNVM_DEBUG=1"],
        &[IMAGE, "ls", "/data/ready"],
        None,
    );
    r.assert_code(0, "the disk once its holder is gone");
    assert!(
        r.stderr_str().contains(": clean,") && !r.stderr_str().contains("recovering journal"),
        "the disk was not left clean:\n{}",
        r.describe()
    );
}

/// QEMU killed while the guest writes: the next start checks the file
/// system (journal replay and e2fsck) and mounts it, with what was synced.
#[e2e_test]
fn a_disk_is_repaired_after_the_vm_is_killed_mid_write() {
    let vol = Volume::create("disk-crash");
    let mount = format!("{}:/disks", vol.name);
    let env = "RUNVM_DISKS=/disks/crash.img,/data,ext4,128m";
    let writer = Container::run_detached(
        "disk-writer",
        &runvm_runtime(),
        &[
            "-v",
            &mount,
            "-e",
            env,
            IMAGE,
            "sh",
            "-c",
            "i=0; while true; do dd if=/dev/zero of=/data/f$i bs=64k count=8 2>/dev/null; \
             sync; echo $i > /data/last; i=$((i+1)); done",
        ],
    );
    poll_until("synced writes", Duration::from_secs(120), || {
        let r = docker(&["exec", &writer.name, "cat", "/data/last"], None);
        (r.stdout_str().trim().parse::<u32>().unwrap_or(0) >= 3).then_some(())
    });
    let qemu = writer.host_pids_of("qemu-system-x86");
    assert_eq!(qemu.len(), 1, "{qemu:?}");
    host_sh(&format!("kill -9 {}", qemu[0])).assert_code(0, "kill QEMU");
    writer.wait_exit();

    let r = run_one(
        "runvm",
        &["-v", &mount, "-e", env, "-e", "RUNVM_DEBUG=1"],
        &[IMAGE, "sh", "-c", "ls /data | grep -c '^f'; cat /data/last"],
        None,
    );
    r.assert_code(0, "the start after the crash");
    let out = r.stdout_str();
    let files: u32 = out.lines().next().unwrap_or("0").parse().unwrap_or(0);
    assert!(files >= 3, "synced files lost:\n{}", r.describe());
    assert!(
        r.stderr_str().contains("recovering journal") || r.stderr_str().contains(": clean,"),
        "no check before mounting:\n{}",
        r.describe()
    );
}

#[e2e_test]
fn a_raw_disk_is_a_block_device_of_the_size_asked_for() {
    let vol = Volume::create("disk-raw");
    let r = run_one(
        "runvm",
        &[
            "-v",
            &format!("{}:/disks", vol.name),
            "-e",
            "RUNVM_DISKS=/disks/raw.img,/dev/scratch,raw,16m",
        ],
        &[
            IMAGE,
            "sh",
            "-c",
            "test -b /dev/scratch && blockdev --getsize64 /dev/scratch",
        ],
        None,
    );
    r.assert_code(0, "a raw disk");
    assert_eq!(r.stdout_str(), "16777216\n", "{}", r.describe());
}

/// A file elsewhere than /disks (here on a volume mounted at /vol) backs
/// a disk too, and the guest sees an empty file in its place.
#[e2e_test]
fn a_disk_file_outside_disks_is_covered_too() {
    let vol = Volume::create("disk-elsewhere");
    let r = run_one(
        "runvm",
        &[
            "-v",
            &format!("{}:/vol", vol.name),
            "-e",
            "RUNVM_DISKS=/vol/d.img,/data,ext4,32m",
        ],
        &[
            IMAGE,
            "sh",
            "-c",
            "grep -c ' /data ext4 ' /proc/mounts; stat -c %s /vol/d.img",
        ],
        None,
    );
    r.assert_code(0, "a disk on a volume");
    assert_eq!(r.stdout_str(), "1\n0\n", "{}", r.describe());
    assert_eq!(file_size_on_host(&vol, "d.img").0, 32 << 20);
}

/// A hostile image's disk file that is a device node, or a symlink out of
/// the image, is never opened on the host.
#[e2e_test]
fn an_image_cannot_point_a_disk_at_a_host_device_or_file() {
    let image = "runvm-e2e/hostile-disks";
    build_image(
        image,
        &format!(
            "FROM {IMAGE}\nRUN mkdir /disks && mknod /disks/dev.img b 7 0 && \
             ln -s /../../../../etc/shadow /disks/shadow.img\n"
        ),
    );
    let shadow = host_sh("sha256sum /etc/shadow").stdout_str();
    let r = run_one(
        "runvm",
        &["-e", "RUNVM_DISKS=/disks/dev.img,/data,ext4,64m"],
        &[image, "true"],
        None,
    );
    r.assert_code(125, "a device node as a disk file");
    assert!(
        r.stderr_str().contains("not a regular file"),
        "{}",
        r.describe()
    );
    let r = run_one(
        "runvm",
        &["-e", "RUNVM_DISKS=/disks/shadow.img,/data,ext4,64m"],
        &[image, "true"],
        None,
    );
    r.assert_code(125, "a symlink out of the image as a disk file");
    assert_eq!(host_sh("sha256sum /etc/shadow").stdout_str(), shadow);
    let _ = docker(&["rmi", "-f", image], None);
}

#[e2e_test]
fn a_root_disk_is_ext4_keeps_files_and_volumes_still_work() {
    let vol = Volume::create("rootdisk");
    let c = Container::new("rootdisk");
    let mount = format!("{}:/vol", vol.name);
    let script = "grep ' / / ' /proc/self/mountinfo | sed 's/.* - //' | cut -d' ' -f1; \
                  cat /root/kept 2>/dev/null || echo none; echo kept > /root/kept; \
                  echo from-vm > /vol/x; hostname > /vol/hostname; cat /etc/hostname";
    let r = docker(
        &[
            "run",
            "--name",
            &c.name,
            "--hostname",
            "rooted",
            &format!("--runtime={}", runvm_runtime()),
            "-v",
            &mount,
            "-e",
            "RUNVM_ROOTDISK=256m",
            IMAGE,
            "sh",
            "-c",
            script,
        ],
        None,
    );
    r.assert_code(0, "first start on a root disk");
    assert_eq!(r.stdout_str(), "ext4\nnone\nrooted\n", "{}", r.describe());
    let r = docker(&["start", "-a", &c.name], None);
    r.assert_code(0, "second start on the root disk");
    assert_eq!(r.stdout_str(), "ext4\nkept\nrooted\n", "{}", r.describe());
    // The volume is the real one, shared with other containers.
    let r = run_one(
        "runc",
        &["-v", &mount],
        &[IMAGE, "cat", "/vol/x", "/vol/hostname"],
        None,
    );
    assert_eq!(r.stdout_str(), "from-vm\nrooted\n", "{}", r.describe());
}

/// A restart policy restarts the container on the same disk: each run
/// sees what the one before wrote.
#[e2e_test]
fn a_restart_policy_keeps_the_disk() {
    let vol = Volume::create("disk-restart");
    let c = Container::run_detached(
        "disk-restart",
        "runvm",
        &[
            "--restart",
            "on-failure:2",
            "-v",
            &format!("{}:/disks", vol.name),
            "-e",
            "RUNVM_DISKS=/disks/r.img,/data,ext4,32m",
            IMAGE,
            "sh",
            "-c",
            "n=$(cat /data/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /data/n; \
             echo run $n; test $n -ge 3",
        ],
    );
    poll_until("the third run", Duration::from_secs(300), || {
        let state = c.inspect("{{.State.Status}} {{.RestartCount}}");
        (state == "exited 2").then_some(())
    });
    assert_eq!(c.wait_exit(), 0);
    let logs = c.logs();
    assert_eq!(
        logs.stdout_str(),
        "run 1\nrun 2\nrun 3\n",
        "{}",
        logs.describe()
    );
}

/// From `docker stop`'s signal on, the guest syncs its disks: a workload
/// that ignores SIGTERM and is killed at the timeout keeps what it wrote
/// before (runc keeps it in the host's page cache).
#[e2e_test]
fn docker_stop_keeps_writes_of_a_workload_that_ignores_the_signal() {
    let vol = Volume::create("disk-stop");
    let mount = format!("{}:/disks", vol.name);
    let env = "RUNVM_DISKS=/disks/s.img,/data,ext4,32m";
    let c = Container::run_detached(
        "disk-stop",
        "runvm",
        &[
            "-v",
            &mount,
            "-e",
            env,
            IMAGE,
            "sh",
            "-c",
            "trap '' TERM; touch /data/up; while true; do sleep 1; done",
        ],
    );
    c.wait_for_file("the container's disk", "/data/up", Duration::from_secs(120));
    docker(
        &["exec", &c.name, "sh", "-c", "echo written > /data/late"],
        None,
    )
    .assert_code(0, "write through exec");
    let r = docker(&["stop", "-t", "2", &c.name], None);
    r.assert_code(0, "docker stop");
    let r = run_one(
        "runvm",
        &["-v", &mount, "-e", env],
        &[IMAGE, "cat", "/data/late"],
        None,
    );
    assert_eq!(r.stdout_str(), "written\n", "{}", r.describe());
}

/// An existing file is used as it is: one never written (`truncate -s`)
/// is formatted; one holding no file system is refused with a message
/// saying so; two entries naming one file are refused; with --read-only
/// a disk file must be on a volume.
#[e2e_test]
fn existing_files_read_only_roots_and_aliases() {
    let vol = Volume::create("disk-existing");
    let mount = format!("{}:/disks", vol.name);
    let dir = host_sh(&format!(
        "docker volume inspect -f '{{{{.Mountpoint}}}}' {}",
        vol.name
    ))
    .stdout_str()
    .trim()
    .to_string();
    host_sh(&format!(
        "truncate -s 64m {dir}/empty.img && head -c 1048576 /dev/urandom > {dir}/junk.img && \
         truncate -s 64m {dir}/junk.img && ln -s empty.img {dir}/alias.img"
    ))
    .assert_code(0, "make the files");
    let r = run_one(
        "runvm",
        &[
            "-v",
            &mount,
            "-e",
            "RUNVM_DISKS=/disks/empty.img,/data,ext4",
        ],
        &[IMAGE, "sh", "-c", "grep -c ' /data ext4 ' /proc/mounts"],
        None,
    );
    assert_eq!(
        r.stdout_str(),
        "1\n",
        "a never-written file is formatted:\n{}",
        r.describe()
    );
    let r = run_one(
        "runvm",
        &["-v", &mount, "-e", "RUNVM_DISKS=/disks/junk.img,/data,ext4"],
        &[IMAGE, "true"],
        None,
    );
    assert_ne!(r.code, 0);
    assert!(
        r.stderr_str().contains("holds no usable ext4 file system"),
        "{}",
        r.describe()
    );
    let r = run_one(
        "runvm",
        &[
            "-v",
            &mount,
            "-e",
            "RUNVM_DISKS=/disks/empty.img,/a,ext4;/disks/alias.img,/b,ext4",
        ],
        &[IMAGE, "true"],
        None,
    );
    r.assert_code(125, "two names of one file");
    assert!(
        r.stderr_str().contains("are the same file"),
        "{}",
        r.describe()
    );
    let r = run_one(
        "runvm",
        &[
            "--read-only",
            "-e",
            "RUNVM_DISKS=/disks/x.img,/data,ext4,64m",
        ],
        &[IMAGE, "true"],
        None,
    );
    r.assert_code(
        125,
        "a disk file in the writable layer of a --read-only container",
    );
    assert!(
        r.stderr_str().contains("put it on a volume"),
        "{}",
        r.describe()
    );
    let r = run_one(
        "runvm",
        &[
            "--read-only",
            "-v",
            &mount,
            "-e",
            "RUNVM_DISKS=/disks/empty.img,/data,ext4",
        ],
        &[IMAGE, "sh", "-c", "touch /data/ok && echo ok"],
        None,
    );
    assert_eq!(r.stdout_str(), "ok\n", "{}", r.describe());
}

/// A --read-only container on an existing root disk still gets the
/// mount points of its --tmpfs mounts.
#[e2e_test]
fn a_read_only_root_disk_takes_new_mount_points() {
    let vol = Volume::create("rootdisk-ro");
    let mount = format!("{}:/vol", vol.name);
    let env = "RUNVM_ROOTDISK=/vol/root.img,128m";
    run_one("runvm", &["-v", &mount, "-e", env], &[IMAGE, "true"], None)
        .assert_code(0, "fill the root disk");
    let r = run_one(
        "runvm",
        &["--read-only", "--tmpfs", "/newtmp", "-v", &mount, "-e", env],
        &[
            IMAGE,
            "sh",
            "-c",
            "touch /newtmp/x && echo tmpfs; touch /y 2>/dev/null || echo read-only",
        ],
        None,
    );
    assert_eq!(r.stdout_str(), "tmpfs\nread-only\n", "{}", r.describe());
}
