//! The supervisor's error type. Each message says what failed and why.

use runvm_contract::report::ErrorChain;

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("cannot read the VM configuration {path}")]
    Config {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the VM configuration {path} is malformed")]
    ConfigJson {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Mounts(#[from] runvm_mounts::MountError),
    #[error("network setup failed")]
    Network(#[from] crate::network::NetError),
    #[error("the container has {0} network interfaces; a runvm VM takes 31 at most: connect fewer networks")]
    TooManyNics(usize),
    #[error("cannot start {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} stopped during startup ({status}){detail}")]
    HelperDied {
        program: &'static str,
        status: String,
        detail: String,
    },
    #[error("QEMU never connected to the agent socket: {why}{detail}")]
    NoAgentConnection { why: String, detail: String },
    #[error("boot probe failed: {0}")]
    Probe(String),
    #[error("the host-guest channel failed: {0}")]
    Channel(String),
    #[error(transparent)]
    ExecSpec(#[from] runvm_contract::exec_spec::ExecSpecError),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl SupervisorError {
    pub fn io(what: impl Into<String>, source: impl Into<std::io::Error>) -> Self {
        Self::Io {
            what: what.into(),
            source: source.into(),
        }
    }
}

impl From<runvm_protocol::FrameError> for SupervisorError {
    fn from(e: runvm_protocol::FrameError) -> Self {
        Self::Channel(e.chain().to_string())
    }
}

pub type Result<T> = std::result::Result<T, SupervisorError>;
