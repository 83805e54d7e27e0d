//! Kernels shipped inside a container image.
//!
//! An image "has a kernel" when, for a directory `/lib/modules/<ver>` (or
//! `/usr/lib/modules/<ver>`), one of these is an x86 bzImage whose embedded
//! version string starts with `<ver>`, and `modules.dep` is there:
//!
//! - `/lib/modules/<ver>/vmlinuz` (Fedora, RHEL);
//! - `/boot/vmlinuz-<ver>` (Debian, Ubuntu);
//! - `/boot/vmlinuz-<flavor>` where `<ver>` ends in `-<flavor>` (Alpine:
//!   `vmlinuz-lts` for modules `6.6.58-0-lts`).
//!
//! Nothing keys on `/etc/os-release`. The image is hostile and runvm runs as
//! root on the host, so every file is opened with `openat2(RESOLVE_IN_ROOT |
//! RESOLVE_NO_MAGICLINKS)` from a descriptor of the image's root (symlinks,
//! `..` included, stay inside it), first as `O_PATH | O_NOFOLLOW` and
//! reopened for reading only once `fstat` says it is a regular file (so no
//! FIFO blocks us and no device node of the image is ever opened), with
//! every size bounded and every decompression capped.
//!
//! What a kernel needs is copied into a content-addressed cache entry,
//! `<cache>/image-kernels/<sha256>/` with `vmlinuz` and
//! `lib/modules/<ver>/`: the closure of the wanted modules (decompressed)
//! and a `modules.dep` (and `modules.builtin`) for them, from which
//! [`ensure_initramfs`](crate::ensure_initramfs) builds the initramfs as
//! for any kernel. The guest's own `/lib/modules/<ver>` is the image's.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::fcntl::{openat2, Flock, FlockArg, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, SFlag};
use sha2::{Digest, Sha256};

use crate::kernel::compare_versions;
use crate::Kernel;

/// The largest kernel image read (Debian's, Fedora's and Ubuntu's are
/// 8 to 15 MiB).
pub const MAX_VMLINUZ: u64 = 64 << 20;
/// The largest `modules.dep` or `modules.builtin` read.
pub const MAX_INDEX: u64 = 4 << 20;
/// The largest module, compressed or not (the modules runvm needs are at
/// most a few MiB; ext4 and xfs are the largest).
pub const MAX_MODULE: u64 = 32 << 20;
/// The modules copied are at most [`MAX_MODULES`](crate::MAX_MODULES)
/// (`resolve_modules` refuses more), of at most this many bytes in all, as
/// read and once decompressed.
const MAX_MODULES_BYTES: u64 = 64 << 20;
/// At most this many entries of a `lib/modules` directory are read, and
/// this many version directories considered.
const MAX_DIR_ENTRIES: usize = 4096;
const MAX_VERSIONS: usize = 32;

/// Bumped when the layout of a cache entry changes.
const FORMAT_VERSION: &str = "runvm-image-kernel-1";
/// The cache subdirectory of image kernels.
pub const CACHE_SUBDIR: &str = "image-kernels";
/// The cache subdirectory of the initramfs archives built for image
/// kernels: apart from the store kernels' (an image kernel's version may
/// be a store kernel's), named by the entry's key, so archives of two
/// image kernels never prune each other either.
pub const INITRAMFS_SUBDIR: &str = "image-initramfs";
/// Image-kernel entries and their archives take at most this much space
/// together, and are at most this many: past that, the least recently
/// used ones that no runvm process holds are removed. Each image kernel
/// (or each version directory a guest renames between two starts) makes
/// an entry.
pub const CACHE_BUDGET_BYTES: u64 = 1 << 30;
pub const CACHE_BUDGET_ITEMS: usize = 256;
/// Temporary directories older than this are leftovers of crashed builders.
const STALE_TMP_AGE: Duration = Duration::from_secs(3600);

/// Why an image's kernel is not used: one line, for the runtime's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unusable(pub String);

impl fmt::Display for Unusable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unusable {}

fn unusable(what: impl fmt::Display) -> Unusable {
    Unusable(what.to_string())
}

/// A directory's device and inode.
type DirId = (u64, u64);

/// A directory of the image (its root, or a kernel's module directory)
/// that paths are resolved inside of.
#[derive(Debug)]
pub struct ImageRoot {
    fd: OwnedFd,
}

impl ImageRoot {
    /// Opens the image's root directory. `path` is the bundle's
    /// `root.path`, which the engine (trusted) chose.
    pub fn open(path: &Path) -> io::Result<ImageRoot> {
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(path)?;
        Ok(ImageRoot { fd: file.into() })
    }

    /// `path` (relative, resolved inside this root) with `flags` and
    /// `O_CLOEXEC`.
    fn open_raw(&self, path: &str, flags: OFlag) -> io::Result<OwnedFd> {
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let rel = path.trim_start_matches('/');
        let rel = if rel.is_empty() { "." } else { rel };
        let raw = openat2(self.fd.as_raw_fd(), rel, how)?;
        // SAFETY: openat2 just returned this descriptor; nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(raw) })
    }

    /// The directory at `path`, as a root of its own.
    fn dir(&self, path: &str) -> io::Result<ImageRoot> {
        let fd = self.open_raw(path, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
        Ok(ImageRoot { fd })
    }

    /// The regular file at `path` (not a symlink in its last component),
    /// open for reading, with its size. A FIFO, device or socket is never
    /// opened for reading: it is looked at through an `O_PATH` descriptor,
    /// and that very inode is reopened only if it is a regular file.
    fn file(&self, path: &str) -> io::Result<(File, u64)> {
        let fd = self.open_raw(path, OFlag::O_PATH | OFlag::O_NOFOLLOW)?;
        let st = fstat(fd.as_raw_fd())?;
        let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
        if kind != SFlag::S_IFREG {
            let what = if kind == SFlag::S_IFLNK {
                "a symlink, not a regular file"
            } else {
                "not a regular file"
            };
            return Err(io::Error::new(io::ErrorKind::InvalidInput, what));
        }
        // Reopen the same inode (not the path again) for reading.
        let file = File::open(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
        let size = file.metadata()?.len();
        Ok((file, size))
    }

    /// The whole regular file at `path`, refusing one larger than `limit`.
    fn read(&self, path: &str, limit: u64) -> io::Result<Vec<u8>> {
        let (file, size) = self.file(path)?;
        read_bounded(file, size, limit)
    }

    /// The names in the directory at `path` (at most [`MAX_DIR_ENTRIES`]
    /// read), and its device and inode.
    fn list(&self, path: &str) -> io::Result<(Vec<Vec<u8>>, DirId)> {
        let fd = self.open_raw(path, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
        let st = fstat(fd.as_raw_fd())?;
        let mut dir = nix::dir::Dir::from_fd(fd.into_raw_fd())?;
        let mut names = Vec::new();
        for entry in dir.iter().take(MAX_DIR_ENTRIES) {
            let name = entry?.file_name().to_bytes().to_vec();
            if name != b"." && name != b".." {
                names.push(name);
            }
        }
        Ok((names, (st.st_dev, st.st_ino)))
    }
}

/// Reads `file` (whose size was `size`) whole, refusing more than `limit`
/// bytes, also if it grows while being read.
fn read_bounded(file: File, size: u64, limit: u64) -> io::Result<Vec<u8>> {
    if size > limit {
        return Err(too_large(size, limit));
    }
    let mut data = Vec::with_capacity(size as usize);
    file.take(limit + 1).read_to_end(&mut data)?;
    if data.len() as u64 > limit {
        return Err(too_large(data.len() as u64, limit));
    }
    Ok(data)
}

fn too_large(size: u64, limit: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "{} bytes or more, over the limit of {limit}",
            size.max(limit + 1)
        ),
    )
}

/// A kernel version as a directory name runvm uses: 1 to 128 of
/// `A-Za-z0-9._+~-`, not starting with `.` or `-`.
pub fn is_version(v: &str) -> bool {
    (1..=128).contains(&v.len())
        && !v.starts_with(['.', '-'])
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+~-".contains(&b))
}

/// A kernel found in an image, not yet copied out of it.
#[derive(Debug)]
pub struct Candidate {
    /// The kernel release, the name of its modules directory.
    pub version: String,
    /// Where the image has the kernel image, e.g. `/boot/vmlinuz-6.1.0-9-amd64`.
    pub vmlinuz_path: String,
    /// Where the image has its modules, e.g. `/usr/lib/modules/6.1.0-9-amd64`.
    pub modules_path: String,
    /// The kernel image, open (this inode, whatever the path becomes).
    vmlinuz: File,
    vmlinuz_size: u64,
}

/// What [`detect`] found: usable kernels, newest first, and why others
/// that looked like kernels are not (one line each).
#[derive(Debug, Default)]
pub struct Detection {
    pub candidates: Vec<Candidate>,
    pub skipped: Vec<String>,
}

impl Detection {
    /// Whether the image looked like it had a kernel (a usable one or one
    /// that was skipped): only then is a skip worth a warning.
    pub fn looked_like_kernel(&self) -> bool {
        !self.candidates.is_empty() || !self.skipped.is_empty()
    }
}

/// Finds the kernels shipped in the image whose root is `root`.
pub fn detect(root: &ImageRoot) -> Detection {
    let mut out = Detection::default();
    let mut seen_dirs = HashSet::new();
    let mut versions: Vec<(String, String)> = Vec::new();
    for base in ["lib/modules", "usr/lib/modules"] {
        // /lib -> usr/lib (merged /usr) makes both the same directory.
        let Ok((names, id)) = root.list(base) else {
            continue;
        };
        if !seen_dirs.insert(id) {
            continue;
        }
        for name in names {
            let Some(v) = std::str::from_utf8(&name).ok().filter(|v| is_version(v)) else {
                continue;
            };
            if versions.len() < MAX_VERSIONS && !versions.iter().any(|(w, _)| w == v) {
                versions.push((v.to_owned(), format!("/{base}/{v}")));
            }
        }
    }
    for (version, modules_path) in versions {
        if root.dir(&modules_path).is_err() {
            continue;
        }
        let mut paths = vec![
            format!("{modules_path}/vmlinuz"),
            format!("/boot/vmlinuz-{version}"),
        ];
        if let Some((_, flavor)) = version.rsplit_once('-') {
            if !flavor.is_empty() && flavor != version {
                paths.push(format!("/boot/vmlinuz-{flavor}"));
            }
        }
        let mut found = None;
        for path in paths {
            match check_vmlinuz(root, &path, &version) {
                Ok(Some((file, size))) => {
                    found = Some((path, file, size));
                    break;
                }
                Ok(None) => {}
                Err(e) => out.skipped.push(format!("{path}: {e}")),
            }
        }
        let Some((vmlinuz_path, vmlinuz, vmlinuz_size)) = found else {
            continue;
        };
        let dep = format!("{modules_path}/modules.dep");
        match root.file(&dep) {
            Ok((_, size)) if size <= MAX_INDEX => {}
            Ok((_, size)) => {
                out.skipped
                    .push(format!("{dep}: {}", too_large(size, MAX_INDEX)));
                continue;
            }
            Err(e) => {
                out.skipped.push(format!(
                    "{vmlinuz_path}: no usable {dep} ({e}); run depmod in the image"
                ));
                continue;
            }
        }
        out.candidates.push(Candidate {
            version,
            vmlinuz_path,
            modules_path,
            vmlinuz,
            vmlinuz_size,
        });
    }
    out.candidates
        .sort_by(|a, b| compare_versions(&b.version, &a.version));
    out
}

/// The kernel image at `path` if it is one for `version`; `None` if
/// nothing is there; an error saying why what is there is not usable.
fn check_vmlinuz(
    root: &ImageRoot,
    path: &str,
    version: &str,
) -> Result<Option<(File, u64)>, Unusable> {
    let (file, size) = match root.file(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(unusable(e)),
    };
    if size > MAX_VMLINUZ {
        return Err(unusable(too_large(size, MAX_VMLINUZ)));
    }
    let embedded = bzimage_version(&file, size).map_err(unusable)?;
    let matches = embedded
        .strip_prefix(version)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(' '));
    if !matches {
        return Err(unusable(format!(
            "its version {:?} is not that of the modules directory {version:?}",
            embedded.split(' ').next().unwrap_or_default()
        )));
    }
    Ok(Some((file, size)))
}

/// The version string embedded in an x86 bzImage: the boot protocol's
/// header has the magic `HdrS` at 0x202 and, at 0x20E, a pointer (less
/// 0x200) to a NUL-terminated string such as `6.1.0-9-amd64 (debian-…) #1 …`.
pub fn bzimage_version(file: &File, size: u64) -> Result<String, String> {
    let mut header = [0u8; 0x210];
    if size < header.len() as u64 {
        return Err("not an x86 bzImage (too small)".into());
    }
    file.read_exact_at(&mut header, 0)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if &header[0x202..0x206] != b"HdrS" {
        return Err("not an x86 bzImage (no boot protocol header)".into());
    }
    let pointer = u16::from_le_bytes([header[0x20E], header[0x20F]]);
    if pointer == 0 {
        return Err("an x86 bzImage without a version string".into());
    }
    let at = u64::from(pointer) + 0x200;
    let mut text = [0u8; 256];
    let n = file
        .read_at(&mut text, at)
        .map_err(|e| format!("cannot read it: {e}"))?;
    let text = &text[..n];
    let end = text
        .iter()
        .position(|&b| b == 0)
        .ok_or("an x86 bzImage whose version string is not terminated")?;
    std::str::from_utf8(&text[..end])
        .map(str::to_owned)
        .map_err(|_| "an x86 bzImage whose version string is not text".into())
}

/// The file of a module without its compression suffix.
fn uncompressed_name(rel: &str) -> Option<&str> {
    [".xz", ".zst", ".gz"]
        .iter()
        .find_map(|s| rel.strip_suffix(s))
        .or(Some(rel))
        .filter(|r| r.ends_with(".ko"))
}

/// The largest window a compressed module may declare: an xz (LZMA2)
/// dictionary or a zstd window. Decoding needs about that much memory;
/// Linux builds modules with a 1 MiB xz dictionary and zstd's default
/// window is 2 MiB or less.
pub const MAX_WINDOW: u64 = 8 << 20;
/// liblzma's memory limit for one module: the largest dictionary and the
/// decoder's own few kilobytes.
const XZ_MEMLIMIT: u64 = MAX_WINDOW + (1 << 20);

/// Decompresses a module file named `name` (by its suffix: `.ko`, `.ko.xz`,
/// `.ko.zst`, `.ko.gz`), refusing an output larger than `cap`.
pub fn decompress_module(name: &str, data: &[u8], cap: u64) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    decompress_module_to(name, data, cap, &mut out)?;
    Ok(out)
}

/// [`decompress_module`] into `out`, returning the number of bytes
/// written. Every decoder is pulled through `take(cap + 1)`, so it never
/// produces more than one buffer past `cap`, and holds at most its
/// window ([`MAX_WINDOW`], a larger one is refused before anything is
/// allocated for it): memory is bounded whatever the input, and time by
/// the input's size and `cap`. Going over `cap` is an error of kind
/// [`io::ErrorKind::FileTooLarge`].
pub fn decompress_module_to(
    name: &str,
    data: &[u8],
    cap: u64,
    out: &mut dyn Write,
) -> io::Result<u64> {
    let mut decoder: Box<dyn Read + '_> = if name.ends_with(".ko") {
        Box::new(data)
    } else if name.ends_with(".ko.gz") {
        // DEFLATE's window is 32 KiB.
        Box::new(flate2::read::GzDecoder::new(data))
    } else if name.ends_with(".ko.zst") {
        let d = ruzstd::decoding::StreamingDecoder::new_with_max_window_size(data, MAX_WINDOW)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        Box::new(d)
    } else if name.ends_with(".ko.xz") {
        let stream =
            liblzma::stream::Stream::new_stream_decoder(XZ_MEMLIMIT, 0).map_err(io::Error::from)?;
        Box::new(XzReader(liblzma::bufread::XzDecoder::new_stream(
            data, stream,
        )))
    } else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a module file name (.ko, .ko.xz, .ko.zst or .ko.gz)",
        ));
    };
    let n = io::copy(&mut (&mut decoder).take(cap + 1), out)?;
    if n > cap {
        return Err(io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!("decompresses to more than {cap} bytes"),
        ));
    }
    Ok(n)
}

/// liblzma's reader, whose memory-limit error says which limit.
struct XzReader<R>(R);

impl<R: Read> Read for XzReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).map_err(|e| {
            let memlimit = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<liblzma::stream::Error>())
                .is_some_and(|inner| matches!(inner, liblzma::stream::Error::MemLimit));
            if memlimit {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "its xz dictionary needs more than {XZ_MEMLIMIT} bytes of memory \
                         (at most {MAX_WINDOW} bytes of dictionary are accepted)"
                    ),
                )
            } else {
                e
            }
        })
    }
}

/// An image's kernel copied into runvm's cache, held with a shared lock
/// (see [`Initramfs`](crate::Initramfs)): while held, no runvm process
/// prunes the entry.
#[derive(Debug)]
pub struct ImageKernel {
    pub kernel: Kernel,
    /// Where the image has it, for messages.
    pub source: String,
    lock: Flock<File>,
}

impl ImageKernel {
    /// The descriptor that holds the lock.
    pub fn lock_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.lock.as_fd()
    }
}

/// Copies what `candidate` needs to boot with `wanted` modules into
/// `<cache_dir>/image-kernels/<sha256>/` (or reuses the entry that is
/// there), with the modules decompressed, and returns it locked.
///
/// The key is the SHA-256 of everything copied (kernel image, module
/// files, their names and dependencies, `modules.builtin`): images that
/// share a kernel share an entry, and no image can change what another
/// one boots.
pub fn cache_image_kernel(
    root: &ImageRoot,
    candidate: &Candidate,
    wanted: &[&str],
    cache_dir: &Path,
) -> Result<ImageKernel, Unusable> {
    let gathered = gather(root, candidate, wanted)?;
    let dir = cache_dir.join(CACHE_SUBDIR);
    let entry = dir.join(&gathered.key);
    let kernel = Kernel {
        root: entry.clone(),
        version: candidate.version.clone(),
        vmlinuz: entry.join("vmlinuz"),
        modules_dir: entry.join("lib/modules").join(&candidate.version),
    };
    let cache_err = |what: &str, path: &Path, e: io::Error| {
        unusable(format!("cannot {what} {}: {e}", path.display()))
    };
    for _ in 0..3 {
        if let Some(lock) = lock_shared(&entry).map_err(|e| cache_err("lock", &entry, e))? {
            // Its time tells when it was last used (least recently used
            // entries go first when the cache is over its budget).
            let _ = lock.set_modified(SystemTime::now());
            return Ok(ImageKernel {
                kernel,
                source: candidate.vmlinuz_path.clone(),
                lock,
            });
        }
        fs::create_dir_all(&dir).map_err(|e| cache_err("create", &dir, e))?;
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempdir_in(&dir)
            .map_err(|e| cache_err("create a temporary directory in", &dir, e))?;
        gathered.write(tmp.path(), &candidate.version)?;
        let tmp = tmp.keep();
        match fs::rename(&tmp, &entry) {
            Ok(()) => {
                if let Ok(d) = File::open(&dir) {
                    let _ = d.sync_all();
                }
            }
            // Another runvm wrote the same entry first: use theirs.
            Err(_) if entry.is_dir() => {
                let _ = fs::remove_dir_all(&tmp);
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                return Err(cache_err("rename into place", &entry, e));
            }
        }
        // The budget is enforced once this entry is held (by
        // `ensure_image_initramfs`): enforced here, it could remove the
        // entry just made before its lock is taken.
        remove_stale(&dir, &candidate.version, &gathered.key);
    }
    Err(unusable(format!(
        "{} was removed again after each copy",
        entry.display()
    )))
}

/// What a cache entry holds, read from the image.
struct Gathered {
    key: String,
    vmlinuz: Vec<u8>,
    /// (path relative to the module directory, as in `modules.dep`;
    /// its dependencies; the file's bytes as read, maybe compressed).
    modules: Vec<(String, Vec<String>, Vec<u8>)>,
    builtin: Option<Vec<u8>>,
}

fn gather(root: &ImageRoot, c: &Candidate, wanted: &[&str]) -> Result<Gathered, Unusable> {
    let vmlinuz = read_bounded(
        c.vmlinuz.try_clone().map_err(unusable)?,
        c.vmlinuz_size,
        MAX_VMLINUZ,
    )
    .map_err(|e| unusable(format!("{}: {e}", c.vmlinuz_path)))?;
    // Module paths are resolved inside the module directory itself, so
    // neither modules.dep nor a symlink can name anything outside it.
    let mdir = root
        .dir(&c.modules_path)
        .map_err(|e| unusable(format!("{}: {e}", c.modules_path)))?;
    let read_index = |name: &str| {
        mdir.read(name, MAX_INDEX)
            .map_err(|e| unusable(format!("{}/{name}: {e}", c.modules_path)))
    };
    let dep_bytes = read_index("modules.dep")?;
    let dep = String::from_utf8_lossy(&dep_bytes);
    let builtin = match mdir.read("modules.builtin", MAX_INDEX) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(unusable(format!("{}/modules.builtin: {e}", c.modules_path))),
    };
    let builtin_text = builtin.as_deref().map(String::from_utf8_lossy);
    let order = crate::resolve_modules(&dep, builtin_text.as_deref(), wanted)
        .map_err(|e| unusable(format!("{}: {e}", c.modules_path)))?;
    let deps: HashMap<&str, Vec<&str>> = dep
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(p, d)| (p.trim(), d.split_whitespace().collect()))
        .collect();
    let mut modules = Vec::with_capacity(order.len());
    let mut names = HashSet::new();
    let mut total: u64 = 0;
    for rel in order {
        let plain = Path::new(&rel)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
        let Some(out_name) = uncompressed_name(&rel).filter(|_| plain) else {
            return Err(unusable(format!(
                "{}/modules.dep names {rel:?}, not a module file inside its directory",
                c.modules_path
            )));
        };
        if !names.insert(out_name.to_owned()) {
            return Err(unusable(format!(
                "{}/modules.dep names {out_name} twice",
                c.modules_path
            )));
        }
        let data = mdir
            .read(&rel, MAX_MODULE)
            .map_err(|e| unusable(format!("{}/{rel}: {e}", c.modules_path)))?;
        total += data.len() as u64;
        if total > MAX_MODULES_BYTES {
            return Err(unusable(format!(
                "{}: the modules runvm needs add up to more than {MAX_MODULES_BYTES} bytes",
                c.modules_path
            )));
        }
        let module_deps: Vec<String> = deps
            .get(rel.as_str())
            .map(|d| d.iter().map(|s| (*s).to_owned()).collect())
            .unwrap_or_default();
        modules.push((rel, module_deps, data));
    }

    let mut hasher = Sha256::new();
    let mut part = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    part(FORMAT_VERSION.as_bytes());
    part(c.version.as_bytes());
    part(&vmlinuz);
    part(builtin.as_deref().unwrap_or_default());
    for (rel, deps, data) in &modules {
        part(rel.as_bytes());
        part(deps.join(" ").as_bytes());
        part(data);
    }
    let key = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(Gathered {
        key,
        vmlinuz,
        modules,
        builtin,
    })
}

impl Gathered {
    /// Writes the entry's files under `dir`, synced.
    fn write(&self, dir: &Path, version: &str) -> Result<(), Unusable> {
        let werr =
            |path: &Path, e: io::Error| unusable(format!("cannot write {}: {e}", path.display()));
        // Creates `path` (0644: QEMU, under a uid of its own, reads the
        // kernel, whatever the umask, as the initramfs is), lets `fill`
        // write it, and syncs it.
        let create = |path: &Path,
                      fill: &mut dyn FnMut(&mut dyn Write) -> Result<(), Unusable>|
         -> Result<(), Unusable> {
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).map_err(|e| werr(parent, e))?;
            }
            let f = File::create(path).map_err(|e| werr(path, e))?;
            f.set_permissions(fs::Permissions::from_mode(0o644))
                .map_err(|e| werr(path, e))?;
            let mut w = io::BufWriter::new(f);
            fill(&mut w)?;
            let f = w.into_inner().map_err(|e| werr(path, e.into_error()))?;
            f.sync_all().map_err(|e| werr(path, e))
        };
        let put = |path: &Path, data: &[u8]| {
            create(path, &mut |w| w.write_all(data).map_err(|e| werr(path, e)))
        };
        put(&dir.join("vmlinuz"), &self.vmlinuz)?;
        let mdir = dir.join("lib/modules").join(version);
        fs::create_dir_all(&mdir).map_err(|e| werr(&mdir, e))?;
        let mut dep = String::new();
        let mut total: u64 = 0;
        for (rel, deps, data) in &self.modules {
            let name = uncompressed_name(rel).expect("checked in gather");
            // Each module at most MAX_MODULE, all of them MAX_MODULES_BYTES:
            // decompressed straight into its file, never whole in memory.
            let left = MAX_MODULES_BYTES - total;
            let cap = MAX_MODULE.min(left);
            let path = mdir.join(name);
            create(&path, &mut |w| {
                let n = decompress_module_to(rel, data, cap, w).map_err(|e| {
                    if e.kind() == io::ErrorKind::FileTooLarge && cap == left {
                        unusable(format!(
                            "the modules runvm needs add up to more than {MAX_MODULES_BYTES} \
                             bytes once decompressed"
                        ))
                    } else {
                        unusable(format!("module {rel}: {e}"))
                    }
                })?;
                total += n;
                Ok(())
            })?;
            dep.push_str(name);
            dep.push(':');
            for d in deps {
                dep.push(' ');
                dep.push_str(uncompressed_name(d).unwrap_or(d));
            }
            dep.push('\n');
        }
        put(&mdir.join("modules.dep"), dep.as_bytes())?;
        if let Some(b) = &self.builtin {
            put(&mdir.join("modules.builtin"), b)?;
        }
        Ok(())
    }
}

/// Opens the entry directory `path` and takes a shared lock on it; `None`
/// if it does not exist (or was removed while we waited for the lock).
fn lock_shared(path: &Path) -> io::Result<Option<Flock<File>>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let file = Flock::lock(file, FlockArg::LockShared).map_err(|(_, e)| io::Error::from(e))?;
    let held = file.metadata()?;
    match fs::metadata(path) {
        Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => Ok(Some(file)),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Best-effort removal of other entries for the same kernel version
/// (unless a runvm process holds them), and of old temporary directories.
fn remove_stale(dir: &Path, version: &str, keep: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let name = name.as_bytes();
        let path = entry.path();
        if name.len() == 64 && name.iter().all(u8::is_ascii_hexdigit) {
            if name != keep.as_bytes() && path.join("lib/modules").join(version).is_dir() {
                remove_unless_held(&path);
            }
        } else if name.starts_with(b".tmp-") {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age > STALE_TMP_AGE);
            if old {
                let _ = fs::remove_dir_all(&path);
            }
        }
    }
}

/// Removes the entry `path` unless a runvm process holds it: under the
/// exclusive lock it is first renamed away, so no one sees half of it.
fn remove_unless_held(path: &Path) -> bool {
    let Ok(file) = File::open(path) else {
        return false;
    };
    let Ok(held) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
        return false;
    };
    // What is at `path` now must be what was locked: another pruner may
    // have removed it meanwhile and a builder put a new one there.
    if !crate::cache::same_file(&held, path) {
        return false;
    }
    let Some(parent) = path.parent() else {
        return false;
    };
    let Ok(doomed) = tempfile::Builder::new().prefix(".tmp-").tempdir_in(parent) else {
        return false;
    };
    let doomed = doomed.keep();
    let target = doomed.join("entry");
    if fs::rename(path, &target).is_ok() {
        let _ = fs::remove_dir_all(&doomed);
        true
    } else {
        let _ = fs::remove_dir(&doomed);
        false
    }
}

/// The initramfs for the image kernel `ik` with `contents`, built (or
/// reused) in `<cache_dir>/image-initramfs/` and locked, as
/// [`ensure_initramfs_with`](crate::ensure_initramfs_with) does for the
/// store's kernels; then the image-kernel cache is brought back under its
/// budget (`ik` and the archive, both held, stay).
pub fn ensure_image_initramfs(
    ik: &ImageKernel,
    agent: &Path,
    contents: &crate::Contents<'_>,
    cache_dir: &Path,
) -> Result<crate::Initramfs, crate::Error> {
    let key = ik
        .kernel
        .root
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let label = format!("{}@{}", ik.kernel.version, &key[..key.len().min(16)]);
    let dir = cache_dir.join(INITRAMFS_SUBDIR);
    let initrd = crate::cache::ensure_in(&ik.kernel, agent, contents, &dir, &label, true)?;
    enforce_budget(cache_dir, CACHE_BUDGET_BYTES, CACHE_BUDGET_ITEMS);
    Ok(initrd)
}

/// The image-kernel entries in `<cache_dir>/image-kernels`: path, size
/// of their files, and the entry's modification time (its last use).
fn entries(cache_dir: &Path) -> Vec<(PathBuf, u64, SystemTime)> {
    let Ok(list) = fs::read_dir(cache_dir.join(CACHE_SUBDIR)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in list.filter_map(Result::ok) {
        let name = entry.file_name();
        let name = name.as_bytes();
        if name.len() != 64 || !name.iter().all(u8::is_ascii_hexdigit) {
            continue;
        }
        let Ok(meta) = fs::symlink_metadata(entry.path()) else {
            continue;
        };
        if !meta.is_dir() {
            continue;
        }
        let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        out.push((entry.path(), tree_size(&entry.path()), mtime));
    }
    out
}

/// The size of the files under `dir` (runvm wrote them: symlinks are
/// not followed, and the walk has a stack of its own).
fn tree_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        let Ok(list) = fs::read_dir(&d) else {
            continue;
        };
        for entry in list.filter_map(Result::ok) {
            let Ok(meta) = fs::symlink_metadata(entry.path()) else {
                continue;
            };
            if meta.is_dir() {
                todo.push(entry.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}

/// Removes the least recently used image-kernel entries and image-kernel
/// archives that no runvm process holds until together they take at most
/// `max_bytes` and are at most `max_items`. Returns what was removed.
pub fn enforce_budget(cache_dir: &Path, max_bytes: u64, max_items: usize) -> Vec<(PathBuf, u64)> {
    // (path, size, last use, is an entry directory)
    let mut items: Vec<(PathBuf, u64, SystemTime, bool)> = entries(cache_dir)
        .into_iter()
        .map(|(p, size, t)| (p, size, t, true))
        .collect();
    items.extend(
        crate::cache::archives(&cache_dir.join(INITRAMFS_SUBDIR))
            .into_iter()
            .map(|(p, _, size, t)| (p, size, t, false)),
    );
    let mut bytes: u64 = items.iter().map(|i| i.1).sum();
    let mut count = items.len();
    let mut freed = Vec::new();
    if bytes <= max_bytes && count <= max_items {
        return freed;
    }
    items.sort_by_key(|i| i.2);
    for (path, size, _, is_entry) in items {
        if bytes <= max_bytes && count <= max_items {
            break;
        }
        let removed = if is_entry {
            remove_unless_held(&path)
        } else {
            crate::cache::remove_unless_held(&path)
        };
        if removed {
            bytes -= size;
            count -= 1;
            freed.push((path, size));
        }
    }
    freed
}

/// `runvm kernel prune`'s part for image kernels: removes every
/// image-kernel entry and every image-kernel archive that no runvm
/// process holds (a running container keeps what it booted: its mounts
/// pin the files), and temporary leftovers older than an hour. Returns
/// what was removed.
pub fn prune(cache_dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut freed = Vec::new();
    for (path, size, _) in entries(cache_dir) {
        if remove_unless_held(&path) {
            freed.push((path, size));
        }
    }
    for (path, _, size, _) in crate::cache::archives(&cache_dir.join(INITRAMFS_SUBDIR)) {
        if crate::cache::remove_unless_held(&path) {
            freed.push((path, size));
        }
    }
    let dir = cache_dir.join(CACHE_SUBDIR);
    if let Ok(list) = fs::read_dir(&dir) {
        for entry in list.filter_map(Result::ok) {
            let old = entry.file_name().as_bytes().starts_with(b".tmp-")
                && entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| SystemTime::now().duration_since(t).ok())
                    .is_some_and(|age| age > STALE_TMP_AGE);
            if old {
                let size = tree_size(&entry.path());
                if fs::remove_dir_all(entry.path()).is_ok() {
                    freed.push((entry.path(), size));
                }
            }
        }
    }
    freed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::path::PathBuf;

    const AMD64: &str = "6.1.0-9-cloud-amd64";

    /// An x86 bzImage header whose version string is `version_string`.
    fn bzimage(version_string: &str) -> Vec<u8> {
        let mut v = vec![0u8; 0x800];
        v[0x1FE..0x200].copy_from_slice(&[0x55, 0xAA]);
        v[0x202..0x206].copy_from_slice(b"HdrS");
        v[0x20E..0x210].copy_from_slice(&0x200u16.to_le_bytes());
        v[0x400..0x400 + version_string.len()].copy_from_slice(version_string.as_bytes());
        v.extend_from_slice(b"rest of the kernel");
        v
    }

    fn debian_string(version: &str) -> String {
        format!("{version} (debian-kernel@lists.debian.org) #1 SMP PREEMPT_DYNAMIC Debian")
    }

    #[derive(Clone, Copy, Debug)]
    enum Z {
        None,
        Gz,
        Xz,
        Zst,
    }

    fn compress(z: Z, data: &[u8]) -> (&'static str, Vec<u8>) {
        match z {
            Z::None => ("", data.to_vec()),
            Z::Gz => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(data).unwrap();
                (".gz", e.finish().unwrap())
            }
            Z::Xz => (".xz", xz(data, 1 << 20)),
            Z::Zst => (
                ".zst",
                ruzstd::encoding::compress_to_vec(
                    data,
                    ruzstd::encoding::CompressionLevel::Fastest,
                ),
            ),
        }
    }

    /// `data` as the kernel's build compresses modules: `xz --check=crc32
    /// --lzma2=dict=<dict>` (preset 0 otherwise, for speed).
    fn xz(data: &[u8], dict: u32) -> Vec<u8> {
        let mut opts = liblzma::stream::LzmaOptions::new_preset(0).unwrap();
        opts.dict_size(dict);
        let mut filters = liblzma::stream::Filters::new();
        filters.lzma2(&opts);
        let stream =
            liblzma::stream::Stream::new_stream_encoder(&filters, liblzma::stream::Check::Crc32)
                .unwrap();
        let mut e = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// A zstd frame of `blocks` RLE blocks of 128 KiB of zeros each (4
    /// bytes a block), declaring a window of `1 << window_log` bytes:
    /// ruzstd writes no frame like it, zstd does for such data.
    fn zstd_rle_bomb(window_log: u8, blocks: usize) -> Vec<u8> {
        let mut v = vec![0x28, 0xb5, 0x2f, 0xfd];
        // Frame header descriptor: no content size, not single-segment,
        // no checksum, no dictionary; then the window descriptor.
        v.push(0);
        v.push((window_log - 10) << 3);
        for i in 0..blocks {
            let last = u32::from(i + 1 == blocks);
            // Block header: last flag, type 1 (RLE), size 128 KiB.
            let header = last | (1 << 1) | ((128 << 10) << 3);
            v.extend_from_slice(&header.to_le_bytes()[..3]);
            v.push(0);
        }
        v
    }

    /// The modules `DEFAULT_MODULES` need (Debian 6.1 cloud kernel's
    /// dependencies), plus one nobody asks for.
    const MODULES: &[(&str, &str)] = &[
        ("kernel/drivers/virtio/virtio", ""),
        ("kernel/drivers/virtio/virtio_ring", ""),
        (
            "kernel/drivers/virtio/virtio_pci",
            "kernel/drivers/virtio/virtio_ring kernel/drivers/virtio/virtio",
        ),
        (
            "kernel/drivers/char/virtio_console",
            "kernel/drivers/virtio/virtio kernel/drivers/virtio/virtio_ring",
        ),
        ("kernel/fs/fuse/fuse", ""),
        (
            "kernel/fs/fuse/virtiofs",
            "kernel/fs/fuse/fuse kernel/drivers/virtio/virtio_ring kernel/drivers/virtio/virtio",
        ),
        ("kernel/net/core/failover", ""),
        (
            "kernel/drivers/net/net_failover",
            "kernel/net/core/failover",
        ),
        (
            "kernel/drivers/net/virtio_net",
            "kernel/drivers/net/net_failover kernel/net/core/failover \
             kernel/drivers/virtio/virtio kernel/drivers/virtio/virtio_ring",
        ),
        (
            "kernel/drivers/block/virtio_blk",
            "kernel/drivers/virtio/virtio kernel/drivers/virtio/virtio_ring",
        ),
        (
            "kernel/drivers/char/hw_random/virtio-rng",
            "kernel/drivers/virtio/virtio_ring kernel/drivers/virtio/virtio",
        ),
        ("kernel/drivers/net/dummy", ""),
    ];

    fn module_bytes(path: &str) -> Vec<u8> {
        format!("\x7fELF module {path}\n").repeat(50).into_bytes()
    }

    /// Writes a module tree for `version` at `<root>/<modules_base>/<version>`
    /// with modules compressed as `z`.
    fn modules_tree(root: &Path, modules_base: &str, version: &str, z: Z) -> PathBuf {
        let mdir = root.join(modules_base).join(version);
        let mut dep = String::new();
        for (path, deps) in MODULES {
            let (suffix, data) = compress(z, &module_bytes(path));
            let file = mdir.join(format!("{path}.ko{suffix}"));
            fs::create_dir_all(file.parent().unwrap()).unwrap();
            fs::write(&file, data).unwrap();
            let deps: Vec<String> = deps
                .split_whitespace()
                .map(|d| format!("{d}.ko{suffix}"))
                .collect();
            dep.push_str(&format!("{path}.ko{suffix}: {}\n", deps.join(" ")));
        }
        fs::write(mdir.join("modules.dep"), dep).unwrap();
        fs::write(
            mdir.join("modules.builtin"),
            "kernel/drivers/char/hw_random/rng-core.ko\n",
        )
        .unwrap();
        mdir
    }

    fn put(path: &Path, data: &[u8]) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, data).unwrap();
    }

    fn debian_image(root: &Path, version: &str, z: Z) {
        modules_tree(root, "lib/modules", version, z);
        put(
            &root.join(format!("boot/vmlinuz-{version}")),
            &bzimage(&debian_string(version)),
        );
    }

    fn open(root: &Path) -> ImageRoot {
        ImageRoot::open(root).unwrap()
    }

    /// Caches the image's newest kernel and checks the entry: the kernel
    /// image, the decompressed closure of the default modules (not the
    /// rest), and that an initramfs builds from it.
    fn cache_and_check(root: &Path, cache: &Path) -> ImageKernel {
        let image = open(root);
        let found = detect(&image);
        assert!(!found.candidates.is_empty(), "{found:?}");
        let c = &found.candidates[0];
        let k = cache_image_kernel(&image, c, crate::DEFAULT_MODULES, cache).unwrap();
        let key = k.kernel.root.file_name().unwrap().to_str().unwrap();
        assert_eq!(key.len(), 64, "{key}");
        assert_eq!(k.kernel.root.parent().unwrap(), cache.join(CACHE_SUBDIR));
        let mode = fs::metadata(&k.kernel.vmlinuz)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
        assert_eq!(
            fs::read(&k.kernel.vmlinuz).unwrap(),
            fs::read(root.join(c.vmlinuz_path.trim_start_matches('/'))).unwrap()
        );
        for (path, _) in MODULES {
            let copied = k.kernel.modules_dir.join(format!("{path}.ko"));
            if path.ends_with("dummy") {
                assert!(!copied.exists(), "{path} copied");
            } else {
                assert_eq!(fs::read(&copied).unwrap(), module_bytes(path), "{path}");
            }
        }
        let dep = fs::read_to_string(k.kernel.modules_dir.join("modules.dep")).unwrap();
        assert!(!dep.contains(".xz") && !dep.contains(".gz") && !dep.contains(".zst"));
        let agent = cache.join("agent");
        fs::write(&agent, b"agent").unwrap();
        let contents = crate::Contents::modules(crate::DEFAULT_MODULES);
        let initrd = ensure_image_initramfs(&k, &agent, &contents, cache).unwrap();
        assert_eq!(initrd.path.parent().unwrap(), cache.join(INITRAMFS_SUBDIR));
        let (_, entries) = crate::archive::tests::read_archive(&initrd.path);
        let order = String::from_utf8(entries["lib/modules/load-order"].2.clone()).unwrap();
        assert_eq!(order.lines().count(), 11, "{order}");
        assert_eq!(
            entries["lib/modules/virtio-rng.ko"].2,
            module_bytes("kernel/drivers/char/hw_random/virtio-rng")
        );
        k
    }

    #[test]
    fn debian_layout() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        debian_image(&root, AMD64, Z::None);
        // Debian's /vmlinuz symlink and a build symlink: noise.
        symlink(format!("boot/vmlinuz-{AMD64}"), root.join("vmlinuz")).unwrap();
        symlink(
            "/usr/src/nope",
            root.join(format!("lib/modules/{AMD64}/build")),
        )
        .unwrap();
        let found = detect(&open(&root));
        assert_eq!(found.candidates.len(), 1, "{found:?}");
        let c = &found.candidates[0];
        assert_eq!(c.version, AMD64);
        assert_eq!(c.vmlinuz_path, format!("/boot/vmlinuz-{AMD64}"));
        assert_eq!(c.modules_path, format!("/lib/modules/{AMD64}"));
        assert!(found.skipped.is_empty(), "{:?}", found.skipped);
        cache_and_check(&root, &dir.path().join("cache"));
    }

    #[test]
    fn ubuntu_merged_usr_layout_with_zstd_modules() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let v = "6.8.0-45-generic";
        modules_tree(&root, "usr/lib/modules", v, Z::Zst);
        symlink("usr/lib", root.join("lib")).unwrap();
        put(
            &root.join(format!("boot/vmlinuz-{v}")),
            &bzimage(&format!("{v} (buildd@lcy02-amd64-075) #45-Ubuntu SMP")),
        );
        symlink(format!("vmlinuz-{v}"), root.join("boot/vmlinuz")).unwrap();
        let found = detect(&open(&root));
        // /lib/modules and /usr/lib/modules are one directory: one kernel.
        assert_eq!(found.candidates.len(), 1, "{found:?}");
        assert_eq!(found.candidates[0].version, v);
        assert_eq!(
            found.candidates[0].modules_path,
            format!("/lib/modules/{v}")
        );
        cache_and_check(&root, &dir.path().join("cache"));
    }

    #[test]
    fn alpine_layout_with_gzip_modules() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let v = "6.6.58-0-lts";
        modules_tree(&root, "lib/modules", v, Z::Gz);
        // Modules of the kernel before an upgrade: vmlinuz-lts is not theirs.
        modules_tree(&root, "lib/modules", "6.6.50-0-lts", Z::Gz);
        put(
            &root.join("boot/vmlinuz-lts"),
            &bzimage(&format!("{v} (buildozer@build-3-20-x86_64) #1-Alpine SMP")),
        );
        put(&root.join("boot/config-lts"), b"CONFIG_X=y");
        let found = detect(&open(&root));
        assert_eq!(found.candidates.len(), 1, "{found:?}");
        assert_eq!(found.candidates[0].version, v);
        assert_eq!(found.candidates[0].vmlinuz_path, "/boot/vmlinuz-lts");
        assert_eq!(found.skipped.len(), 1, "{:?}", found.skipped);
        assert!(
            found.skipped[0]
                .contains("\"6.6.58-0-lts\" is not that of the modules directory \"6.6.50-0-lts\""),
            "{:?}",
            found.skipped
        );
        cache_and_check(&root, &dir.path().join("cache"));
    }

    #[test]
    fn fedora_layout_with_xz_modules() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let v = "6.11.4-301.fc41.x86_64";
        let mdir = modules_tree(&root, "usr/lib/modules", v, Z::Xz);
        symlink("usr/lib", root.join("lib")).unwrap();
        put(
            &mdir.join("vmlinuz"),
            &bzimage(&format!("{v} (mockbuild@ce7ef2f1) #1 SMP PREEMPT_DYNAMIC")),
        );
        fs::create_dir_all(root.join("boot")).unwrap();
        let found = detect(&open(&root));
        assert_eq!(found.candidates.len(), 1, "{found:?}");
        assert_eq!(
            found.candidates[0].vmlinuz_path,
            format!("/lib/modules/{v}/vmlinuz")
        );
        cache_and_check(&root, &dir.path().join("cache"));
    }

    #[test]
    fn the_newest_of_several_comes_first() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        for v in ["6.1.0-9-amd64", "6.1.0-10-amd64", "5.10.0-30-amd64"] {
            debian_image(&root, v, Z::None);
        }
        let found = detect(&open(&root));
        let versions: Vec<&str> = found
            .candidates
            .iter()
            .map(|c| c.version.as_str())
            .collect();
        assert_eq!(
            versions,
            ["6.1.0-10-amd64", "6.1.0-9-amd64", "5.10.0-30-amd64"]
        );
    }

    #[test]
    fn a_kernel_of_another_version_or_no_kernel_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        // No /lib/modules at all (busybox): nothing, and nothing to say.
        fs::create_dir_all(root.join("boot")).unwrap();
        fs::write(
            root.join("boot/vmlinuz-6.1.0-9-amd64"),
            bzimage("6.1.0-9-amd64 x"),
        )
        .unwrap();
        let found = detect(&open(&root));
        assert!(!found.looked_like_kernel(), "{found:?}");

        modules_tree(&root, "lib/modules", "6.1.0-9-amd64", Z::None);
        for (string, why) in [
            ("6.1.0-10-amd64 (x) #1", "\"6.1.0-10-amd64\" is not that"),
            (
                "6.1.0-9-amd64-rt (x) #1",
                "\"6.1.0-9-amd64-rt\" is not that",
            ),
        ] {
            fs::write(root.join("boot/vmlinuz-6.1.0-9-amd64"), bzimage(string)).unwrap();
            let found = detect(&open(&root));
            assert!(found.candidates.is_empty(), "{found:?}");
            assert!(found.looked_like_kernel());
            assert!(found.skipped[0].contains(why), "{:?}", found.skipped);
        }
        let mut no_magic = bzimage("6.1.0-9-amd64 (x)");
        no_magic[0x202] = b'X';
        for (data, why) in [
            (no_magic, "no boot protocol header"),
            (b"MZ garbage".to_vec(), "too small"),
            (vec![0xff; 1 << 16], "no boot protocol header"),
        ] {
            fs::write(root.join("boot/vmlinuz-6.1.0-9-amd64"), data).unwrap();
            let found = detect(&open(&root));
            assert!(found.candidates.is_empty(), "{found:?}");
            assert!(found.skipped[0].contains(why), "{:?}", found.skipped);
        }
        // A kernel without modules.dep (depmod never ran) is skipped.
        fs::write(
            root.join("boot/vmlinuz-6.1.0-9-amd64"),
            bzimage("6.1.0-9-amd64 (x)"),
        )
        .unwrap();
        fs::remove_file(root.join("lib/modules/6.1.0-9-amd64/modules.dep")).unwrap();
        let found = detect(&open(&root));
        assert!(found.candidates.is_empty(), "{found:?}");
        assert!(found.skipped[0].contains("depmod"), "{:?}", found.skipped);
        // Directory names that are no kernel versions are not looked at.
        for odd in ["..x", "-x", "a b", "x\ny"] {
            fs::create_dir_all(root.join("lib/modules").join(odd)).unwrap();
            assert!(!is_version(odd));
        }
        assert_eq!(detect(&open(&root)).skipped.len(), 1);
    }

    /// A valid kernel outside the image root, where symlinks in the image
    /// try to reach.
    fn outside_kernel(dir: &Path) -> PathBuf {
        let outside = dir.join("outside");
        debian_image(&outside, AMD64, Z::None);
        outside
    }

    #[test]
    fn symlinks_stay_inside_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let outside = outside_kernel(dir.path());
        let root = dir.path().join("root");
        modules_tree(&root, "lib/modules", AMD64, Z::None);
        fs::create_dir_all(root.join("boot")).unwrap();
        let link = root.join(format!("boot/vmlinuz-{AMD64}"));
        let target = outside.join(format!("boot/vmlinuz-{AMD64}"));
        // The kernel image as a symlink to a host file: refused, whatever
        // it points at.
        for t in [
            target.to_str().unwrap().to_owned(),
            format!("../../../../../../../..{}", target.display()),
            "/proc/self/root/etc/passwd".to_owned(),
            format!("/proc/self/root{}", target.display()),
        ] {
            let _ = fs::remove_file(&link);
            symlink(&t, &link).unwrap();
            let found = detect(&open(&root));
            assert!(found.candidates.is_empty(), "{t}: {found:?}");
            assert!(found.skipped[0].contains("symlink"), "{:?}", found.skipped);
        }
        fs::remove_file(&link).unwrap();
        fs::remove_dir(root.join("boot")).unwrap();
        // A directory on the way that is a symlink is followed inside the
        // image only: absolute, relative with `..`, or through /proc.
        for t in [
            outside.join("boot").to_str().unwrap().to_owned(),
            format!("../../../../../../../..{}/boot", outside.display()),
            format!("/proc/self/root{}/boot", outside.display()),
            "/proc/self/cwd".to_owned(),
        ] {
            let _ = fs::remove_file(root.join("boot"));
            symlink(&t, root.join("boot")).unwrap();
            let found = detect(&open(&root));
            assert!(!found.looked_like_kernel(), "{t}: {found:?}");
        }
        // ... where it finds the image's own files.
        fs::remove_file(root.join("boot")).unwrap();
        symlink(outside.join("boot"), root.join("boot")).unwrap();
        let inside = root.join(outside.join("boot").strip_prefix("/").unwrap());
        put(
            &inside.join(format!("vmlinuz-{AMD64}")),
            &bzimage(&debian_string(AMD64)),
        );
        assert_eq!(detect(&open(&root)).candidates.len(), 1);
        // Same for the modules directory.
        let root2 = dir.path().join("root2");
        put(
            &root2.join(format!("boot/vmlinuz-{AMD64}")),
            &bzimage(&debian_string(AMD64)),
        );
        fs::create_dir_all(&root2).unwrap();
        symlink(outside.join("lib"), root2.join("lib")).unwrap();
        assert!(detect(&open(&root2)).candidates.is_empty());
    }

    #[test]
    fn module_paths_stay_inside_the_module_directory() {
        let dir = tempfile::tempdir().unwrap();
        let outside = outside_kernel(dir.path());
        let root = dir.path().join("root");
        debian_image(&root, AMD64, Z::None);
        let mdir = root.join("lib/modules").join(AMD64);
        let dep_path = mdir.join("modules.dep");
        let dep = fs::read_to_string(&dep_path).unwrap();
        let cache = dir.path().join("cache");
        let try_cache = || {
            let image = open(&root);
            let found = detect(&image);
            cache_image_kernel(&image, &found.candidates[0], crate::DEFAULT_MODULES, &cache)
        };
        let fuse = outside
            .join("lib/modules")
            .join(AMD64)
            .join("kernel/fs/fuse/fuse.ko");
        for evil in [
            fuse.to_str().unwrap().to_owned(),
            format!("../../../../../../..{}", fuse.display()),
            "kernel/../../../x.ko".to_owned(),
            "kernel/fs/fuse/fuse.txt".to_owned(),
        ] {
            fs::write(&dep_path, dep.replace("kernel/fs/fuse/fuse.ko", &evil)).unwrap();
            let err = try_cache().unwrap_err();
            assert!(err.0.contains("not a module file inside"), "{evil}: {err}");
        }
        fs::write(&dep_path, &dep).unwrap();
        // A module that is a symlink, or under a directory symlink, to the
        // outside kernel's file.
        let ours = mdir.join("kernel/fs/fuse/fuse.ko");
        fs::remove_file(&ours).unwrap();
        symlink(&fuse, &ours).unwrap();
        assert!(try_cache().is_err());
        fs::remove_dir_all(mdir.join("kernel/fs")).unwrap();
        symlink(
            fuse.parent().unwrap().parent().unwrap(),
            mdir.join("kernel/fs"),
        )
        .unwrap();
        let err = try_cache().unwrap_err();
        assert!(err.0.contains("fuse.ko"), "{err}");
        assert!(
            !cache.join(CACHE_SUBDIR).exists()
                || fs::read_dir(cache.join(CACHE_SUBDIR))
                    .unwrap()
                    .next()
                    .is_none()
        );
    }

    #[test]
    fn oversized_and_special_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        debian_image(&root, AMD64, Z::None);
        let vmlinuz = root.join(format!("boot/vmlinuz-{AMD64}"));
        // Sparse: no disk needed.
        let f = fs::OpenOptions::new().write(true).open(&vmlinuz).unwrap();
        f.set_len(MAX_VMLINUZ + 1).unwrap();
        let found = detect(&open(&root));
        assert!(found.candidates.is_empty(), "{found:?}");
        assert!(
            found.skipped[0].contains("over the limit"),
            "{:?}",
            found.skipped
        );
        f.set_len(0x900).unwrap();
        assert_eq!(detect(&open(&root)).candidates.len(), 1);

        let dep = root.join(format!("lib/modules/{AMD64}/modules.dep"));
        let text = fs::read(&dep).unwrap();
        fs::OpenOptions::new()
            .write(true)
            .open(&dep)
            .unwrap()
            .set_len(MAX_INDEX + 1)
            .unwrap();
        let found = detect(&open(&root));
        assert!(found.candidates.is_empty(), "{found:?}");
        assert!(
            found.skipped[0].contains("over the limit"),
            "{:?}",
            found.skipped
        );
        fs::write(&dep, &text).unwrap();

        let module = root.join(format!("lib/modules/{AMD64}/kernel/fs/fuse/fuse.ko"));
        fs::OpenOptions::new()
            .write(true)
            .open(&module)
            .unwrap()
            .set_len(MAX_MODULE + 1)
            .unwrap();
        let image = open(&root);
        let found = detect(&image);
        let err = cache_image_kernel(
            &image,
            &found.candidates[0],
            crate::DEFAULT_MODULES,
            &dir.path().join("cache"),
        )
        .unwrap_err();
        assert!(
            err.0.contains("fuse.ko") && err.0.contains("over the limit"),
            "{err}"
        );

        // A FIFO (opening it for reading would block) and a directory.
        fs::remove_file(&vmlinuz).unwrap();
        nix::unistd::mkfifo(&vmlinuz, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let found = detect(&open(&root));
        assert!(found.candidates.is_empty(), "{found:?}");
        assert!(
            found.skipped[0].contains("not a regular file"),
            "{:?}",
            found.skipped
        );
        fs::remove_file(&vmlinuz).unwrap();
        fs::create_dir(&vmlinuz).unwrap();
        assert!(detect(&open(&root)).candidates.is_empty());
    }

    #[test]
    fn every_compression_decompresses_and_garbage_does_not() {
        let data = module_bytes("kernel/x");
        for z in [Z::None, Z::Gz, Z::Xz, Z::Zst] {
            let (suffix, packed) = compress(z, &data);
            let name = format!("x.ko{suffix}");
            assert_eq!(
                decompress_module(&name, &packed, MAX_MODULE).unwrap(),
                data,
                "{z:?}"
            );
            if !suffix.is_empty() {
                let mut broken = packed.clone();
                broken.truncate(packed.len() / 2);
                assert!(
                    decompress_module(&name, &broken, MAX_MODULE).is_err(),
                    "{z:?}"
                );
                assert!(
                    decompress_module(&name, b"garbage", MAX_MODULE).is_err(),
                    "{z:?}"
                );
            }
        }
        assert!(decompress_module("x.ko.bz2", b"x", MAX_MODULE).is_err());
    }

    #[test]
    fn a_decompression_bomb_fails_cleanly() {
        let zeros = vec![0u8; 8 << 20];
        // The xz bomb is what `xz --check=crc32 --lzma2=dict=1MiB` makes, as
        // the kernel's build does.
        let bombs = [
            ("x.ko.gz", compress(Z::Gz, &zeros).1),
            ("x.ko.zst", compress(Z::Zst, &zeros).1),
            (
                "x.ko.xz",
                include_bytes!("testdata/zeros-8m.ko.xz").to_vec(),
            ),
        ];
        for (name, packed) in bombs {
            assert!(packed.len() < 64 << 10, "{name}: {}", packed.len());
            assert_eq!(decompress_module(name, &packed, 8 << 20).unwrap(), zeros);
            let err = decompress_module(name, &packed, 1 << 20).unwrap_err();
            assert!(
                err.to_string().contains("more than 1048576 bytes"),
                "{name}: {err}"
            );
        }
        // At the real limit, through the cache: nothing is left behind.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        debian_image(&root, AMD64, Z::None);
        let mdir = root.join("lib/modules").join(AMD64);
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..(MAX_MODULE >> 20) + 1 {
            e.write_all(&chunk).unwrap();
        }
        fs::write(mdir.join("kernel/fs/fuse/fuse.ko.gz"), e.finish().unwrap()).unwrap();
        let dep = mdir.join("modules.dep");
        let text = fs::read_to_string(&dep).unwrap();
        fs::write(&dep, text.replace("fuse/fuse.ko", "fuse/fuse.ko.gz")).unwrap();
        let image = open(&root);
        let found = detect(&image);
        let cache = dir.path().join("cache");
        let err = cache_image_kernel(&image, &found.candidates[0], crate::DEFAULT_MODULES, &cache)
            .unwrap_err();
        assert!(err.0.contains("decompresses to more than"), "{err}");
        let left: Vec<_> = fs::read_dir(cache.join(CACHE_SUBDIR)).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    /// Set in the child process [`bombs_decompress_in_bounded_memory_and_time`]
    /// starts: `<name of the module>:<file with its bytes>`.
    const BOMB_ENV: &str = "RUNVM_TEST_DECOMPRESS_BOMB";

    /// In a child process of its own (this test binary, with only this
    /// test and [`BOMB_ENV`] set), decompresses a bomb the way the cache
    /// does, and prints its peak memory (VmHWM) and the time it took.
    #[test]
    fn decompress_bomb_child() {
        let Ok(spec) = std::env::var(BOMB_ENV) else {
            return;
        };
        let (name, file) = spec.split_once(':').unwrap();
        let packed = fs::read(file).unwrap();
        let start = std::time::Instant::now();
        let small = decompress_module(name, &packed, 1 << 20).map(|v| v.len());
        let full = decompress_module_to(name, &packed, MAX_MODULE, &mut io::sink());
        let elapsed = start.elapsed();
        // The peak RSS of this process's memory since its exec (not
        // getrusage's ru_maxrss, which Linux carries over from the parent
        // across exec, and the parent is a test process of any size).
        let status = fs::read_to_string("/proc/self/status").unwrap();
        let hwm = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .unwrap()
            .trim();
        println!(
            "bomb-result maxrss_kib={hwm} elapsed_ms={} small={small:?} full={full:?}",
            elapsed.as_millis()
        );
    }

    #[test]
    fn bombs_decompress_in_bounded_memory_and_time() {
        let dir = tempfile::tempdir().unwrap();
        let zeros = vec![0u8; 128 << 20];
        let bombs = [
            ("x.ko.xz", xz(&zeros, 1 << 20)),
            ("x.ko.gz", compress(Z::Gz, &zeros).1),
            // 2 GiB in an 8 MiB window: allowed, and stopped at the cap.
            ("x.ko.zst", zstd_rle_bomb(23, 16 << 10)),
        ];
        drop(zeros);
        for (name, packed) in bombs {
            assert!(packed.len() < 1 << 20, "{name}: {}", packed.len());
            let file = dir.path().join(name);
            fs::write(&file, &packed).unwrap();
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "image::tests::decompress_bomb_child"])
                .args(["--nocapture", "--include-ignored", "--test-threads=1"])
                .env(BOMB_ENV, format!("{name}:{}", file.display()))
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{name}: {stdout}");
            let line = stdout
                .lines()
                .find_map(|l| Some(l.split_once("bomb-result ")?.1))
                .unwrap_or_else(|| panic!("{name}: {stdout}"));
            let field = |key: &str| -> u64 {
                line.split(' ')
                    .find_map(|f| f.strip_prefix(key)?.strip_prefix('='))
                    .unwrap()
                    .parse()
                    .unwrap()
            };
            eprintln!("{name}: {line}");
            assert!(
                line.contains("small=Err(") && line.contains("more than 1048576 bytes"),
                "{name}: {line}"
            );
            assert!(
                line.contains(&format!("more than {MAX_MODULE} bytes")),
                "{name}: {line}"
            );
            // The 32 MiB the full run writes go to a sink: what is left
            // is the test harness, the input and the decoder's window.
            let maxrss = field("maxrss_kib");
            assert!(maxrss < 48 << 10, "{name}: peak RSS {maxrss} KiB: {line}");
            let ms = field("elapsed_ms");
            assert!(ms < 20_000, "{name}: {ms} ms: {line}");
        }
    }

    #[test]
    fn windows_over_the_limit_are_refused_before_decoding() {
        // zstd: a 128 MiB window (ruzstd's own limit) is refused at the
        // header; 8 MiB is accepted.
        let err = decompress_module("x.ko.zst", &zstd_rle_bomb(27, 4), MAX_MODULE).unwrap_err();
        assert!(err.to_string().contains("134217728"), "{err}");
        assert_eq!(
            decompress_module("x.ko.zst", &zstd_rle_bomb(23, 4), MAX_MODULE)
                .unwrap()
                .len(),
            512 << 10
        );
        // xz: a 64 MiB dictionary is over liblzma's memory limit.
        let small = b"\x7fELF a module".repeat(100);
        let err = decompress_module("x.ko.xz", &xz(&small, 64 << 20), MAX_MODULE).unwrap_err();
        assert!(err.to_string().contains("dictionary"), "{err}");
        assert_eq!(
            decompress_module("x.ko.xz", &xz(&small, MAX_WINDOW as u32), MAX_MODULE).unwrap(),
            small
        );
    }

    #[test]
    fn entries_are_reused_and_pruned_unless_held() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        debian_image(&root, AMD64, Z::Xz);
        let cache = dir.path().join("cache");
        let first = cache_and_check(&root, &cache);
        let mtime = fs::metadata(&first.kernel.vmlinuz)
            .unwrap()
            .modified()
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let again = cache_and_check(&root, &cache);
        assert_eq!(again.kernel, first.kernel);
        assert_eq!(
            fs::metadata(&again.kernel.vmlinuz)
                .unwrap()
                .modified()
                .unwrap(),
            mtime
        );
        drop(again);

        // Another image with the same kernel but one module changed gets
        // an entry of its own; the first, held, is kept.
        let fuse = root.join(format!("lib/modules/{AMD64}/kernel/fs/fuse/fuse.ko.xz"));
        fs::write(&fuse, compress(Z::Xz, b"\x7fELF another fuse").1).unwrap();
        let image = open(&root);
        let found = detect(&image);
        let second =
            cache_image_kernel(&image, &found.candidates[0], crate::DEFAULT_MODULES, &cache)
                .unwrap();
        assert_ne!(second.kernel.root, first.kernel.root);
        assert_eq!(
            fs::read(second.kernel.modules_dir.join("kernel/fs/fuse/fuse.ko")).unwrap(),
            b"\x7fELF another fuse"
        );
        assert!(first.kernel.root.exists(), "a held entry was pruned");
        // Unheld, it goes when the next entry of that version is written.
        let first_root = first.kernel.root.clone();
        drop(first);
        fs::write(&fuse, compress(Z::Xz, b"\x7fELF a third fuse").1).unwrap();
        let found = detect(&image);
        let third =
            cache_image_kernel(&image, &found.candidates[0], crate::DEFAULT_MODULES, &cache)
                .unwrap();
        assert!(!first_root.exists(), "an unheld stale entry was kept");
        assert!(second.kernel.root.exists());
        assert!(third.kernel.root.exists());
        let names: Vec<String> = fs::read_dir(cache.join(CACHE_SUBDIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    const DEFAULT_CONTENTS: crate::Contents<'static> =
        crate::Contents::modules(crate::DEFAULT_MODULES);

    #[test]
    fn image_and_store_archives_of_one_version_do_not_prune_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let agent = dir.path().join("agent");
        fs::write(&agent, b"agent").unwrap();
        // The store's kernel has the version the image's kernel claims.
        let store = crate::archive::tests::fake_kernel(&dir.path().join("store"), AMD64);
        let store_archive = crate::ensure_initramfs(&store, &agent, &["virtiofs"], &cache)
            .unwrap()
            .path;
        let root = dir.path().join("root");
        debian_image(&root, AMD64, Z::None);
        let image = open(&root);
        let first = cache_image_kernel(
            &image,
            &detect(&image).candidates[0],
            crate::DEFAULT_MODULES,
            &cache,
        )
        .unwrap();
        let first_archive = ensure_image_initramfs(&first, &agent, &DEFAULT_CONTENTS, &cache)
            .unwrap()
            .path;
        assert!(
            store_archive.exists(),
            "the image kernel pruned the store's archive"
        );
        // Another image kernel of that version: its own archive, and the
        // first's stays.
        let fuse = root.join(format!("lib/modules/{AMD64}/kernel/fs/fuse/fuse.ko"));
        fs::write(&fuse, b"\x7fELF another fuse").unwrap();
        let second = cache_image_kernel(
            &image,
            &detect(&image).candidates[0],
            crate::DEFAULT_MODULES,
            &cache,
        )
        .unwrap();
        let second_archive = ensure_image_initramfs(&second, &agent, &DEFAULT_CONTENTS, &cache)
            .unwrap()
            .path;
        assert_ne!(first_archive, second_archive);
        assert!(first_archive.exists());
        // And the store kernel's next build keeps the image archives.
        fs::write(&agent, b"agent 2").unwrap();
        let store_2 = crate::ensure_initramfs(&store, &agent, &["virtiofs"], &cache)
            .unwrap()
            .path;
        assert!(!store_archive.exists(), "the store's old build stays");
        assert!(store_2.exists() && first_archive.exists() && second_archive.exists());
        let name = first_archive.file_name().unwrap().to_str().unwrap();
        let key = first.kernel.root.file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with(&format!("initramfs-{AMD64}@{}-", &key[..16])),
            "{name}"
        );
    }

    /// Sets the modification time of `path` to `secs` seconds ago.
    fn age(path: &Path, secs: u64) {
        File::open(path)
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(secs))
            .unwrap();
    }

    #[test]
    fn the_cache_is_kept_under_its_budget_least_recently_used_first() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let agent = dir.path().join("agent");
        fs::write(&agent, b"agent").unwrap();
        // Four image kernels (of four versions, so the per-version pruning
        // does not remove them), each with its archive.
        let mut made = Vec::new();
        for i in 0..4 {
            let version = format!("6.1.0-{i}-cloud-amd64");
            let root = dir.path().join(format!("root{i}"));
            debian_image(&root, &version, Z::None);
            let image = open(&root);
            let ik = cache_image_kernel(
                &image,
                &detect(&image).candidates[0],
                crate::DEFAULT_MODULES,
                &cache,
            )
            .unwrap();
            let initrd = ensure_image_initramfs(&ik, &agent, &DEFAULT_CONTENTS, &cache).unwrap();
            made.push((ik, initrd));
        }
        let entry_size = tree_size(&made[0].0.kernel.root);
        let archive_size = fs::metadata(&made[0].1.path).unwrap().len();
        let pair = entry_size + archive_size;
        // Oldest use first: 0, then 2, 1, 3 (kernel 3 just used).
        for (i, secs) in [(0, 400), (2, 300), (1, 200), (3, 100)] {
            age(&made[i].0.kernel.root, secs);
            age(&made[i].1.path, secs);
        }
        // Kernel 2 is held (a container is being created with it).
        let mut made: Vec<Option<(ImageKernel, crate::Initramfs)>> =
            made.into_iter().map(Some).collect();
        let roots: Vec<PathBuf> = made
            .iter()
            .map(|m| m.as_ref().unwrap().0.kernel.root.clone())
            .collect();
        let archives: Vec<PathBuf> = made
            .iter()
            .map(|m| m.as_ref().unwrap().1.path.clone())
            .collect();
        for (i, m) in made.iter_mut().enumerate() {
            if i != 2 {
                *m = None;
            }
        }
        // Room for two and a half kernels: 0 and 1 go, 2 is held, 3 is
        // the newest.
        let freed = enforce_budget(&cache, pair * 5 / 2, 100);
        assert_eq!(freed.len(), 4, "{freed:?}");
        for i in [0, 1] {
            assert!(!roots[i].exists() && !archives[i].exists(), "{i}");
        }
        for i in [2, 3] {
            assert!(roots[i].exists() && archives[i].exists(), "{i}");
        }
        // A budget nothing fits: only what is held stays.
        enforce_budget(&cache, 0, 0);
        assert!(roots[2].exists() && archives[2].exists());
        assert!(!roots[3].exists() && !archives[3].exists());
        // Using an entry (or archive) again makes it the most recent.
        drop(made);
        age(&roots[2], 1000);
        age(&archives[2], 1000);
        let image = open(&dir.path().join("root2"));
        let ik = cache_image_kernel(
            &image,
            &detect(&image).candidates[0],
            crate::DEFAULT_MODULES,
            &cache,
        )
        .unwrap();
        assert_eq!(ik.kernel.root, roots[2]);
        let initrd = ensure_image_initramfs(&ik, &agent, &DEFAULT_CONTENTS, &cache).unwrap();
        assert_eq!(initrd.path, archives[2]);
        for p in [&roots[2], &archives[2]] {
            let t = fs::metadata(p).unwrap().modified().unwrap();
            let ago = SystemTime::now().duration_since(t).unwrap_or_default();
            assert!(ago < Duration::from_secs(60), "{p:?} not touched: {ago:?}");
        }
    }

    #[test]
    fn the_budget_applies_when_kernels_are_cached() {
        // A guest that renames its module directory before every restart
        // makes a new entry each time: the real budget (in items here)
        // removes the old ones as new ones come.
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let agent = dir.path().join("agent");
        fs::write(&agent, b"agent").unwrap();
        for i in 0..CACHE_BUDGET_ITEMS / 2 + 3 {
            let version = format!("6.1.0-{i}-cloud-amd64");
            let root = dir.path().join("root");
            let _ = fs::remove_dir_all(&root);
            debian_image(&root, &version, Z::None);
            let image = open(&root);
            let ik = cache_image_kernel(
                &image,
                &detect(&image).candidates[0],
                crate::DEFAULT_MODULES,
                &cache,
            )
            .unwrap();
            ensure_image_initramfs(&ik, &agent, &DEFAULT_CONTENTS, &cache).unwrap();
        }
        let count = |sub: &str| fs::read_dir(cache.join(sub)).unwrap().count();
        let items = count(CACHE_SUBDIR) + count(INITRAMFS_SUBDIR);
        assert!(items <= CACHE_BUDGET_ITEMS, "{items}");
        assert!(items >= CACHE_BUDGET_ITEMS - 2, "{items}");
    }

    #[test]
    fn prune_removes_what_is_not_held_or_newest() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let agent = dir.path().join("agent");
        fs::write(&agent, b"agent 1").unwrap();
        let store = crate::archive::tests::fake_kernel(&dir.path().join("store"), AMD64);
        // Store archives: an old build still held, an old one not, the newest.
        let held_old = crate::ensure_initramfs(&store, &agent, &["virtiofs"], &cache).unwrap();
        fs::write(&agent, b"agent 2").unwrap();
        let old = crate::ensure_initramfs(&store, &agent, &["virtiofs"], &cache)
            .unwrap()
            .path;
        age(&old, 100);
        fs::write(&agent, b"agent 3").unwrap();
        let newest = crate::ensure_initramfs(&store, &agent, &["virtiofs"], &cache)
            .unwrap()
            .path;
        // remove_stale after the last build removed `old` already; put a
        // copy back as a leftover of a racing build.
        if !old.exists() {
            fs::copy(&newest, &old).unwrap();
            age(&old, 100);
        }
        // Image kernels: one held, one not.
        let mut image_kernels = Vec::new();
        for i in 0..2 {
            let root = dir.path().join(format!("root{i}"));
            debian_image(&root, &format!("6.1.0-{i}-cloud-amd64"), Z::None);
            let image = open(&root);
            let ik = cache_image_kernel(
                &image,
                &detect(&image).candidates[0],
                crate::DEFAULT_MODULES,
                &cache,
            )
            .unwrap();
            let initrd = ensure_image_initramfs(&ik, &agent, &DEFAULT_CONTENTS, &cache).unwrap();
            image_kernels.push((ik, initrd));
        }
        let (unheld_ik, unheld_initrd) = image_kernels.pop().unwrap();
        let (unheld_root, unheld_archive) =
            (unheld_ik.kernel.root.clone(), unheld_initrd.path.clone());
        drop((unheld_ik, unheld_initrd));
        // An archive of a kernel no longer in the store ("6.1.0-1" is a
        // store version, and only a prefix of this one's).
        let gone = cache.join("initramfs-6.1.0-1-amd64+disks-0123456789abcdef.img");
        fs::write(&gone, b"x").unwrap();
        let versions = [AMD64.to_owned(), "6.1.0-1".to_owned()];
        let freed = crate::prune_cache(&cache, None);
        let freed_paths: Vec<&PathBuf> = freed.iter().map(|(p, _)| p).collect();
        assert_eq!(freed.len(), 3, "{freed:?}");
        for p in [&unheld_root, &unheld_archive, &old] {
            assert!(
                !p.exists() && freed_paths.contains(&p),
                "{p:?} kept: {freed:?}"
            );
        }
        assert!(freed.iter().all(|(_, size)| *size > 0), "{freed:?}");
        assert!(held_old.path.exists() && newest.exists() && gone.exists());
        assert!(image_kernels[0].0.kernel.root.exists() && image_kernels[0].1.path.exists());
        let freed = crate::prune_cache(&cache, Some(&versions));
        assert_eq!(freed, [(gone.clone(), 1)]);
        assert!(newest.exists());
        // Nothing more to do a second time.
        assert!(crate::prune_cache(&cache, Some(&versions)).is_empty());
    }

    #[test]
    fn a_dependency_closure_too_large_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        debian_image(&root, AMD64, Z::None);
        let mdir = root.join("lib/modules").join(AMD64);
        let mut dep = fs::read_to_string(mdir.join("modules.dep")).unwrap();
        let extra: Vec<String> = (0..crate::MAX_MODULES)
            .map(|i| format!("extra/m{i}.ko"))
            .collect();
        fs::create_dir_all(mdir.join("extra")).unwrap();
        for m in &extra {
            fs::write(mdir.join(m), b"\x7fELF").unwrap();
            dep.push_str(&format!("{m}:\n"));
        }
        let dep = dep.replace(
            "kernel/fs/fuse/fuse.ko:",
            &format!("kernel/fs/fuse/fuse.ko: {}", extra.join(" ")),
        );
        fs::write(mdir.join("modules.dep"), dep).unwrap();
        let image = open(&root);
        let found = detect(&image);
        let err = cache_image_kernel(
            &image,
            &found.candidates[0],
            crate::DEFAULT_MODULES,
            &dir.path().join("cache"),
        )
        .unwrap_err();
        assert!(err.0.contains("more than 256"), "{err}");
    }

    #[test]
    fn limits_are_those_of_real_kernels() {
        assert_eq!(MAX_VMLINUZ, 64 << 20);
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        debian_image(&root, AMD64, Z::None);
        let mdir = root.join("lib/modules").join(AMD64);
        let gz_zeros = |mib: u64| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            let chunk = vec![0u8; 1 << 20];
            for _ in 0..mib {
                e.write_all(&chunk).unwrap();
            }
            e.finish().unwrap()
        };
        let dep_path = mdir.join("modules.dep");
        let dep = fs::read_to_string(&dep_path).unwrap();
        let try_cache = |modules: &[&str]| {
            let text = modules.iter().fold(dep.clone(), |d, m| {
                d.replace(&format!("{m}.ko"), &format!("{m}.ko.gz"))
            });
            fs::write(&dep_path, text).unwrap();
            let image = open(&root);
            let found = detect(&image);
            cache_image_kernel(
                &image,
                &found.candidates[0],
                crate::DEFAULT_MODULES,
                &dir.path().join("cache"),
            )
        };
        // One module of 33 MiB once decompressed.
        fs::write(mdir.join("kernel/fs/fuse/fuse.ko.gz"), gz_zeros(33)).unwrap();
        let err = try_cache(&["kernel/fs/fuse/fuse"]).unwrap_err();
        assert!(
            err.0.contains("fuse.ko.gz") && err.0.contains("more than 33554432 bytes"),
            "{err}"
        );
        // Three of 30 MiB: each fits, not all of them.
        let three = [
            "kernel/fs/fuse/fuse",
            "kernel/drivers/virtio/virtio",
            "kernel/drivers/virtio/virtio_ring",
        ];
        for m in three {
            fs::write(mdir.join(format!("{m}.ko.gz")), gz_zeros(30)).unwrap();
        }
        let err = try_cache(&three).unwrap_err();
        assert!(
            err.0.contains("add up to more than 67108864 bytes"),
            "{err}"
        );
        assert_eq!(
            fs::read_dir(dir.path().join("cache").join(CACHE_SUBDIR))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn a_kernel_without_the_needed_modules_is_unusable() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        debian_image(&root, AMD64, Z::None);
        let dep = root.join(format!("lib/modules/{AMD64}/modules.dep"));
        let text = fs::read_to_string(&dep).unwrap();
        let text: String = text
            .lines()
            .filter(|l| !l.contains("virtiofs"))
            .map(|l| format!("{l}\n"))
            .collect();
        fs::write(&dep, text).unwrap();
        let image = open(&root);
        let found = detect(&image);
        let err = cache_image_kernel(
            &image,
            &found.candidates[0],
            crate::DEFAULT_MODULES,
            &dir.path().join("cache"),
        )
        .unwrap_err();
        assert!(err.0.contains("virtiofs"), "{err}");
    }
}
