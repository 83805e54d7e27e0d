//! The workload's cgroup in the guest: where `--memory` and `--pids-limit`
//! hold, as runc sets them on a container's cgroup. The host's cgroup holds
//! the whole VM with room above them for QEMU and virtiofsd, so without
//! this the workload could use the VM's all.
//!
//! The container's init and every exec join it before they execute, and
//! see it as their cgroup namespace's root (`/proc/self/cgroup` is `0::/`,
//! `/sys/fs/cgroup/memory.max` is the limit), as runc's private cgroup
//! namespace shows a container on a cgroup v2 host.

use std::path::{Path, PathBuf};

use runvm_protocol::GuestLimits;

use crate::error::{AgentError, Result};

/// Where the guest's cgroup v2 hierarchy is mounted in the agent's root.
const ROOT: &str = "/sys/fs/cgroup";
/// The workload's cgroup, under [`ROOT`].
const NAME: &str = "container";

/// Limit files of a cgroup and their values.
pub type LimitFiles = Vec<(&'static str, String)>;

/// The files a cgroup's limits are written to, in order: the controllers
/// to enable in the root (every one the kernel has, `available`, as a
/// workload in the root had them all: dockerd in the VM may limit its own
/// containers' CPUs), then each limit file and its value. An error names a
/// controller the limits need that the kernel lacks.
pub fn plan(
    limits: &GuestLimits,
    available: &str,
) -> std::result::Result<(String, LimitFiles), &'static str> {
    let has = |c: &str| available.split_whitespace().any(|a| a == c);
    let mut files = Vec::new();
    if let Some(bytes) = limits.memory_bytes {
        if !has("memory") {
            return Err("memory");
        }
        files.push(("memory.max", bytes.to_string()));
        // The guest has no swap; a workload over its limit is killed by
        // the guest kernel's OOM killer, as runc's is without swap.
    }
    if let Some(pids) = limits.pids {
        if !has("pids") {
            return Err("pids");
        }
        files.push(("pids.max", pids.to_string()));
    }
    let controllers: Vec<String> = available
        .split_whitespace()
        .map(|c| format!("+{c}"))
        .collect();
    Ok((controllers.join(" "), files))
}

/// The workload's cgroup, held open: the init and every exec join it
/// through this descriptor (`openat`), never by a path a workload could
/// redirect.
#[derive(Debug)]
pub struct WorkloadCgroup {
    pub fd: std::os::fd::OwnedFd,
}

/// Makes the workload's cgroup with `limits`; `None` when there is nothing
/// to limit. `mounted`: whether the agent mounted the cgroup v2 hierarchy
/// at [`ROOT`] for the workload; when not (systemd mounts its own), it is
/// mounted here, and the init's remount in its own cgroup namespace shows
/// systemd the workload's cgroup as its root.
pub fn create(limits: &GuestLimits, mounted: bool) -> Result<Option<WorkloadCgroup>> {
    if !limits.any() {
        return Ok(None);
    }
    if !mounted {
        use nix::mount::MsFlags;
        crate::mounts::mount_fs(
            "cgroup2",
            ROOT,
            "cgroup2",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV,
            Some("nsdelegate"),
        )?;
    }
    let root = Path::new(ROOT);
    let available = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    let (controllers, files) = plan(limits, &available).map_err(|c| {
        AgentError::sys(
            format!("set the container's limits: the guest kernel has no {c} controller"),
            std::io::Error::from_raw_os_error(libc::ENOTSUP),
        )
    })?;
    let write = |path: PathBuf, value: &str| {
        std::fs::write(&path, value).map_err(|e| {
            AgentError::sys(
                format!(
                    "set the container's limits: write {value:?} to {}",
                    path.display()
                ),
                e,
            )
        })
    };
    write(root.join("cgroup.subtree_control"), &controllers)?;
    let dir = root.join(NAME);
    std::fs::create_dir(&dir)
        .or_else(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Ok(()),
            _ => Err(e),
        })
        .map_err(|e| {
            AgentError::sys(
                format!("create the container's cgroup {}", dir.display()),
                e,
            )
        })?;
    for (file, value) in files {
        write(dir.join(file), &value)?;
    }
    let fd = std::fs::File::open(&dir).map_err(|e| {
        AgentError::sys(format!("open the container's cgroup {}", dir.display()), e)
    })?;
    Ok(Some(WorkloadCgroup { fd: fd.into() }))
}

/// The v2 cgroup of one of the agent's children (`/proc/<pid>/cgroup`),
/// held open; `None` if it cannot be read.
pub fn of_process(pid: i32) -> Option<std::os::fd::OwnedFd> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    let rel = path.trim_start_matches('/');
    if rel.split('/').any(|c| c == "..") {
        return None;
    }
    std::fs::File::open(Path::new(ROOT).join(rel))
        .ok()
        .map(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: &str = "cpuset cpu io memory hugetlb pids rdma misc\n";

    #[test]
    fn only_the_limits_given_are_set_and_every_controller_is_enabled() {
        let both = GuestLimits {
            memory_bytes: Some(64 << 20),
            pids: Some(10),
        };
        assert_eq!(
            plan(&both, ALL),
            Ok((
                "+cpuset +cpu +io +memory +hugetlb +pids +rdma +misc".to_string(),
                vec![
                    ("memory.max", "67108864".to_string()),
                    ("pids.max", "10".to_string())
                ]
            ))
        );
        let pids = GuestLimits {
            memory_bytes: None,
            pids: Some(7),
        };
        assert_eq!(
            plan(&pids, ALL).unwrap().1,
            vec![("pids.max", "7".to_string())]
        );
    }

    #[test]
    fn a_controller_the_kernel_lacks_is_named() {
        let mem = GuestLimits {
            memory_bytes: Some(1 << 20),
            pids: None,
        };
        assert_eq!(plan(&mem, "cpu pids"), Err("memory"));
    }
}
