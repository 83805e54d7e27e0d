//! The backing files of the container's disks (`RUNVM_DISKS`,
//! `RUNVM_ROOTDISK`), found or made inside the image root.
//!
//! Runs where the mounts are placed: in the container's mount namespace,
//! before the workload starts. For each disk, the file `<src>` is resolved
//! inside `/rootfs` (so an image's symlink can never point it at a file of
//! runvm's or the host's), must be a regular file, and must not be locked
//! by the supervisor of another running container. A missing file is made
//! sparse at the size asked for and formatted with the host's `mkfs`
//! (only ever a file runvm just made, never one the image or a guest
//! wrote). The file is then bound at `/runvm/disks/<n>`, out of the image's
//! reach, where the supervisor opens it for QEMU; and `/disks` (or the file
//! itself, elsewhere) is covered, so the guest never sees the files behind
//! its disks.

use std::ffi::CString;
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::fcntl::{Flock, FlockArg};
use nix::mount::MsFlags;
use pathrs::flags::OpenFlags;
use pathrs::Root;
use runvm_contract::{paths, VmDisk};
use runvm_protocol::{DiskFs, FRESH_LABEL};

/// The directory whose files back disks, covered for the guest.
pub const RESERVED_DIR: &str = "/disks";

/// Why a disk cannot be given to the container; each message names the
/// disk's file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("disk file {source_path} does not exist and no size was given to make it: add a size to its entry (such as ,1g) or create the file")]
    NoSize { source_path: String },
    #[error("disk file {source_path} is not a regular file: give a file, such as {RESERVED_DIR}/data.img")]
    NotAFile { source_path: String },
    #[error("disk file {source_path} is in use by another running container: stop that container first, or give this one a file of its own")]
    InUse { source_path: String },
    #[error(
        "disk files {source_path} and {other} are the same file: give each disk a file of its own"
    )]
    SameFile { source_path: String, other: String },
    #[error("disk file {source_path} is in the container's own files, which --read-only keeps unchanged: put it on a volume (-v NAME:/disks)")]
    ReadOnlyRoot { source_path: String },
    #[error("disk file {source_path} is on a read-only file system (a volume mounted :ro?): give a writable place")]
    ReadOnly { source_path: String },
    #[error("disk file {source_path} appeared while runvm was making it (another container starting with it?): start again")]
    Appeared { source_path: String },
    #[error("disk file {source_path} cannot be that large on the host's file system: give a smaller size")]
    TooLarge { source_path: String },
    #[error("cannot open disk file {source_path} inside the container")]
    Open {
        source_path: String,
        #[source]
        source: pathrs::error::Error,
    },
    #[error("cannot make disk file {source_path} inside the container (a symlink on its path may point nowhere, or the image is read-only: put it on a volume)")]
    Create {
        source_path: String,
        #[source]
        source: pathrs::error::Error,
    },
    #[error("cannot {what} disk file {source_path}")]
    Io {
        what: &'static str,
        source_path: String,
        #[source]
        source: io::Error,
    },
    #[error("{program} is not installed on the host, and the disk {source_path} needs it: install {package} (`make install` does)")]
    NoMkfs {
        program: &'static str,
        package: &'static str,
        source_path: String,
    },
    #[error("{program} could not format disk file {source_path}: {output}")]
    Mkfs {
        program: &'static str,
        source_path: String,
        output: String,
    },
}

fn io_err<'a>(what: &'static str, d: &'a VmDisk) -> impl FnOnce(io::Error) -> DiskError + 'a {
    move |source| DiskError::Io {
        what,
        source_path: d.source.clone(),
        source,
    }
}

/// What the check found for one disk, before anything is made.
enum Found {
    /// The file exists: its descriptor, not yet locked.
    Existing(File),
    /// It does not (and the entry has a size to make it with):
    /// `made_dirs` are the directories that do not exist yet on its path
    /// (removed again if the container is refused).
    Missing { made_dirs: Vec<PathBuf> },
}

/// A disk whose file is ready: locked (so no other container takes it
/// while this one starts) and bound at its slot.
struct Ready {
    _lock: Flock<File>,
    made: Option<Vec<PathBuf>>,
}

/// Finds or makes every disk's file inside `root`, binds it at its slot
/// ([`VmDisk::slot`]), and covers the files from the guest.
///
/// Every disk is checked before any file is made (a bad entry makes
/// nothing); if making or binding one fails, the files and directories
/// made for the others are removed again, so a refused container leaves
/// nothing behind. With `readonly_root` (`--read-only`), a disk file must
/// not be in the container's own files (its writable layer), which the
/// flag keeps unchanged: it must be on a volume.
pub fn prepare_all(root: &Path, disks: &[VmDisk], readonly_root: bool) -> Result<(), DiskError> {
    if disks.is_empty() {
        return Ok(());
    }
    let r = Root::open(root).map_err(|source| DiskError::Open {
        source_path: "/".into(),
        source,
    })?;
    let root_mount = mount_id(r.as_fd()).map_err(|e| DiskError::Io {
        what: "inspect the root of",
        source_path: "/".into(),
        source: e,
    })?;
    let mut found = Vec::with_capacity(disks.len());
    let mut ids: Vec<((u64, u64), &str)> = Vec::new();
    for d in disks {
        let f = check(&r, d)?;
        if let Found::Existing(file) = &f {
            let st = nix::sys::stat::fstat(file.as_raw_fd())
                .map_err(|e| io_err("inspect", d)(e.into()))?;
            let id = (st.st_dev, st.st_ino);
            if let Some((_, other)) = ids.iter().find(|(i, _)| *i == id) {
                return Err(DiskError::SameFile {
                    source_path: d.source.clone(),
                    other: (*other).to_owned(),
                });
            }
            ids.push((id, &d.source));
        }
        let on_root = match &f {
            Found::Existing(file) => {
                mount_id(file.as_fd()).map_err(io_err("inspect", d))? == root_mount
            }
            // A new file lands where its nearest existing directory is.
            Found::Missing { .. } => nearest_mount(&r, &d.source)? == root_mount,
        };
        if readonly_root && on_root {
            return Err(DiskError::ReadOnlyRoot {
                source_path: d.source.clone(),
            });
        }
        found.push(f);
    }
    let mut ready: Vec<Ready> = Vec::with_capacity(disks.len());
    for (n, (d, f)) in disks.iter().zip(found).enumerate() {
        match make(&r, n, d, f) {
            Ok(x) => ready.push(x),
            Err(e) => {
                for (n, x) in ready.iter().enumerate() {
                    undo(&r, n, &disks[n], x.made.as_deref());
                }
                return Err(e);
            }
        }
    }
    cover(&r, disks);
    // The locks go with this process; the supervisor takes its own.
    drop(ready);
    Ok(())
}

/// statx(2)'s mount id of `fd` (nix has no statx wrapper): which mount a
/// file is on, without `/proc`, which in the container's mount namespace
/// belongs to another PID namespace than ours.
fn mount_id(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<u64> {
    // SAFETY: statx writes one `struct statx` into `buf`, which is that
    // big and zeroed; the path is an empty NUL-terminated string and `fd`
    // is open for the call.
    let mut buf: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: see above.
    let rc = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_MNT_ID,
            &mut buf,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(buf.stx_mnt_id)
}

/// The mount of the nearest existing directory on `path`'s way.
fn nearest_mount(r: &Root, path: &str) -> Result<u64, DiskError> {
    let mut p = Path::new(path);
    while let Some(parent) = p.parent() {
        if let Ok(h) = r.resolve(parent) {
            return mount_id(h.as_fd()).map_err(|e| DiskError::Io {
                what: "inspect the directory of",
                source_path: path.to_owned(),
                source: e,
            });
        }
        p = parent;
    }
    mount_id(r.as_fd()).map_err(|e| DiskError::Io {
        what: "inspect the directory of",
        source_path: path.to_owned(),
        source: e,
    })
}

/// The directories on `path`'s way that do not exist yet, deepest first.
fn missing_dirs(r: &Root, path: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut p = Path::new(path);
    while let Some(parent) = p.parent() {
        if parent == Path::new("/") || r.resolve(parent).is_ok() {
            break;
        }
        out.push(parent.to_path_buf());
        p = parent;
    }
    out
}

fn is_errno(e: &pathrs::error::Error, errno: i32) -> bool {
    e.kind() == pathrs::error::ErrorKind::OsError(Some(errno))
}

/// Finds the disk's file, or checks that it can be made; makes nothing.
fn check(r: &Root, d: &VmDisk) -> Result<Found, DiskError> {
    match r.resolve(&d.source) {
        Ok(h) => {
            // Checked on the O_PATH handle, before any real open: an image's
            // device node or FIFO is never opened.
            let st =
                nix::sys::stat::fstat(h.as_fd_raw()).map_err(|e| io_err("inspect", d)(e.into()))?;
            if st.st_mode & libc::S_IFMT != libc::S_IFREG {
                return Err(DiskError::NotAFile {
                    source_path: d.source.clone(),
                });
            }
            let f = h
                .reopen(OpenFlags::O_RDWR | OpenFlags::O_CLOEXEC)
                .map_err(|source| open_error(d, source))?;
            Ok(Found::Existing(f))
        }
        Err(e) if is_errno(&e, libc::ENOENT) => match d.size {
            Some(_) => Ok(Found::Missing {
                made_dirs: missing_dirs(r, &d.source),
            }),
            None => Err(DiskError::NoSize {
                source_path: d.source.clone(),
            }),
        },
        Err(source) => Err(open_error(d, source)),
    }
}

fn open_error(d: &VmDisk, source: pathrs::error::Error) -> DiskError {
    if is_errno(&source, libc::EROFS) {
        DiskError::ReadOnly {
            source_path: d.source.clone(),
        }
    } else {
        DiskError::Open {
            source_path: d.source.clone(),
            source,
        }
    }
}

/// Opens or makes the disk's file, locks it, binds it at its slot and
/// formats it if it is new (or was never written: all holes, as
/// `truncate -s` makes).
fn make(r: &Root, n: usize, d: &VmDisk, found: Found) -> Result<Ready, DiskError> {
    let (file, made) = match found {
        Found::Existing(file) => (file, None),
        Found::Missing { made_dirs } => {
            let create = |source: pathrs::error::Error| {
                if is_errno(&source, libc::EEXIST) {
                    DiskError::Appeared {
                        source_path: d.source.clone(),
                    }
                } else if is_errno(&source, libc::EROFS) {
                    DiskError::ReadOnly {
                        source_path: d.source.clone(),
                    }
                } else {
                    DiskError::Create {
                        source_path: d.source.clone(),
                        source,
                    }
                }
            };
            if let Some(parent) = Path::new(&d.source).parent() {
                r.mkdir_all(parent, &fs::Permissions::from_mode(0o755))
                    .map_err(|e| {
                        remove_dirs(r, &made_dirs);
                        create(e)
                    })?;
            }
            let f = r
                .create_file(
                    &d.source,
                    OpenFlags::O_RDWR | OpenFlags::O_EXCL | OpenFlags::O_CLOEXEC,
                    &fs::Permissions::from_mode(0o600),
                )
                .map_err(|e| {
                    remove_dirs(r, &made_dirs);
                    create(e)
                })?;
            (f, Some(made_dirs))
        }
    };
    match lock_bind_format(n, d, file, made.is_some()) {
        Ok(lock) => Ok(Ready { _lock: lock, made }),
        Err(e) => {
            undo(r, n, d, made.as_deref());
            Err(e)
        }
    }
}

fn remove_dirs(r: &Root, dirs: &[PathBuf]) {
    for dir in dirs {
        let _ = r.remove_dir(dir);
    }
}

/// Undoes [`make`] for disk `n`: unbinds its slot, and removes its file
/// and directories if they were `made` (the file is still locked by this
/// process, so it is no other container's).
fn undo(r: &Root, n: usize, d: &VmDisk, made: Option<&[PathBuf]>) {
    let _ = nix::mount::umount2(VmDisk::slot(n).as_str(), nix::mount::MntFlags::MNT_DETACH);
    if let Some(dirs) = made {
        let _ = r.remove_file(&d.source);
        remove_dirs(r, dirs);
    }
}

/// Trait-free access to a pathrs handle's descriptor.
trait RawHandle {
    fn as_fd_raw(&self) -> i32;
}

impl RawHandle for pathrs::Handle {
    fn as_fd_raw(&self) -> i32 {
        use std::os::fd::AsFd;
        self.as_fd().as_raw_fd()
    }
}

/// Locks the file (exclusively, as the supervisor of a running container
/// holds its disks' files), sizes a new one, binds it at its slot and
/// formats it when it is new or has never been written.
fn lock_bind_format(
    n: usize,
    d: &VmDisk,
    file: File,
    created: bool,
) -> Result<Flock<File>, DiskError> {
    let file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(locked) => locked,
        Err((_, nix::Error::EWOULDBLOCK)) => {
            return Err(DiskError::InUse {
                source_path: d.source.clone(),
            })
        }
        Err((_, e)) => return Err(io_err("lock", d)(e.into())),
    };
    if created {
        if let Some(size) = d.size {
            file.set_len(size).map_err(|e| match e.raw_os_error() {
                Some(libc::EFBIG) => DiskError::TooLarge {
                    source_path: d.source.clone(),
                },
                _ => io_err("size", d)(e),
            })?;
        }
    }
    let st = nix::sys::stat::fstat(file.as_raw_fd()).map_err(|e| io_err("inspect", d)(e.into()))?;
    let unwritten = st.st_size > 0 && st.st_blocks == 0 && holds_no_data(&file, st.st_size);
    let slot = VmDisk::slot(n);
    // The slot is an empty file the runtime made in runvm's root.
    let slot_c = CString::new(slot.as_str()).expect("no NUL in a slot path");
    crate::clone_tree(file.as_fd())
        .and_then(|tree| crate::move_mount(Some(tree.as_fd()), c"", None, &slot_c))
        .map_err(io_err("bind", d))?;
    if (created || unwritten) && d.fs != DiskFs::Raw {
        mkfs(d, &slot)?;
    }
    Ok(file)
}

/// Whether `file` was never written, as `truncate -s` leaves it: no data
/// extent (`SEEK_DATA` finds none; a file system that cannot tell says
/// everything is data), and its first 64 KiB and last 4 KiB read as
/// zeros. Only such a file is formatted although it exists: one that
/// merely reports no blocks (some FUSE file systems) keeps its data.
fn holds_no_data(file: &File, size: i64) -> bool {
    use std::os::unix::fs::FileExt;
    match nix::unistd::lseek(file.as_raw_fd(), 0, nix::unistd::Whence::SeekData) {
        Err(nix::Error::ENXIO) => {}
        _ => return false,
    }
    let size = size as u64;
    let zeros = |offset: u64, len: u64| {
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, offset).is_ok() && buf.iter().all(|b| *b == 0)
    };
    let head = size.min(64 << 10);
    let tail = size.min(4 << 10);
    zeros(0, head) && zeros(size - tail, tail)
}

/// Formats the file at `slot` (a path in runvm's root) with the host's
/// mkfs, labelled [`FRESH_LABEL`]: the guest fills a disk so labelled
/// from the image and then clears the label, so a first start that
/// stops half-way fills it again on the next.
fn mkfs(d: &VmDisk, slot: &str) -> Result<(), DiskError> {
    let (program, package, args): (&'static str, &'static str, &[&str]) = match d.fs {
        // No reserved blocks: the whole disk is the workload's.
        DiskFs::Ext4 => (
            "mkfs.ext4",
            "e2fsprogs",
            &["-q", "-F", "-m", "0", "-L", FRESH_LABEL],
        ),
        DiskFs::Xfs => ("mkfs.xfs", "xfsprogs", &["-q", "-f", "-L", FRESH_LABEL]),
        DiskFs::Raw => return Ok(()),
    };
    let Some(path) = ["/usr/sbin", "/sbin"]
        .iter()
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
    else {
        return Err(DiskError::NoMkfs {
            program,
            package,
            source_path: d.source.clone(),
        });
    };
    let out = Command::new(path)
        .args(args)
        .arg(slot)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .map_err(io_err("format", d))?;
    if out.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.stderr);
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no message");
    Err(DiskError::Mkfs {
        program,
        source_path: d.source.clone(),
        output: format!("{} ({})", last.trim(), out.status),
    })
}

/// Covers the disks' files from the guest: `/disks` gets an empty
/// read-only tmpfs; a file elsewhere gets an empty read-only file bound
/// over it. Best-effort: what cannot be covered stays visible, which
/// exposes only the container's own disk to its own guest.
fn cover(r: &Root, disks: &[VmDisk]) {
    let reserved = format!("{RESERVED_DIR}/");
    if disks.iter().any(|d| d.source.starts_with(&reserved)) {
        let covered = r
            .resolve(RESERVED_DIR)
            .map_err(io::Error::other)
            .and_then(|h| cover_with(&format!("{}/cover-dir", paths::DISKS_DIR), true, &h));
        if let Err(e) = covered {
            eprintln!("runvm: cannot cover {RESERVED_DIR} from the guest: {e}");
        }
    }
    for d in disks.iter().filter(|d| !d.source.starts_with(&reserved)) {
        let covered = r
            .resolve(&d.source)
            .map_err(io::Error::other)
            .and_then(|h| cover_with(&format!("{}/cover-file", paths::DISKS_DIR), false, &h));
        if let Err(e) = covered {
            eprintln!(
                "runvm: cannot cover disk file {} from the guest: {e}",
                d.source
            );
        }
    }
}

/// Puts an empty read-only tmpfs (`dir`) or an empty read-only file over
/// `target`: made at `staging` in runvm's root, then moved onto the
/// resolved descriptor (no path of the image is followed again).
fn cover_with(staging: &str, dir: bool, target: &pathrs::Handle) -> io::Result<()> {
    let ro = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    // `staging` is made by the runtime (runvm's root is read-only here).
    if dir {
        nix::mount::mount(
            Some("tmpfs"),
            staging,
            Some("tmpfs"),
            ro,
            Some("mode=755,size=4k"),
        )?;
    } else {
        nix::mount::mount(
            Some(staging),
            staging,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )?;
        nix::mount::mount(
            None::<&str>,
            staging,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | ro,
            None::<&str>,
        )?;
    }
    let c = CString::new(staging).expect("no NUL in a staging path");
    crate::move_mount(None, &c, Some(target.as_fd()), c"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(source: &str, size: Option<u64>) -> VmDisk {
        VmDisk {
            source: source.into(),
            destination: "/data".into(),
            fs: DiskFs::Ext4,
            size,
        }
    }

    #[test]
    fn only_regular_files_are_disks_and_a_new_one_needs_a_size() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("disks/sub")).unwrap();
        nix::unistd::mkfifo(&root.join("disks/fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        fs::write(root.join("disks/ok.img"), b"").unwrap();
        std::os::unix::fs::symlink("/disks/ok.img", root.join("disks/link.img")).unwrap();
        let r = Root::open(root).unwrap();
        for bad in ["/disks/fifo", "/disks/sub"] {
            let e = check(&r, &disk(bad, Some(1 << 20))).err().unwrap();
            assert!(matches!(e, DiskError::NotAFile { .. }), "{bad}: {e}");
        }
        assert!(matches!(
            check(&r, &disk("/disks/ok.img", None)),
            Ok(Found::Existing(_))
        ));
        // A symlink resolves inside the root, to the image's own file.
        assert!(matches!(
            check(&r, &disk("/disks/link.img", None)),
            Ok(Found::Existing(_))
        ));
        let e = check(&r, &disk("/disks/new.img", None)).err().unwrap();
        assert!(matches!(e, DiskError::NoSize { .. }), "{e}");
        match check(&r, &disk("/disks/a/b/new.img", Some(1 << 20))) {
            Ok(Found::Missing { made_dirs }) => assert_eq!(
                made_dirs,
                [PathBuf::from("/disks/a/b"), PathBuf::from("/disks/a")]
            ),
            _ => panic!("a missing file with a size is made"),
        }
        // Nothing was made by checking.
        assert!(!root.join("disks/a").exists());
        assert!(!root.join("disks/new.img").exists());
    }
}
