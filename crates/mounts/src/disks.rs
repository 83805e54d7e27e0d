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
use std::path::Path;
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

/// A backing file ready for the supervisor.
struct Prepared {
    /// Made by this call: removed again if a later disk fails.
    created: bool,
}

/// Finds or makes every disk's file inside `root`, binds it at its slot
/// ([`VmDisk::slot`]), and covers the files from the guest. On failure, the files this call
/// made are removed again: a refused container leaves nothing behind.
pub fn prepare_all(root: &Path, disks: &[VmDisk]) -> Result<(), DiskError> {
    if disks.is_empty() {
        return Ok(());
    }
    let r = Root::open(root).map_err(|source| DiskError::Open {
        source_path: "/".into(),
        source,
    })?;
    let mut done: Vec<(usize, Prepared)> = Vec::new();
    for (n, d) in disks.iter().enumerate() {
        match prepare(&r, n, d) {
            Ok(p) => done.push((n, p)),
            Err(e) => {
                for (n, p) in done {
                    undo(&r, n, &disks[n], &p);
                }
                return Err(e);
            }
        }
    }
    cover(&r, disks);
    Ok(())
}

fn undo(r: &Root, n: usize, d: &VmDisk, p: &Prepared) {
    let _ = nix::mount::umount2(VmDisk::slot(n).as_str(), nix::mount::MntFlags::MNT_DETACH);
    if p.created {
        let _ = r.remove_file(&d.source);
    }
}

fn prepare(r: &Root, n: usize, d: &VmDisk) -> Result<Prepared, DiskError> {
    let (file, created) = match r.resolve(&d.source) {
        Ok(h) => {
            // Checked on the O_PATH handle, before any real open: an image's
            // device node or FIFO is never opened.
            let st = nix::sys::stat::fstat(h.as_fd_raw()).map_err(|e| DiskError::Io {
                what: "inspect",
                source_path: d.source.clone(),
                source: e.into(),
            })?;
            if st.st_mode & libc::S_IFMT != libc::S_IFREG {
                return Err(DiskError::NotAFile {
                    source_path: d.source.clone(),
                });
            }
            let f = h
                .reopen(OpenFlags::O_RDWR | OpenFlags::O_CLOEXEC)
                .map_err(|source| DiskError::Open {
                    source_path: d.source.clone(),
                    source,
                })?;
            (f, false)
        }
        Err(e) if e.kind() == pathrs::error::ErrorKind::OsError(Some(libc::ENOENT)) => {
            let Some(size) = d.size else {
                return Err(DiskError::NoSize {
                    source_path: d.source.clone(),
                });
            };
            let create = |source| DiskError::Create {
                source_path: d.source.clone(),
                source,
            };
            if let Some(parent) = Path::new(&d.source).parent() {
                r.mkdir_all(parent, &fs::Permissions::from_mode(0o755))
                    .map_err(create)?;
            }
            let f = r
                .create_file(
                    &d.source,
                    OpenFlags::O_RDWR | OpenFlags::O_EXCL | OpenFlags::O_CLOEXEC,
                    &fs::Permissions::from_mode(0o600),
                )
                .map_err(create)?;
            if let Err(e) = f.set_len(size) {
                let _ = r.remove_file(&d.source);
                return Err(io_err("size", d)(e));
            }
            (f, true)
        }
        Err(source) => {
            return Err(DiskError::Open {
                source_path: d.source.clone(),
                source,
            })
        }
    };
    let p = Prepared { created };
    let result = bind_and_format(n, d, file, created);
    if let Err(e) = result {
        undo(r, n, d, &p);
        return Err(e);
    }
    Ok(p)
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

fn bind_and_format(n: usize, d: &VmDisk, file: File, created: bool) -> Result<(), DiskError> {
    // The supervisor of a running container holds an exclusive lock on
    // its disks' files for as long as it runs.
    let file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(locked) => locked,
        Err((_, nix::Error::EWOULDBLOCK)) => {
            return Err(DiskError::InUse {
                source_path: d.source.clone(),
            })
        }
        Err((_, e)) => return Err(io_err("lock", d)(e.into())),
    };
    let slot = VmDisk::slot(n);
    // The slot is an empty file the runtime made in runvm's root.
    let slot_c = CString::new(slot.as_str()).expect("no NUL in a slot path");
    crate::clone_tree(file.as_fd())
        .and_then(|tree| crate::move_mount(Some(tree.as_fd()), c"", None, &slot_c))
        .map_err(io_err("bind", d))?;
    if created && d.fs != DiskFs::Raw {
        mkfs(d, &slot)?;
    }
    Ok(())
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
