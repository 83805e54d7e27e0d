//! The initramfs cache.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use crate::{build_initramfs, Error, Kernel};

/// Bumped whenever the archive layout changes, so old cache entries are not reused.
const FORMAT_VERSION: &str = "runvm-initramfs-format-1";

/// Number of hex digits of the cache key in file names.
const KEY_LEN: usize = 16;

/// Temporary files older than this are leftovers of crashed builders.
const STALE_TMP_AGE: Duration = Duration::from_secs(3600);

/// Returns the cached initramfs for (`kernel`, `agent`, `wanted_modules`),
/// building it first if it is missing.
///
/// The path is `<cache_dir>/initramfs-<kernel version>-<key>.img`, where `<key>`
/// is the first 16 hex digits of the SHA-256 of the agent's bytes, the kernel
/// version, the wanted module names and an archive format version. `cache_dir`
/// is created if needed. Concurrent callers are safe: archives are renamed
/// into place atomically, so a racing builder at worst does the work twice.
/// After a build, other `initramfs-<kernel version>-*.img` files (built for
/// other agents or module lists) are removed, best-effort.
pub fn ensure_initramfs(
    kernel: &Kernel,
    agent: &Path,
    wanted_modules: &[&str],
    cache_dir: &Path,
) -> Result<PathBuf, Error> {
    let key = cache_key(kernel, agent, wanted_modules)?;
    let name = format!("initramfs-{}-{key}.img", kernel.version);
    let path = cache_dir.join(&name);
    if path.is_file() {
        return Ok(path);
    }
    fs::create_dir_all(cache_dir)
        .map_err(|e| Error::io("create initramfs cache directory", cache_dir, e))?;
    build_initramfs(kernel, agent, wanted_modules, &path)?;
    remove_stale(cache_dir, &kernel.version, &name);
    Ok(path)
}

fn cache_key(kernel: &Kernel, agent: &Path, wanted_modules: &[&str]) -> Result<String, Error> {
    let mut file = File::open(agent).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            Error::AgentMissing {
                path: agent.to_owned(),
            }
        } else {
            Error::io("read guest agent", agent, e)
        }
    })?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher).map_err(|e| Error::io("read guest agent", agent, e))?;
    for part in [
        kernel.version.as_str(),
        &wanted_modules.join(","),
        FORMAT_VERSION,
    ] {
        hasher.update([0]);
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    let mut hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    hex.truncate(KEY_LEN);
    Ok(hex)
}

/// Best-effort removal of other archives for the same kernel version, and of
/// old temporary files left by interrupted builds.
fn remove_stale(cache_dir: &Path, version: &str, keep: &str) {
    let Ok(entries) = fs::read_dir(cache_dir) else {
        return;
    };
    let prefix = format!("initramfs-{version}-");
    for entry in entries.filter_map(Result::ok) {
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str() else {
            continue;
        };
        let stale = if let Some(rest) = name.strip_prefix(&prefix) {
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
            let _ = fs::remove_file(entry.path());
        }
    }
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

        let first = ensure_initramfs(&kernel, &agent, WANTED, &cache).unwrap();
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
        let second = ensure_initramfs(&kernel, &agent, WANTED, &cache).unwrap();
        assert_eq!(first, second);
        assert_eq!(fs::metadata(&second).unwrap().modified().unwrap(), mtime);

        fs::write(&agent, b"agent v2").unwrap();
        let third = ensure_initramfs(&kernel, &agent, WANTED, &cache).unwrap();
        assert_ne!(first, third);
        assert_eq!(read_archive(&third).1["init"].2, b"agent v2");
        assert!(!first.exists(), "stale archive for the same kernel kept");
        assert!(other_version.exists());
        assert!(not_ours.exists());

        // The module list is part of the key too.
        let fourth = ensure_initramfs(&kernel, &agent, &["virtiofs"], &cache).unwrap();
        assert_ne!(third, fourth);
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
