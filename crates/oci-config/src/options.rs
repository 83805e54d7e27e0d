//! Per-container VM settings, read from `RUNVM_*` variables.
//!
//! Each setting is looked up first in the container's environment
//! (`docker run -e RUNVM_ACCEL=tcg`) and then in the runtime's own
//! environment (set for the whole Docker daemon). A malformed value is an
//! error that names the variable, the value and what is accepted.

use serde::{Deserialize, Serialize};

/// Which accelerator the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelRequest {
    Auto,
    Kvm,
    Tcg,
}

/// VM settings of one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmOptions {
    pub accel: AccelRequest,
    /// Explicit guest kernel: a name in runvm's kernel store.
    pub kernel: Option<String>,
    /// Guest RAM in MiB, when set explicitly.
    pub memory_mib: Option<u64>,
    /// Number of vCPUs, when set explicitly.
    pub cpus: Option<u32>,
    /// Print the guest console and helper logs to the container's stderr.
    pub debug: bool,
    /// Print the start's phase timings to the container's stderr at the
    /// end (`RUNVM_DEBUG=phases`, and with every `RUNVM_DEBUG=1`).
    pub phases: bool,
    /// Kernel parameters added to the guest's command line
    /// (`RUNVM_KERNEL_APPEND`), checked by [`kernel_append`].
    pub kernel_append: Vec<String>,
    /// The container's disks (`RUNVM_ROOTDISK` first, then `RUNVM_DISKS`),
    /// checked by [`crate::disks`].
    pub disks: Vec<runvm_contract::VmDisk>,
    /// `RUNVM_CGROUPFS`; `None`: chosen by the entrypoint.
    pub cgroupfs: Option<runvm_protocol::CgroupFs>,
}

/// A `RUNVM_*` variable with a value runvm cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}={value:?} is not valid: {expected}")]
pub struct OptionError {
    pub name: &'static str,
    pub value: String,
    pub expected: std::borrow::Cow<'static, str>,
}

impl VmOptions {
    /// Reads the options from the container's `KEY=VALUE` environment,
    /// falling back to `fallback` (the runtime's own environment).
    pub fn from_env(
        container_env: &[String],
        fallback: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, OptionError> {
        let get = |name: &str| -> Option<String> {
            let prefix = format!("{name}=");
            container_env
                .iter()
                .rev()
                .find_map(|kv| kv.strip_prefix(&prefix).map(str::to_owned))
                .or_else(|| fallback(name))
        };
        let accel = match get("RUNVM_ACCEL") {
            None => AccelRequest::Auto,
            Some(v) => match v.as_str() {
                "" | "auto" => AccelRequest::Auto,
                "kvm" => AccelRequest::Kvm,
                "tcg" => AccelRequest::Tcg,
                _ => {
                    return Err(OptionError {
                        name: "RUNVM_ACCEL",
                        value: v,
                        expected: "use RUNVM_ACCEL=kvm, RUNVM_ACCEL=tcg or RUNVM_ACCEL=auto".into(),
                    })
                }
            },
        };
        // A kernel is picked by name from runvm's kernel store, never by
        // path: the variable may come from the image's ENV.
        let kernel = get("RUNVM_KERNEL").filter(|v| !v.is_empty());
        if let Some(k) = &kernel {
            if !is_kernel_name(k) {
                return Err(OptionError {
                    name: "RUNVM_KERNEL",
                    value: k.clone(),
                    expected: "give the name of a kernel in runvm's kernel store (/var/lib/runvm/kernel; `runvm check` lists them), not a path".into(),
                });
            }
        }
        let memory_mib = match get("RUNVM_MEMORY").filter(|v| !v.is_empty()) {
            None => None,
            Some(v) => Some(parse_size_mib(&v).ok_or(OptionError {
                name: "RUNVM_MEMORY",
                value: v,
                expected: "give the guest RAM as a size such as 512m or 2g (at least 128m)".into(),
            })?),
        };
        let cpus = match get("RUNVM_CPUS").filter(|v| !v.is_empty()) {
            None => None,
            Some(v) => Some(
                v.parse::<u32>()
                    .ok()
                    .filter(|n| (1..=255).contains(n))
                    .ok_or(OptionError {
                        name: "RUNVM_CPUS",
                        value: v,
                        expected: "give a whole number of vCPUs from 1 to 255".into(),
                    })?,
            ),
        };
        let (debug, phases) = match get("RUNVM_DEBUG").as_deref() {
            None | Some("") | Some("0") | Some("false") => (false, false),
            Some("1") | Some("true") => (true, true),
            Some("phases") => (false, true),
            Some(v) => {
                return Err(OptionError {
                    name: "RUNVM_DEBUG",
                    value: v.to_owned(),
                    expected: "use RUNVM_DEBUG=1 (everything), RUNVM_DEBUG=phases (timings only) or RUNVM_DEBUG=0".into(),
                })
            }
        };
        let kernel_append = match get("RUNVM_KERNEL_APPEND") {
            None => Vec::new(),
            Some(v) => kernel_append(&v).map_err(|why| OptionError {
                name: "RUNVM_KERNEL_APPEND",
                value: v.clone(),
                expected: why.into(),
            })?,
        };
        let mut disks = Vec::new();
        if let Some(v) = get("RUNVM_ROOTDISK").filter(|v| !v.trim().is_empty()) {
            disks.push(crate::disks::parse_rootdisk(&v).map_err(|why| OptionError {
                name: "RUNVM_ROOTDISK",
                value: v.clone(),
                expected: why.into(),
            })?);
        }
        if let Some(v) = get("RUNVM_DISKS") {
            let more = crate::disks::parse_disks(&v).map_err(|why| OptionError {
                name: "RUNVM_DISKS",
                value: v.clone(),
                expected: why.into(),
            })?;
            if let Some(d) = disks.first() {
                if more.iter().any(|m| m.source == d.source) {
                    return Err(OptionError {
                        name: "RUNVM_DISKS",
                        value: v,
                        expected: format!(
                            "{} is RUNVM_ROOTDISK's file already; give each disk a file of its own",
                            d.source
                        )
                        .into(),
                    });
                }
            }
            disks.extend(more);
        }
        let cgroupfs = match get("RUNVM_CGROUPFS").as_deref().map(str::trim) {
            None | Some("") => None,
            Some(v) => Some(match v {
                "none" | "systemd" => runvm_protocol::CgroupFs::None,
                "1" | "cgroup1" => runvm_protocol::CgroupFs::V1,
                "2" | "cgroup2" => runvm_protocol::CgroupFs::V2,
                "hybrid" | "mixed" => runvm_protocol::CgroupFs::Hybrid,
                _ => {
                    return Err(OptionError {
                        name: "RUNVM_CGROUPFS",
                        value: v.to_owned(),
                        expected: "use none, 1, 2 or hybrid (unset: none for systemd, 2 otherwise)"
                            .into(),
                    })
                }
            }),
        };
        Ok(Self {
            accel,
            kernel,
            memory_mib,
            cpus,
            debug,
            phases,
            kernel_append,
            disks,
            cgroupfs,
        })
    }
}

/// Parameters runvm sets itself, or that would take the guest away from
/// its agent: never from `RUNVM_KERNEL_APPEND`.
const RESERVED_PARAMS: &[&str] = &["console", "init", "rdinit", "root", "panic", "initrd"];

/// Beginnings of parameter names that would let the value (an image's ENV
/// may give it) undo what the engine asked of the guest: the cgroups that
/// hold `-m` and `--pids-limit` (`cgroup.memory=nokmem`,
/// `cgroup_disable=memory`, …); boot-time sysctls, which `--sysctl` owns
/// and which the kernel takes as `sysctl.` or `sysctl/`
/// (`sysctl/kernel/modprobe=…` would name the image's program as the
/// kernel's module helper, run as the guest's full root); huge pages,
/// which the memory cgroup does not count.
const RESERVED_PREFIXES: &[&str] = &[
    "runvm.",
    "cgroup",
    "sysctl",
    "hugepage",
    "default_hugepagesz",
];

/// Checks `RUNVM_KERNEL_APPEND`: at most 32 parameters and 1024 bytes,
/// each `name` or `name=value` of letters, digits and `_.,:/+-=`, none of
/// runvm's own (see [`RESERVED_PARAMS`], `runvm.*`) and no `--` (which
/// would pass the rest to init). The value may come from the image: it
/// concerns the container's own guest only, but must not stop it booting
/// runvm's agent.
pub fn kernel_append(v: &str) -> Result<Vec<String>, &'static str> {
    const WHY: &str = "give kernel parameters such as \"mitigations=off quiet\" (at most 32, 1024 bytes; letters, digits and _.,:/+-=); console, init, rdinit, root, panic, initrd, runvm.* and -- are runvm's own, and cgroup*, sysctl* and hugepage* the engine's (-m, --pids-limit, --sysctl)";
    let params: Vec<String> = v.split_whitespace().map(str::to_owned).collect();
    let ok = v.len() <= 1024
        && params.len() <= 32
        && params.iter().all(|p| {
            let name = p.split('=').next().unwrap_or("");
            !name.is_empty()
                && p != "--"
                && !RESERVED_PARAMS.contains(&name)
                && !RESERVED_PREFIXES.iter().any(|r| name.starts_with(r))
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.,:/+-=".contains(&b))
        });
    if ok {
        Ok(params)
    } else {
        Err(WHY)
    }
}

/// A kernel name as `RUNVM_KERNEL` takes it: letters, digits and `._+-`,
/// not starting with a dot.
pub fn is_kernel_name(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
}

/// Parses `512m`, `2g`, `1024` (MiB), `1073741824b` into MiB.
pub fn parse_size_mib(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let (num, mult): (&str, u64) = if let Some(n) = s
        .strip_suffix("gib")
        .or(s.strip_suffix("gb"))
        .or(s.strip_suffix('g'))
    {
        (n, 1024)
    } else if let Some(n) = s
        .strip_suffix("mib")
        .or(s.strip_suffix("mb"))
        .or(s.strip_suffix('m'))
    {
        (n, 1)
    } else if let Some(n) = s.strip_suffix('b') {
        let bytes: u64 = n.parse().ok()?;
        return Some(bytes / (1024 * 1024)).filter(|m| *m >= 64);
    } else {
        (s.as_str(), 1)
    };
    let n: u64 = num.parse().ok()?;
    n.checked_mul(mult).filter(|m| *m >= 64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn defaults_when_nothing_is_set() {
        let o = VmOptions::from_env(&env(&["PATH=/bin"]), |_| None).unwrap();
        assert_eq!(o.accel, AccelRequest::Auto);
        assert_eq!(o.kernel, None);
        assert!(!o.debug);
        assert!(!o.phases);
    }

    #[test]
    fn debug_may_ask_for_the_phase_timings_alone() {
        let o = VmOptions::from_env(&env(&["RUNVM_DEBUG=phases"]), |_| None).unwrap();
        assert!(o.phases && !o.debug);
        let o = VmOptions::from_env(&env(&["RUNVM_DEBUG=1"]), |_| None).unwrap();
        assert!(o.phases && o.debug);
        let e = VmOptions::from_env(&env(&["RUNVM_DEBUG=phase"]), |_| None).unwrap_err();
        assert!(e.to_string().contains("RUNVM_DEBUG=phases"), "{e}");
    }

    #[test]
    fn container_env_wins_over_runtime_env() {
        let o = VmOptions::from_env(&env(&["RUNVM_ACCEL=tcg"]), |n| {
            (n == "RUNVM_ACCEL").then(|| "kvm".to_string())
        })
        .unwrap();
        assert_eq!(o.accel, AccelRequest::Tcg);
        let o =
            VmOptions::from_env(&[], |n| (n == "RUNVM_ACCEL").then(|| "kvm".to_string())).unwrap();
        assert_eq!(o.accel, AccelRequest::Kvm);
    }

    #[test]
    fn malformed_accel_names_variable_value_and_fix() {
        let e = VmOptions::from_env(&env(&["RUNVM_ACCEL=warp"]), |_| None).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("RUNVM_ACCEL=\"warp\""), "{msg}");
        assert!(msg.contains("RUNVM_ACCEL=tcg"), "{msg}");
        assert!(!msg.contains('\n'));
    }

    #[test]
    fn sizes_and_cpus() {
        assert_eq!(parse_size_mib("512m"), Some(512));
        assert_eq!(parse_size_mib("2G"), Some(2048));
        assert_eq!(parse_size_mib("1024"), Some(1024));
        assert_eq!(parse_size_mib("268435456b"), Some(256));
        assert_eq!(parse_size_mib("10m"), None);
        assert_eq!(parse_size_mib("lots"), None);
        let o = VmOptions::from_env(&env(&["RUNVM_MEMORY=1g", "RUNVM_CPUS=3"]), |_| None).unwrap();
        assert_eq!((o.memory_mib, o.cpus), (Some(1024), Some(3)));
        assert!(VmOptions::from_env(&env(&["RUNVM_CPUS=0"]), |_| None).is_err());
        for bad in ["/etc/shadow", "../kernel", "a/b", ".hidden", "x y"] {
            let e =
                VmOptions::from_env(&env(&[&format!("RUNVM_KERNEL={bad}")]), |_| None).unwrap_err();
            assert!(e.to_string().contains("kernel store"), "{e}");
        }
        let o =
            VmOptions::from_env(&env(&["RUNVM_KERNEL=6.1.0-56-cloud-amd64"]), |_| None).unwrap();
        assert_eq!(o.kernel.as_deref(), Some("6.1.0-56-cloud-amd64"));
        assert!(VmOptions::from_env(&env(&["RUNVM_DEBUG=yes"]), |_| None).is_err());
        for (v, want) in [
            ("none", runvm_protocol::CgroupFs::None),
            ("1", runvm_protocol::CgroupFs::V1),
            ("cgroup2", runvm_protocol::CgroupFs::V2),
            ("hybrid", runvm_protocol::CgroupFs::Hybrid),
        ] {
            let o = VmOptions::from_env(&env(&[&format!("RUNVM_CGROUPFS={v}")]), |_| None).unwrap();
            assert_eq!(o.cgroupfs, Some(want), "{v}");
        }
        let e = VmOptions::from_env(&env(&["RUNVM_CGROUPFS=3"]), |_| None).unwrap_err();
        assert!(e.to_string().contains("none, 1, 2 or hybrid"), "{e}");
    }

    #[test]
    fn kernel_parameters_are_checked() {
        assert_eq!(
            kernel_append(" mitigations=off  foo.bar=1,2 nokaslr ").unwrap(),
            ["mitigations=off", "foo.bar=1,2", "nokaslr"]
        );
        assert!(kernel_append("").unwrap().is_empty());
        for bad in [
            "init=/bin/sh",
            "rdinit=/x",
            "console=tty0",
            "panic=0",
            "runvm.debug",
            "cgroup.memory=nokmem",
            "cgroup_disable=memory",
            "cgroup_no_v1=all",
            "sysctl.kernel.pid_max=100",
            "quiet sysctl.vm.overcommit_memory=1",
            "sysctl/kernel/modprobe=/proc/1/root/x",
            "hugepages=100",
            "hugepagesz=2M",
            "default_hugepagesz=1G",
            "-- x",
            "a=\"b c\"",
            "a;b",
            "=x",
        ] {
            assert!(kernel_append(bad).is_err(), "{bad}");
        }
        assert!(kernel_append(&"a ".repeat(33)).is_err());
        assert!(kernel_append(&"x".repeat(1025)).is_err());
    }
}
