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

/// The files a cgroup's limits are written to, in order: the controllers
/// to enable in the root, then each limit file and its value.
pub fn plan(limits: &GuestLimits) -> (String, Vec<(&'static str, String)>) {
    let mut controllers = Vec::new();
    let mut files = Vec::new();
    if let Some(bytes) = limits.memory_bytes {
        controllers.push("+memory");
        files.push(("memory.max", bytes.to_string()));
        // The guest has no swap; a workload over its limit is killed by
        // the guest kernel's OOM killer, as runc's is without swap.
    }
    if let Some(pids) = limits.pids {
        controllers.push("+pids");
        files.push(("pids.max", pids.to_string()));
    }
    (controllers.join(" "), files)
}

/// Makes the workload's cgroup with `limits`; returns its directory, or
/// `None` when there is nothing to limit.
pub fn create(limits: &GuestLimits) -> Result<Option<PathBuf>> {
    if !limits.any() {
        return Ok(None);
    }
    let root = Path::new(ROOT);
    let (controllers, files) = plan(limits);
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
    Ok(Some(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_limits_given_are_set() {
        let both = GuestLimits {
            memory_bytes: Some(64 << 20),
            pids: Some(10),
        };
        assert_eq!(
            plan(&both),
            (
                "+memory +pids".to_string(),
                vec![
                    ("memory.max", "67108864".to_string()),
                    ("pids.max", "10".to_string())
                ]
            )
        );
        let pids = GuestLimits {
            memory_bytes: None,
            pids: Some(7),
        };
        assert_eq!(
            plan(&pids),
            ("+pids".to_string(), vec![("pids.max", "7".to_string())])
        );
    }
}
