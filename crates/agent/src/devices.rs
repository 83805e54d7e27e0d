//! The container's `--device` nodes, made in the guest as runc makes them
//! in a container's `/dev`. The host side passes only devices the guest
//! kernel has under the same numbers (null, tun, fuse, …); a host's
//! hardware is refused there with a message.

use std::path::Path;

use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::unistd::{Gid, Uid};
use runvm_protocol::GuestDevice;

use crate::error::{AgentError, Result};

/// Makes each node with the mode and owner asked for. What is already at
/// its path stays, as runc keeps it, except a device node or a link in
/// the guest's own `/dev` (its devtmpfs has `/dev/fuse` with a mode of
/// its own, where runc's `/dev` has nothing), which is replaced.
pub fn create(devices: &[GuestDevice]) -> Result<()> {
    for d in devices {
        let path = Path::new(&d.path);
        let err = |what: &str, e: std::io::Error| {
            AgentError::sys(format!("make device {} ({what})", d.path), e)
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| err("its directory", e))?;
        }
        if let Ok(m) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            let t = m.file_type();
            let device_or_link = t.is_char_device() || t.is_block_device() || t.is_symlink();
            if !(device_or_link && path.starts_with("/dev/")) {
                continue;
            }
            std::fs::remove_file(path).map_err(|e| err("replace what is there", e))?;
        }
        let kind = if d.block {
            SFlag::S_IFBLK
        } else {
            SFlag::S_IFCHR
        };
        let mode = Mode::from_bits_truncate(d.mode as libc::mode_t);
        let dev = makedev(u64::from(d.major), u64::from(d.minor));
        mknod(path, kind, mode, dev).map_err(|e| err("mknod", e.into()))?;
        // mknod's mode went through the umask. The node was just made and
        // nothing else runs yet; chown does not follow a link anyway.
        nix::sys::stat::fchmodat(
            None,
            path,
            mode,
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .map_err(|e| err("chmod", e.into()))?;
        nix::unistd::fchownat(
            None,
            path,
            Some(Uid::from_raw(d.uid)),
            Some(Gid::from_raw(d.gid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| err("chown", e.into()))?;
    }
    Ok(())
}
