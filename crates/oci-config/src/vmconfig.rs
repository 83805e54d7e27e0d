//! The file the runtime writes for the supervisor (`/runvm/vm.json`).

use serde::{Deserialize, Serialize};

use crate::options::Accel;
use runvm_protocol::ContainerSpec;

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
    pub virtiofsd: String,
    pub kernel: String,
    pub initrd: String,
    pub rootfs: String,
    pub debug: bool,
    /// The container has a network namespace of its own whose interfaces
    /// move into the VM. False with `--network host`: the supervisor then
    /// leaves the host's interfaces alone and the VM has loopback only.
    #[serde(default)]
    pub own_network: bool,
    /// QEMU's unprivileged uid and gid.
    pub qemu_uid: u32,
    pub qemu_gid: u32,
    /// Docker's bind mounts, staged by runc inside runvm's root, to be moved
    /// to their destinations inside `rootfs` (see `runvm-mounts`).
    #[serde(default)]
    pub staged_mounts: Vec<runvm_mounts::StagedMount>,
    /// The container as the guest must reproduce it (network is filled in
    /// by the supervisor, which sees the container's interfaces).
    pub container: ContainerSpec,
}
