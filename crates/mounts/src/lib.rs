//! Placing a container's mounts inside the image root, never outside it.
//!
//! Docker's bind mounts (volumes, `-v`, `--mount`, `/etc/hosts`,
//! `/etc/resolv.conf`, …) reach the guest through `/rootfs`, the image root
//! that virtiofsd serves. Their destinations are paths as the image sees
//! them, and the image is hostile: a destination may go through a symlink
//! the image ships (`/x -> /runvm`) or that a guest planted on a volume
//! during an earlier run. If runc resolved such a destination in runvm's own
//! root, the volume would land over runvm's files and the image would run
//! code outside the VM.
//!
//! So runc never sees those destinations. It mounts each such mount at a
//! staging point inside runvm's root (`/runvm/mnt/<n>`), a path that nothing
//! from the image can influence. Then [`place_all`] moves every staged mount
//! to its destination, resolved inside `/rootfs` by libpathrs
//! (`openat2(RESOLVE_IN_ROOT)` with a checked fallback): symlinks and `..`
//! are resolved as if `/rootfs` were `/`, so they cannot leave it, and the
//! move targets the resolved file descriptor itself, so a guest that swaps
//! a path component at the same moment (through a volume shared with a
//! running container) cannot redirect it either.

pub mod disks;

use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use pathrs::error::ErrorKind;
use pathrs::flags::OpenFlags;
use pathrs::Root;
use runvm_contract::report::ErrorChain;
pub use runvm_contract::StagedMount;
use std::ffi::{CStr, CString};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;

/// Why a mount could not be placed. Every message names the destination and
/// says what to change.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot open the container's root filesystem {}", root.display())]
    OpenRoot {
        root: PathBuf,
        #[source]
        source: pathrs::error::Error,
    },
    #[error("cannot inspect the mount staged for {destination} at {staging}")]
    Staging {
        destination: String,
        staging: String,
        #[source]
        source: io::Error,
    },
    #[error("mount destination {destination} cannot be resolved inside the image")]
    Resolve {
        destination: String,
        source: pathrs::error::Error,
    },
    #[error("mount destination {destination} cannot be created inside the image (a symlink on the way may point nowhere: create its target in the image or mount at another path)")]
    Create {
        destination: String,
        source: pathrs::error::Error,
    },
    #[error("mount destination {destination} is the image's root directory itself (through a symlink in the image); mount it at another path")]
    IsRoot { destination: String },
    #[error("mount destination {destination} is a {found} in the image but the mount is a {wanted}; mount it at another path or fix the image")]
    WrongType {
        destination: String,
        found: &'static str,
        wanted: &'static str,
    },
    #[error("cannot move the mount for {destination} into place")]
    Move {
        destination: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot make the container's root filesystem read-only")]
    ReadOnly(#[source] io::Error),
    #[error("cannot enter the container's mount namespace")]
    Enter(#[source] io::Error),
    #[error(transparent)]
    Disk(#[from] disks::DiskError),
    /// A failure reported by the child that worked in the container's mount
    /// namespace (see [`place_in_container`]); the text is its message.
    #[error("{0}")]
    InContainer(String),
}

fn kind_name(is_dir: bool) -> &'static str {
    if is_dir {
        "directory"
    } else {
        "file"
    }
}

fn dev_ino(fd: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    let st = nix::sys::stat::fstat(fd.as_raw_fd())?;
    Ok((st.st_dev, st.st_ino))
}

fn is_dir_fd(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let st = nix::sys::stat::fstat(fd.as_raw_fd())?;
    Ok(st.st_mode & libc::S_IFMT == libc::S_IFDIR)
}

fn not_found(e: &pathrs::error::Error) -> bool {
    e.kind() == ErrorKind::OsError(Some(libc::ENOENT))
}

/// Resolves `destination` inside `root`, creating it (as a directory or an
/// empty file, as runc does) when it does not exist yet.
fn resolve_or_create(root: &Root, destination: &str, dir: bool) -> Result<OwnedFd, MountError> {
    match root.resolve(destination) {
        Ok(h) => return Ok(h.into()),
        Err(e) if not_found(&e) => {}
        Err(source) => {
            return Err(MountError::Resolve {
                destination: destination.to_owned(),
                source,
            })
        }
    }
    let create_err = |source| MountError::Create {
        destination: destination.to_owned(),
        source,
    };
    if dir {
        let h = root
            .mkdir_all(destination, &fs::Permissions::from_mode(0o755))
            .map_err(create_err)?;
        return Ok(h.into());
    }
    let path = Path::new(destination);
    if let Some(parent) = path.parent() {
        root.mkdir_all(parent, &fs::Permissions::from_mode(0o755))
            .map_err(create_err)?;
    }
    let file = root
        .create_file(
            path,
            OpenFlags::O_RDONLY | OpenFlags::O_CLOEXEC,
            &fs::Permissions::from_mode(0o644),
        )
        .map_err(create_err)?;
    Ok(file.into())
}

/// Moves one staged mount to its destination inside `root`.
fn place(root: &Root, root_id: (u64, u64), m: &StagedMount) -> Result<(), MountError> {
    let staging_err = |source| MountError::Staging {
        destination: m.destination.clone(),
        staging: m.staging.clone(),
        source,
    };
    let staged_is_dir = fs::symlink_metadata(&m.staging)
        .map_err(staging_err)?
        .is_dir();
    let target = resolve_or_create(root, &m.destination, staged_is_dir)?;
    let target_is_dir = is_dir_fd(target.as_fd()).map_err(staging_err)?;
    if target_is_dir != staged_is_dir {
        return Err(MountError::WrongType {
            destination: m.destination.clone(),
            found: kind_name(target_is_dir),
            wanted: kind_name(staged_is_dir),
        });
    }
    if dev_ino(target.as_fd()).map_err(staging_err)? == root_id {
        return Err(MountError::IsRoot {
            destination: m.destination.clone(),
        });
    }
    let staging = CString::new(std::path::Path::new(&m.staging).as_os_str().as_bytes())
        .map_err(|e| staging_err(e.into()))?;
    move_mount_onto(&staging, target.as_fd()).map_err(|source| MountError::Move {
        destination: m.destination.clone(),
        source,
    })
}

/// move_mount(2): moves the mount at the path `from` onto the file that
/// `to` refers to (`MOVE_MOUNT_T_EMPTY_PATH`), so the destination is the
/// descriptor resolved inside the image root, not a path that could be
/// swapped.
fn move_mount_onto(from: &CStr, to: BorrowedFd<'_>) -> io::Result<()> {
    move_mount(None, from, Some(to), c"")
}

/// move_mount(2) from `from_path` (relative to `from_fd`, or the
/// descriptor itself when the path is empty) to `to_path` likewise. nix
/// has no wrapper for move_mount(2) or open_tree(2) (nix-rust/nix#1237):
/// these are the crate's raw system calls.
pub(crate) fn move_mount(
    from_fd: Option<BorrowedFd<'_>>,
    from_path: &CStr,
    to_fd: Option<BorrowedFd<'_>>,
    to_path: &CStr,
) -> io::Result<()> {
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x0000_0004;
    const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x0000_0040;
    let mut flags = 0;
    if from_path.is_empty() {
        flags |= MOVE_MOUNT_F_EMPTY_PATH;
    }
    if to_path.is_empty() {
        flags |= MOVE_MOUNT_T_EMPTY_PATH;
    }
    let raw = |fd: Option<BorrowedFd<'_>>| fd.map_or(libc::AT_FDCWD, |f| f.as_raw_fd());
    // SAFETY: the kernel reads the two NUL-terminated paths, valid for the
    // call, and uses the descriptors, which are open for its duration;
    // nothing is written to our memory.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            raw(from_fd),
            from_path.as_ptr(),
            raw(to_fd),
            to_path.as_ptr(),
            flags,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// open_tree(2) with `OPEN_TREE_CLONE`: a detached bind mount of what `fd`
/// refers to (a file or directory), for [`move_mount`] to attach. Needs no
/// `/proc`, which in a container's mount namespace belongs to another PID
/// namespace than ours.
pub(crate) fn clone_tree(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    let flags =
        OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_EMPTY_PATH as libc::c_uint;
    // SAFETY: the kernel reads the empty NUL-terminated path and uses the
    // open descriptor `fd`; the new descriptor it returns is ours alone.
    let rc = unsafe { libc::syscall(libc::SYS_open_tree, fd.as_raw_fd(), c"".as_ptr(), flags) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open_tree just returned this descriptor; nothing else owns it.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(rc as i32) })
}

/// Moves every staged mount, in order, to its destination inside `root`.
/// Later mounts may nest inside earlier ones (Docker orders them so): their
/// destinations are resolved through the earlier mounts, still inside
/// `root`.
pub fn place_all(root: &Path, mounts: &[StagedMount]) -> Result<(), MountError> {
    let r = Root::open(root).map_err(|source| MountError::OpenRoot {
        root: root.to_owned(),
        source,
    })?;
    let root_id = {
        let fd = fs::File::open(root).map_err(|e| MountError::Staging {
            destination: "/".into(),
            staging: root.display().to_string(),
            source: e,
        })?;
        dev_ino(fd.as_fd()).map_err(|e| MountError::Staging {
            destination: "/".into(),
            staging: root.display().to_string(),
            source: e,
        })?
    };
    for m in mounts {
        place(&r, root_id, m)?;
    }
    Ok(())
}

/// Creates the directories `dirs` inside `root` (mount points of the
/// filesystems the guest mounts itself, such as `--tmpfs`), resolved inside
/// it, before a `--read-only` root makes that impossible. Best-effort: a
/// path that cannot be made is reported by the guest's mount.
pub fn make_mountpoints(root: &Path, dirs: &[String]) {
    let Ok(r) = Root::open(root) else {
        return;
    };
    for d in dirs {
        let _ = r.mkdir_all(d, &fs::Permissions::from_mode(0o755));
    }
}

/// Makes the mount at `root` read-only (`--read-only`). Done after the
/// mounts are placed, because placing may create their mount points.
pub fn make_readonly(root: &Path) -> Result<(), MountError> {
    nix::mount::mount(
        None::<&str>,
        root,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(|e| MountError::ReadOnly(e.into()))
}

/// Places the mounts from the host: enters the mount namespace of the
/// container whose init is `pid` (created by runc, not yet started) in a
/// child process, and runs [`place_all`], [`disks::prepare_all`] and, when asked, creates
/// `guest_mountpoints` and runs [`make_readonly`] on `root` there.
///
/// The calling process must be single-threaded (setns into a mount
/// namespace requires it, and so does a safe fork); it is checked.
pub fn place_in_container(
    pid: i32,
    root: &str,
    mounts: &[StagedMount],
    disks: &[runvm_contract::VmDisk],
    readonly: bool,
    guest_mountpoints: &[String],
) -> Result<(), MountError> {
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, ForkResult};
    use std::io::{Read, Write};

    let threads = fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0);
    if threads != 1 {
        return Err(MountError::Enter(io::Error::other(format!(
            "the runtime has {threads} threads; it must have one to enter a mount namespace"
        ))));
    }
    let ns = fs::File::open(format!("/proc/{pid}/ns/mnt")).map_err(MountError::Enter)?;
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| MountError::Enter(e.into()))?;
    // SAFETY: this process is single-threaded (checked above), so the child
    // may run any code, allocation included; it leaves with `_exit`.
    match unsafe { fork() }.map_err(|e| MountError::Enter(e.into()))? {
        ForkResult::Child => {
            drop(rd);
            let result = nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNS)
                .map_err(|e| MountError::Enter(e.into()))
                .and_then(|()| place_all(Path::new(root), mounts))
                .and_then(|()| Ok(disks::prepare_all(Path::new(root), disks, readonly)?))
                .and_then(|()| {
                    if readonly {
                        make_mountpoints(Path::new(root), guest_mountpoints);
                        make_readonly(Path::new(root))
                    } else {
                        Ok(())
                    }
                });
            let code = match result {
                Ok(()) => 0,
                Err(e) => {
                    let mut w = fs::File::from(wr);
                    let _ = w.write_all(e.chain().to_string().as_bytes());
                    1
                }
            };
            // SAFETY: ends the forked child without running the parent's
            // exit handlers or destructors twice. (nix has no wrapper for
            // _exit(2).)
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(wr);
            let mut msg = String::new();
            let _ = fs::File::from(rd).read_to_string(&mut msg);
            match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, 0)) => Ok(()),
                Ok(_) if !msg.is_empty() => Err(MountError::InContainer(msg)),
                Ok(status) => Err(MountError::InContainer(format!(
                    "placing the container's mounts failed ({status:?})"
                ))),
                Err(e) => Err(MountError::Enter(e.into())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn root_with(layout: &[(&str, Option<&str>)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, link) in layout {
            let p = dir.path().join(path.trim_start_matches('/'));
            match link {
                Some(target) => {
                    fs::create_dir_all(p.parent().unwrap()).unwrap();
                    symlink(target, &p).unwrap();
                }
                None if path.ends_with('/') => fs::create_dir_all(&p).unwrap(),
                None => {
                    fs::create_dir_all(p.parent().unwrap()).unwrap();
                    fs::write(&p, b"x").unwrap();
                }
            }
        }
        dir
    }

    fn open(dir: &Path) -> (Root, (u64, u64)) {
        let r = Root::open(dir).unwrap();
        let id = dev_ino(fs::File::open(dir).unwrap().as_fd()).unwrap();
        (r, id)
    }

    #[test]
    fn absolute_and_dotdot_symlinks_stay_inside_the_root() {
        let outside = tempfile::tempdir().unwrap();
        let dir = root_with(&[
            ("/x", Some("/runvm")),
            ("/runvm/", None),
            ("/dangling", Some("/nowhere/at/all")),
            ("/up", Some("../../../../..")),
            ("/etc/", None),
        ]);
        let (r, _) = open(dir.path());
        // `/x -> /runvm` is <root>/runvm, never the host's /runvm.
        let fd = resolve_or_create(&r, "/x/bin", true).unwrap();
        assert!(is_dir_fd(fd.as_fd()).unwrap());
        assert!(dir.path().join("runvm/bin").is_dir());
        // A dangling symlink on the way is refused, with the path named.
        let e = resolve_or_create(&r, "/dangling/sub", true).unwrap_err();
        assert!(e.to_string().contains("/dangling/sub"), "{e}");
        // `..` past the root stops at the root.
        let fd = resolve_or_create(&r, "/up/etc", true).unwrap();
        assert_eq!(
            dev_ino(fd.as_fd()).unwrap(),
            dev_ino(fs::File::open(dir.path().join("etc")).unwrap().as_fd()).unwrap()
        );
        // A symlink to a real outside directory is followed inside the root
        // only: nothing is created or resolved outside.
        symlink(outside.path(), dir.path().join("leak")).unwrap();
        let inside = dir.path().join(outside.path().strip_prefix("/").unwrap());
        fs::create_dir_all(&inside).unwrap();
        let fd = resolve_or_create(&r, "/leak/new", true).unwrap();
        assert!(
            !outside.path().join("new").exists(),
            "created outside the root"
        );
        assert!(inside.join("new").is_dir());
        assert_eq!(
            dev_ino(fd.as_fd()).unwrap(),
            dev_ino(fs::File::open(inside.join("new")).unwrap().as_fd()).unwrap()
        );
    }

    #[test]
    fn files_are_created_as_files_and_existing_entries_reused() {
        let dir = root_with(&[("/etc/hosts", None), ("/etc/hosts.link", Some("hosts"))]);
        let (r, _) = open(dir.path());
        let fd = resolve_or_create(&r, "/etc/hosts.link", false).unwrap();
        assert!(!is_dir_fd(fd.as_fd()).unwrap());
        assert_eq!(fs::read(dir.path().join("etc/hosts")).unwrap(), b"x");
        resolve_or_create(&r, "/new/dir/file", false).unwrap();
        assert!(dir.path().join("new/dir/file").is_file());
    }

    #[test]
    fn wrong_kind_and_root_itself_are_refused_with_the_destination_named() {
        let staging = tempfile::tempdir().unwrap();
        let staged_dir = staging.path().join("0");
        fs::create_dir(&staged_dir).unwrap();
        let dir = root_with(&[("/etc/hosts", None), ("/self", Some("/"))]);
        let (r, id) = open(dir.path());
        let m = |dest: &str| StagedMount {
            staging: staged_dir.display().to_string(),
            destination: dest.into(),
        };
        let e = place(&r, id, &m("/etc/hosts")).unwrap_err();
        assert!(matches!(e, MountError::WrongType { .. }), "{e}");
        assert!(e.to_string().contains("/etc/hosts"), "{e}");
        let e = place(&r, id, &m("/self")).unwrap_err();
        assert!(matches!(e, MountError::IsRoot { .. }), "{e}");
        assert!(!e.to_string().contains('\n'));
        let e = place(&r, id, &m("/..")).unwrap_err();
        assert!(matches!(e, MountError::IsRoot { .. }), "{e}");
    }
}
