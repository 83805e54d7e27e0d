//! The config.json rewrite.
//!
//! Docker's container becomes the supervisor's container:
//!
//! * `root.path` becomes a small runvm-owned directory that holds the host's
//!   `/usr` (read-only, for QEMU, virtiofsd and their libraries), runvm's
//!   binaries, the kernel and initramfs, and the image's root filesystem
//!   mounted at [`paths::ROOTFS`]. The guest sees only that last one, through
//!   virtiofs, so none of runvm's files are visible to the workload.
//! * Docker's bind mounts (volumes, `/etc/hosts`, `/etc/resolv.conf`, …) are
//!   mounted by runc at staging points in runvm's root
//!   ([`paths::STAGING_DIR`]), and moved from there to their destinations
//!   inside [`paths::ROOTFS`] by `runvm-mounts`, which resolves every
//!   destination inside the image root: an image's symlink can never make
//!   runc mount a volume over runvm's own files. virtiofs serves them to the
//!   guest at their usual place. tmpfs mounts are made by the guest itself. The kernel
//!   filesystems (`/proc`, `/sys`, `/dev`…) stay where they are, for the
//!   supervisor.
//! * The process becomes the supervisor, running as root with the
//!   capabilities it needs; the original process travels in [`VmConfig`].
//! * `/dev/kvm` and `/dev/net/tun` are made available and the memory limit
//!   grows by the VM's overhead, so QEMU is not OOM-killed when the guest
//!   uses all the RAM the user gave the container.
//! * The container's confinement moves to the guest: its seccomp profile is
//!   compiled for the agent to install on the workload and every exec, and
//!   its masked and read-only paths and read-only `/sys` travel in the
//!   [`ContainerSpec`]. `linux.seccomp` itself becomes runvm's own profile
//!   ([`crate::host_seccomp`]), which confines the supervisor, QEMU and
//!   virtiofsd whatever the container asked for (`--privileged` and
//!   `seccomp=unconfined` included).

use runvm_contract::report::ErrorChain;
use serde_json::{json, Map, Value};

use crate::options::VmOptions;
use runvm_contract::Accel;
use runvm_contract::StagedMount;
use runvm_contract::VmConfig;
use runvm_contract::{netns, paths};
use runvm_protocol::{
    Capabilities, CgroupFs, ContainerSpec, GuestDevice, GuestLimits, GuestMount, ProcessSpec,
    Rlimit,
};

/// Host memory that QEMU, virtiofsd and the supervisor need on top of the
/// guest RAM (QEMU's TCG translation cache alone is 64 MiB).
pub const VM_OVERHEAD_MIB: u64 = 256;
/// Guest RAM when the container has no memory limit.
pub const DEFAULT_MEMORY_MIB: u64 = 512;
/// Smallest guest RAM that boots the distribution kernel.
pub const MIN_MEMORY_MIB: u64 = 128;
/// Guest RAM the guest's kernel and agent need beside a limited workload,
/// which a cgroup in the guest holds to the container's limit.
pub const GUEST_KERNEL_MIB: u64 = 64;
/// Host tasks that QEMU, virtiofsd and the supervisor need (their threads)
/// on top of a `--pids-limit`, which a cgroup in the guest enforces.
pub const VM_OVERHEAD_PIDS: i64 = 512;
const MIB: u64 = 1024 * 1024;

/// The guest RAM, in MiB, of a container whose memory limit is `limit`
/// bytes: the limit, which the workload's cgroup in the guest holds it to,
/// plus what the guest kernel needs: [`GUEST_KERNEL_MIB`] and its page
/// descriptors (64 bytes for each 4 KiB page, a 64th of the RAM, which
/// the kernel takes before it counts MemTotal); at least
/// [`MIN_MEMORY_MIB`]. Any limit the engine accepts (Docker's least is
/// 6 MiB) gets a VM.
pub fn guest_ram_for_limit_mib(limit: u64) -> u64 {
    let mib = limit.div_ceil(MIB);
    mib.saturating_add(GUEST_KERNEL_MIB)
        .saturating_add(mib.div_ceil(64))
        .max(MIN_MEMORY_MIB)
}

/// The host cgroup's memory limit for a container limited to `limit`
/// bytes: its VM's RAM plus QEMU's, virtiofsd's and the supervisor's
/// [`VM_OVERHEAD_MIB`]. (`docker stats` shows this as the limit.)
pub fn host_memory_limit(limit: u64) -> u64 {
    guest_ram_for_limit_mib(limit)
        .saturating_add(VM_OVERHEAD_MIB)
        .saturating_mul(MIB)
}

/// The host side's capabilities, whatever the container asked for (its own
/// capabilities apply to the workload in the guest): tap and tc setup
/// (NET_ADMIN); virtiofsd's file operations on the guest's behalf (CHOWN,
/// DAC_OVERRIDE, FOWNER, FSETID, SETUID, SETGID, MKNOD, SETFCAP, and
/// SETPCAP to trim its own set at start); starting QEMU under an
/// unprivileged uid (SETUID, SETGID, CHOWN for its sockets) and signalling
/// it (KILL). Nothing else: no SYS_ADMIN, no DAC_READ_SEARCH, no NET_RAW.
/// CAP_SYS_RESOURCE is never asked for: some hosts (this project's CI
/// among them) lack it in the bounding set.
pub const SUPERVISOR_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_MKNOD",
    "CAP_NET_ADMIN",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
];

/// The capability `runc run` needs the supervisor to have on top: with no
/// step between creating and starting, the supervisor places Docker's
/// mounts itself (see `runvm-mounts`).
pub const MOUNT_PLACEMENT_CAP: &str = "CAP_SYS_ADMIN";

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
    /// The kernel's modules in the store, if it has any.
    pub modules: Option<KernelModules>,
    /// QEMU's path; must be inside one of the bound host directories.
    pub qemu: String,
    /// QEMU's `-bios`, if not its default; inside a bound directory too.
    pub firmware: Option<String>,
    pub devices: Vec<HostDevice>,
    pub host_cpus: u32,
    /// The host's memory (MemTotal) in MiB: the most guest RAM a container
    /// without a memory limit may ask for.
    pub host_memory_mib: u64,
    /// The unprivileged uid and gid QEMU runs under (see [`qemu_ids`]).
    pub qemu_ids: (u32, u32),
    pub accel: Accel,
    pub accel_warning: Option<String>,
    /// When the runtime began to create the container (ms since the Unix
    /// epoch), for the phase timings.
    pub created_unix_ms: u64,
    /// The size in bytes of the host tmpfs an engine binds at `/dev/shm`
    /// (Podman makes one per container, of `--shm-size`), read by the
    /// runtime; the guest's own `/dev/shm` gets that size.
    pub bound_shm_bytes: Option<u64>,
}

/// A kernel's modules: `lib/modules/<version>` of its tree in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelModules {
    pub dir: String,
    pub version: String,
}

/// First uid (and gid) of the range QEMU processes run under.
pub const QEMU_ID_BASE: u32 = 0x7f00_0000;
/// Size of that range.
pub const QEMU_ID_SPAN: u32 = 0x00ff_ffff;

/// The uid and gid QEMU runs under for the container whose bundle is
/// `bundle`: one of its own, so that QEMUs of different containers share
/// no uid, in a range far above ordinary users and the usual subordinate
/// id ranges of rootless users (2130706432 to 2147483646).
pub fn qemu_ids(bundle: &str) -> (u32, u32) {
    // FNV-1a: a stable spread of bundle paths, nothing cryptographic needed.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bundle.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let id = QEMU_ID_BASE + (h % u64::from(QEMU_ID_SPAN)) as u32;
    (id, id)
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
    #[error("the container's CPU limit ({cpus} CPUs, from --cpus) is too small to boot a VM under TCG software emulation: give --cpus 0.1 or more")]
    CpuTooSmall { cpus: String },
    #[error("{variable} asks for {want}, more than {limit}: lower {variable} or raise the limit")]
    AboveLimit {
        variable: &'static str,
        want: String,
        limit: String,
    },
    #[error("--device {path} ({kind} {major}:{minor}) is not supported by runvm: a VM has devices of its own and cannot reach the host's; runvm passes only those the guest has too ({}); drop the --device or use --runtime=runc", GUEST_DEVICE_NAMES)]
    Device {
        path: String,
        kind: &'static str,
        major: i64,
        minor: i64,
    },
    #[error("--{flag} {mode} is not supported by runvm: a VM runs its own kernel and cannot share {what}; drop --{flag}")]
    NamespaceMode {
        flag: &'static str,
        mode: &'static str,
        what: &'static str,
    },
    #[error("RUNVM_CGROUPFS={mode} cannot hold --memory or --pids-limit in the guest, which enforces them with cgroup v2: drop RUNVM_CGROUPFS or the limit")]
    LimitsNeedV2 { mode: &'static str },
    #[error("--network {mode} is not supported by runvm: {why}")]
    NetworkMode {
        mode: &'static str,
        why: &'static str,
    },
    #[error(transparent)]
    Option(#[from] crate::options::OptionError),
    /// The container's seccomp profile cannot be compiled (the message of a
    /// [`crate::seccomp::SeccompError`]).
    #[error("{0}")]
    Seccomp(String),
}

/// Refuses a network namespace that is not the container's own (see
/// [`RewriteError::NetworkMode`]).
fn network_mode(linux: &Map<String, Value>) -> Result<(), RewriteError> {
    let network = linux
        .get("namespaces")
        .and_then(Value::as_array)
        .and_then(|ns| {
            ns.iter()
                .find(|n| n.get("type").and_then(Value::as_str) == Some("network"))
        });
    let host = |path: &str| same_namespace(path, "/proc/self/ns/net");
    match network.map(|n| n.get("path").and_then(Value::as_str)) {
        Some(None | Some("")) => Ok(()),
        // Docker 20.10 names the host's namespace by a path of its own
        // (/var/run/docker/netns/default); runvm runs in that namespace.
        None => Err(host_mode()),
        Some(Some(path)) if host(path) => Err(host_mode()),
        // A namespace no process is in yet was made for this container by
        // its engine (Podman's netavark, CNI), which runvm's side joins and
        // takes the interfaces of, as Docker's.
        Some(Some(path)) if !namespace_in_use(path) => Ok(()),
        Some(Some(_)) => Err(RewriteError::NetworkMode {
            mode: "container:<name>",
            why: "a VM runs its own kernel and cannot share another container's network stack; put both containers on a user-defined network",
        }),
    }
}

/// `--pid`, `--ipc` and `--uts` with `host` or `container:<name>`: the
/// workload would share a namespace of the host's (Docker leaves the
/// namespace out) or of another container's (Docker names its path),
/// which a VM cannot; refused, as `--network host` is.
fn shared_namespaces(linux: &Map<String, Value>) -> Result<(), RewriteError> {
    let list = linux.get("namespaces").and_then(Value::as_array);
    for (kind, flag, what) in [
        ("pid", "pid", "the host's or another container's processes"),
        (
            "ipc",
            "ipc",
            "the host's or another container's System V IPC and /dev/shm",
        ),
        ("uts", "uts", "the host's hostname"),
    ] {
        let ns = list.and_then(|l| {
            l.iter()
                .find(|n| n.get("type").and_then(Value::as_str) == Some(kind))
        });
        let mode = match ns.map(|n| n.get("path").and_then(Value::as_str)) {
            Some(None | Some("")) => continue,
            None => "host",
            Some(Some(_)) => "container:<name>",
        };
        return Err(RewriteError::NamespaceMode { flag, mode, what });
    }
    Ok(())
}

/// The `--device` nodes a guest can have: virtual devices its kernel has
/// under the host's numbers, (block, major, minor) with `None` for any
/// minor. A host's hardware (disks, GPUs, serial ports, `/dev/kvm`) is not
/// in the VM.
const GUEST_DEVICES: &[(bool, i64, Option<i64>)] = &[
    (false, 1, Some(3)),    // null
    (false, 1, Some(5)),    // zero
    (false, 1, Some(7)),    // full
    (false, 1, Some(8)),    // random
    (false, 1, Some(9)),    // urandom
    (false, 5, Some(0)),    // tty
    (false, 5, Some(2)),    // ptmx
    (false, 10, Some(200)), // net/tun
    (false, 10, Some(229)), // fuse
];
const GUEST_DEVICE_NAMES: &str = "null, zero, full, random, urandom, tty, ptmx, net/tun, fuse";

/// The container's `--device` nodes for the guest; one the guest cannot
/// have is an error naming it, except for a privileged container, whose
/// list is every device of the host's (the guest has its own full `/dev`:
/// only the nodes the guest can have are made, a `--device
/// /dev/null:/custom` among them).
fn guest_devices(
    linux: &Map<String, Value>,
    privileged: bool,
) -> Result<Vec<GuestDevice>, RewriteError> {
    let list = match linux.get("devices") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(l) => l,
    };
    let malformed = |why: String| RewriteError::Malformed {
        field: "linux.devices",
        why,
    };
    let list = list
        .as_array()
        .ok_or_else(|| malformed("not an array".into()))?;
    list.iter()
        .filter_map(|d| {
            let device = || -> Result<GuestDevice, RewriteError> {
                let path = required_str(d.get("path"), "linux.devices[].path")?;
                let block = match d.get("type").and_then(Value::as_str) {
                    Some("c" | "u") => false,
                    Some("b") => true,
                    other => return Err(malformed(format!("{path}: device type {other:?}"))),
                };
                let num = |k: &str| d.get(k).and_then(Value::as_i64).unwrap_or(-1);
                let (major, minor) = (num("major"), num("minor"));
                let known = GUEST_DEVICES.iter().any(|(b, ma, mi)| {
                    *b == block && *ma == major && mi.is_none_or(|m| m == minor)
                });
                let absolute = path.starts_with('/') && !path.split('/').any(|c| c == "..");
                if !known || !absolute {
                    return Err(RewriteError::Device {
                        path,
                        kind: if block { "block" } else { "character" },
                        major,
                        minor,
                    });
                }
                Ok(GuestDevice {
                    path,
                    block,
                    major: major as u32,
                    minor: minor as u32,
                    mode: u32_field(d.get("fileMode"), "linux.devices[].fileMode")?
                        .unwrap_or(0o666)
                        & 0o7777,
                    uid: u32_field(d.get("uid"), "linux.devices[].uid")?.unwrap_or(0),
                    gid: u32_field(d.get("gid"), "linux.devices[].gid")?.unwrap_or(0),
                })
            };
            match device() {
                Err(RewriteError::Device { .. }) if privileged => None,
                r => Some(r),
            }
        })
        .collect()
}

/// Whether any process is in the namespace of the file `path` (another
/// container's, when a config names it): a namespace that an engine made
/// for a new container has none yet.
fn namespace_in_use(path: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(ns) = std::fs::metadata(path) else {
        // Not a namespace of this host's: refused as another container's.
        return true;
    };
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return true;
    };
    procs
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::metadata(e.path().join("ns/net")).ok())
        .any(|m| (m.dev(), m.ino()) == (ns.dev(), ns.ino()))
}

/// Whether two namespace files are the same namespace.
fn same_namespace(a: &str, b: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

fn host_mode() -> RewriteError {
    RewriteError::NetworkMode {
        mode: "host",
        why: "a VM runs its own kernel and cannot share the host's network stack; publish ports with -p or use a user-defined network",
    }
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
    let orig_root = required_str(root.get("path"), "root.path")?;
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
    let sysfs_readonly = mount_is_readonly(&orig_mounts, "/sys");
    let cgroup_readonly = mount_is_readonly(&orig_mounts, "/sys/fs/cgroup");
    let (mounts, guest_mounts, staged_mounts) = rewrite_mounts(orig_mounts, &orig_root, host)?;
    top.insert("mounts".into(), Value::Array(mounts));

    // --- process becomes the supervisor
    let process = top
        .get_mut("process")
        .ok_or(RewriteError::Missing("process"))?;
    rewrite_process(obj(process, "process")?);

    // --- linux: devices, resources
    let linux = top.entry("linux").or_insert_with(|| json!({}));
    let linux = obj(linux, "linux")?;
    // Only a network namespace made for this container (no "path") can be
    // the VM's. With --network host Docker leaves the namespace out (the
    // host's), and with --network container:X names X's by path: a VM has a
    // kernel of its own and cannot share either stack, so both are refused
    // before anything is set up.
    network_mode(linux)?;
    shared_namespaces(linux)?;
    // dockerd's embedded resolver forwards lookups from the container's
    // namespace; the answers come back to these ports, which the
    // supervisor keeps apart from the VM's traffic (runvm_contract::netns).
    let sysctl = linux.entry("sysctl").or_insert_with(|| json!({}));
    // The container's own, for the guest (before runvm's, which is the
    // host side's).
    let guest_sysctl = sysctl_list(sysctl)?;
    let (key, value) = netns::LOCAL_PORTS_SYSCTL;
    obj(sysctl, "linux.sysctl")?.insert(key.into(), json!(value));
    // Confinement: the container's for the guest, runvm's own for the
    // host side. The masked and read-only paths stay for the supervisor's
    // container too.
    let masked_paths = string_list(linux.get("maskedPaths"), "linux.maskedPaths")?;
    let readonly_paths = string_list(linux.get("readonlyPaths"), "linux.readonlyPaths")?;
    let seccomp = match linux.get("seccomp") {
        None => None,
        Some(p) => {
            crate::seccomp::compile(p).map_err(|e| RewriteError::Seccomp(e.chain().to_string()))?
        }
    };
    linux.insert("seccomp".into(), crate::host_seccomp::profile());
    linux.insert("maskedPaths".into(), json!(HOST_SIDE_MASKED));
    linux.insert("readonlyPaths".into(), json!(HOST_SIDE_READONLY));
    let any_device = allows_any_device(linux);
    // --privileged: every device allowed and every capability (a device
    // cgroup rule for all devices alone does not make a host device fit).
    let privileged = any_device
        && guest_process
            .capabilities
            .as_ref()
            .is_none_or(|c| c.bounding.iter().any(|c| c == "CAP_SYS_ADMIN"));
    let devices = guest_devices(linux, privileged)?;
    add_devices(linux, &host.devices, host.qemu_ids)?;
    let limits = grow_host_limits(linux);
    // The guest holds the limits with cgroup v2; an image's ENV may not
    // trade them for v1 hierarchies (and run unlimited).
    if let (true, Some(mode @ (CgroupFs::V1 | CgroupFs::Hybrid))) = (limits.any(), opts.cgroupfs) {
        return Err(RewriteError::LimitsNeedV2 {
            mode: if mode == CgroupFs::V1 { "1" } else { "hybrid" },
        });
    }
    // Without a limit the VM gets every host CPU, as a runc container sees
    // them all. (Under TCG on an idle 2-core host this also boots faster:
    // 5.3 s against 5.8 s with one vCPU, medians of 3.)
    // RUNVM_CPUS and RUNVM_MEMORY may come from the image's ENV: they may
    // lower what the engine granted, never raise it.
    let cpus = guest_cpus(opts, cpu_limit(linux), host.host_cpus)?;
    // Under TCG a boot takes about 4 CPU-seconds, and more on a busy
    // host: with less than a tenth of a CPU it takes many minutes, and may
    // reach the supervisor's 10-minute limit for a guest that never
    // answers; say so now instead.
    if host.accel == Accel::Tcg {
        if let Some(millis) = cpu_quota_millis(linux).filter(|m| *m < MIN_TCG_CPU_MILLIS) {
            return Err(RewriteError::CpuTooSmall {
                cpus: format!("{}.{:03}", millis / 1000, millis % 1000),
            });
        }
    }

    // --- annotations
    let ann = top.entry("annotations").or_insert_with(|| json!({}));
    obj(ann, "annotations")?.insert(paths::ANNOTATION.into(), json!("1"));

    let hostname = top
        .get("hostname")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let memory_mib = guest_memory_mib(opts, limits.memory_bytes, host.host_memory_mib)?;

    let guest_disks = opts
        .disks
        .iter()
        .enumerate()
        .map(|(n, d)| runvm_protocol::GuestDisk {
            serial: runvm_contract::VmDisk::serial(n),
            destination: d.destination.clone(),
            fs: d.fs,
        })
        .collect();
    let docker_mounts = staged_mounts
        .iter()
        .map(|m| m.destination.clone())
        .collect();
    let vm = VmConfig {
        accel: host.accel,
        accel_warning: host.accel_warning.clone(),
        vcpus: cpus,
        memory_mib,
        qemu: host.qemu.clone(),
        firmware: host.firmware.clone(),
        virtiofsd: paths::VIRTIOFSD.into(),
        kernel: paths::KERNEL.into(),
        initrd: paths::INITRD.into(),
        rootfs: paths::ROOTFS.into(),
        debug: opts.debug,
        phases: opts.phases,
        created_unix_ms: host.created_unix_ms,
        rewritten_unix_ms: 0,
        kernel_append: opts.kernel_append.clone(),
        own_network: true,
        staged_mounts,
        disks: opts.disks.clone(),
        qemu_uid: host.qemu_ids.0,
        qemu_gid: host.qemu_ids.1,
        container: ContainerSpec {
            hostname,
            process: guest_process,
            mounts: guest_mounts,
            readonly_root,
            masked_paths,
            readonly_paths,
            sysfs_readonly,
            cgroup_readonly,
            any_device,
            seccomp,
            kernel_modules: host.modules.as_ref().map(|m| m.version.clone()),
            disks: guest_disks,
            docker_mounts,
            cgroupfs: opts.cgroupfs,
            sysctl: guest_sysctl,
            limits,
            devices,
        },
    };
    Ok(Rewritten { config, vm })
}

/// `linux.sysctl` as (key, value) pairs, in order.
fn sysctl_list(v: &Value) -> Result<Vec<(String, String)>, RewriteError> {
    let malformed = |why: &str| RewriteError::Malformed {
        field: "linux.sysctl",
        why: why.into(),
    };
    v.as_object()
        .ok_or_else(|| malformed("not an object"))?
        .iter()
        .map(|(k, v)| match v.as_str() {
            Some(v) => Ok((k.clone(), v.to_owned())),
            None => Err(malformed(&format!("the value of {k} is not a string"))),
        })
        .collect()
}

/// Extracts the parts of an OCI process object the guest needs.
pub fn guest_process(p: &Value) -> Result<ProcessSpec, RewriteError> {
    let args = string_list(p.get("args"), "process.args")?;
    if args.is_empty() {
        return Err(RewriteError::Malformed {
            field: "process.args",
            why: "no command to run".into(),
        });
    }
    let user = p.get("user");
    let id = |key: &str, field| u32_field(user.and_then(|u| u.get(key)), field);
    let additional_gids = match user.and_then(|u| u.get("additionalGids")) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|g| u32_of(g, "process.user.additionalGids"))
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(RewriteError::Malformed {
                field: "process.user.additionalGids",
                why: "not an array".into(),
            })
        }
    };
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
    // A window larger than a u16 cannot be set on a terminal: clamp.
    let dim = |v: &Value| u16::try_from(v.as_u64()?).ok().or(Some(u16::MAX));
    let console_size = p
        .get("consoleSize")
        .and_then(|c| Some((dim(c.get("height")?)?, dim(c.get("width")?)?)));
    let capabilities = match p.get("capabilities") {
        // runc gives a process without the field no capabilities at all
        // (runvm's `None` would keep every one).
        None | Some(Value::Null) => Some(Capabilities::default()),
        Some(c) => {
            let set = |k: &'static str| string_list(c.get(k), "process.capabilities");
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
        env: string_list(p.get("env"), "process.env")?,
        cwd: p
            .get("cwd")
            .and_then(Value::as_str)
            .unwrap_or("/")
            .to_owned(),
        uid: id("uid", "process.user.uid")?.unwrap_or(0),
        gid: id("gid", "process.user.gid")?.unwrap_or(0),
        additional_gids,
        terminal: p.get("terminal").and_then(Value::as_bool).unwrap_or(false),
        console_size,
        rlimits,
        inherited_rlimits: Vec::new(),
        umask: id("umask", "process.user.umask")?,
        oom_score_adj: match p.get("oomScoreAdj") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_i64().filter(|n| (-1000..=1000).contains(n)).ok_or(
                RewriteError::Malformed {
                    field: "process.oomScoreAdj",
                    why: format!("{v} is not a number from -1000 to 1000"),
                },
            )? as i32),
        },
        no_new_privileges: p
            .get("noNewPrivileges")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    })
}

/// A user or group id (or umask): anything but a whole number that fits
/// 32 bits is refused rather than truncated, so a hostile config cannot
/// turn uid 4294967296 into root.
fn u32_of(n: &Value, field: &'static str) -> Result<u32, RewriteError> {
    n.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or(RewriteError::Malformed {
            field,
            why: format!("{n} is not a 32-bit unsigned number"),
        })
}

/// [`u32_of`] for an optional field: absent or `null` is `None`.
fn u32_field(v: Option<&Value>, field: &'static str) -> Result<Option<u32>, RewriteError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(n) => u32_of(n, field).map(Some),
    }
}

/// A list of strings (`null` or absent: empty).
/// A string the config must have; `field` names it in the error.
fn required_str(v: Option<&Value>, field: &'static str) -> Result<String, RewriteError> {
    v.and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or(RewriteError::Malformed {
            field,
            why: "missing or not a string".into(),
        })
}

fn string_list(v: Option<&Value>, field: &'static str) -> Result<Vec<String>, RewriteError> {
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
}

/// Whether the last mount at `dest` is read-only (its last `ro`/`rw`
/// option wins); false when there is none.
fn mount_is_readonly(mounts: &[Value], dest: &str) -> bool {
    mounts
        .iter()
        .rfind(|m| m.get("destination").and_then(Value::as_str) == Some(dest))
        .and_then(|m| m.get("options"))
        .and_then(Value::as_array)
        .and_then(|o| {
            o.iter()
                .filter_map(Value::as_str)
                .rfind(|o| *o == "ro" || *o == "rw")
                .map(|o| o == "ro")
        })
        .unwrap_or(false)
}

fn is_kernel_fs_destination(dest: &str) -> bool {
    runvm_protocol::KERNEL_FS_MOUNTPOINTS
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

/// The new mount list, the mounts the guest makes itself, and the mounts
/// staged for `runvm-mounts` to place.
type RewrittenMounts = (Vec<Value>, Vec<GuestMount>, Vec<StagedMount>);

fn rewrite_mounts(
    orig: Vec<Value>,
    orig_root: &str,
    host: &HostLayout,
) -> Result<RewrittenMounts, RewriteError> {
    let mut mounts = Vec::new();
    let mut guest = Vec::new();
    let mut staged = Vec::new();
    // The image's root first. It stays writable until the staged mounts are
    // placed (their mount points may have to be created); `--read-only` is
    // applied after that.
    mounts.push(bind(paths::ROOTFS, orig_root, false));
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
    if let Some(m) = &host.modules {
        mounts.push(bind(paths::MODULES, &m.dir, true));
    }
    for dest in ["/run", "/tmp"] {
        mounts.push(json!({
            "destination": dest, "type": "tmpfs", "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=755", "size=65536k"]
        }));
    }
    for m in orig {
        let dest = required_str(m.get("destination"), "mounts[].destination")?;
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
            // The guest has its own /dev/shm; give it the size the engine
            // chose: Docker's tmpfs options, or the size of the tmpfs Podman
            // binds there.
            let opts = if kind == "tmpfs" {
                options.clone()
            } else {
                let size = host.bound_shm_bytes.unwrap_or(64 << 20);
                vec![
                    "nosuid".into(),
                    "nodev".into(),
                    "noexec".into(),
                    "mode=1777".into(),
                    format!("size={size}"),
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
            let mut m = m;
            // The host side's /sys and cgroups are read-only, even when the
            // container is privileged (the guest follows the container).
            if kind == "sysfs" || kind == "cgroup" || kind == "cgroup2" {
                if let Some(opts) = m.get_mut("options").and_then(Value::as_array_mut) {
                    opts.retain(|o| o != "rw");
                    if !opts.iter().any(|o| o == "ro") {
                        opts.push(json!("ro"));
                    }
                }
            }
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
            if !dest.starts_with('/') {
                return Err(RewriteError::Malformed {
                    field: "mounts[].destination",
                    why: format!("{dest:?} is not an absolute path"),
                });
            }
            let mut m = m;
            let staging = format!("{}/{}", paths::STAGING_DIR, staged.len());
            obj(&mut m, "mounts[]")?.insert("destination".into(), json!(staging));
            mounts.push(m);
            staged.push(StagedMount {
                staging,
                destination: dest,
            });
        }
    }
    Ok((mounts, guest, staged))
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
    p.shift_remove("rlimits");
    // The host side never gains privileges (the host's /usr is visible to
    // it) and has exactly its own capabilities: --cap-add and --privileged
    // are for the guest.
    p.insert("noNewPrivileges".into(), json!(true));
    set_capabilities(p, SUPERVISOR_CAPS);
}

/// Gives a process object exactly `caps` (bounding, effective, permitted;
/// no inheritable or ambient ones).
fn set_capabilities(p: &mut Map<String, Value>, caps: &[&str]) {
    p.insert(
        "capabilities".into(),
        json!({"bounding": caps, "effective": caps, "permitted": caps}),
    );
}

/// Adds [`MOUNT_PLACEMENT_CAP`] to a rewritten config's supervisor, for
/// `runc run` (see there).
pub fn grant_mount_placement(config: &mut Value) {
    let Some(caps) = config
        .get_mut("process")
        .and_then(|p| p.get_mut("capabilities"))
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    for set in ["bounding", "effective", "permitted"] {
        if let Some(list) = caps.get_mut(set).and_then(Value::as_array_mut) {
            if !list.iter().any(|c| c == MOUNT_PLACEMENT_CAP) {
                list.push(json!(MOUNT_PLACEMENT_CAP));
            }
        }
    }
    // And the system calls placing takes (libpathrs opens a private procfs
    // with the new mount API), which runvm's host profile otherwise denies.
    if let Some(rules) = config
        .pointer_mut("/linux/seccomp/syscalls")
        .and_then(Value::as_array_mut)
    {
        rules.push(json!({
            "names": ["mount", "move_mount", "open_tree", "fsopen", "fsconfig", "fsmount", "mount_setattr"],
            "action": "SCMP_ACT_ALLOW",
        }));
    }
}

/// Whether the container's device cgroup (`linux.resources.devices`)
/// lets it open any device, as Docker's `--privileged` rule `{"allow":
/// true, "access": "rwm"}` does, read as runc reads it: for character and
/// for block devices, the last rule that covers every device of the type
/// decides (an allow rule of type `a` allows all, whatever its numbers).
fn allows_any_device(linux: &serde_json::Map<String, Value>) -> bool {
    let Some(Value::Array(rules)) = linux.get("resources").and_then(|r| r.get("devices")) else {
        return false;
    };
    let wildcard = |v: Option<&Value>| v.is_none_or(|v| v.is_null() || v.as_i64() == Some(-1));
    let opens = |r: &Value| {
        r.get("access")
            .and_then(Value::as_str)
            .is_some_and(|a| a.contains('r') || a.contains('w'))
    };
    let all_of = |kind: &str| {
        let mut allowed = false;
        for r in rules {
            let allow = r.get("allow").and_then(Value::as_bool) == Some(true);
            let every = wildcard(r.get("major")) && wildcard(r.get("minor"));
            match r.get("type").and_then(Value::as_str) {
                None | Some("a") if allow => allowed = opens(r),
                None | Some("a") => allowed &= !every,
                Some(t) if t == kind && every => allowed = allow && opens(r),
                _ => {}
            }
        }
        allowed
    };
    all_of("c") && all_of("b")
}

/// Adds runvm's devices. `/dev/kvm` belongs to QEMU's uid and gid, mode
/// 0600: QEMU opens it, nothing else in the container can.
fn add_devices(
    linux: &mut Map<String, Value>,
    devices: &[HostDevice],
    qemu: (u32, u32),
) -> Result<(), RewriteError> {
    // The host side gets runvm's devices and nothing else, whatever
    // `--device` or `--privileged` asked for (those are the guest's
    // business): Docker's device nodes are replaced, not extended.
    let list: Vec<Value> = devices
        .iter()
        .map(|d| {
            let (uid, gid) = if d.path == "/dev/kvm" {
                (qemu.0, qemu.1)
            } else {
                (0, 0)
            };
            json!({
                "path": d.path, "type": "c", "major": d.major, "minor": d.minor,
                "fileMode": 0o600, "uid": uid, "gid": gid
            })
        })
        .collect();
    linux.insert("devices".into(), Value::Array(list));
    // The device cgroup: deny everything, then allow the standard
    // character devices of a container's /dev and runvm's own.
    let mut rules = vec![json!({"allow": false, "access": "rwm"})];
    for (major, minor) in HOST_SIDE_STANDARD_DEVICES {
        rules.push(
            json!({"allow": true, "type": "c", "major": major, "minor": minor, "access": "rwm"}),
        );
    }
    for d in devices {
        rules.push(json!({"allow": true, "type": "c", "major": d.major, "minor": d.minor, "access": "rwm"}));
    }
    // Making device nodes (not opening them), as Docker's rules allow a
    // container: virtiofsd makes the guest's on the shared root (a
    // `--device /dev/fuse:/opt/fuse`, a workload's mknod).
    for kind in ["c", "b"] {
        rules.push(json!({"allow": true, "type": kind, "access": "m"}));
    }
    let res = linux.entry("resources").or_insert_with(|| json!({}));
    obj(res, "linux.resources")?.insert("devices".into(), Value::Array(rules));
    Ok(())
}

/// The character devices a container's /dev has (null, zero, full, random,
/// urandom, tty, console, ptmx, and the pts range, minor -1 = any).
const HOST_SIDE_STANDARD_DEVICES: &[(i64, i64)] = &[
    (1, 3),
    (1, 5),
    (1, 7),
    (1, 8),
    (1, 9),
    (5, 0),
    (5, 1),
    (5, 2),
    (136, -1),
];

/// Docker's default masked and read-only paths, applied to the host side
/// whatever the container asked for (`--privileged` and
/// `systempaths=unconfined` lift them in the guest only).
const HOST_SIDE_MASKED: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
];
const HOST_SIDE_READONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Raises the host's memory and pids limits by what the VM needs beside
/// the workload (see [`host_memory_limit`], [`VM_OVERHEAD_PIDS`]); returns
/// the container's own limits, which the guest enforces.
fn grow_host_limits(linux: &mut Map<String, Value>) -> GuestLimits {
    let Some(resources) = linux.get_mut("resources").and_then(Value::as_object_mut) else {
        return GuestLimits::default();
    };
    let memory_bytes = resources
        .get_mut("memory")
        .and_then(Value::as_object_mut)
        .and_then(add_memory_overhead);
    let pids = resources
        .get_mut("pids")
        .and_then(Value::as_object_mut)
        .and_then(add_pids_overhead);
    GuestLimits { memory_bytes, pids }
}

/// Sets a memory resource object's `limit` to [`host_memory_limit`] and
/// raises its `swap` (when set) by as much; returns the user's limit in
/// bytes.
fn add_memory_overhead(mem: &mut Map<String, Value>) -> Option<u64> {
    let limit = mem
        .get("limit")
        .and_then(Value::as_i64)
        .filter(|l| *l > 0)?;
    // Saturating: a limit near i64::MAX (no real limit) must not wrap to a
    // negative one.
    let host = i64::try_from(host_memory_limit(limit as u64)).unwrap_or(i64::MAX);
    mem.insert("limit".into(), json!(host));
    if let Some(swap) = mem.get("swap").and_then(Value::as_i64).filter(|s| *s > 0) {
        mem.insert("swap".into(), json!(swap.saturating_add(host - limit)));
    }
    Some(limit as u64)
}

/// Raises a pids resource object's `limit` (when positive) by
/// [`VM_OVERHEAD_PIDS`]; returns the user's limit.
fn add_pids_overhead(pids: &mut Map<String, Value>) -> Option<u64> {
    let limit = pids
        .get("limit")
        .and_then(Value::as_i64)
        .filter(|l| *l > 0)?;
    pids.insert(
        "limit".into(),
        json!(limit.saturating_add(VM_OVERHEAD_PIDS).min(PIDS_MAX)),
    );
    Some(limit as u64)
}

/// The largest `pids.max` the kernel takes (PID_MAX_LIMIT).
const PIDS_MAX: i64 = 4 * 1024 * 1024;

/// Rewrites the resources of `runc update` (`docker update -m`,
/// `--pids-limit`): the cgroup limits keep room for QEMU above what the
/// user gives. (The guest's RAM and its cgroup's limits stay what they
/// booted with.)
///
/// `booted_mib`, the guest RAM the VM booted with when known, is a floor:
/// a lower limit would let the host's OOM killer take QEMU itself.
pub fn rewrite_update_resources(mut resources: Value, booted_mib: Option<u64>) -> Value {
    if let Some(mem) = resources.get_mut("memory").and_then(Value::as_object_mut) {
        if add_memory_overhead(mem).is_some() {
            let floor = booted_mib.map(|m| {
                i64::try_from(m.saturating_add(VM_OVERHEAD_MIB).saturating_mul(MIB))
                    .unwrap_or(i64::MAX)
            });
            if let (Some(floor), Some(limit)) = (floor, mem.get("limit").and_then(Value::as_i64)) {
                if limit < floor {
                    mem.insert("limit".into(), json!(floor));
                    if let Some(swap) = mem.get("swap").and_then(Value::as_i64).filter(|s| *s > 0) {
                        mem.insert("swap".into(), json!(swap.max(floor)));
                    }
                }
            }
        }
    }
    if let Some(pids) = resources.get_mut("pids").and_then(Value::as_object_mut) {
        add_pids_overhead(pids);
    }
    resources
}

/// Least CPU quota, in thousandths of a CPU, that boots a VM under TCG in
/// reasonable time (measured: `--cpus 0.1` boots in 55 s on a 2-core host
/// at load 4.8).
pub const MIN_TCG_CPU_MILLIS: u64 = 100;

/// The guest's vCPUs: `RUNVM_CPUS`, else the container's CPU limit
/// (`cpu_cap`), else every host CPU. `RUNVM_CPUS` may lower the limit,
/// never raise it (nor exceed the host's CPUs). `runvm create` and `runvm
/// boot-probe` size their VMs with this.
pub fn guest_cpus(
    opts: &VmOptions,
    cpu_cap: Option<u32>,
    host_cpus: u32,
) -> Result<u32, RewriteError> {
    if let Some(want) = opts.cpus {
        let cap = cpu_cap.unwrap_or(host_cpus);
        if want > cap {
            return Err(RewriteError::AboveLimit {
                variable: "RUNVM_CPUS",
                want: format!("{want} vCPUs"),
                limit: match cpu_cap {
                    Some(c) => {
                        format!("the container's CPU limit ({c}, from --cpus or --cpuset-cpus)")
                    }
                    None => format!("this host's {host_cpus} CPUs"),
                },
            });
        }
    }
    Ok(opts.cpus.or(cpu_cap).unwrap_or(host_cpus).max(1))
}

/// The guest's RAM in MiB: `RUNVM_MEMORY`, else what the container's
/// memory limit (`limit`, bytes) needs ([`guest_ram_for_limit_mib`]) but
/// no more than the host has, else [`DEFAULT_MEMORY_MIB`]. `RUNVM_MEMORY`
/// may lower that, never raise it (nor exceed the host's memory), and must
/// be at least [`MIN_MEMORY_MIB`]. `runvm create` and `runvm boot-probe`
/// size their VMs with this.
///
/// The cap matters because guest RAM, unlike a cgroup limit, costs the
/// host even unused: the guest kernel's page descriptors (a 64th of it)
/// and QEMU's tables. `-m 64g` on a 24 GiB host, a limit that under runc
/// means "no limit", would take 1.4 GiB for an idle guest.
pub fn guest_memory_mib(
    opts: &VmOptions,
    limit: Option<u64>,
    host_memory_mib: u64,
) -> Result<u64, RewriteError> {
    let for_limit =
        limit.map(|l| guest_ram_for_limit_mib(l).min(host_memory_mib.max(MIN_MEMORY_MIB)));
    let Some(want) = opts.memory_mib else {
        return Ok(for_limit.unwrap_or(DEFAULT_MEMORY_MIB));
    };
    let cap = for_limit.unwrap_or(host_memory_mib);
    if want > cap {
        return Err(RewriteError::AboveLimit {
            variable: "RUNVM_MEMORY",
            want: format!("{want} MiB of guest RAM"),
            limit: match limit {
                Some(l) => format!(
                    "the {cap} MiB a VM gets for the container's memory limit ({} MiB, from --memory)",
                    l.div_ceil(MIB)
                ),
                None => format!("this host's {host_memory_mib} MiB of memory"),
            },
        });
    }
    if want < MIN_MEMORY_MIB {
        return Err(crate::options::OptionError {
            name: "RUNVM_MEMORY",
            value: format!("{want}m"),
            expected: "give the guest at least 128m of RAM (less cannot boot its kernel)".into(),
        }
        .into());
    }
    Ok(want)
}

/// The CPU quota (`--cpus`) in thousandths of a CPU, when there is one.
fn cpu_quota_millis(linux: &Map<String, Value>) -> Option<u64> {
    let cpu = linux.get("resources")?.get("cpu")?;
    let quota = cpu
        .get("quota")
        .and_then(Value::as_i64)
        .filter(|q| *q > 0)?;
    let period = cpu
        .get("period")
        .and_then(Value::as_u64)
        .filter(|p| *p > 0)?;
    Some((quota as u64).saturating_mul(1000) / period)
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
    // A malformed set ("5-2", a count past u32) counts as no set.
    let mut n = 0u32;
    for part in set.split(',').filter(|s| !s.is_empty()) {
        let count = match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?);
                b.checked_sub(a)?.checked_add(1)?
            }
            None => 1,
        };
        n = n.checked_add(count)?;
    }
    (n > 0).then_some(n)
}

/// Rewrites an exec's process object (runc's `--process` file) so that runc
/// runs the exec client, which hands the original process to the guest.
/// Returns the new process object and the original, as the guest needs it.
/// Gives an exec the container's capabilities where the engine copied the
/// supervisor's. Podman builds an exec's capability sets from the
/// config.json in the bundle, which runvm rewrote for the supervisor; under
/// runc that file has the container's own. A set that is exactly the
/// supervisor's (with or without [`MOUNT_PLACEMENT_CAP`]) becomes the
/// container's set of the same name (its bounding set for the bounding
/// set, its effective set for the effective set, …; for an exec as root,
/// its bounding set for the effective and permitted sets too): the set
/// Podman would have copied under runc. Any other set is the engine's
/// choice (`--privileged`, an exec as another user) and stays. With the
/// container's sets unknown, pass empty ones: the supervisor's never reach
/// the guest.
pub fn exec_caps_from_container(process: &mut Value, container: &Capabilities) {
    // Podman gives an exec as root its bounding set as its effective and
    // permitted sets too.
    let root = process
        .pointer("/user/uid")
        .and_then(Value::as_u64)
        .is_none_or(|uid| uid == 0);
    let supervisor: std::collections::BTreeSet<&str> = SUPERVISOR_CAPS.iter().copied().collect();
    let is_supervisors = |set: &[Value]| {
        let mut names: std::collections::BTreeSet<&str> =
            set.iter().filter_map(Value::as_str).collect();
        names.remove(MOUNT_PLACEMENT_CAP);
        names == supervisor
    };
    let Some(caps) = process
        .get_mut("capabilities")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let none = Vec::new();
    for (name, set) in caps.iter_mut() {
        if !set.as_array().is_some_and(|a| is_supervisors(a)) {
            continue;
        }
        let same_named = match name.as_str() {
            "bounding" => &container.bounding,
            "effective" | "permitted" if root => &container.bounding,
            "effective" => &container.effective,
            "permitted" => &container.permitted,
            "inheritable" => &container.inheritable,
            "ambient" => &container.ambient,
            // Not a set runc knows: nothing of the supervisor's stays.
            _ => &none,
        };
        *set = json!(same_named);
    }
}

pub fn rewrite_exec_process(mut process: Value) -> Result<(Value, ProcessSpec), RewriteError> {
    let spec = guest_process(&process)?;
    let p = obj(&mut process, "process")?;
    let mut env =
        vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned()];
    env.extend(
        runvm_contract::exec_spec::encode(&spec).map_err(|e| RewriteError::Malformed {
            field: "process",
            why: e.chain().to_string(),
        })?,
    );
    p.insert("args".into(), json!([paths::SUPERVISOR, "exec"]));
    p.insert("env".into(), json!(env));
    p.insert("cwd".into(), json!("/"));
    p.insert("user".into(), json!({"uid": 0, "gid": 0}));
    p.shift_remove("rlimits");
    // The exec client only talks to the supervisor's socket: it needs no
    // capability on the host side, whatever `docker exec --privileged` or
    // the container's capabilities say (those apply in the guest).
    p.insert("noNewPrivileges".into(), json!(true));
    set_capabilities(p, &[]);
    Ok((process, spec))
}
