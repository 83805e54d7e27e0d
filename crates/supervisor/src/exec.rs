//! `docker exec` inside the VM.
//!
//! runvm rewrites an exec's process so that runc runs this binary as
//! `runvm-supervisor exec` in the container, with the real process spec in
//! its environment (`RUNVM_EXEC_SPEC_*`). That exec client connects to the supervisor's exec
//! socket and speaks the guest protocol over its own yamux session; the
//! supervisor forwards each of its streams to the guest agent, giving every
//! exec a process number of its own. The guest network plays no part, so
//! exec works even when the guest has no network at all.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use crate::error::{Result, SupervisorError};
use crate::relay;
use crate::session::{self, Outcome};
use runvm_protocol::framing::MAX_SMALL_FRAME;
use runvm_protocol::session::{read_frame_limited, write_frame, Mode, Mux, MuxStream, MAX_STREAMS};
use runvm_protocol::{GuestMessage, HostMessage, StreamHeader};

/// The exec socket, in the container's private /run.
pub const EXEC_SOCKET: &str = "/run/runvm/exec.sock";
/// How long an exec waits for a booting VM.
const BOOT_WAIT: Duration = Duration::from_secs(120);
/// Execs that may run at once: each takes up to four streams of the
/// agent's session, whose stream count is capped, and the container's init
/// takes four more.
pub const MAX_EXECS: usize = MAX_STREAMS / 4 - 1;
/// How long an exec client may take to name a stream it opened.
const HEADER_WAIT: Duration = Duration::from_secs(30);

/// The agent session, once the VM is up (None before, and forever if the
/// VM never comes up).
pub type AgentState = watch::Receiver<Option<Mux>>;

/// Accepts exec clients and forwards their streams to the agent.
pub async fn serve(listener: UnixListener, agent: AgentState) {
    let ids = Arc::new(AtomicU32::new(1));
    let slots = Arc::new(Semaphore::new(MAX_EXECS));
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tokio::spawn(refuse(
                conn,
                format!(
                    "runvm: too many execs at once in this container (at most {MAX_EXECS}); retry when one has ended"
                ),
            ));
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
            forward(conn, mux, ids.fetch_add(1, Ordering::Relaxed), permit).await;
        });
    }
}

/// Answers an exec client that cannot be served with a start failure.
async fn refuse(conn: UnixStream, message: String) {
    let (_mux, mut inbound) = Mux::start(conn, Mode::Server);
    let answer = async {
        while let Some(mut s) = inbound.recv().await {
            if let Ok(StreamHeader::Control { .. }) =
                read_frame_limited::<_, StreamHeader>(&mut s, MAX_SMALL_FRAME).await
            {
                let msg = GuestMessage::StartFailed {
                    message,
                    exit_code: 126,
                };
                let _ = write_frame(&mut s, &msg).await;
                // Until the client has read it and gone.
                let mut sink = tokio::io::sink();
                let _ = tokio::io::copy(&mut s, &mut sink).await;
                return;
            }
        }
    };
    let _ = tokio::time::timeout(HEADER_WAIT, answer).await;
}

/// The streams of one exec: one of each kind, all of process 0 of the
/// client, which becomes `process` towards the agent.
fn renumber(header: StreamHeader, process: u32) -> (StreamHeader, u8) {
    match header {
        StreamHeader::Control { .. } => (StreamHeader::Control { process }, 0),
        StreamHeader::Stdin { .. } => (StreamHeader::Stdin { process }, 1),
        StreamHeader::Stdout { .. } => (StreamHeader::Stdout { process }, 2),
        StreamHeader::Stderr { .. } => (StreamHeader::Stderr { process }, 3),
    }
}

/// Forwards one exec client's streams to the agent as process `process`.
/// When the client's session ends (it exited, or Docker killed it when a
/// health check timed out), every copy towards the agent is dropped, which
/// resets those streams: the agent then kills the exec'd process if it
/// still runs. The exec's slot is freed then.
async fn forward(conn: UnixStream, agent: Mux, process: u32, _slot: OwnedSemaphorePermit) {
    let (_client_mux, mut inbound) = Mux::start(conn, Mode::Server);
    let mut splices = Vec::new();
    let mut seen = HashSet::new();
    while let Some(mut from_client) = inbound.recv().await {
        let header = tokio::time::timeout(
            HEADER_WAIT,
            read_frame_limited::<_, StreamHeader>(&mut from_client, MAX_SMALL_FRAME),
        )
        .await;
        let Ok(Ok(header)) = header else {
            continue;
        };
        let (header, kind) = renumber(header, process);
        if !seen.insert(kind) {
            continue; // a second stream of a kind: refused (dropped)
        }
        let Ok(to_agent) = agent.open_typed(&header).await else {
            break;
        };
        splices.push(tokio::spawn(splice(from_client, to_agent)));
    }
    // The client is gone: whatever it sent has been copied or never will.
    for s in splices {
        s.abort();
    }
}

async fn splice(mut a: MuxStream, mut b: MuxStream) {
    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
}

/// The exec client: runs the process that `runvm exec` put in its
/// environment (see [`runvm_config::exec_spec`]) in the guest and returns
/// its exit code.
pub async fn client() -> Result<i32> {
    let spec = runvm_config::exec_spec::decode(|name| std::env::var(name).ok())
        .map_err(|e| SupervisorError::Channel(e.to_string()))?;
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
    let (mux, _) = Mux::start(conn, Mode::Client);
    let (sig_tx, sig_rx) = mpsc::channel(relay::SIGNAL_QUEUE);
    relay::forward_signals(sig_tx).map_err(|e| SupervisorError::io("forward signals", e))?;
    let mut spec = spec;
    spec.inherited_rlimits = session::own_rlimits();
    if terminal {
        spec.console_size = relay::window_size().or(spec.console_size);
    }
    let (outcome, mut control, drain) = session::run(
        &mux,
        HostMessage::Exec(Box::new(spec)),
        terminal,
        sig_rx,
        None::<std::future::Pending<String>>,
        None,
    )
    .await?;
    let limit = match outcome {
        Outcome::Exited(_) => None,
        _ => Some(Duration::from_secs(10)),
    };
    drain.wait(limit).await;
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
        Outcome::NoAnswer => {
            eprintln!("runvm: the VM did not answer the exec");
            126
        }
    })
}
