//! Capability names and the system calls that apply capability sets.
//!
//! The calls are raw: nix has no wrapper for capset(2), PR_CAPBSET_DROP or
//! PR_CAP_AMBIENT, and the caps crate's functions allocate (hash sets, error
//! texts), which a forked child of the agent's threaded process must not
//! do between fork and exec. The capability *names* are the caps crate's.

use caps::Capability;
use runvm_protocol::Capabilities;

/// The highest capability number the running kernel knows.
pub fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| u32::from(Capability::CAP_CHECKPOINT_RESTORE.index()))
}

/// A set of capability names as a bit mask, numbered by the `caps` crate's
/// table (the one the supervisor uses too); unknown names are ignored, as
/// runc ignores capabilities its kernel does not know.
pub fn mask(names: &[String]) -> u64 {
    names
        .iter()
        .filter_map(|n| n.parse::<Capability>().ok())
        .fold(0, |m, c| m | c.bitmask())
}

/// Capability sets as masks, prepared before the fork.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Masks {
    pub bounding: u64,
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
    pub last_cap: u32,
}

impl Masks {
    pub fn new(c: &Capabilities) -> Self {
        Self {
            bounding: mask(&c.bounding),
            effective: mask(&c.effective),
            permitted: mask(&c.permitted),
            inheritable: mask(&c.inheritable),
            ambient: mask(&c.ambient),
            last_cap: last_cap(),
        }
    }
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

fn check(ret: libc::c_long) -> std::io::Result<()> {
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Drops every capability outside the bounding set. Must run before the
/// uid changes (it needs CAP_SETPCAP).
///
/// # Safety
/// Only system calls; safe to call between fork and exec.
pub unsafe fn drop_bounding(m: &Masks) -> std::io::Result<()> {
    for cap in 0..=m.last_cap {
        if m.bounding & (1u64 << cap) == 0 {
            // SAFETY: prctl with integer arguments only.
            let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
            check(rc as libc::c_long)?;
        }
    }
    Ok(())
}

/// Sets the effective, permitted and inheritable sets, then raises the
/// ambient ones. Runs after the uid change (with keep-caps set before it).
///
/// # Safety
/// Only system calls on stack data; safe to call between fork and exec.
pub unsafe fn apply_sets(m: &Masks) -> std::io::Result<()> {
    let header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: m.effective as u32,
            permitted: m.permitted as u32,
            inheritable: m.inheritable as u32,
        },
        CapData {
            effective: (m.effective >> 32) as u32,
            permitted: (m.permitted >> 32) as u32,
            inheritable: (m.inheritable >> 32) as u32,
        },
    ];
    // SAFETY: capset reads a header and two data structs from valid memory.
    check(unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) })?;
    for cap in 0..=m.last_cap {
        if m.ambient & (1u64 << cap) != 0 {
            // SAFETY: prctl with integer arguments only. A capability that is
            // not permitted and inheritable cannot be ambient; runc ignores
            // that error too.
            unsafe {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                    cap as libc::c_ulong,
                    0,
                    0,
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_kernel_numbers() {
        assert_eq!(mask(&["CAP_CHOWN".into()]), 1);
        assert_eq!(
            mask(&["CAP_KILL".into(), "CAP_SETGID".into()]),
            (1 << 5) | (1 << 6)
        );
        assert_eq!(mask(&["CAP_SYS_ADMIN".into()]), 1 << 21);
        assert_eq!(mask(&["CAP_CHECKPOINT_RESTORE".into()]), 1 << 40);
        assert_eq!(mask(&["CAP_NOT_A_THING".into()]), 0);
    }

    #[test]
    fn dockers_default_set_is_the_mask_docker_shows() {
        // `grep CapBnd /proc/self/status` in a default runc container.
        let docker: Vec<String> = [
            "CAP_CHOWN",
            "CAP_DAC_OVERRIDE",
            "CAP_FSETID",
            "CAP_FOWNER",
            "CAP_MKNOD",
            "CAP_NET_RAW",
            "CAP_SETGID",
            "CAP_SETUID",
            "CAP_SETFCAP",
            "CAP_SETPCAP",
            "CAP_NET_BIND_SERVICE",
            "CAP_SYS_CHROOT",
            "CAP_KILL",
            "CAP_AUDIT_WRITE",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(mask(&docker), 0xa80425fb);
    }
}
