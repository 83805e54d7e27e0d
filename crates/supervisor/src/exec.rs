//! `docker exec` inside the VM.
//!
//! runvm rewrites an exec's process so that runc runs this binary as
//! `runvm-supervisor exec` in the container, with the real process spec in
//! its environment (`RUNVM_EXEC_SPEC_*`). That exec client connects to the
//! supervisor's exec socket and speaks the guest protocol over its own
//! yamux session; the supervisor forwards each of its streams to the guest
//! agent, giving every exec a process number of its own. The guest network plays no part, so
//! exec works even when the guest has no network at all.

use runvm_protocol::exit::ExitCode;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use crate::error::{Result, SupervisorError};
use crate::relay;
use crate::session::{self, Outcome};
use runvm_protocol::framing::MAX_SMALL_FRAME;
use runvm_protocol::session::{
    read_frame_limited, write_frame, Mode, Mux, MuxStream, MAX_STREAMS, OTHER_STREAMS,
};
use runvm_protocol::{GuestMessage, HostMessage, StreamHeader};

use runvm_contract::sockets::EXEC as EXEC_SOCKET;
/// How long an exec waits for a booting VM.
const BOOT_WAIT: Duration = Duration::from_secs(120);
/// Execs that may run at once: each takes up to four streams of the
/// agent's session, whose stream count is capped, and the container's init
/// takes four more.
pub const MAX_EXECS: usize = (MAX_STREAMS - OTHER_STREAMS) / 4 - 1;
/// How long an exec client may take to name a stream it opened.
const HEADER_WAIT: Duration = Duration::from_secs(30);

/// The agent session, once the VM is up (None before, and forever if the
/// VM never comes up).
pub type AgentState = watch::Receiver<Option<Mux>>;

/// Accepts exec clients and forwards their streams to the agent.
pub async fn serve(listener: UnixListener, agent: AgentState) {
    // Process numbers towards the agent; 0 is the container's init.
    let mut next_process: u32 = 1;
    let slots = Arc::new(Semaphore::new(MAX_EXECS));
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tokio::spawn(refuse(
                conn,
                format!(
                    "too many execs at once in this container (at most {MAX_EXECS}); retry when one has ended"
                ),
            ));
            continue;
        };
        let agent = agent.clone();
        let process = next_process;
        next_process = next_process.wrapping_add(1).max(1);
        tokio::spawn(serve_one(conn, agent, process, permit));
    }
}

/// Serves one exec client: waits for the VM (an exec right after
/// `docker run -d`), unless the client goes away first, then forwards.
async fn serve_one(
    conn: UnixStream,
    mut agent: AgentState,
    process: u32,
    slot: OwnedSemaphorePermit,
) {
    let (_client_mux, mut inbound) = Mux::start(conn, Mode::Server);
    let mut early = Vec::new();
    let vm = tokio::time::timeout(BOOT_WAIT, agent.wait_for(Option::is_some));
    tokio::pin!(vm);
    let mux = loop {
        tokio::select! {
            up = &mut vm => match up {
                Ok(Ok(m)) => break m.clone(),
                _ => break None,
            },
            s = inbound.recv() => match s {
                Some(s) => {
                    early.push(s);
                    continue;
                }
                None => return, // the client is gone: its slot is free
            },
        };
    };
    let Some(mux) = mux else {
        return; // dropping the connection fails the client
    };
    forward(inbound, early, mux, process, slot).await;
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
                    exit_code: ExitCode::CannotExecute.code(),
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
/// client, which becomes `process` towards the agent. A client has no
/// business with the DNS relay or the network: `None`.
fn renumber(header: StreamHeader, process: u32) -> Option<(StreamHeader, u8)> {
    Some(match header {
        StreamHeader::Control { .. } => (StreamHeader::Control { process }, 0),
        StreamHeader::Stdin { .. } => (StreamHeader::Stdin { process }, 1),
        StreamHeader::Stdout { .. } => (StreamHeader::Stdout { process }, 2),
        StreamHeader::Stderr { .. } => (StreamHeader::Stderr { process }, 3),
        StreamHeader::Dns | StreamHeader::Network => return None,
    })
}

/// Forwards one exec client's streams to the agent as process `process`.
/// When the client's session ends (it exited, or Docker killed it when a
/// health check timed out), every copy towards the agent is dropped, which
/// resets those streams: the agent then kills the exec'd process if it
/// still runs. The exec's slot is freed then.
async fn forward(
    mut inbound: mpsc::Receiver<MuxStream>,
    early: Vec<MuxStream>,
    agent: Mux,
    process: u32,
    _slot: OwnedSemaphorePermit,
) {
    let mut splices = Vec::new();
    let mut seen = HashSet::new();
    let mut early = early.into_iter();
    loop {
        let next = match early.next() {
            Some(s) => Some(s),
            None => inbound.recv().await,
        };
        let Some(mut from_client) = next else {
            break;
        };
        let header = tokio::time::timeout(
            HEADER_WAIT,
            read_frame_limited::<_, StreamHeader>(&mut from_client, MAX_SMALL_FRAME),
        )
        .await;
        let Ok(Ok(header)) = header else {
            continue;
        };
        let Some((header, kind)) = renumber(header, process) else {
            continue; // not a stream of a process: refused (dropped)
        };
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
/// environment (see [`runvm_contract::exec_spec`]) in the guest and returns
/// its exit code.
pub async fn client() -> Result<i32> {
    let spec = runvm_contract::exec_spec::decode(|name| std::env::var(name).ok())?;
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
        None::<std::future::Pending<String>>,
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
            tracing::error!("{message}");
            exit_code
        }
        Outcome::SetupFailed(m) => {
            tracing::error!("{m}");
            ExitCode::CannotExecute.code()
        }
        // The VM went down under the exec: the container stopped, which
        // under runc kills every exec with SIGKILL.
        Outcome::Lost { started: true, .. } => ExitCode::Signaled(libc::SIGKILL).code(),
        Outcome::Lost {
            started: false,
            why,
        } => {
            tracing::error!("the VM did not accept the exec: {why}");
            ExitCode::CannotExecute.code()
        }
        Outcome::NoAnswer(why) => {
            tracing::error!("the VM did not answer the exec: {why}");
            ExitCode::CannotExecute.code()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs an exec request over `conn` as the exec client does.
    async fn exec_over(conn: UnixStream) -> Outcome {
        let (mux, _) = Mux::start(conn, Mode::Client);
        let (_tx, rx) = mpsc::channel(1);
        let (outcome, _, _) = session::run(
            &mux,
            HostMessage::Exec(Box::default()),
            false,
            rx,
            None::<std::future::Pending<String>>,
            Some(async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "no answer within 30 s".to_owned()
            }),
        )
        .await
        .unwrap();
        outcome
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn execs_beyond_the_cap_are_refused_with_a_reason() {
        let dir = std::env::temp_dir().join(format!("runvm-exec-cap-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("exec.sock");
        let listener = UnixListener::bind(&path).unwrap();
        // No VM yet: every accepted exec holds its slot while it waits.
        let (_agent_tx, agent_rx) = watch::channel(None);
        tokio::spawn(serve(listener, agent_rx));
        let mut waiting = Vec::new();
        for _ in 0..MAX_EXECS {
            waiting.push(UnixStream::connect(&path).await.unwrap());
        }
        let outcome = exec_over(UnixStream::connect(&path).await.unwrap()).await;
        match outcome {
            Outcome::StartFailed { message, exit_code } => {
                assert_eq!(exit_code, 126);
                assert!(message.contains("too many execs"), "{message}");
                assert!(message.contains(&MAX_EXECS.to_string()), "{message}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        // A freed slot serves the next exec (it waits for the VM again).
        drop(waiting.pop());
        tokio::time::sleep(Duration::from_millis(200)).await;
        let next = UnixStream::connect(&path).await.unwrap();
        let r = tokio::time::timeout(Duration::from_secs(1), exec_over(next)).await;
        assert!(
            r.is_err(),
            "the exec after a freed slot waits for the VM: {r:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
