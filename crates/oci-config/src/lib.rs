//! How runvm turns Docker's container into a VM: the rewrite of the OCI
//! bundle's `config.json` and the per-container VM settings (`RUNVM_*`),
//! which together make the [`runvm_contract::VmConfig`] the supervisor
//! reads.
//!
//! config.json is edited as generic JSON (`serde_json::Value` with key order
//! preserved), never through a typed model: whatever a container engine puts
//! in it that runvm does not know about passes through untouched.

pub mod disks;
pub mod host_seccomp;
pub mod options;
pub mod rewrite;
pub mod seccomp;

pub use options::{AccelRequest, VmOptions};
pub use rewrite::{
    exec_caps_from_container, rewrite_config, rewrite_exec_process, rewrite_update_resources,
    HostLayout, RewriteError, Rewritten,
};
