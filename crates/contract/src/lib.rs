//! What runvm's parts agree on, in one place that the runtime, the
//! supervisor, the guest agent and the initramfs builder all read:
//!
//! - [`VmConfig`]: the file the runtime writes for the supervisor;
//! - [`paths`]: where things are inside runvm's root in the container;
//! - [`sockets`]: the helpers' sockets in the container's private `/run`;
//! - [`guest`]: names the guest sees (the agent's port, the root's virtiofs
//!   tag) and the initramfs layout the agent reads;
//! - [`exec_spec`]: how an exec's process spec reaches the exec client;
//! - [`report`]: how an error and its causes are shown to the user.

pub mod exec_spec;
pub mod report;

use serde::{Deserialize, Serialize};

use runvm_protocol::{ContainerSpec, DiskFs};

/// Where the supervisor finds things inside the container.
pub mod paths {
    /// The image's root filesystem, with Docker's mounts on top.
    pub const ROOTFS: &str = "/rootfs";
    /// runvm's own files inside the container.
    pub const RUNVM_DIR: &str = "/runvm";
    pub const VM_CONFIG: &str = "/runvm/vm.json";
    pub const KERNEL: &str = "/runvm/vmlinuz";
    pub const INITRD: &str = "/runvm/initrd.img";
    /// The guest kernel's modules (`lib/modules/<version>` of its tree in
    /// the kernel store), read-only, served to the guest by a virtiofsd of
    /// their own.
    pub const MODULES: &str = "/runvm/modules";
    pub const SUPERVISOR: &str = "/runvm/bin/runvm-supervisor";
    pub const VIRTIOFSD: &str = "/runvm/bin/virtiofsd";
    /// Where runc mounts Docker's bind mounts (`/runvm/mnt/<n>`) before
    /// they are moved to their destinations inside [`ROOTFS`]: runc never
    /// resolves a destination the image could redirect.
    pub const STAGING_DIR: &str = "/runvm/mnt";
    /// Written (on the host) once the staged mounts are in place.
    pub const MOUNTS_PLACED: &str = "/runvm/mounts-placed";
    /// Where the disks' backing files are bound (`/runvm/disks/<n>`), out
    /// of the image's reach, once they are found or made inside it.
    pub const DISKS_DIR: &str = "/runvm/disks";
    /// Annotation set on a rewritten config, so a second rewrite is refused.
    pub const ANNOTATION: &str = "io.runvm.rewritten";
}

/// The helpers' sockets, in the container's private tmpfs at [`RUN_DIR`].
pub mod sockets {
    /// A tmpfs of the container's own (never a host directory).
    pub const RUN_DIR: &str = "/run/runvm";
    /// virtiofsd's vhost-user socket (the supervisor listens, virtiofsd
    /// inherits it, QEMU connects).
    pub const VIRTIOFS: &str = "/run/runvm/virtiofs.sock";
    /// The virtiofsd that serves the kernel's modules.
    pub const MODULES_VIRTIOFS: &str = "/run/runvm/modules.sock";
    /// The guest agent's channel: QEMU connects to the supervisor here.
    pub const AGENT: &str = "/run/runvm/agent.sock";
    /// The guest's serial console: QEMU connects and the supervisor keeps
    /// the last lines in memory (a file would grow with whatever the guest
    /// prints, in a small tmpfs).
    pub const CONSOLE: &str = "/run/runvm/console.sock";
    /// Where `docker exec`'s client reaches the supervisor.
    pub const EXEC: &str = "/run/runvm/exec.sock";
    /// QEMU's monitor (QMP): QEMU connects; the supervisor plugs and
    /// unplugs NICs through it when the container's networks change.
    pub const QMP: &str = "/run/runvm/qmp.sock";
}

/// What the guest sees: device names and the initramfs layout.
pub mod guest {
    /// Name of the virtio-serial port that carries the host channel.
    pub const AGENT_PORT_NAME: &str = "io.runvm.agent";
    /// virtiofs tag under which the container's root filesystem is
    /// exported.
    pub const ROOTFS_TAG: &str = "runvm-root";
    /// virtiofs tag of the guest kernel's modules, which the agent mounts
    /// read-only at `/lib/modules/<version>` in the container's root.
    pub const MODULES_TAG: &str = "runvm-modules";
    /// Where the initramfs puts the kernel modules.
    pub const MODULES_DIR: &str = "/lib/modules";
    /// The file in [`MODULES_DIR`] that lists the modules in load order,
    /// one file name per line.
    pub const LOAD_ORDER_FILE: &str = "load-order";
    /// [`LOAD_ORDER_FILE`]'s full path.
    pub const LOAD_ORDER: &str = "/lib/modules/load-order";
    /// Kernel command-line flag: the agent logs its debug entries.
    pub const DEBUG_FLAG: &str = "runvm.debug";
    /// Kernel command-line flag: the agent is a boot probe; it prints
    /// [`PROBE_READY`] on the console once its channel is open, and powers
    /// off (`runvm boot-probe`, the floor of `make bench`).
    pub const PROBE_FLAG: &str = "runvm.probe";
    /// The probe's console line.
    pub const PROBE_READY: &str = "runvm-agent: ready";
}

/// The accelerator QEMU uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

/// As users know them: `KVM`, `TCG`.
impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "KVM",
            Accel::Tcg => "TCG",
        })
    }
}

/// One mount runc made at a staging point, and where the container wants it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedMount {
    /// The staging point inside runvm's root, e.g. `/runvm/mnt/3`.
    pub staging: String,
    /// The destination as the container names it, e.g. `/data`.
    pub destination: String,
}

/// A disk of the container (`RUNVM_DISKS`, `RUNVM_ROOTDISK`): a file
/// inside the container that backs a virtio block device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmDisk {
    /// The backing file as the container names it (in its image or on a
    /// volume), e.g. `/disks/data.img`.
    pub source: String,
    /// Where the guest mounts it (`/` for the root disk).
    pub destination: String,
    pub fs: DiskFs,
    /// The size of a file that does not exist yet, in bytes; without it, a
    /// missing file is an error.
    pub size: Option<u64>,
}

impl VmDisk {
    /// Where the backing file is bound in runvm's root: `/runvm/disks/<n>`
    /// for the `n`th disk.
    pub fn slot(n: usize) -> String {
        format!("{}/{n}", paths::DISKS_DIR)
    }

    /// The virtio serial of disk `n` (at most 20 bytes, QEMU's limit).
    pub fn serial(n: usize) -> String {
        format!("runvm-disk{n}")
    }
}

/// Everything the supervisor needs to boot the VM and start the workload.
/// Paths are as seen inside the container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmConfig {
    pub accel: Accel,
    /// Why KVM is not used, when `accel` is TCG without the user asking.
    pub accel_warning: Option<String>,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub qemu: String,
    /// QEMU's `-bios`, if not its default (see `Install::firmware`).
    #[serde(default)]
    pub firmware: Option<String>,
    pub virtiofsd: String,
    pub kernel: String,
    pub initrd: String,
    pub rootfs: String,
    pub debug: bool,
    /// Print the phase timings at the end (`RUNVM_DEBUG=phases` or `=1`).
    #[serde(default)]
    pub phases: bool,
    /// When the runtime began to create the container (ms since the Unix
    /// epoch), where the phase timings start; 0 if unknown.
    #[serde(default)]
    pub created_unix_ms: u64,
    /// When the runtime had rewritten the bundle, just before runc runs.
    #[serde(default)]
    pub rewritten_unix_ms: u64,
    /// Kernel parameters the container asked for (`RUNVM_KERNEL_APPEND`,
    /// already checked), after runvm's own.
    #[serde(default)]
    pub kernel_append: Vec<String>,
    /// The supervisor runs in a network namespace of the container's own,
    /// whose interfaces move into the VM (always, for a container: runvm
    /// refuses `--network host` and `container:X`). False for the boot
    /// probe, which runs in the host's namespace: the supervisor then
    /// touches no interface and the VM has loopback only.
    #[serde(default)]
    pub own_network: bool,
    /// QEMU's unprivileged uid and gid.
    pub qemu_uid: u32,
    pub qemu_gid: u32,
    /// Docker's bind mounts, staged by runc inside runvm's root, to be moved
    /// to their destinations inside `rootfs` (see `runvm-mounts`).
    #[serde(default)]
    pub staged_mounts: Vec<StagedMount>,
    /// The container's disks, in order (the root disk, if any, among
    /// them, with destination `/`).
    #[serde(default)]
    pub disks: Vec<VmDisk>,
    /// The container as the guest must reproduce it (network is filled in
    /// by the supervisor, which sees the container's interfaces).
    pub container: ContainerSpec,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_load_order_path_is_in_the_modules_dir() {
        assert_eq!(
            guest::LOAD_ORDER,
            format!("{}/{}", guest::MODULES_DIR, guest::LOAD_ORDER_FILE)
        );
    }

    #[test]
    fn sockets_are_in_the_run_dir() {
        for s in [
            sockets::VIRTIOFS,
            sockets::AGENT,
            sockets::CONSOLE,
            sockets::EXEC,
        ] {
            assert!(s.starts_with(&format!("{}/", sockets::RUN_DIR)), "{s}");
        }
    }
}

#[cfg(test)]
mod accel_tests {
    use super::Accel;

    #[test]
    fn accelerators_show_as_users_know_them() {
        assert_eq!(Accel::Kvm.to_string(), "KVM");
        assert_eq!(Accel::Tcg.to_string(), "TCG");
    }
}

/// The container's network namespace on the host, once its interfaces are
/// the VM's.
pub mod netns {
    /// The ephemeral ports of the namespace's own stack
    /// (`net.ipv4.ip_local_port_range`, set through config.json). dockerd
    /// forwards the lookups its embedded resolver cannot answer from inside
    /// the namespace, from one of these ports; the supervisor lets answers
    /// to them through to the namespace's stack and sends everything else
    /// to the VM. The range lies above the guest kernel's default
    /// (32768–60999), so the workload's own connections never use it, and
    /// it is aligned ([`LOCAL_PORTS_MASK`]) so a single u32 match selects
    /// it.
    pub const LOCAL_PORTS: (u16, u16) = (61440, 65535);
    /// The bits every port of [`LOCAL_PORTS`] has set, and no port below it.
    pub const LOCAL_PORTS_MASK: u16 = 0xf000;
    /// [`LOCAL_PORTS`] as the sysctl writes it.
    pub const LOCAL_PORTS_SYSCTL: (&str, &str) = ("net.ipv4.ip_local_port_range", "61440 65535");
}

#[cfg(test)]
mod netns_tests {
    use super::netns::*;

    #[test]
    fn the_local_ports_are_exactly_those_the_mask_selects() {
        let (lo, hi) = LOCAL_PORTS;
        assert_eq!(lo & LOCAL_PORTS_MASK, LOCAL_PORTS_MASK);
        assert_eq!(hi, u16::MAX);
        assert_eq!((lo - 1) & LOCAL_PORTS_MASK, LOCAL_PORTS_MASK - 0x1000);
        assert_eq!(LOCAL_PORTS_SYSCTL.1, format!("{lo} {hi}"));
        // Above the guest kernel's default ephemeral range.
        assert!(lo > 60999);
    }
}
