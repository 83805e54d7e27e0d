//! The agent's error type.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot mount {what} on {}", target.display())]
    Mount {
        what: String,
        target: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("cannot load kernel module {module}")]
    Module {
        module: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the host channel (virtio-serial port {0}) did not appear")]
    NoPort(&'static str),
    #[error("cannot {what}")]
    Sys {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A disk the guest cannot use, with what to do about it.
    #[error("{0}")]
    Disk(String),
    #[error("network setup failed")]
    Network(#[from] crate::network::NetError),
    #[error("host channel")]
    Channel(#[from] runvm_protocol::FrameError),
    #[error("the host asked to start the container a second time")]
    AlreadyStarted,
    #[error("a control stream began with a message other than a start or an exec")]
    UnexpectedRequest,
}

impl AgentError {
    pub fn sys(what: impl Into<String>, source: impl Into<std::io::Error>) -> Self {
        Self::Sys {
            what: what.into(),
            source: source.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, AgentError>;
