//! `docker exec` inside the VM.
//!
//! runvm rewrites an exec's process so that runc runs this binary as
//! `runvm-supervisor exec` in the container, with the real process spec in
//! `RUNVM_EXEC_SPEC`. That exec client connects to the supervisor's exec
//! socket and speaks the guest protocol over its own yamux session; the
//! supervisor forwards each of its streams to the guest agent, giving every
//! exec a process number of its own. The guest network plays no part, so
//! exec works even when the guest has no network at all.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};

use crate::error::{Result, SupervisorError};
use crate::relay;
use crate::session::{self, Outcome};
use runvm_protocol::session::{read_frame, write_frame, Mode, Mux, MuxStream};
use runvm_protocol::{HostMessage, ProcessSpec, StreamHeader};

/// The exec socket, in the container's private /run.
pub const EXEC_SOCKET: &str = "/run/runvm/exec.sock";
/// The environment variable that carries the exec's process spec.
pub const SPEC_ENV: &str = runvm_config::paths::EXEC_SPEC_ENV;
/// How long an exec waits for a booting VM.
const BOOT_WAIT: Duration = Duration::from_secs(120);

/// The agent session, once the VM is up (None before, and forever if the
/// VM never comes up).
pub type AgentState = watch::Receiver<Option<Mux>>;

/// Accepts exec clients and forwards their streams to the agent.
pub async fn serve(listener: UnixListener, agent: AgentState) {
    let ids = Arc::new(AtomicU32::new(1));
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            continue;
        };
        let mut agent = agent.clone();
        let ids = ids.clone();
        tokio::spawn(async move {
            // Wait for the VM (an exec right after `docker run -d`).
            let mux: Option<Mux> =
                match tokio::time::timeout(BOOT_WAIT, agent.wait_for(Option::is_some)).await {
                    Ok(Ok(m)) => m.clone(),
                    _ => None,
                };
            let Some(mux) = mux else {
                return; // dropping the connection fails the client
            };
            forward(conn, mux, ids).await;
        });
    }
}

/// Forwards one exec client's streams, renumbering its processes.
async fn forward(conn: UnixStream, agent: Mux, ids: Arc<AtomicU32>) {
    let (_client_mux, mut inbound) = Mux::start(conn, Mode::Server);
    let mut numbers: HashMap<u32, u32> = HashMap::new();
    while let Some(mut from_client) = inbound.recv().await {
        let Ok(header) = read_frame::<_, StreamHeader>(&mut from_client).await else {
            continue;
        };
        let mut renumber = |p: u32| {
            *numbers
                .entry(p)
                .or_insert_with(|| ids.fetch_add(1, Ordering::Relaxed))
        };
        let header = match header {
            StreamHeader::Control { process } => StreamHeader::Control {
                process: renumber(process),
            },
            StreamHeader::Stdin { process } => StreamHeader::Stdin {
                process: renumber(process),
            },
            StreamHeader::Stdout { process } => StreamHeader::Stdout {
                process: renumber(process),
            },
            StreamHeader::Stderr { process } => StreamHeader::Stderr {
                process: renumber(process),
            },
        };
        let Ok(to_agent) = agent.open_typed(&header).await else {
            return;
        };
        tokio::spawn(splice(from_client, to_agent));
    }
}

async fn splice(mut a: MuxStream, mut b: MuxStream) {
    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
}

/// The exec client: runs the process given in `RUNVM_EXEC_SPEC` in the
/// guest and returns its exit code.
pub async fn client() -> Result<i32> {
    let spec_text = std::env::var(SPEC_ENV).map_err(|_| {
        SupervisorError::Channel(format!(
            "{SPEC_ENV} is not set: runvm-supervisor exec is run by `runvm exec` only"
        ))
    })?;
    let spec: ProcessSpec =
        serde_json::from_str(&spec_text).map_err(|source| SupervisorError::ConfigJson {
            path: SPEC_ENV.into(),
            source,
        })?;
    let terminal = spec.terminal;
    if terminal {
        // At once: the guest's pty does the echo and line editing.
        relay::make_raw();
    }
    // The supervisor may still be starting: wait for its socket.
    let deadline = Instant::now() + BOOT_WAIT;
    let conn = loop {
        match UnixStream::connect(EXEC_SOCKET).await {
            Ok(c) => break c,
            Err(e) if Instant::now() > deadline => {
                return Err(SupervisorError::io(format!("connect to {EXEC_SOCKET}"), e));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let (mux, _inbound) = Mux::start(conn, Mode::Client);
    let (sig_tx, sig_rx) = mpsc::unbounded_channel();
    relay::forward_signals(sig_tx);
    let mut spec = spec;
    spec.inherited_rlimits = session::own_rlimits();
    if terminal {
        spec.console_size = relay::window_size().or(spec.console_size);
    }
    let (outcome, mut control) = session::run(
        &mux,
        HostMessage::Exec(Box::new(spec)),
        terminal,
        sig_rx,
        std::future::pending::<String>(),
    )
    .await?;
    let _ = write_frame(&mut control, &HostMessage::Shutdown).await;
    Ok(match outcome {
        Outcome::Exited(status) => status,
        Outcome::StartFailed { message, exit_code } => {
            eprintln!("runvm: {message}");
            exit_code
        }
        Outcome::SetupFailed(m) => {
            eprintln!("runvm: {m}");
            126
        }
        // The VM went down under the exec: the container stopped, which
        // under runc kills every exec with SIGKILL.
        Outcome::Lost { started: true, .. } => 137,
        Outcome::Lost {
            started: false,
            why,
        } => {
            eprintln!("runvm: the VM did not accept the exec: {why}");
            126
        }
    })
}
