//! The runvm guest kernel and its initramfs.
//!
//! runvm boots a stock distribution kernel (Debian's `linux-image-cloud-amd64`,
//! unpacked, never installed on the host) with an initramfs it generates
//! itself: the static guest agent as `/init`, plus the kernel modules the
//! guest needs (virtio, virtiofs, console, network, …) and a `load-order` file
//! that tells the agent in which order to load them.
//!
//! - [`Kernel`] finds the kernel (installed one, or an explicit `RUNVM_KERNEL`).
//! - [`resolve_modules`] turns `modules.dep` into a dependency-first load order.
//! - [`build_initramfs`] writes the cpio archive.
//! - [`ensure_initramfs`] caches archives keyed by agent, kernel and modules.

use std::io;
use std::path::{Path, PathBuf};

mod archive;
mod cache;
pub mod image;
mod kernel;

pub use archive::{build_initramfs, build_initramfs_with, Contents, Tool};
pub use cache::{ensure_initramfs, ensure_initramfs_with, Initramfs};
pub use kernel::{Kernel, DEFAULT_FILE as DEFAULT_KERNEL_FILE};
pub use runvm_modindex::{resolve_modules, MAX_MODULES};

/// `runvm kernel prune`: removes from the cache at `cache_dir` every
/// image-kernel entry and image-kernel archive, and every store kernel's
/// archive that is not the newest of its kernel and flavor, or (when
/// `store_versions`, the versions of the store's kernels, is given) whose
/// kernel version is none of those, unless a runvm process holds it; and
/// leftovers of interrupted builds. Returns the paths removed, each with
/// its size in bytes.
pub fn prune_cache(cache_dir: &Path, store_versions: Option<&[String]>) -> Vec<(PathBuf, u64)> {
    let mut freed = image::prune(cache_dir);
    freed.extend(cache::prune_old_builds(cache_dir, store_versions));
    freed
}

/// The modules runvm's guest needs by default: PCI transport, console
/// (agent channel), virtiofs (root filesystem), network, block and entropy.
pub const DEFAULT_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_console",
    "virtiofs",
    "virtio_net",
    "virtio_blk",
    "virtio_rng",
];

/// Modules a container with disks also needs, by file system (ext4 is
/// built into Debian's cloud kernel; listed for kernels where it is not).
pub fn disk_modules(xfs: bool) -> Vec<&'static str> {
    let mut m = DEFAULT_MODULES.to_vec();
    m.push("ext4");
    if xfs {
        m.push("xfs");
    }
    m
}

/// Everything that can go wrong finding a kernel or building an initramfs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No `*/boot/vmlinuz-*` under the kernels directory.
    #[error(
        "no guest kernel found in {}: run `make install` (it builds runvm's \
         kernel and unpacks Debian's linux-image-cloud-amd64 there)",
        dir.display()
    )]
    NoKernel {
        /// The directory that was searched.
        dir: PathBuf,
    },

    /// An explicitly given kernel file does not exist.
    #[error(
        "guest kernel {} does not exist",
        path.display()
    )]
    KernelNotFound {
        /// The kernel path that was given.
        path: PathBuf,
    },

    /// The store's default file names a kernel the store does not have.
    #[error(
        "the default guest kernel {name:?} (named in {}) is not in runvm's kernel store: \
         pick one of `runvm kernel list` with `runvm kernel default NAME`",
        file.display()
    )]
    DefaultNotInStore {
        /// The name the default file holds.
        name: String,
        /// The default file.
        file: PathBuf,
    },

    /// `RUNVM_KERNEL` names no kernel of the store.
    #[error(
        "RUNVM_KERNEL={name:?} is not a kernel in runvm's kernel store {}: give one of: {available}",
        dir.display()
    )]
    KernelNotInStore {
        name: String,
        dir: PathBuf,
        /// The versions the store has, comma-separated.
        available: String,
    },

    /// `modules.dep` names a module outside the kernel's module tree.
    #[error(
        "the kernel's modules.dep names {path:?}, which is not inside its module directory {}: \
         refusing the kernel; regenerate modules.dep with depmod",
        dir.display()
    )]
    ModuleOutsideTree { path: String, dir: PathBuf },

    /// The kernel has a modules directory but its `modules.dep` is unreadable.
    #[error(
        "cannot read the kernel module index {} (generate it with `{}`)",
        path.display(),
        depmod_hint(path)
    )]
    ModulesDep {
        /// Path of the `modules.dep` file.
        path: PathBuf,
        /// Why it could not be read.
        source: io::Error,
    },

    /// The module index cannot give the modules runvm needs.
    #[error(transparent)]
    Index(#[from] runvm_modindex::IndexError),

    /// The guest agent binary is missing.
    #[error("guest agent {} not found: run `make install`", path.display())]
    AgentMissing {
        /// Where the agent was expected.
        path: PathBuf,
    },

    /// Any other I/O failure.
    #[error("cannot {what} {}", path.display())]
    Io {
        /// What was being done, e.g. "read kernel module".
        what: String,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },

    /// A module file is compressed, which the guest agent cannot load yet.
    #[error(
        "kernel module {} is compressed, which runvm does not support yet: use a kernel with \
         uncompressed modules (Debian 12's linux-image-cloud-amd64), or decompress the modules \
         and run `depmod` again",
        .0.display()
    )]
    CompressedModule(PathBuf),
}

impl Error {
    pub(crate) fn io(what: &str, path: &Path, source: io::Error) -> Self {
        Error::Io {
            what: what.to_owned(),
            path: path.to_owned(),
            source,
        }
    }
}

/// `depmod -b ROOT VERSION` for a `<root>/lib/modules/<version>/modules.dep` path.
fn depmod_hint(modules_dep: &Path) -> String {
    let version_dir = modules_dep.parent();
    let version = version_dir
        .and_then(Path::file_name)
        .map(|v| v.to_string_lossy().into_owned());
    let root = version_dir.and_then(|d| d.parent()?.parent()?.parent());
    match (root, version) {
        (Some(root), Some(version)) => {
            let root = if root.as_os_str().is_empty() {
                Path::new(".")
            } else {
                root
            };
            format!("depmod -b {} {version}", root.display())
        }
        _ => "depmod -b ROOT VERSION".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_dep_error_names_depmod_command() {
        let err = Error::ModulesDep {
            path: PathBuf::from("/var/lib/runvm/kernel/x/lib/modules/6.1.0-9-cloud/modules.dep"),
            source: io::Error::from(io::ErrorKind::NotFound),
        };
        let msg = err.to_string();
        assert!(
            msg.contains("depmod -b /var/lib/runvm/kernel/x 6.1.0-9-cloud"),
            "{msg}"
        );
    }
}
