//! Messages exchanged on the host↔guest control streams.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::mac::MacAddr;

/// First frame of every stream the host opens: what the stream carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StreamHeader {
    /// Control stream of one process: `process` is chosen by the host and
    /// names the process in the stdio stream headers that follow.
    Control { process: u32 },
    /// Standard input of a process (host → guest bytes).
    Stdin { process: u32 },
    /// Standard output of a process, or its terminal output (guest → host).
    Stdout { process: u32 },
    /// Standard error of a process (guest → host).
    Stderr { process: u32 },
    /// The DNS relay (see [`crate::dns`]), opened once, before the
    /// container's control stream, when [`GuestNetwork::dns_relay`] is set.
    Dns,
    /// One change of the container's networks while it runs: the host
    /// sends the whole new [`GuestNetwork`] (its NICs already plugged in),
    /// the guest answers [`NetworkUpdated`] once it is configured.
    Network,
}

/// The guest's answer on a [`StreamHeader::Network`] stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkUpdated {
    /// Why the guest could not take the new network, if it could not.
    pub error: Option<String>,
}

/// A host-to-guest control message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HostMessage {
    /// Boot-time setup plus the container's main process. Sent once, on the
    /// first control stream.
    StartContainer(Box<StartContainer>),
    /// Run another process in the running container (`docker exec`). Sent
    /// as the first message of its own control stream.
    Exec(Box<ProcessSpec>),
    /// Deliver a signal to the process of this control stream.
    Signal { signal: i32 },
    /// The terminal of the process changed size.
    Resize { rows: u16, cols: u16 },
    /// The host has everything it needs: the guest may sync and power off.
    Shutdown,
}

/// A guest-to-host control message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum GuestMessage {
    /// The process runs, with this pid as seen by the agent; `boot` says
    /// when the guest reached its milestones, for the phase timings.
    Started {
        pid: i32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        boot: Option<BootMarks>,
    },
    /// The process could not be started; `exit_code` is what a shell would
    /// report (126 not executable, 127 not found, …).
    StartFailed { message: String, exit_code: i32 },
    /// The process ended and all its output has been sent. `status` is the
    /// exit code as a container runtime reports it (128+signal if killed).
    Exited { status: i32 },
    /// Setup of the VM failed before the process could start.
    SetupFailed { message: String },
}

/// When the guest reached its milestones, in milliseconds of its own
/// uptime (CLOCK_BOOTTIME, which starts with the kernel): the host, which
/// knows when the message arrived, places them on its own clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootMarks {
    /// The agent started as `/init`.
    pub init_ms: u64,
    /// The agent opened the host channel.
    pub ready_ms: u64,
    /// The request to start the container arrived.
    #[serde(default)]
    pub request_ms: u64,
    /// The container was set up (root, mounts, network), about to start.
    #[serde(default)]
    pub prepared_ms: u64,
    /// The process was started (the moment this message was sent).
    pub started_ms: u64,
}

/// Everything the guest needs to turn itself into the container: what the
/// runtime knows (the container) and what the supervisor adds once it has
/// seen the container's network namespace. Both travel as the fields of
/// one JSON object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct StartContainer {
    #[serde(flatten)]
    pub container: ContainerSpec,
    #[serde(flatten)]
    pub network: GuestNetwork,
}

/// The container's network as the guest must reproduce it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct GuestNetwork {
    pub interfaces: Vec<Interface>,
    pub routes: Vec<Route>,
    /// The host opened a [`StreamHeader::Dns`] stream: the guest relays
    /// lookups of `127.0.0.11` over it (when the container's
    /// `/etc/resolv.conf` names that address).
    #[serde(default)]
    pub dns_relay: bool,
}

/// The container as the runtime describes it, from its config.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ContainerSpec {
    pub hostname: Option<String>,
    pub process: ProcessSpec,
    /// Filesystems the guest mounts itself (tmpfs and the like), in order.
    pub mounts: Vec<GuestMount>,
    /// Mount the root filesystem read-only.
    pub readonly_root: bool,
    /// Paths hidden from the workload, as runc hides `linux.maskedPaths`:
    /// a file gets `/dev/null` bound over it, a directory an empty
    /// read-only tmpfs.
    #[serde(default)]
    pub masked_paths: Vec<String>,
    /// Paths bound onto themselves read-only (`linux.readonlyPaths`).
    #[serde(default)]
    pub readonly_paths: Vec<String>,
    /// `/sys` is read-only (Docker's sysfs mount has `ro` unless
    /// `--privileged`).
    #[serde(default)]
    pub sysfs_readonly: bool,
    /// `/sys/fs/cgroup` is read-only (likewise).
    #[serde(default)]
    pub cgroup_readonly: bool,
    /// The container may open any device (its device cgroup allows all,
    /// as `--privileged` makes it): opening a node of a driver the guest
    /// kernel lacks loads that driver, as under runc. Otherwise the
    /// kernel's requests for a driver by device number are refused, as
    /// runc's device cgroup refuses the open before the kernel asks.
    #[serde(default)]
    pub any_device: bool,
    /// The container's seccomp filter (`linux.seccomp`, compiled on the
    /// host), installed on the workload and on every exec; `None` when the
    /// container is unconfined.
    #[serde(default)]
    pub seccomp: Option<SeccompFilter>,
    /// The guest kernel's version, when its modules are served to the
    /// guest (virtiofs tag `runvm-modules`): the agent mounts
    /// them at `/lib/modules/<version>`, so `modprobe` works for the
    /// workload.
    #[serde(default)]
    pub kernel_modules: Option<String>,
    /// Block devices the guest mounts (`RUNVM_DISKS`, and `RUNVM_ROOTDISK`
    /// as the disk whose destination is `/`), in the order given.
    #[serde(default)]
    pub disks: Vec<GuestDisk>,
    /// Where Docker's mounts are (volumes, `/etc/hosts`, …), in order. A
    /// root disk shows them at these paths, bound from the container's
    /// files (virtiofs), and leaves them out when it is first filled.
    #[serde(default)]
    pub docker_mounts: Vec<String>,
    /// Which cgroup file systems the guest mounts for the workload
    /// (`RUNVM_CGROUPFS`); `None`: chosen by the entrypoint (none for
    /// systemd, which mounts its own; cgroup v2 otherwise).
    #[serde(default)]
    pub cgroupfs: Option<CgroupFs>,
    /// The container's sysctls (`linux.sysctl`, in the engine's order:
    /// `--sysctl`, `--domainname` as `kernel.domainname`, the engine's
    /// defaults), which the agent writes in the guest before the workload
    /// starts, as runc writes them in the container's namespaces.
    #[serde(default)]
    pub sysctl: Vec<(String, String)>,
    /// The container's own limits, which the guest holds its workload to
    /// (the host's cgroup has room for the VM above them).
    #[serde(default)]
    pub limits: GuestLimits,
    /// `--device` nodes the agent makes in the guest (only devices the
    /// guest kernel has under the same numbers; the host side refuses
    /// others).
    #[serde(default)]
    pub devices: Vec<GuestDevice>,
}

/// A device node of the container's (`linux.devices`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestDevice {
    /// Absolute path in the container, e.g. `/dev/mynull`.
    pub path: String,
    /// A block device (else a character device).
    pub block: bool,
    pub major: u32,
    pub minor: u32,
    /// Permission bits (`fileMode`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Limits the agent sets on a cgroup of the workload's (and its execs') in
/// the guest, as runc sets them on the container's cgroup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestLimits {
    /// `memory.max`, in bytes (`--memory`).
    pub memory_bytes: Option<u64>,
    /// `pids.max` (`--pids-limit`).
    pub pids: Option<u64>,
}

impl GuestLimits {
    pub fn any(&self) -> bool {
        self.memory_bytes.is_some() || self.pids.is_some()
    }
}

/// Where the guest mounts its kernel file systems in the container.
pub const KERNEL_FS_MOUNTPOINTS: [&str; 3] = ["/proc", "/sys", "/dev"];

impl ContainerSpec {
    /// Where the guest mounts file systems of its own: its kernel file
    /// systems, its tmpfs mounts and its file-system disks (the root disk
    /// and raw disks aside). Their mount points are made before a
    /// `--read-only` root becomes read-only (an image from Podman has no
    /// init layer that made `/proc`, `/sys` and `/dev`).
    pub fn guest_mountpoints(&self) -> Vec<String> {
        KERNEL_FS_MOUNTPOINTS
            .iter()
            .map(|d| d.to_string())
            .chain(self.mounts.iter().map(|m| m.destination.clone()))
            .chain(
                self.disks
                    .iter()
                    .filter(|d| d.destination != "/" && d.fs != DiskFs::Raw)
                    .map(|d| d.destination.clone()),
            )
            .collect()
    }

    /// Whether `path` (absolute, in the container) is somewhere only the
    /// guest has: its kernel file systems (`/dev`, `/proc`, `/sys`), its
    /// tmpfs mounts and disks, anything on a root disk. The host side
    /// cannot judge such a path by the container's files.
    pub fn guest_only(&self, path: &str) -> bool {
        let under = |dir: &str| {
            let dir = dir.trim_end_matches('/');
            path == dir
                || path
                    .strip_prefix(dir)
                    .is_some_and(|rest| rest.starts_with('/'))
        };
        self.disks.iter().any(|d| d.destination == "/")
            || self.guest_mountpoints().iter().any(|m| under(m))
    }
}

/// The cgroup file systems the guest mounts under `/sys/fs/cgroup`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupFs {
    /// Nothing: the workload (systemd) mounts its own.
    None,
    /// The v1 controllers, each at `/sys/fs/cgroup/<controller>`.
    V1,
    /// The unified hierarchy at `/sys/fs/cgroup`.
    V2,
    /// The v1 controllers, and the unified hierarchy at
    /// `/sys/fs/cgroup/unified`.
    Hybrid,
}

/// What a disk holds: a file system runvm formats and mounts, or nothing
/// (`raw`: the workload gets the block device).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFs {
    Ext4,
    Xfs,
    Raw,
}

impl DiskFs {
    /// The name users write and `mount(2)` takes.
    pub fn name(self) -> &'static str {
        match self {
            DiskFs::Ext4 => "ext4",
            DiskFs::Xfs => "xfs",
            DiskFs::Raw => "raw",
        }
    }
}

/// A virtio block device of the VM, as the guest must use it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestDisk {
    /// The device's virtio serial, by which the guest finds it
    /// (`/sys/block/vdX/serial`).
    pub serial: String,
    /// Where it is mounted (`/` for the root disk); for a `raw` disk, the
    /// path of the device node the workload gets.
    pub destination: String,
    pub fs: DiskFs,
}

/// The label of a file system runvm just made on a disk: the guest fills
/// it with what the image has at the disk's destination, then clears the
/// label (fits ext4's 16 bytes and xfs's 12).
pub const FRESH_LABEL: &str = "runvm-fresh";

/// A compiled seccomp filter, ready for `seccomp(2)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeccompFilter {
    /// The classic BPF program, one `struct sock_filter` per instruction.
    pub program: Vec<SockFilter>,
    /// `SECCOMP_FILTER_FLAG_*` bits to install the filter with.
    #[serde(default)]
    pub flags: u32,
}

/// One classic BPF instruction (`struct sock_filter`), sent as the array
/// `[code, jt, jf, k]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SockFilter(pub u16, pub u8, pub u8, pub u32);

impl SockFilter {
    pub fn code(&self) -> u16 {
        self.0
    }
    pub fn jt(&self) -> u8 {
        self.1
    }
    pub fn jf(&self) -> u8 {
        self.2
    }
    pub fn k(&self) -> u32 {
        self.3
    }
}

/// The process to run: the parts of an OCI `process` object the guest needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ProcessSpec {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub terminal: bool,
    /// Initial terminal size, when `terminal` is set.
    pub console_size: Option<(u16, u16)>,
    pub rlimits: Vec<Rlimit>,
    /// Limits the process inherits when `rlimits` does not set them: under
    /// runc a process inherits the runtime's own limits, so the host side
    /// sends its own here. Applied best-effort (the guest kernel may cap
    /// some of them).
    #[serde(default)]
    pub inherited_rlimits: Vec<Rlimit>,
    pub umask: Option<u32>,
    pub no_new_privileges: bool,
    /// Capability sets by name (`CAP_CHOWN`, …); `None` leaves the process
    /// with every capability, as an OCI process without the field would.
    #[serde(default)]
    pub capabilities: Option<Capabilities>,
    /// `process.oomScoreAdj` (`--oom-score-adj`), written for the process
    /// in the guest as runc writes it.
    #[serde(default)]
    pub oom_score_adj: Option<i32>,
}

/// The capability sets of a process, as in the OCI spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Capabilities {
    pub bounding: Vec<String>,
    pub effective: Vec<String>,
    pub permitted: Vec<String>,
    pub inheritable: Vec<String>,
    pub ambient: Vec<String>,
}

/// One resource limit, named as in the OCI spec (`RLIMIT_NOFILE`, …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    #[serde(rename = "type")]
    pub kind: String,
    pub soft: u64,
    pub hard: u64,
}

/// A network interface of the container, to be reproduced in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    /// The guest NIC has the same MAC (`aa:bb:cc:dd:ee:ff` on the wire).
    pub mac: MacAddr,
    pub mtu: u32,
    /// Addresses with their prefix length (`172.17.0.2/16`, `fd00::2/64` on
    /// the wire).
    pub addresses: Vec<IpNet>,
}

/// A route of the container, to be reproduced in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// `0.0.0.0/0` or `::/0` for a default route.
    pub destination: IpNet,
    pub gateway: Option<IpAddr>,
    /// Name of the interface the route goes out of.
    pub device: String,
    pub metric: Option<u32>,
}

/// A filesystem the guest mounts itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestMount {
    pub destination: String,
    pub fstype: String,
    pub source: String,
    /// Mount options as in an OCI mount (`nosuid`, `size=65536k`, …).
    pub options: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_mountpoints_are_tmpfs_mounts_and_file_system_disks() {
        let disk = |destination: &str, fs| GuestDisk {
            serial: "s".into(),
            destination: destination.into(),
            fs,
        };
        let spec = ContainerSpec {
            mounts: vec![GuestMount {
                destination: "/run".into(),
                fstype: "tmpfs".into(),
                source: "tmpfs".into(),
                options: vec![],
            }],
            disks: vec![
                disk("/", DiskFs::Ext4),
                disk("/data", DiskFs::Xfs),
                disk("/dev/raw", DiskFs::Raw),
            ],
            ..Default::default()
        };
        assert_eq!(
            spec.guest_mountpoints(),
            ["/proc", "/sys", "/dev", "/run", "/data"]
        );
        assert!(
            spec.guest_only("/srv"),
            "on a root disk, everything is the guest's"
        );
        let mut spec = spec;
        spec.disks.retain(|d| d.destination != "/");
        for (path, only) in [
            ("/run", true),
            ("/run/x/y", true),
            ("/running", false),
            ("/data/a", true),
            ("/dev/shm/w", true),
            ("/proc", true),
            ("/srv", false),
            ("/", false),
        ] {
            assert_eq!(spec.guest_only(path), only, "{path}");
        }
    }
}
