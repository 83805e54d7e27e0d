//! The runtime's error type. Every message is one line that names the
//! problem and, where the user can do something, the fix.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid JSON")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Option(#[from] runvm_config::options::OptionError),
    #[error(transparent)]
    Rewrite(#[from] runvm_config::RewriteError),
    #[error(transparent)]
    Kernel(#[from] runvm_initramfs::Error),
    #[error(transparent)]
    Mounts(#[from] runvm_mounts::MountError),
    #[error("RUNVM_ACCEL=kvm was asked for but KVM is not available ({0}): load the kvm module and give the Docker host access to /dev/kvm, or use RUNVM_ACCEL=tcg")]
    NoKvm(String),
    #[error("{what} not found ({looked}): {fix}")]
    Missing {
        what: &'static str,
        looked: String,
        fix: &'static str,
    },
    #[error("cannot run {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// The workload cannot be executed; worded exactly as runc words it.
    #[error("runc create failed: unable to start container process")]
    Exec(#[source] runvm_protocol::runc_compat::LookPathError),
    /// An exec's program cannot be executed; worded as runc words it.
    #[error("exec failed: unable to start container process")]
    ExecInContainer(#[source] runvm_protocol::runc_compat::LookPathError),
    #[error("{0}")]
    Usage(String),
    #[error("not root on the host ({why}): runvm needs the host's root, and rootless engines (rootless Podman, Docker's rootless mode) are not supported; run the engine as root, for example `sudo podman run --runtime runvm …`")]
    Rootless { why: String },
}

pub type Result<T> = std::result::Result<T, RuntimeError>;
