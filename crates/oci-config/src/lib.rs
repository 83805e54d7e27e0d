//! How runvm turns Docker's container into a VM: the rewrite of the OCI
//! bundle's `config.json`, the per-container VM settings (`RUNVM_*`), and
//! the file ([`VmConfig`]) that carries everything to the supervisor.
//!
//! config.json is edited as generic JSON (`serde_json::Value` with key order
//! preserved), never through a typed model: whatever a container engine puts
//! in it that runvm does not know about passes through untouched.

pub mod exec_spec;
pub mod host_seccomp;
pub mod options;
pub mod rewrite;
pub mod seccomp;
pub mod vmconfig;

pub use options::{Accel, AccelRequest, VmOptions};
pub use rewrite::{
    rewrite_config, rewrite_exec_process, rewrite_update_resources, HostLayout, RewriteError,
    Rewritten,
};
pub use vmconfig::VmConfig;

/// Where the supervisor finds things inside the container.
pub mod paths {
    /// The image's root filesystem, with Docker's mounts on top.
    pub const ROOTFS: &str = "/rootfs";
    /// runvm's own files inside the container.
    pub const RUNVM_DIR: &str = "/runvm";
    pub const VM_CONFIG: &str = "/runvm/vm.json";
    pub const KERNEL: &str = "/runvm/vmlinuz";
    pub const INITRD: &str = "/runvm/initrd.img";
    pub const SUPERVISOR: &str = "/runvm/bin/runvm-supervisor";
    pub const VIRTIOFSD: &str = "/runvm/bin/virtiofsd";
    /// Where runc mounts Docker's bind mounts (`/runvm/mnt/<n>`) before
    /// they are moved to their destinations inside [`ROOTFS`]: runc never
    /// resolves a destination the image could redirect.
    pub const STAGING_DIR: &str = "/runvm/mnt";
    /// Written (on the host) once the staged mounts are in place.
    pub const MOUNTS_PLACED: &str = "/runvm/mounts-placed";
    /// Sockets and logs of the helpers (a private tmpfs).
    pub const RUN_DIR: &str = "/run/runvm";
    /// Annotation set on a rewritten config, so a second rewrite is refused.
    pub const ANNOTATION: &str = "io.runvm.rewritten";
}
