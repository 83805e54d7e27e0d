//! Confining the host-side helpers.
//!
//! QEMU runs the guest and parses whatever the guest's devices do: it is the
//! most exposed host-side process, so it runs under an unprivileged uid of
//! its own, with no supplementary groups, no capabilities and no way to gain
//! any (no-new-privileges), on top of runvm's seccomp profile and its own
//! `-sandbox` filter. It inherits exactly the descriptors it is handed (the
//! taps); everything else the supervisor holds is close-on-exec.
//!
//! virtiofsd serves files as any owner on the guest's behalf, so it keeps
//! the capabilities that needs (its own default set, which it applies to
//! itself at start, plus CAP_SETPCAP to do so) and its bounding set is cut
//! to those before it starts: it can never hold NET_ADMIN, KILL or anything
//! else the supervisor has.
//!
//! Everything here runs in the forked child between fork and exec, so it
//! only makes async-signal-safe system calls on data prepared before.

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};
use std::io;
use std::os::fd::RawFd;

use tokio::process::Command;

/// The capabilities virtiofsd keeps (by number): its default set (CHOWN,
/// DAC_OVERRIDE, FOWNER, FSETID, SETGID, SETUID, MKNOD, SETFCAP) and
/// SETPCAP, which it needs to trim its own sets at start (measured: without
/// it virtiofsd 1.14 stops with "can't apply the child capabilities").
pub const VIRTIOFSD_CAPS: &[u32] = &[
    0,  // CAP_CHOWN
    1,  // CAP_DAC_OVERRIDE
    3,  // CAP_FOWNER
    4,  // CAP_FSETID
    6,  // CAP_SETGID
    7,  // CAP_SETUID
    8,  // CAP_SETPCAP
    27, // CAP_MKNOD
    31, // CAP_SETFCAP
];

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The highest capability number this kernel knows.
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63)
}

/// Drops every capability up to `last` but `keep` from the bounding set.
/// Async-signal-safe (prctl only): for use between fork and exec. nix has
/// no wrapper for PR_CAPBSET_DROP or PR_CAP_AMBIENT, and the caps crate's
/// allocate on failure, which a forked child of a threaded process must
/// not: hence raw prctl here.
fn drop_bounding_except(keep: &[u32], last: u32) -> io::Result<()> {
    for cap in (0..=last).filter(|c| !keep.contains(c)) {
        // SAFETY: prctl with plain integer arguments.
        check(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) })?;
    }
    Ok(())
}

/// Clears the ambient set and sets no-new-privileges. Async-signal-safe.
fn no_ambient_no_new_privileges() -> io::Result<()> {
    // SAFETY: prctl with plain integer arguments.
    check(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    })?;
    Ok(nix::sys::prctl::set_no_new_privs()?)
}

/// Clears close-on-exec on `fds`, in the child that inherits them.
fn inherit(fds: &[RawFd]) -> io::Result<()> {
    for fd in fds {
        fcntl(*fd, FcntlArg::F_SETFD(FdFlag::empty()))?;
    }
    Ok(())
}

/// Makes `cmd` start as `uid`:`gid` with no supplementary groups, no
/// capabilities and no-new-privileges, inheriting `keep_fds` (which are
/// close-on-exec in the supervisor).
pub fn run_unprivileged(cmd: &mut Command, uid: u32, gid: u32, keep_fds: Vec<RawFd>) {
    let last = last_cap();
    let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
    // SAFETY: the closure only makes async-signal-safe system calls
    // (fcntl, setgroups with an empty list, setresgid, setresuid, prctl)
    // on plain integers captured before the fork; nothing allocates.
    unsafe {
        cmd.pre_exec(move || {
            inherit(&keep_fds)?;
            // An empty bounding set too, while CAP_SETPCAP is still held.
            drop_bounding_except(&[], last)?;
            setgroups(&[])?;
            setresgid(gid, gid, gid)?;
            // From uid 0 to a non-zero uid without PR_SET_KEEPCAPS the
            // permitted and effective sets are cleared; ambient ones too.
            setresuid(uid, uid, uid)?;
            no_ambient_no_new_privileges()
        });
    }
}

/// Cuts the bounding set of `cmd`'s process to `keep` and sets
/// no-new-privileges, so that it starts with at most those capabilities;
/// it inherits `keep_fds` (which are close-on-exec in the supervisor).
pub fn bound_capabilities(cmd: &mut Command, keep: &'static [u32], keep_fds: Vec<RawFd>) {
    let last = last_cap();
    // SAFETY: the closure only calls fcntl and prctl on plain integers
    // captured before the fork.
    unsafe {
        cmd.pre_exec(move || {
            inherit(&keep_fds)?;
            drop_bounding_except(keep, last)?;
            no_ambient_no_new_privileges()
        });
    }
}

/// What the supervisor keeps once the VM runs: CAP_KILL, to stop QEMU (which
/// runs under another uid) if it does not stop by itself, and
/// CAP_NET_ADMIN, to wire the taps of networks connected while the
/// container runs (`docker network connect`). The latter acts on the
/// container's own network namespace only: the supervisor cannot enter
/// another (runvm's seccomp profile refuses setns and unshare), and a
/// Docker container's namespace holds nothing but the container's links.
pub const SUPERVISOR_KEEPS: &[caps::Capability] =
    &[caps::Capability::CAP_KILL, caps::Capability::CAP_NET_ADMIN];

/// Why the supervisor could not drop its capabilities.
#[derive(Debug, thiserror::Error)]
pub enum DropError {
    #[error("the supervisor has {0} threads; its capabilities can only be dropped while it has one (capabilities are per thread)")]
    Threads(usize),
    #[error("cannot drop the supervisor's capabilities")]
    Caps(#[from] caps::errors::CapsError),
}

/// Drops every capability of the calling process except `keep`, from every
/// set, bounding set included. Capabilities belong to threads, so this is
/// only done while the process has a single thread (checked): threads
/// started afterwards inherit the reduced sets.
pub fn drop_own_capabilities(keep: &[caps::Capability]) -> Result<(), DropError> {
    let threads = std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0);
    if threads != 1 {
        return Err(DropError::Threads(threads));
    }
    let keep: caps::CapsHashSet = keep.iter().copied().collect();
    for cap in caps::all() {
        if !keep.contains(&cap) && caps::has_cap(None, caps::CapSet::Bounding, cap)? {
            caps::drop(None, caps::CapSet::Bounding, cap)?;
        }
    }
    caps::clear(None, caps::CapSet::Ambient)?;
    caps::clear(None, caps::CapSet::Inheritable)?;
    let held = caps::read(None, caps::CapSet::Permitted)?;
    let keep: caps::CapsHashSet = keep.intersection(&held).copied().collect();
    caps::set(None, caps::CapSet::Effective, &keep)?;
    caps::set(None, caps::CapSet::Permitted, &keep)?;
    Ok(())
}

/// Gives `path` (a socket or file QEMU must open) to QEMU's uid and gid,
/// readable and writable by it only.
pub fn give_to(path: &str, uid: u32, gid: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtiofsd_keeps_its_file_capabilities_and_nothing_for_the_network() {
        for cap in [0, 1, 3, 4, 6, 7, 27, 31, 8] {
            assert!(VIRTIOFSD_CAPS.contains(&cap), "{cap}");
        }
        // NET_ADMIN 12, KILL 5, SYS_ADMIN 21, DAC_READ_SEARCH 2, NET_RAW 13.
        for cap in [12, 5, 21, 2, 13] {
            assert!(!VIRTIOFSD_CAPS.contains(&cap), "{cap}");
        }
    }

    #[test]
    fn the_kernel_reports_a_last_capability() {
        assert!(last_cap() >= 36);
    }
}
