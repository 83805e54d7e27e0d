//! The config.json rewrite.
//!
//! Docker's container becomes the supervisor's container:
//!
//! * `root.path` becomes a small runvm-owned directory that holds the host's
//!   `/usr` (read-only, for QEMU, virtiofsd and their libraries), runvm's
//!   binaries, the kernel and initramfs, and the image's root filesystem
//!   mounted at [`paths::ROOTFS`]. The guest sees only that last one, through
//!   virtiofs, so none of runvm's files are visible to the workload.
//! * Docker's bind mounts (volumes, `/etc/hosts`, `/etc/resolv.conf`, …) move
//!   under [`paths::ROOTFS`] so virtiofs serves them to the guest at their
//!   usual place. tmpfs mounts are made by the guest itself. The kernel
//!   filesystems (`/proc`, `/sys`, `/dev`…) stay where they are, for the
//!   supervisor.
//! * The process becomes the supervisor, running as root with the
//!   capabilities it needs; the original process travels in [`VmConfig`].
//! * `/dev/kvm` and `/dev/net/tun` are made available and the memory limit
//!   grows by the VM's overhead, so QEMU is not OOM-killed when the guest
//!   uses all the RAM the user gave the container.

use serde_json::{json, Map, Value};

use crate::options::{Accel, VmOptions};
use crate::paths;
use crate::vmconfig::VmConfig;
use runvm_protocol::{Capabilities, ContainerSpec, GuestMount, ProcessSpec, Rlimit};

/// Host memory that QEMU, virtiofsd and the supervisor need on top of the
/// guest RAM (QEMU's TCG translation cache alone is 64 MiB).
pub const VM_OVERHEAD_MIB: u64 = 256;
/// Guest RAM when the container has no memory limit.
pub const DEFAULT_MEMORY_MIB: u64 = 512;
/// Smallest guest RAM that boots the distribution kernel.
pub const MIN_MEMORY_MIB: u64 = 128;

/// Capabilities the supervisor needs for itself and its helpers: tap and tc
/// setup (NET_ADMIN), virtiofsd serving files as any owner (SYS_ADMIN for its
/// setup, SETUID/SETGID/FSETID/CHOWN/FOWNER/DAC_*/MKNOD for file operations
/// on the guest's behalf). CAP_SYS_RESOURCE is not asked for: some hosts
/// (this project's CI among them) lack it in the bounding set.
pub const SUPERVISOR_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_MKNOD",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_SYS_ADMIN",
];

/// A host device the supervisor needs inside the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostDevice {
    pub path: String,
    pub major: i64,
    pub minor: i64,
}

/// A top-level entry of the host's root that the supervisor's root mirrors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostEntry {
    /// A directory bind-mounted read-only (e.g. `/usr`).
    Bind(String),
    /// A symlink reproduced as is (e.g. `/lib -> usr/lib` on merged-/usr hosts).
    Symlink { path: String, target: String },
}

/// Facts about the host and runvm's installation that the rewrite needs.
#[derive(Debug, Clone)]
pub struct HostLayout {
    /// Directory on the host that becomes the container's root.
    pub new_root: String,
    pub host_entries: Vec<HostEntry>,
    pub supervisor: String,
    pub virtiofsd: String,
    pub kernel: String,
    pub initrd: String,
    /// QEMU's path; must be inside one of the bound host directories.
    pub qemu: String,
    pub devices: Vec<HostDevice>,
    pub host_cpus: u32,
    pub accel: Accel,
    pub accel_warning: Option<String>,
}

/// The result of a rewrite.
#[derive(Debug, Clone)]
pub struct Rewritten {
    pub config: Value,
    pub vm: VmConfig,
}

/// Why a config.json cannot be turned into a VM.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    #[error("config.json has no \"{0}\" object; it is not an OCI runtime config")]
    Missing(&'static str),
    #[error("config.json field \"{field}\" is malformed: {why}")]
    Malformed { field: &'static str, why: String },
    #[error("config.json was already rewritten by runvm; recreate the container")]
    AlreadyRewritten,
    #[error("the container's memory limit ({mib} MiB) is too small for a VM: give --memory {MIN_MEMORY_MIB}m or more")]
    MemoryTooSmall { mib: u64 },
    #[error("{0}")]
    Option(#[from] crate::options::OptionError),
}

fn obj<'a>(
    v: &'a mut Value,
    field: &'static str,
) -> Result<&'a mut Map<String, Value>, RewriteError> {
    v.as_object_mut().ok_or(RewriteError::Malformed {
        field,
        why: "not an object".into(),
    })
}

/// Rewrites `config` (a parsed config.json) for runvm.
pub fn rewrite_config(
    mut config: Value,
    opts: &VmOptions,
    host: &HostLayout,
) -> Result<Rewritten, RewriteError> {
    let top = obj(&mut config, "(top level)")?;
    if top
        .get("annotations")
        .and_then(|a| a.get(paths::ANNOTATION))
        .is_some()
    {
        return Err(RewriteError::AlreadyRewritten);
    }

    // --- the original process, for the guest
    let process = top.get("process").ok_or(RewriteError::Missing("process"))?;
    let guest_process = guest_process(process)?;

    // --- root
    let root = top.get_mut("root").ok_or(RewriteError::Missing("root"))?;
    let root = obj(root, "root")?;
    let orig_root = root
        .get("path")
        .and_then(Value::as_str)
        .ok_or(RewriteError::Malformed {
            field: "root.path",
            why: "missing or not a string".into(),
        })?
        .to_owned();
    let readonly_root = root
        .get("readonly")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    root.insert("path".into(), json!(host.new_root));
    root.insert("readonly".into(), json!(true));

    // --- mounts
    // Taken out in place (not removed) so the key keeps its position.
    let orig_mounts = match top.get_mut("mounts").map(Value::take) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(m)) => m,
        Some(_) => {
            return Err(RewriteError::Malformed {
                field: "mounts",
                why: "not an array".into(),
            })
        }
    };
    let (mounts, guest_mounts) = rewrite_mounts(orig_mounts, &orig_root, readonly_root, host)?;
    top.insert("mounts".into(), Value::Array(mounts));

    // --- process becomes the supervisor
    let process = top
        .get_mut("process")
        .ok_or(RewriteError::Missing("process"))?;
    rewrite_process(obj(process, "process")?);

    // --- linux: devices, resources
    let linux = top.entry("linux").or_insert_with(|| json!({}));
    let linux = obj(linux, "linux")?;
    // Only a network namespace made for this container (no "path") is taken
    // over. With --network host Docker names the host's namespace by path,
    // and with --network container:X another container's: their interfaces
    // must never be touched.
    let own_network = linux
        .get("namespaces")
        .and_then(Value::as_array)
        .is_some_and(|ns| {
            ns.iter().any(|n| {
                n.get("type").and_then(Value::as_str) == Some("network")
                    && n.get("path")
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
            })
        });
    add_devices(linux, &host.devices)?;
    let limit_mib = grow_memory_limit(linux)?;
    // Without a limit the VM gets every host CPU, as a runc container sees
    // them all. (Under TCG on an idle 2-core host this also boots faster:
    // 5.3 s against 5.8 s with one vCPU, medians of 3.)
    let cpus = opts
        .cpus
        .or_else(|| cpu_limit(linux))
        .unwrap_or(host.host_cpus)
        .max(1);

    // --- annotations
    let ann = top.entry("annotations").or_insert_with(|| json!({}));
    obj(ann, "annotations")?.insert(paths::ANNOTATION.into(), json!("1"));

    let hostname = top
        .get("hostname")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let memory_mib = opts.memory_mib.or(limit_mib).unwrap_or(DEFAULT_MEMORY_MIB);
    if memory_mib < MIN_MEMORY_MIB {
        return Err(RewriteError::MemoryTooSmall { mib: memory_mib });
    }

    let vm = VmConfig {
        accel: host.accel,
        accel_warning: host.accel_warning.clone(),
        vcpus: cpus,
        memory_mib,
        qemu: host.qemu.clone(),
        virtiofsd: paths::VIRTIOFSD.into(),
        kernel: paths::KERNEL.into(),
        initrd: paths::INITRD.into(),
        rootfs: paths::ROOTFS.into(),
        debug: opts.debug,
        own_network,
        container: ContainerSpec {
            hostname,
            process: guest_process,
            interfaces: Vec::new(),
            routes: Vec::new(),
            mounts: guest_mounts,
            readonly_root,
        },
    };
    Ok(Rewritten { config, vm })
}

/// Extracts the parts of an OCI process object the guest needs.
pub fn guest_process(p: &Value) -> Result<ProcessSpec, RewriteError> {
    let strings = |v: Option<&Value>, field: &'static str| -> Result<Vec<String>, RewriteError> {
        match v {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|s| {
                    s.as_str()
                        .map(str::to_owned)
                        .ok_or(RewriteError::Malformed {
                            field,
                            why: "contains a non-string".into(),
                        })
                })
                .collect(),
            Some(_) => Err(RewriteError::Malformed {
                field,
                why: "not an array".into(),
            }),
        }
    };
    let args = strings(p.get("args"), "process.args")?;
    if args.is_empty() {
        return Err(RewriteError::Malformed {
            field: "process.args",
            why: "no command to run".into(),
        });
    }
    let user = p.get("user");
    let num = |v: Option<&Value>| v.and_then(Value::as_u64).map(|n| n as u32);
    let additional_gids = user
        .and_then(|u| u.get("additionalGids"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_u64)
                .map(|n| n as u32)
                .collect()
        })
        .unwrap_or_default();
    let rlimits = p
        .get("rlimits")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|r| {
                    Some(Rlimit {
                        kind: r.get("type")?.as_str()?.to_owned(),
                        soft: r.get("soft")?.as_u64()?,
                        hard: r.get("hard")?.as_u64()?,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let console_size = p.get("consoleSize").and_then(|c| {
        Some((
            c.get("height")?.as_u64()? as u16,
            c.get("width")?.as_u64()? as u16,
        ))
    });
    let capabilities = match p.get("capabilities") {
        None | Some(Value::Null) => None,
        Some(c) => {
            let set = |k: &'static str| strings(c.get(k), "process.capabilities");
            Some(Capabilities {
                bounding: set("bounding")?,
                effective: set("effective")?,
                permitted: set("permitted")?,
                inheritable: set("inheritable")?,
                ambient: set("ambient")?,
            })
        }
    };
    Ok(ProcessSpec {
        capabilities,
        args,
        env: strings(p.get("env"), "process.env")?,
        cwd: p
            .get("cwd")
            .and_then(Value::as_str)
            .unwrap_or("/")
            .to_owned(),
        uid: num(user.and_then(|u| u.get("uid"))).unwrap_or(0),
        gid: num(user.and_then(|u| u.get("gid"))).unwrap_or(0),
        additional_gids,
        terminal: p.get("terminal").and_then(Value::as_bool).unwrap_or(false),
        console_size,
        rlimits,
        inherited_rlimits: Vec::new(),
        umask: num(user.and_then(|u| u.get("umask"))),
        no_new_privileges: p
            .get("noNewPrivileges")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    })
}

fn is_kernel_fs_destination(dest: &str) -> bool {
    ["/proc", "/sys", "/dev"]
        .iter()
        .any(|p| dest == *p || dest.strip_prefix(p).is_some_and(|r| r.starts_with('/')))
}

fn bind(dest: &str, source: &str, ro: bool) -> Value {
    let mut options = vec!["rbind", "rprivate"];
    if ro {
        options.push("ro");
    }
    json!({"destination": dest, "type": "bind", "source": source, "options": options})
}

fn rewrite_mounts(
    orig: Vec<Value>,
    orig_root: &str,
    readonly_root: bool,
    host: &HostLayout,
) -> Result<(Vec<Value>, Vec<GuestMount>), RewriteError> {
    let mut mounts = Vec::new();
    let mut guest = Vec::new();
    // The image's root first, so Docker's mounts can go on top of it.
    mounts.push(bind(paths::ROOTFS, orig_root, readonly_root));
    for e in &host.host_entries {
        if let HostEntry::Bind(dir) = e {
            let mut m = bind(dir, dir, true);
            m["options"]
                .as_array_mut()
                .expect("bind() makes an array")
                .extend([json!("nosuid"), json!("nodev")]);
            mounts.push(m);
        }
    }
    mounts.push(bind(paths::SUPERVISOR, &host.supervisor, true));
    mounts.push(bind(paths::VIRTIOFSD, &host.virtiofsd, true));
    mounts.push(bind(paths::KERNEL, &host.kernel, true));
    mounts.push(bind(paths::INITRD, &host.initrd, true));
    for dest in ["/run", "/tmp"] {
        mounts.push(json!({
            "destination": dest, "type": "tmpfs", "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=755", "size=65536k"]
        }));
    }
    for m in orig {
        let dest = m
            .get("destination")
            .and_then(Value::as_str)
            .ok_or(RewriteError::Malformed {
                field: "mounts[].destination",
                why: "missing or not a string".into(),
            })?
            .to_owned();
        let kind = m
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let options: Vec<String> = m
            .get("options")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|o| o.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if dest == "/dev/shm" {
            // The guest has its own /dev/shm; give it the size Docker chose.
            let opts = if kind == "tmpfs" {
                options.clone()
            } else {
                vec![
                    "nosuid".into(),
                    "nodev".into(),
                    "noexec".into(),
                    "mode=1777".into(),
                    "size=65536k".into(),
                ]
            };
            guest.push(GuestMount {
                destination: dest.clone(),
                fstype: "tmpfs".into(),
                source: "shm".into(),
                options: opts,
            });
        }
        if is_kernel_fs_destination(&dest) {
            mounts.push(m);
        } else if kind == "tmpfs" {
            guest.push(GuestMount {
                destination: dest,
                fstype: "tmpfs".into(),
                source: m
                    .get("source")
                    .and_then(Value::as_str)
                    .unwrap_or("tmpfs")
                    .to_owned(),
                options,
            });
        } else {
            let mut m = m;
            let new_dest = format!("{}{}", paths::ROOTFS, dest);
            obj(&mut m, "mounts[]")?.insert("destination".into(), json!(new_dest));
            mounts.push(m);
        }
    }
    Ok((mounts, guest))
}

fn rewrite_process(p: &mut Map<String, Value>) {
    p.insert("args".into(), json!([paths::SUPERVISOR]));
    p.insert(
        "env".into(),
        json!(["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]),
    );
    p.insert("cwd".into(), json!("/"));
    p.insert("user".into(), json!({"uid": 0, "gid": 0}));
    // The workload's limits apply in the guest; the supervisor keeps the
    // engine's defaults so QEMU is not starved of file descriptors.
    p.remove("rlimits");
    let mut caps: Vec<String> = p
        .get("capabilities")
        .and_then(|c| c.get("bounding"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    for c in SUPERVISOR_CAPS {
        if !caps.iter().any(|x| x == c) {
            caps.push((*c).to_owned());
        }
    }
    p.insert(
        "capabilities".into(),
        json!({"bounding": caps, "effective": caps, "permitted": caps}),
    );
}

fn add_devices(linux: &mut Map<String, Value>, devices: &[HostDevice]) -> Result<(), RewriteError> {
    if devices.is_empty() {
        return Ok(());
    }
    let list = linux.entry("devices").or_insert_with(|| json!([]));
    let list = list.as_array_mut().ok_or(RewriteError::Malformed {
        field: "linux.devices",
        why: "not an array".into(),
    })?;
    for d in devices {
        if !list
            .iter()
            .any(|x| x.get("path").and_then(Value::as_str) == Some(&d.path))
        {
            list.push(json!({
                "path": d.path, "type": "c", "major": d.major, "minor": d.minor,
                "fileMode": 0o660, "uid": 0, "gid": 0
            }));
        }
    }
    let res = linux.entry("resources").or_insert_with(|| json!({}));
    let res = obj(res, "linux.resources")?;
    let rules = res.entry("devices").or_insert_with(|| json!([]));
    let rules = rules.as_array_mut().ok_or(RewriteError::Malformed {
        field: "linux.resources.devices",
        why: "not an array".into(),
    })?;
    for d in devices {
        rules.push(json!({"allow": true, "type": "c", "major": d.major, "minor": d.minor, "access": "rwm"}));
    }
    Ok(())
}

/// Raises the memory limit by the VM overhead; returns the user's limit in
/// MiB (the guest RAM), if there was one.
fn grow_memory_limit(linux: &mut Map<String, Value>) -> Result<Option<u64>, RewriteError> {
    let Some(mem) = linux
        .get_mut("resources")
        .and_then(|r| r.get_mut("memory"))
        .and_then(Value::as_object_mut)
    else {
        return Ok(None);
    };
    let Some(limit) = add_memory_overhead(mem) else {
        return Ok(None);
    };
    let mib = limit / (1024 * 1024);
    if mib < MIN_MEMORY_MIB {
        return Err(RewriteError::MemoryTooSmall { mib });
    }
    Ok(Some(mib))
}

/// Adds the VM overhead to a memory resource object's `limit` and `swap`
/// (when set); returns the user's limit in bytes.
fn add_memory_overhead(mem: &mut Map<String, Value>) -> Option<u64> {
    let limit = mem
        .get("limit")
        .and_then(Value::as_i64)
        .filter(|l| *l > 0)?;
    let overhead = (VM_OVERHEAD_MIB * 1024 * 1024) as i64;
    mem.insert("limit".into(), json!(limit + overhead));
    if let Some(swap) = mem.get("swap").and_then(Value::as_i64).filter(|s| *s > 0) {
        mem.insert("swap".into(), json!(swap + overhead));
    }
    Some(limit as u64)
}

/// Rewrites the resources of `runc update` (`docker update -m`): the cgroup
/// limit keeps room for QEMU above the memory the user gives. (The guest's
/// RAM stays what it booted with.)
pub fn rewrite_update_resources(mut resources: Value) -> Value {
    if let Some(mem) = resources.get_mut("memory").and_then(Value::as_object_mut) {
        add_memory_overhead(mem);
    }
    resources
}

/// vCPUs from a CPU quota (`--cpus`) or a cpuset (`--cpuset-cpus`).
fn cpu_limit(linux: &Map<String, Value>) -> Option<u32> {
    let cpu = linux.get("resources")?.get("cpu")?;
    let quota = cpu.get("quota").and_then(Value::as_i64).unwrap_or(0);
    let period = cpu.get("period").and_then(Value::as_u64).unwrap_or(0);
    if quota > 0 && period > 0 {
        return Some((quota as u64).div_ceil(period) as u32);
    }
    let set = cpu.get("cpus").and_then(Value::as_str)?;
    let mut n = 0u32;
    for part in set.split(',').filter(|s| !s.is_empty()) {
        n += match part.split_once('-') {
            Some((a, b)) => b.trim().parse::<u32>().ok()? + 1 - a.trim().parse::<u32>().ok()?,
            None => 1,
        };
    }
    (n > 0).then_some(n)
}

/// Rewrites an exec's process object (runc's `--process` file) so that runc
/// runs the exec client, which hands the original process to the guest.
/// Returns the new process object and the original, as the guest needs it.
pub fn rewrite_exec_process(mut process: Value) -> Result<(Value, ProcessSpec), RewriteError> {
    let spec = guest_process(&process)?;
    let p = obj(&mut process, "process")?;
    let mut env =
        vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned()];
    env.extend(
        crate::exec_spec::encode(&spec).map_err(|e| RewriteError::Malformed {
            field: "process",
            why: e.to_string(),
        })?,
    );
    p.insert("args".into(), json!([paths::SUPERVISOR, "exec"]));
    p.insert("env".into(), json!(env));
    p.insert("cwd".into(), json!("/"));
    p.insert("user".into(), json!({"uid": 0, "gid": 0}));
    p.remove("rlimits");
    Ok((process, spec))
}
