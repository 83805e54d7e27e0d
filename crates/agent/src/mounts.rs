//! Turning the virtiofs share into the container's root filesystem.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};

use crate::error::{AgentError, Result};
use runvm_protocol::{CgroupFs, GuestMount};

/// Mounts a filesystem, creating the mount point if needed.
pub fn mount_fs(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<()> {
    let _ = fs::create_dir_all(target);
    mount(Some(source), target, Some(fstype), flags, data).map_err(|source_err| AgentError::Mount {
        what: format!("{fstype} ({source})"),
        target: PathBuf::from(target),
        source: source_err,
    })
}

/// Makes the mount at `target` (the virtiofs share, or a root disk) the
/// agent's root.
pub fn switch_to_root(target: &Path) -> Result<()> {
    std::env::set_current_dir(target)
        .map_err(|e| AgentError::sys("enter the root filesystem", e))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(|e| {
        AgentError::Mount {
            what: "the root filesystem".into(),
            target: "/".into(),
            source: e,
        }
    })?;
    nix::unistd::chroot(".").map_err(|e| AgentError::sys("chroot into the root filesystem", e))?;
    std::env::set_current_dir("/").map_err(|e| AgentError::sys("chdir to /", e))?;
    Ok(())
}

/// Mounts the guest kernel's modules (virtiofs tag `tag`) read-only at
/// `/lib/modules/<version>` in the current root (the initramfs's for the
/// kernel's module helper, then the container's), so `modprobe` finds
/// them. An image without that directory gets it created, empty, as runc
/// creates the mount points of Docker's mounts; a read-only root without it
/// gets no modules. A failure is reported, not fatal: the workload runs,
/// without modules, as it would have before.
///
/// Returns the directories it created, outermost first, so the container's
/// can be removed at power-off ([`release_kernel_modules`]) and `docker
/// diff` of the stopped container shows only the workload's changes.
pub fn mount_kernel_modules(tag: &str, version: &str) -> Vec<PathBuf> {
    let single_component =
        !version.is_empty() && !version.contains('/') && version != "." && version != "..";
    if !single_component {
        tracing::warn!("kernel modules not mounted: {version:?} is not a kernel version");
        return Vec::new();
    }
    let target = PathBuf::from(format!("/lib/modules/{version}"));
    let mut created = Vec::new();
    for dir in [
        Path::new("/lib"),
        Path::new("/lib/modules"),
        target.as_path(),
    ] {
        match fs::create_dir(dir) {
            Ok(()) => created.push(dir.to_path_buf()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                tracing::warn!(
                    "kernel modules not mounted: cannot create {}: {e}",
                    dir.display()
                );
                return created;
            }
        }
    }
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if let Err(e) = mount(Some(tag), &target, Some("virtiofs"), flags, None::<&str>) {
        tracing::warn!("kernel modules not mounted at {}: {e}", target.display());
    }
    created
}

/// The modules' mount point in the container's root and the directories
/// made for it (see [`mount_kernel_modules`]).
static CONTAINER_MODULES: std::sync::Mutex<Option<(PathBuf, Vec<PathBuf>)>> =
    std::sync::Mutex::new(None);

/// Notes what [`mount_kernel_modules`] made in the container's root.
pub fn remember_kernel_modules(version: &str, created: Vec<PathBuf>) {
    *CONTAINER_MODULES.lock().unwrap_or_else(|e| e.into_inner()) =
        Some((PathBuf::from(format!("/lib/modules/{version}")), created));
}

/// At power-off, once the container's processes are gone: unmounts the
/// modules from the container's root and removes the directories made for
/// them, innermost first (one the workload put files in stays).
pub fn release_kernel_modules() {
    let Some((target, created)) = CONTAINER_MODULES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    else {
        return;
    };
    let _ = nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH);
    for dir in created.iter().rev() {
        let _ = fs::remove_dir(dir);
    }
}

/// Mounts what a container has besides its root: kernel filesystems, the
/// device tree, the cgroup file systems `cgroupfs` asks for, and the tmpfs
/// mounts the container asked for.
pub fn mount_container_filesystems(
    extra: &[GuestMount],
    cgroupfs: CgroupFs,
    cgroup_readonly: bool,
) -> Result<()> {
    let hard = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    mount_fs("proc", "/proc", "proc", hard, None)?;
    mount_fs("sysfs", "/sys", "sysfs", hard, None)?;
    mount_fs(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=755"),
    )?;
    mount_fs(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )?;
    mount_fs("mqueue", "/dev/mqueue", "mqueue", hard, None)?;
    mount_cgroups(cgroupfs, hard, cgroup_readonly);
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
        ("/dev/core", "/proc/kcore"),
    ] {
        let _ = symlink(target, link);
    }
    // /dev/ptmx must be the one of our devpts instance.
    let _ = fs::remove_file("/dev/ptmx");
    let _ = symlink("pts/ptmx", "/dev/ptmx");
    let mut have_shm = false;
    for m in extra {
        have_shm |= m.destination == "/dev/shm";
        mount_guest(m)?;
    }
    if !have_shm {
        mount_fs(
            "shm",
            "/dev/shm",
            "tmpfs",
            hard,
            Some("mode=1777,size=65536k"),
        )?;
    }
    Ok(())
}

/// Mounts the cgroup file systems (`RUNVM_CGROUPFS`). Best-effort: a
/// controller or hierarchy the kernel lacks is just not there. With
/// `readonly` (an unprivileged container) the v1 hierarchies are mounted
/// read-only each (the workload's read-only remount of `/sys/fs/cgroup`
/// covers that mount only, as it covers the v2 one).
fn mount_cgroups(cgroupfs: CgroupFs, flags: MsFlags, readonly: bool) {
    const ROOT: &str = "/sys/fs/cgroup";
    let sub = if readonly {
        flags | MsFlags::MS_RDONLY
    } else {
        flags
    };
    let v1 = || {
        let _ = mount_fs("cgroup", ROOT, "tmpfs", flags, Some("mode=755"));
        // systemd's own hierarchy, which a v1 systemd needs.
        let _ = mount_fs(
            "cgroup",
            &format!("{ROOT}/systemd"),
            "cgroup",
            sub,
            Some("none,name=systemd"),
        );
        for controllers in v1_controllers() {
            let dir = format!("{ROOT}/{}", controllers.join(","));
            let _ = mount_fs("cgroup", &dir, "cgroup", sub, Some(&controllers.join(",")));
            // As systemd lays them out: cpu -> cpu,cpuacct and so on.
            if controllers.len() > 1 {
                for c in &controllers {
                    let _ = symlink(controllers.join(","), format!("{ROOT}/{c}"));
                }
            }
        }
    };
    match cgroupfs {
        CgroupFs::None => {}
        // nsdelegate: a cgroup namespace is a delegation boundary, so a
        // workload (even a privileged one) cannot write the limits of the
        // cgroup it sees as its root, as on a systemd host.
        CgroupFs::V2 => {
            let _ = mount_fs("cgroup2", ROOT, "cgroup2", flags, Some("nsdelegate"));
        }
        CgroupFs::V1 => v1(),
        CgroupFs::Hybrid => {
            v1();
            let _ = mount_fs(
                "cgroup2",
                &format!("{ROOT}/unified"),
                "cgroup2",
                sub,
                Some("nsdelegate"),
            );
        }
    }
    if matches!(cgroupfs, CgroupFs::V1 | CgroupFs::Hybrid) {
        // Read-only once laid out, as systemd leaves its tmpfs.
        let _ = mount(
            None::<&str>,
            ROOT,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | flags,
            Some("mode=755"),
        );
    }
}

/// The kernel's enabled v1 controllers (`/proc/cgroups`), those systemd
/// mounts together grouped.
fn v1_controllers() -> Vec<Vec<String>> {
    let text = fs::read_to_string("/proc/cgroups").unwrap_or_default();
    let enabled: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4 && f[3] == "1").then(|| f[0].to_owned())
        })
        .collect();
    let mut out: Vec<Vec<String>> = Vec::new();
    for pair in [["cpu", "cpuacct"], ["net_cls", "net_prio"]] {
        if pair.iter().all(|c| enabled.iter().any(|e| e == c)) {
            out.push(pair.iter().map(|c| c.to_string()).collect());
        }
    }
    for c in &enabled {
        if !out.iter().any(|g| g.contains(c)) {
            out.push(vec![c.clone()]);
        }
    }
    out
}

/// Mounts one filesystem described with OCI mount options. A tmpfs with
/// `tmpcopyup` (Podman's default for `--tmpfs`) starts with a copy of
/// what the image has at its mount point, as runc copies it.
pub fn mount_guest(m: &GuestMount) -> Result<()> {
    let (flags, data) = parse_options(&m.options);
    let data = (!data.is_empty()).then_some(data);
    let tmpfs = m.fstype == "tmpfs";
    let copyup = tmpfs && m.options.iter().any(|o| o == "tmpcopyup");
    // runc gives a tmpfs over an existing directory that directory's mode
    // (when no mode= says otherwise): `--tmpfs /home` stays 0755.
    let keep_mode = (tmpfs && !m.options.iter().any(|o| o.starts_with("mode=")))
        .then(|| fs::metadata(&m.destination).ok())
        .flatten()
        .filter(|md| md.is_dir())
        .map(|md| std::os::unix::fs::PermissionsExt::mode(&md.permissions()) & 0o7777);
    // The directory underneath, held open: its entries stay readable
    // through /proc/self/fd once the tmpfs covers it.
    let under = copyup
        .then(|| fs::File::open(&m.destination).ok())
        .flatten()
        .filter(|f| f.metadata().is_ok_and(|md| md.is_dir()));
    // A read-only tmpfs is filled (and given its mode) first, then made
    // read-only, as runc does.
    let fill_first = flags.contains(MsFlags::MS_RDONLY) && (keep_mode.is_some() || under.is_some());
    let first_flags = if fill_first {
        flags - MsFlags::MS_RDONLY
    } else {
        flags
    };
    mount_fs(
        &m.source,
        &m.destination,
        &m.fstype,
        first_flags,
        data.as_deref(),
    )?;
    if let Some(mode) = keep_mode {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&m.destination, fs::Permissions::from_mode(mode)).map_err(|e| {
            AgentError::sys(format!("give the tmpfs at {} its mode", m.destination), e)
        })?;
    }
    if let Some(dir) = under {
        use std::os::fd::AsRawFd;
        let from = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
        // As runc's copy-up, a tree that cannot be copied whole fails the
        // start rather than leave some of the image's files out.
        copy_tree(&from, Path::new(&m.destination)).map_err(|e| {
            AgentError::sys(
                format!(
                    "copy the image's {} into its tmpfs (tmpcopyup)",
                    m.destination
                ),
                e,
            )
        })?;
    }
    if fill_first {
        nix::mount::mount(
            None::<&str>,
            m.destination.as_str(),
            None::<&str>,
            flags | MsFlags::MS_REMOUNT,
            data.as_deref(),
        )
        .map_err(|e| {
            AgentError::sys(format!("make the tmpfs at {} read-only", m.destination), e)
        })?;
    }
    Ok(())
}

/// Copies the tree under `from` into `to` (an empty tmpfs) as runc's
/// copy-up does: directories, files and links, with their modes and
/// owners; `to` takes `from`'s mode and owner. Other kinds (device nodes,
/// sockets) are skipped.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let copy_meta = |md: &fs::Metadata, path: &Path| -> std::io::Result<()> {
        nix::unistd::fchownat(
            None,
            path,
            Some(nix::unistd::Uid::from_raw(md.uid())),
            Some(nix::unistd::Gid::from_raw(md.gid())),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )?;
        if !md.file_type().is_symlink() {
            fs::set_permissions(path, fs::Permissions::from_mode(md.mode() & 0o7777))?;
        }
        Ok(())
    };
    copy_meta(&fs::metadata(from)?, to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let md = entry.metadata()?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let t = md.file_type();
        if t.is_dir() {
            fs::create_dir(&dst)?;
            copy_tree(&src, &dst)?;
        } else if t.is_file() {
            fs::copy(&src, &dst)?;
            copy_meta(&md, &dst)?;
        } else if t.is_symlink() {
            symlink(fs::read_link(&src)?, &dst)?;
            copy_meta(&md, &dst)?;
        }
    }
    Ok(())
}

/// Splits OCI mount options into mount flags and filesystem data.
pub fn parse_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data: Vec<&str> = Vec::new();
    for o in options {
        let (set, clear) = match o.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            // Propagation and bind flags mean nothing for a fresh mount.
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "bind"
            | "rbind" | "defaults" => (MsFlags::empty(), MsFlags::empty()),
            "tmpcopyup" => (MsFlags::empty(), MsFlags::empty()),
            other => {
                data.push(other);
                (MsFlags::empty(), MsFlags::empty())
            }
        };
        flags = (flags | set) & !clear;
    }
    (flags, data.join(","))
}

/// Creates `dir` (and parents) if missing, as runc does for a process's cwd.
pub fn ensure_dir(dir: &Path) {
    let _ = fs::create_dir_all(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let opts: Vec<String> = [
            "noexec",
            "nosuid",
            "nodev",
            "rprivate",
            "size=10m",
            "mode=1777",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (flags, data) = parse_options(&opts);
        assert_eq!(
            flags,
            MsFlags::MS_NOEXEC | MsFlags::MS_NOSUID | MsFlags::MS_NODEV
        );
        assert_eq!(data, "size=10m,mode=1777");
    }

    #[test]
    fn later_options_win() {
        let opts: Vec<String> = ["ro", "rw", "exec"].iter().map(|s| s.to_string()).collect();
        let (flags, data) = parse_options(&opts);
        assert_eq!(flags, MsFlags::empty());
        assert!(data.is_empty());
    }
}
