//! The container's disks on the supervisor's side: their backing files,
//! bound at `/runvm/disks/<n>` once found or made (see
//! `runvm_mounts::disks`), are opened, locked for as long as the
//! container runs, and handed to QEMU by descriptor.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, RawFd};

use nix::fcntl::{Flock, FlockArg};
use runvm_contract::{VmConfig, VmDisk};

use crate::error::{Result, SupervisorError};
use runvm_mounts::disks::DiskError;

/// A disk's backing file, open and locked.
pub struct OpenDisk {
    file: Flock<File>,
    /// The same file read-only: QEMU takes from its fd set the descriptor
    /// whose access mode it asks for, and asks for both.
    readonly: File,
}

impl OpenDisk {
    /// The descriptors QEMU gets for this disk (one fd set).
    pub fn fds(&self) -> [RawFd; 2] {
        [self.file.as_raw_fd(), self.readonly.as_raw_fd()]
    }
}

/// Opens and locks every disk of `cfg`. The exclusive lock is what makes a
/// second container refuse the same file while this one runs (QEMU's own
/// locks are a second line).
pub fn open_all(cfg: &VmConfig) -> Result<Vec<OpenDisk>> {
    cfg.disks
        .iter()
        .enumerate()
        .map(|(n, d)| {
            let slot = VmDisk::slot(n);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&slot)
                .map_err(|e| SupervisorError::io(format!("open disk file {}", d.source), e))?;
            let file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(f) => f,
                Err((_, nix::Error::EWOULDBLOCK)) => {
                    return Err(runvm_mounts::MountError::from(DiskError::InUse {
                        source_path: d.source.clone(),
                    })
                    .into())
                }
                Err((_, e)) => {
                    return Err(SupervisorError::io(
                        format!("lock disk file {}", d.source),
                        e,
                    ))
                }
            };
            let readonly = File::open(&slot)
                .map_err(|e| SupervisorError::io(format!("open disk file {}", d.source), e))?;
            Ok(OpenDisk { file, readonly })
        })
        .collect()
}
