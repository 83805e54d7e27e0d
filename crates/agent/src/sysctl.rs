//! The container's sysctls (`--sysctl`, `--domainname`, the engine's
//! defaults), written in the guest as runc writes them in a container's
//! namespaces: the workload sees the values it asked for.

use std::path::PathBuf;

use crate::error::{AgentError, Result};

/// Where `key` lives under `/proc/sys`, as runc maps it: dots separate the
/// components (`net.ipv4.ip_forward`), unless the key has slashes, which
/// then do (`net/ipv4/conf/eth0.100/forwarding`, where a dot is part of a
/// name). `None` for a key that could leave `/proc/sys`.
pub fn proc_path(key: &str) -> Option<PathBuf> {
    let sep = if key.contains('/') { '/' } else { '.' };
    let mut path = PathBuf::from("/proc/sys");
    for part in key.split(sep) {
        if part.is_empty() || part == "." || part == ".." || part.contains('\0') {
            return None;
        }
        path.push(part);
    }
    Some(path)
}

/// The modules whose sysctls live under each directory of `/proc/sys`,
/// which a kernel without them loaded does not have (the guest loads
/// modules on demand; a host usually has these loaded by its own
/// firewall and bridges).
const MODULE_SYSCTLS: &[(&str, &str)] = &[
    ("/proc/sys/net/netfilter", "nf_conntrack"),
    ("/proc/sys/net/bridge", "br_netfilter"),
    ("/proc/sys/net/ipv4/vs", "ip_vs"),
];

/// The modules that `list`'s keys need, each once, in the order first
/// needed.
pub fn modules_for(list: &[(String, String)]) -> Vec<&'static str> {
    let mut out = Vec::new();
    for (key, _) in list {
        let Some(path) = proc_path(key) else { continue };
        for (dir, module) in MODULE_SYSCTLS {
            if path.starts_with(dir) && !out.contains(module) {
                out.push(*module);
            }
        }
    }
    out
}

/// Writes each sysctl in order; the first that cannot be written is an
/// error naming it, as runc fails the container's start.
pub fn apply(list: &[(String, String)]) -> Result<()> {
    for (key, value) in list {
        let path = proc_path(key).ok_or_else(|| {
            AgentError::sys(
                format!("write sysctl key {key}"),
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a sysctl name"),
            )
        })?;
        std::fs::write(&path, value.as_bytes()).map_err(|e| {
            AgentError::sys(
                format!(
                    "write sysctl key {key} (in the guest kernel, {})",
                    path.display()
                ),
                e,
            )
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_are_those_of_the_keys_directories() {
        let keys = |ks: &[&str]| -> Vec<(String, String)> {
            ks.iter().map(|k| (k.to_string(), "1".into())).collect()
        };
        assert_eq!(
            modules_for(&keys(&[
                "net.ipv4.ip_forward",
                "net.netfilter.nf_conntrack_max",
                "net/bridge/bridge-nf-call-iptables",
                "net.netfilter.nf_conntrack_tcp_timeout_established",
                "net.ipv4.vs.conntrack",
            ])),
            ["nf_conntrack", "br_netfilter", "ip_vs"]
        );
        assert!(modules_for(&keys(&[
            "net.netfilterx.y",
            "kernel.shmmax",
            "net..netfilter"
        ]))
        .is_empty());
    }

    #[test]
    fn keys_map_to_proc_sys_paths() {
        assert_eq!(
            proc_path("net.ipv4.ip_forward"),
            Some(PathBuf::from("/proc/sys/net/ipv4/ip_forward"))
        );
        assert_eq!(
            proc_path("net/ipv4/conf/eth0.100/forwarding"),
            Some(PathBuf::from("/proc/sys/net/ipv4/conf/eth0.100/forwarding"))
        );
        assert_eq!(
            proc_path("kernel.domainname"),
            Some(PathBuf::from("/proc/sys/kernel/domainname"))
        );
    }

    #[test]
    fn keys_that_would_leave_proc_sys_are_refused() {
        for bad in [
            "",
            "net..x",
            "../../etc/passwd",
            "net/../../etc",
            "/etc/passwd",
            "a.\0.b",
            "net.",
        ] {
            assert_eq!(proc_path(bad), None, "{bad:?}");
        }
    }
}
