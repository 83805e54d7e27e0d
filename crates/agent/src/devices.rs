//! The container's `--device` nodes, made in the guest as runc makes them
//! in a container's `/dev`. The host side passes only devices the guest
//! kernel has under the same numbers (null, tun, fuse, …); a host's
//! hardware is refused there with a message.

use std::path::Path;

use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::unistd::{chown, Gid, Uid};
use runvm_protocol::GuestDevice;

use crate::error::{AgentError, Result};

/// Makes each node, replacing a file (not a directory) already at its path
/// (the guest's devtmpfs has its own `/dev/fuse`, say), with the mode and
/// owner asked for.
pub fn create(devices: &[GuestDevice]) -> Result<()> {
    for d in devices {
        let path = Path::new(&d.path);
        let err = |what: &str, e: std::io::Error| {
            AgentError::sys(format!("make device {} ({what})", d.path), e)
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| err("its directory", e))?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => {
                return Err(err(
                    "a directory is there",
                    std::io::Error::from_raw_os_error(libc::EISDIR),
                ))
            }
            Ok(_) => std::fs::remove_file(path).map_err(|e| err("replace what is there", e))?,
            Err(_) => {}
        }
        let kind = if d.block {
            SFlag::S_IFBLK
        } else {
            SFlag::S_IFCHR
        };
        let mode = Mode::from_bits_truncate(d.mode as libc::mode_t);
        let dev = makedev(u64::from(d.major), u64::from(d.minor));
        mknod(path, kind, mode, dev).map_err(|e| err("mknod", e.into()))?;
        // mknod's mode went through the umask.
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(d.mode))
            .map_err(|e| err("chmod", e))?;
        chown(path, Some(Uid::from_raw(d.uid)), Some(Gid::from_raw(d.gid)))
            .map_err(|e| err("chown", e.into()))?;
    }
    Ok(())
}
