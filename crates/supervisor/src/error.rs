//! The supervisor's error type. Each message says what failed and why.

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("cannot read the VM configuration {path}: {source}")]
    Config {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the VM configuration {path} is malformed: {source}")]
    ConfigJson {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{0}")]
    Mounts(#[from] runvm_mounts::MountError),
    #[error("network setup failed: {0}")]
    Network(#[from] crate::network::NetError),
    #[error("cannot start {program}: {source}")]
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
    #[error("the host-guest channel failed: {0}")]
    Channel(String),
    #[error("{0}")]
    ExecSpec(#[from] runvm_contract::exec_spec::ExecSpecError),
    #[error("{what}: {source}")]
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
        Self::Channel(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, SupervisorError>;
