//! The initramfs cache.

use nix::fcntl::{Flock, FlockArg};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use crate::archive::{build_initramfs_with, Contents};
use crate::{Error, Kernel};

/// Bumped whenever the archive layout changes, so old cache entries are not reused.
const FORMAT_VERSION: &str = "runvm-initramfs-format-3";

/// Number of hex digits of the cache key in file names.
const KEY_LEN: usize = 16;

/// Temporary files older than this are leftovers of crashed builders.
const STALE_TMP_AGE: Duration = Duration::from_secs(3600);

/// A cached initramfs, held with a shared lock: while it is held, no other
/// runvm process prunes the file (the lock must be kept until runc has
/// bind-mounted the file into the container; after that the mount pins it).
#[derive(Debug)]
pub struct Initramfs {
    pub path: PathBuf,
    lock: Flock<File>,
}

impl Initramfs {
    /// The descriptor that holds the lock (to pass it on to a process that
    /// takes over, such as runc under `runvm run`).
    pub fn lock_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.lock.as_fd()
    }
}

/// Returns the cached initramfs for (`kernel`, `agent`, `wanted_modules`),
/// building it first if it is missing, locked against pruning.
///
/// The path is `<cache_dir>/initramfs-<kernel version>-<key>.img`, where
/// `<key>` is the first 16 hex digits of the SHA-256 of the agent's bytes,
/// the module files' bytes and names, the kernel's version and an archive
/// format version: modules or an agent replaced in place (same version
/// string, other content) never reuse a stale archive. (Not the kernel
/// image's bytes: the archive holds nothing of it.) The kernel
/// is checked (module paths stay in its tree) before anything is written.
/// Concurrent callers are safe: archives are renamed into place atomically,
/// so a racing builder at worst does the work twice. After a build, other
/// `initramfs-<kernel version>-*.img` files are removed unless another
/// runvm process holds them.
pub fn ensure_initramfs(
    kernel: &Kernel,
    agent: &Path,
    wanted_modules: &[&str],
    cache_dir: &Path,
) -> Result<Initramfs, Error> {
    ensure_initramfs_with(kernel, agent, &Contents::modules(wanted_modules), cache_dir)
}

/// [`ensure_initramfs`] for other `contents`: their tools are part of the
/// key, and their flavor of the name, so archives of different contents
/// for one kernel are kept side by side.
pub fn ensure_initramfs_with(
    kernel: &Kernel,
    agent: &Path,
    contents: &Contents<'_>,
    cache_dir: &Path,
) -> Result<Initramfs, Error> {
    ensure_in(kernel, agent, contents, cache_dir, &kernel.version, false)
}

/// [`ensure_initramfs_with`] in the directory `dir`, naming the archive
/// `initramfs-<label><flavor>-<key>.img` (other archives of that
/// label and flavor are pruned after a build). `touch`: set the archive's
/// modification time when it is reused, so that it tells when it was last
/// used (for least-recently-used eviction).
pub(crate) fn ensure_in(
    kernel: &Kernel,
    agent: &Path,
    contents: &Contents<'_>,
    dir: &Path,
    label: &str,
    touch: bool,
) -> Result<Initramfs, Error> {
    let modules = crate::archive::module_files(kernel, contents.modules)?;
    let mut key_files = modules;
    for tool in contents.tools {
        key_files.push((tool.name.to_owned(), tool.path.clone()));
    }
    let key = cache_key(kernel, agent, &key_files)?;
    let prefix = format!("initramfs-{label}{}-", contents.flavor);
    let name = format!("{prefix}{key}.img");
    let path = dir.join(&name);
    // A pruner may remove the file between our look and our lock: then
    // build it again (twice is plenty; a third miss is a real problem).
    for _ in 0..3 {
        if let Some(lock) = lock_shared(&path)? {
            if touch {
                let _ = lock.set_modified(SystemTime::now());
            }
            return Ok(Initramfs { path, lock });
        }
        fs::create_dir_all(dir)
            .map_err(|e| Error::io("create initramfs cache directory", dir, e))?;
        build_initramfs_with(kernel, agent, contents, &path)?;
        remove_stale(dir, &prefix, &name);
    }
    Err(Error::io(
        "keep",
        &path,
        io::Error::other("the archive was removed again after each build"),
    ))
}

/// Opens `path` and takes a shared lock on it; `None` if it does not exist
/// (or was removed while we waited for the lock).
fn lock_shared(path: &Path) -> Result<Option<Flock<File>>, Error> {
    use std::os::unix::fs::MetadataExt;
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("open", path, e)),
    };
    let file = Flock::lock(file, FlockArg::LockShared)
        .map_err(|(_, e)| Error::io("lock", path, e.into()))?;
    let held = file.metadata().map_err(|e| Error::io("stat", path, e))?;
    match fs::metadata(path) {
        Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => Ok(Some(file)),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("stat", path, e)),
    }
}

/// Adds a separator and the bytes of the file at `path` to `hasher`.
fn hash_file(hasher: &mut Sha256, path: &Path, what: &str) -> Result<(), Error> {
    let mut file = File::open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound && what == "read guest agent" {
            Error::AgentMissing {
                path: path.to_owned(),
            }
        } else {
            Error::io(what, path, e)
        }
    })?;
    hasher.update([0]);
    io::copy(&mut file, hasher).map_err(|e| Error::io(what, path, e))?;
    Ok(())
}

fn cache_key(
    kernel: &Kernel,
    agent: &Path,
    modules: &[(String, PathBuf)],
) -> Result<String, Error> {
    let mut hasher = Sha256::new();
    // Not the kernel image: the archive holds none of it, and reading it
    // (23 MB uncompressed for runvm's own kernel) would cost every start
    // about 50 ms. The modules it holds are in the key, file by file.
    hash_file(&mut hasher, agent, "read guest agent")?;
    for (name, path) in modules {
        hash_file(&mut hasher, path, "read kernel module")?;
        hasher.update([0]);
        hasher.update(name.as_bytes());
    }
    for part in [kernel.version.as_str(), FORMAT_VERSION] {
        hasher.update([0]);
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    let mut hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    hex.truncate(KEY_LEN);
    Ok(hex)
}

/// Best-effort removal of other archives with the same `prefix` (kernel
/// version and flavor), and of
/// old temporary files left by interrupted builds.
fn remove_stale(cache_dir: &Path, prefix: &str, keep: &str) {
    let Ok(entries) = fs::read_dir(cache_dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str() else {
            continue;
        };
        let stale = if let Some(rest) = name.strip_prefix(prefix) {
            // Exactly `<key>.img`, so `initramfs-6.1.0-5-…` never matches
            // archives of a version that merely starts like ours.
            name != keep
                && rest.strip_suffix(".img").is_some_and(|key| {
                    key.len() == KEY_LEN && key.bytes().all(|b| b.is_ascii_hexdigit())
                })
        } else if name.starts_with(".initramfs-") && name.ends_with(".tmp") {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age > STALE_TMP_AGE)
        } else {
            false
        };
        if stale {
            remove_unless_held(&entry.path());
        }
    }
}

/// Removes `path` unless a runvm process holds it (see [`Initramfs`]).
/// The exclusive lock is held across the unlink, so a process that gets its
/// shared lock afterwards sees the file gone and builds it again.
pub(crate) fn remove_unless_held(path: &Path) -> bool {
    let Ok(file) = File::open(path) else {
        return false;
    };
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        // What is at `path` now must be what was locked: another pruner
        // may have removed it meanwhile and a builder put a new one there.
        Ok(held) if same_file(&held, path) => fs::remove_file(path).is_ok(),
        _ => false,
    }
}

/// Whether `path` (not followed) is the file `file` has open.
pub(crate) fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// The archives (`initramfs-<label>-<key>.img`) in `dir`: path, the
/// name without `-<key>.img` (what archives of one kernel, flavor and
/// label share), size, and modification time.
pub(crate) fn archives(dir: &Path) -> Vec<(PathBuf, String, u64, SystemTime)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str() else {
            continue;
        };
        let Some(stem) = name
            .strip_prefix("initramfs-")
            .and_then(|n| n.strip_suffix(".img"))
        else {
            continue;
        };
        let Some((label, key)) = stem.rsplit_once('-') else {
            continue;
        };
        if key.len() != KEY_LEN || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        out.push((entry.path(), label.to_owned(), meta.len(), mtime));
    }
    out
}

/// Removes from `dir` every archive that is not the newest of its
/// kernel, flavor and label, every archive of a kernel version not in
/// `versions` (when given: archives of kernels removed from the store, or
/// of image kernels from before they had a directory of their own),
/// and leftovers of interrupted builds older
/// than an hour, unless a runvm process holds them. Returns what was
/// removed, with sizes.
pub(crate) fn prune_old_builds(dir: &Path, versions: Option<&[String]>) -> Vec<(PathBuf, u64)> {
    let mut all = archives(dir);
    // A label is a version and a flavor (`""`, or from `+`).
    let known = |label: &str| {
        versions.is_none_or(|vs| {
            vs.iter().any(|v| {
                label
                    .strip_prefix(v.as_str())
                    .is_some_and(|flavor| flavor.is_empty() || flavor.starts_with('+'))
            })
        })
    };
    // Newest first within each group.
    all.sort_by(|a, b| a.1.cmp(&b.1).then(b.3.cmp(&a.3)));
    let mut freed = Vec::new();
    let mut previous: Option<String> = None;
    for (path, label, size, _) in all {
        let newest = previous.as_deref() != Some(label.as_str());
        let keep = newest && known(&label);
        previous = Some(label);
        if !keep && remove_unless_held(&path) {
            freed.push((path, size));
        }
    }
    freed.extend(remove_old_tmp(dir));
    freed
}

/// Removes `.initramfs-*.tmp` files older than [`STALE_TMP_AGE`].
fn remove_old_tmp(dir: &Path) -> Vec<(PathBuf, u64)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut freed = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str() else {
            continue;
        };
        if !(name.starts_with(".initramfs-") && name.ends_with(".tmp")) {
            continue;
        }
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        let old = meta
            .modified()
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age > STALE_TMP_AGE);
        if old && fs::remove_file(entry.path()).is_ok() {
            freed.push((entry.path(), meta.len()));
        }
    }
    freed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::tests::{fake_kernel, read_archive};

    const WANTED: &[&str] = &["virtiofs", "virtio_pci", "virtio_rng"];

    #[test]
    fn second_call_reuses_and_new_agent_rebuilds() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = fake_kernel(&dir.path().join("k"), "6.1.0-56-cloud-amd64");
        let agent = dir.path().join("agent");
        fs::write(&agent, b"agent v1").unwrap();
        let cache = dir.path().join("cache/initramfs");

        let first = ensure_initramfs(&kernel, &agent, WANTED, &cache)
            .unwrap()
            .path;
        let name = first.file_name().unwrap().to_str().unwrap().to_owned();
        assert!(
            name.starts_with("initramfs-6.1.0-56-cloud-amd64-"),
            "{name}"
        );
        assert!(name.ends_with(".img"), "{name}");
        assert_eq!(
            name.len(),
            "initramfs-6.1.0-56-cloud-amd64-".len() + KEY_LEN + ".img".len()
        );
        let mtime = fs::metadata(&first).unwrap().modified().unwrap();

        // Unrelated files that must survive the stale cleanup.
        let other_version = cache.join("initramfs-6.1.0-56-cloud-amd64-rt-0123456789abcdef.img");
        let not_ours = cache.join("notes.txt");
        fs::write(&other_version, b"x").unwrap();
        fs::write(&not_ours, b"x").unwrap();

        std::thread::sleep(Duration::from_millis(20));
        let second = ensure_initramfs(&kernel, &agent, WANTED, &cache)
            .unwrap()
            .path;
        assert_eq!(first, second);
        assert_eq!(fs::metadata(&second).unwrap().modified().unwrap(), mtime);

        fs::write(&agent, b"agent v2").unwrap();
        let third = ensure_initramfs(&kernel, &agent, WANTED, &cache)
            .unwrap()
            .path;
        assert_ne!(first, third);
        assert_eq!(read_archive(&third).1["init"].2, b"agent v2");
        assert!(!first.exists(), "stale archive for the same kernel kept");
        assert!(other_version.exists());
        assert!(not_ours.exists());

        // The module list is part of the key too.
        let fourth = ensure_initramfs(&kernel, &agent, &["virtiofs"], &cache)
            .unwrap()
            .path;
        assert_ne!(third, fourth);

        // So are the modules' contents, even under the same version
        // string; the kernel image is not (the archive has nothing of it).
        let fifth = ensure_initramfs(&kernel, &agent, WANTED, &cache).unwrap();
        fs::write(&kernel.vmlinuz, b"MZ another kernel, same version").unwrap();
        let same = ensure_initramfs(&kernel, &agent, WANTED, &cache).unwrap();
        assert_eq!(fifth.path, same.path);
        drop(same);
        let module = kernel.modules_dir.join("kernel/fs/fuse/virtiofs.ko");
        let mut bytes = fs::read(&module).unwrap();
        bytes.extend_from_slice(b"another build");
        fs::write(&module, bytes).unwrap();
        let sixth = ensure_initramfs(&kernel, &agent, WANTED, &cache).unwrap();
        assert_ne!(fifth.path, sixth.path);
        // An archive another runvm process holds is not pruned.
        assert!(fifth.path.exists(), "a held archive was pruned");
        drop(fifth);
        let mut bytes = fs::read(&module).unwrap();
        bytes.extend_from_slice(b" and a third");
        fs::write(&module, bytes).unwrap();
        let seventh = ensure_initramfs(&kernel, &agent, WANTED, &cache).unwrap();
        assert!(sixth.path.exists(), "held");
        assert_ne!(seventh.path, sixth.path);
    }

    #[test]
    fn a_kernel_whose_modules_leave_its_tree_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = fake_kernel(&dir.path().join("k"), "6.1.0-9");
        let agent = dir.path().join("agent");
        fs::write(&agent, b"agent").unwrap();
        let dep = kernel.modules_dir.join("modules.dep");
        let text = fs::read_to_string(&dep).unwrap();
        fs::write(&dep, text.replace("kernel/fs/fuse/fuse.ko", "/etc/shadow")).unwrap();
        let cache = dir.path().join("cache");
        let err = ensure_initramfs(&kernel, &agent, WANTED, &cache).unwrap_err();
        assert!(matches!(err, Error::ModuleOutsideTree { .. }), "{err}");
        assert!(!cache.exists(), "something was written to the cache");
    }

    #[test]
    fn missing_agent_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = fake_kernel(&dir.path().join("k"), "6.1.0-9");
        let err =
            ensure_initramfs(&kernel, &dir.path().join("nope"), WANTED, dir.path()).unwrap_err();
        assert!(matches!(err, Error::AgentMissing { .. }), "{err}");
        assert!(err.to_string().contains("make install"), "{err}");
    }
}
