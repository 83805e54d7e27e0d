//! The container's disks in the guest (`RUNVM_DISKS`, `RUNVM_ROOTDISK`).
//!
//! Before the container's root becomes the agent's, each disk is found by
//! its virtio serial, checked (ext4: the initramfs's own `e2fsck -p`, and
//! `-fy` when that is not enough; xfs replays its log when mounted), filled
//! from the image when it was just made, and mounted at its destination.
//! A root disk becomes the container's root, with Docker's mounts (volumes,
//! `/etc/hosts`, …) bound into it from the container's files. At power-off
//! the disks are unmounted (a root disk remounted read-only) after the
//! last process is gone, so their file systems are clean.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{mknod, Mode, SFlag};
use nix::sys::time::TimeSpec;
use runvm_protocol::{DiskFs, GuestDisk};

use crate::error::{AgentError, Result};
use crate::reaper::Reaper;

/// The initramfs's static e2fsck.
const E2FSCK: &str = "/sbin/e2fsck";
/// Where the virtiofs share of the container's files is mounted first.
pub const SHARE: &str = "/mnt/root";
/// Where a root disk is mounted before it becomes the root.
const ROOT_DISK_AT: &str = "/mnt/disk";
/// Where a new disk is mounted while it is filled.
const STAGING: &str = "/mnt/fill";

/// What to undo at power-off: mounted disks (paths in the container's
/// root), in mount order, and whether `/` is a disk.
static MOUNTED: Mutex<(Vec<PathBuf>, bool)> = Mutex::new((Vec::new(), false));

/// The block device whose virtio serial is `serial`, waiting for it to
/// appear (its driver probes while the agent starts).
fn find_device(serial: &str) -> Result<PathBuf> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(entries) = fs::read_dir("/sys/block") {
            for e in entries.flatten() {
                let s = fs::read_to_string(e.path().join("serial")).unwrap_or_default();
                if s.trim_end_matches(['\n', '\0']) == serial {
                    return Ok(Path::new("/dev").join(e.file_name()));
                }
            }
        }
        if Instant::now() > deadline {
            return Err(AgentError::sys(
                format!("find the disk with serial {serial}"),
                io::Error::from(io::ErrorKind::NotFound),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `program` with `args` (output to the console) and returns its exit
/// code; the reaper hands it over.
async fn run(reaper: &Reaper, program: &str, args: &[&OsStr]) -> io::Result<i32> {
    let (_, rx, ()) = reaper.spawn_and_expect(|| {
        let child = std::process::Command::new(program).args(args).spawn()?;
        Ok::<_, io::Error>((child.id() as i32, ()))
    })?;
    rx.await
        .map(|e| e.code)
        .map_err(|_| io::Error::other(format!("{program} was never reaped")))
}

/// Checks an ext4 disk before it is mounted: `e2fsck -p` repairs what is
/// safe to repair unattended (a crash's leftovers); when it cannot (any
/// exit code beyond 1 and 2, "errors corrected"), `e2fsck -fy` repairs
/// the rest, and a disk that still has errors (or holds no ext4 at all)
/// is refused.
async fn check(reaper: &Reaper, dev: &Path, d: &GuestDisk) -> Result<()> {
    if d.fs != DiskFs::Ext4 {
        return Ok(());
    }
    let fail = |e| AgentError::sys(format!("check the disk for {}", d.destination), e);
    let code = run(reaper, E2FSCK, &["-p".as_ref(), dev.as_os_str()])
        .await
        .map_err(fail)?;
    if code & !3 == 0 {
        if code != 0 {
            tracing::info!("disk for {}: e2fsck repaired it ({code})", d.destination);
        }
        return Ok(());
    }
    tracing::warn!(
        "disk for {}: e2fsck -p could not repair it (exit code {code}); running e2fsck -fy",
        d.destination
    );
    let code = run(reaper, E2FSCK, &["-fy".as_ref(), dev.as_os_str()])
        .await
        .map_err(fail)?;
    if code & !3 != 0 {
        return Err(AgentError::Disk(format!(
            "the disk for {} holds no usable ext4 file system (e2fsck -fy exit code {code}; the console log with RUNVM_DEBUG=1 says more): restore its file, or remove it to have runvm make a new one",
            d.destination
        )));
    }
    Ok(())
}

fn mount_disk(dev: &Path, at: &str, d: &GuestDisk, readonly: bool) -> Result<()> {
    fs::create_dir_all(at).map_err(|e| AgentError::sys(format!("create {at}"), e))?;
    let mut flags = MsFlags::empty();
    if readonly {
        flags |= MsFlags::MS_RDONLY;
    }
    mount(Some(dev), at, Some(d.fs.name()), flags, None::<&str>).map_err(|e| AgentError::Mount {
        what: format!("the {} disk for {}", d.fs.name(), d.destination),
        target: at.into(),
        source: e,
    })
}

/// `path` (absolute, as the container names it) under `root`, refusing a
/// symlink on the way: an image's link must not send a disk or a mount
/// out of the container's root.
fn under(root: &Path, path: &str) -> Result<PathBuf> {
    let mut p = root.to_path_buf();
    for part in Path::new(path).components().skip(1) {
        p.push(part);
        if fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(AgentError::sys(
                format!("use {path} inside the container"),
                io::Error::other(format!(
                    "{} is a symlink; mount at a path without one",
                    p.strip_prefix(root).unwrap_or(&p).display()
                )),
            ));
        }
    }
    Ok(p)
}

/// Mounts the root disk, if any, filled from the share on first start,
/// with Docker's mounts bound in from the share. Returns the directory
/// that becomes the container's root.
pub async fn prepare_root(
    reaper: &Reaper,
    disks: &[GuestDisk],
    docker_mounts: &[String],
    guest_mountpoints: &[String],
    readonly: bool,
) -> Result<PathBuf> {
    let Some(d) = disks.iter().find(|d| d.destination == "/") else {
        return Ok(SHARE.into());
    };
    let dev = find_device(&d.serial)?;
    check(reaper, &dev, d).await?;
    mount_disk(&dev, ROOT_DISK_AT, d, false)?;
    let root = Path::new(ROOT_DISK_AT);
    if is_fresh(root) {
        let skip: Vec<PathBuf> = docker_mounts
            .iter()
            .map(|m| Path::new(SHARE).join(m.trim_start_matches('/')))
            .collect();
        fill(Path::new(SHARE), root, &skip, d)?;
    }
    // What the guest mounts later (`--tmpfs`, other disks) needs its mount
    // points while the disk is writable.
    for m in guest_mountpoints {
        if let Ok(p) = under(root, m) {
            let _ = fs::create_dir_all(p);
        }
    }
    for m in docker_mounts {
        let from = Path::new(SHARE).join(m.trim_start_matches('/'));
        let to = under(root, m)?;
        let is_dir = fs::metadata(&from).map(|m| m.is_dir()).unwrap_or(true);
        if !to.exists() {
            if let Some(parent) = to.parent() {
                let _ = fs::create_dir_all(parent);
            }
            let _ = if is_dir {
                fs::create_dir(&to)
            } else {
                fs::write(&to, b"")
            };
        }
        mount(
            Some(&from),
            &to,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| AgentError::Mount {
            what: format!("Docker's mount {m}"),
            target: to.clone(),
            source: e,
        })?;
    }
    if readonly {
        remount_readonly(root)?;
    }
    MOUNTED.lock().expect("disk list").1 = true;
    Ok(root.into())
}

// FS_IOC_GETFSLABEL and FS_IOC_SETFSLABEL (linux/fs.h), which ext4 and
// xfs both implement.
nix::ioctl_read!(get_fs_label, 0x94, 49, [u8; 256]);
nix::ioctl_write_ptr!(set_fs_label, 0x94, 50, [u8; 256]);

/// Whether the file system mounted at `at` is labelled
/// [`runvm_protocol::FRESH_LABEL`]: runvm just made it.
fn is_fresh(at: &Path) -> bool {
    let Ok(dir) = fs::File::open(at) else {
        return false;
    };
    let mut label = [0u8; 256];
    // SAFETY: the kernel writes at most 256 bytes into `label`, which is
    // that big; `dir` is open for the call.
    if unsafe { get_fs_label(dir.as_raw_fd(), &mut label) }.is_err() {
        return false;
    }
    let end = label.iter().position(|b| *b == 0).unwrap_or(label.len());
    &label[..end] == runvm_protocol::FRESH_LABEL.as_bytes()
}

/// Clears the label of the file system at `at`, once its files are
/// durable: the disk is filled.
fn clear_fresh(at: &Path) -> io::Result<()> {
    let dir = fs::File::open(at)?;
    nix::unistd::syncfs(dir.as_raw_fd())?;
    let label = [0u8; 256];
    // SAFETY: the kernel reads 256 bytes from `label`, which is that big;
    // `dir` is open for the call.
    unsafe { set_fs_label(dir.as_raw_fd(), &label) }?;
    nix::unistd::syncfs(dir.as_raw_fd())?;
    Ok(())
}

/// Fills the new disk mounted at `to` from `from`, then marks it filled.
/// A start that stops half-way leaves the label: the next one fills again.
fn fill(from: &Path, to: &Path, skip: &[PathBuf], d: &GuestDisk) -> Result<()> {
    let started = Instant::now();
    copy_tree(from, to, skip)
        .and_then(|()| clear_fresh(to))
        .map_err(|e| {
            AgentError::sys(
                format!("fill the disk for {} from the image", d.destination),
                e,
            )
        })?;
    tracing::debug!(
        "disk for {} filled from the image in {:?}",
        d.destination,
        started.elapsed()
    );
    Ok(())
}

fn remount_readonly(at: &Path) -> Result<()> {
    mount(
        None::<&str>,
        at,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(|e| AgentError::Mount {
        what: "the root disk read-only".into(),
        target: at.into(),
        source: e,
    })
}

/// Mounts the other file-system disks at their destinations inside
/// `root`, filling the new ones from what `root` has there.
pub async fn mount_all(reaper: &Reaper, disks: &[GuestDisk], root: &Path) -> Result<()> {
    for d in disks
        .iter()
        .filter(|d| d.destination != "/" && d.fs != DiskFs::Raw)
    {
        let dev = find_device(&d.serial)?;
        let target = under(root, &d.destination)?;
        check(reaper, &dev, d).await?;
        mount_disk(&dev, STAGING, d, false)?;
        if is_fresh(Path::new(STAGING)) {
            if target.is_dir() {
                fill(&target, Path::new(STAGING), &[], d)?;
            } else {
                clear_fresh(Path::new(STAGING))
                    .map_err(|e| AgentError::sys("label the disk", e))?;
            }
        }
        fs::create_dir_all(&target)
            .map_err(|e| AgentError::sys(format!("create {}", d.destination), e))?;
        mount(
            Some(STAGING),
            &target,
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(|e| AgentError::Mount {
            what: format!("the disk for {}", d.destination),
            target: target.clone(),
            source: e,
        })?;
        MOUNTED
            .lock()
            .expect("disk list")
            .0
            .push(PathBuf::from(&d.destination));
    }
    Ok(())
}

/// Gives the workload its raw disks: `<dst>` (in the container's `/dev`)
/// becomes a block device node of the disk.
pub fn link_raw(disks: &[GuestDisk]) -> Result<()> {
    for d in disks.iter().filter(|d| d.fs == DiskFs::Raw) {
        let dev = find_device(&d.serial)?;
        let rdev = fs::metadata(&dev)
            .map_err(|e| AgentError::sys(format!("inspect {}", dev.display()), e))?
            .rdev();
        let _ = fs::remove_file(&d.destination);
        mknod(
            d.destination.as_str(),
            SFlag::S_IFBLK,
            Mode::from_bits_truncate(0o660),
            rdev,
        )
        .map_err(|e| AgentError::sys(format!("create the raw disk {}", d.destination), e))?;
    }
    Ok(())
}

/// The signals `docker stop` sends (the image's STOPSIGNAL, usually
/// SIGTERM; SIGRTMIN+3 for systemd) and the like.
pub fn is_stop_signal(signal: i32) -> bool {
    [
        libc::SIGTERM,
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGPWR,
        libc::SIGRTMIN() + 3,
    ]
    .contains(&signal)
}

/// How long after a stop signal the disks are flushed: past any usual
/// `docker stop` timeout; after it the kernel's own writeback (30 s) is
/// what a workload that handled the signal and kept running gets.
const FLUSH_FOR: Duration = Duration::from_secs(120);

/// After a stop signal, the disks are synced every half second (for
/// [`FLUSH_FOR`] after the latest such signal): `docker stop` kills a
/// workload that does not exit in time, and with it the VM, whose page
/// cache dies with it (under runc the host keeps the writes). A virtiofs
/// root needs none of this: its writes are the host's at once.
pub fn flush_from_now_on() {
    static UNTIL: Mutex<Option<Instant>> = Mutex::new(None);
    let any = {
        let m = MOUNTED.lock().unwrap_or_else(|e| e.into_inner());
        !m.0.is_empty() || m.1
    };
    if !any {
        return;
    }
    let mut until = UNTIL.lock().unwrap_or_else(|e| e.into_inner());
    let running = until.is_some_and(|u| Instant::now() < u);
    *until = Some(Instant::now() + FLUSH_FOR);
    if running {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("disk-flush".into())
        .spawn(|| loop {
            nix::unistd::sync();
            std::thread::sleep(Duration::from_millis(500));
            let mut until = UNTIL.lock().unwrap_or_else(|e| e.into_inner());
            if until.is_some_and(|u| Instant::now() >= u) {
                *until = None;
                return;
            }
        });
}

/// At power-off, once every other process is gone: unmounts the disks in
/// reverse order and makes a root disk read-only, so the file systems are
/// clean (a disk still busy is detached; the sync before power-off flushes
/// it).
pub fn release() {
    let (mounted, root) = std::mem::take(&mut *MOUNTED.lock().unwrap_or_else(|e| e.into_inner()));
    if mounted.is_empty() && !root {
        return;
    }
    wait_for_no_children(Duration::from_secs(3));
    nix::unistd::sync();
    for m in mounted.iter().rev() {
        if umount2(m, MntFlags::empty()).is_err() {
            let _ = umount2(m, MntFlags::MNT_DETACH);
        }
    }
    if root {
        let _ = mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        );
    }
}

/// Reaps until PID 1 has no child left (or `limit` has passed): a mount
/// namespace, and so a disk, stays busy until its last process is reaped.
fn wait_for_no_children(limit: Duration) {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        match waitpid(nix::unistd::Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Err(nix::Error::ECHILD) => return,
            Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(10)),
            _ => {}
        }
    }
}

/// Copies the tree at `from` into the directory `to`: files, directories,
/// symlinks, hard links, device nodes and FIFOs, with owners, modes,
/// times and extended attributes. Sockets are left out, and so are the
/// contents of `skip` and of other file systems mounted under `from` (an
/// empty directory or file stands in for them).
pub fn copy_tree(from: &Path, to: &Path, skip: &[PathBuf]) -> io::Result<()> {
    let top = fs::symlink_metadata(from)?;
    let mut links = HashMap::new();
    copy_dir_contents(from, to, top.dev(), skip, &mut links)?;
    copy_attributes(from, to, &top)
}

fn copy_dir_contents(
    from: &Path,
    to: &Path,
    dev: u64,
    skip: &[PathBuf],
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> io::Result<()> {
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let meta = fs::symlink_metadata(&src)?;
        let ft = meta.file_type();
        let context = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", src.display()));
        let opaque = skip.contains(&src) || meta.dev() != dev;
        if ft.is_dir() {
            match fs::create_dir(&dst) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(context(e)),
            }
            if !opaque {
                copy_dir_contents(&src, &dst, dev, skip, links)?;
            }
        } else if opaque {
            let _ = fs::remove_file(&dst);
            fs::write(&dst, b"").map_err(context)?;
        } else if ft.is_socket() {
            continue;
        } else {
            let _ = fs::remove_file(&dst);
            if meta.nlink() > 1 && !ft.is_symlink() {
                let key = (meta.dev(), meta.ino());
                if let Some(first) = links.get(&key) {
                    fs::hard_link(first, &dst).map_err(context)?;
                    continue;
                }
                links.insert(key, dst.clone());
            }
            if ft.is_symlink() {
                std::os::unix::fs::symlink(fs::read_link(&src).map_err(context)?, &dst)
                    .map_err(context)?;
            } else if ft.is_file() {
                copy_file(&src, &dst).map_err(context)?;
            } else {
                let kind = if ft.is_block_device() {
                    SFlag::S_IFBLK
                } else if ft.is_char_device() {
                    SFlag::S_IFCHR
                } else {
                    SFlag::S_IFIFO
                };
                mknod(&dst, kind, Mode::from_bits_truncate(0o600), meta.rdev())
                    .map_err(|e| context(e.into()))?;
            }
        }
        copy_attributes(&src, &dst, &meta).map_err(context)?;
    }
    Ok(())
}

fn copy_file(src: &Path, dst: &Path) -> io::Result<()> {
    let mut input = fs::File::open(src)?;
    let mut output = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dst)?;
    io::copy(&mut input, &mut output)?;
    Ok(())
}

/// Owner, extended attributes, mode (after the owner: chown clears
/// set-id bits) and times of `src` onto `dst`, a symlink's own.
fn copy_attributes(src: &Path, dst: &Path, meta: &fs::Metadata) -> io::Result<()> {
    let is_link = meta.file_type().is_symlink();
    std::os::unix::fs::lchown(dst, Some(meta.uid()), Some(meta.gid()))?;
    if let Ok(names) = xattr::list(src) {
        for name in names {
            if let Ok(Some(value)) = xattr::get(src, &name) {
                let _ = xattr::set(dst, &name, &value);
            }
        }
    }
    if !is_link {
        fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    }
    let times = [
        TimeSpec::new(meta.atime(), meta.atime_nsec()),
        TimeSpec::new(meta.mtime(), meta.mtime_nsec()),
    ];
    nix::sys::stat::utimensat(
        None,
        dst,
        &times[0],
        &times[1],
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_is_copied_with_links_modes_and_times_but_not_skipped_parts() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let s = src.path();
        fs::create_dir_all(s.join("a/b")).unwrap();
        fs::write(s.join("a/b/file"), b"data").unwrap();
        fs::set_permissions(s.join("a/b/file"), fs::Permissions::from_mode(0o4755)).unwrap();
        fs::hard_link(s.join("a/b/file"), s.join("a/hard")).unwrap();
        std::os::unix::fs::symlink("b/file", s.join("a/link")).unwrap();
        fs::create_dir_all(s.join("vol/inner")).unwrap();
        fs::write(s.join("hosts"), b"secret").unwrap();
        nix::unistd::mkfifo(&s.join("fifo"), Mode::from_bits_truncate(0o644)).unwrap();
        let old = TimeSpec::new(1_000_000, 0);
        nix::sys::stat::utimensat(
            None,
            &s.join("a/b/file"),
            &old,
            &old,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();

        copy_tree(s, dst.path(), &[s.join("vol"), s.join("hosts")]).unwrap();
        let d = dst.path();
        assert_eq!(fs::read(d.join("a/b/file")).unwrap(), b"data");
        let m = fs::metadata(d.join("a/b/file")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o4755);
        assert_eq!(m.mtime(), 1_000_000);
        assert_eq!(fs::metadata(d.join("a/hard")).unwrap().ino(), m.ino());
        assert_eq!(
            fs::read_link(d.join("a/link")).unwrap(),
            Path::new("b/file")
        );
        assert!(d.join("vol").is_dir());
        assert!(!d.join("vol/inner").exists());
        assert_eq!(fs::read(d.join("hosts")).unwrap(), b"");
        assert!(fs::symlink_metadata(d.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo());
    }

    #[test]
    fn a_symlink_on_a_mount_path_is_refused() {
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", root.path().join("x")).unwrap();
        assert!(under(root.path(), "/x/data").is_err());
        assert_eq!(
            under(root.path(), "/data/y").unwrap(),
            root.path().join("data/y")
        );
    }
}
