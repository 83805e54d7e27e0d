//! Running one process in the guest from the host side: open its stdio and
//! control streams, send the request, relay stdio, signals and terminal
//! size, and wait for the outcome. Used by the supervisor for the
//! container's init and by the exec client for `docker exec`.

use std::future::Future;

use tokio::io::{AsyncWrite, AsyncWriteExt, WriteHalf};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::error::{Result, SupervisorError};
use crate::relay;
use runvm_protocol::session::{read_frame, write_frame, Mux, MuxStream};
use runvm_protocol::{GuestMessage, HostMessage, StreamHeader};

/// How a process ended.
#[derive(Debug)]
pub enum Outcome {
    /// It ran and exited with this status; all its output was delivered.
    Exited(i32),
    /// It could not be started.
    StartFailed { message: String, exit_code: i32 },
    /// The guest could not set up the container.
    SetupFailed(String),
    /// The channel broke (the VM went away) after the process started.
    Lost { started: bool, why: String },
}

/// The control stream's write half, kept to send `Shutdown` afterwards.
pub type ControlWriter = WriteHalf<MuxStream>;

/// Runs a process in the guest. `request` is its first control message;
/// `vm_gone` resolves (with a description) if the VM dies meanwhile.
pub async fn run(
    mux: &Mux,
    request: HostMessage,
    terminal: bool,
    mut signals: mpsc::UnboundedReceiver<i32>,
    vm_gone: impl Future<Output = String>,
) -> Result<(Outcome, ControlWriter)> {
    let mut winch = signal(SignalKind::window_change())
        .map_err(|e| SupervisorError::io("watch the terminal size", e))?;
    // stdio streams first, then the control stream that starts the process.
    let stdin_s = mux.open_typed(&StreamHeader::Stdin { process: 0 }).await?;
    let stdout_s = mux.open_typed(&StreamHeader::Stdout { process: 0 }).await?;
    let stderr_s = if terminal {
        None
    } else {
        Some(mux.open_typed(&StreamHeader::Stderr { process: 0 }).await?)
    };
    let control = mux
        .open_typed(&StreamHeader::Control { process: 0 })
        .await?;
    let (mut crd, mut cwr) = tokio::io::split(control);
    write_frame(&mut cwr, &request).await?;

    let out_done = relay::output(stdout_s, 1);
    let err_done = stderr_s.map(|s| relay::output(s, 2));
    relay::input(stdin_s);

    tokio::pin!(vm_gone);
    let mut started = false;
    let mut queued: Vec<i32> = Vec::new();
    let outcome = loop {
        tokio::select! {
            msg = read_frame::<_, GuestMessage>(&mut crd) => match msg {
                Ok(GuestMessage::Started { .. }) => {
                    started = true;
                    for signal in queued.drain(..) {
                        send(&mut cwr, &HostMessage::Signal { signal }).await;
                    }
                }
                Ok(GuestMessage::Exited { status }) => break Outcome::Exited(status),
                Ok(GuestMessage::StartFailed { message, exit_code }) => {
                    break Outcome::StartFailed { message, exit_code }
                }
                Ok(GuestMessage::SetupFailed { message }) => break Outcome::SetupFailed(message),
                Err(e) => break Outcome::Lost { started, why: e.to_string() },
            },
            Some(signal) = signals.recv() => {
                if started {
                    send(&mut cwr, &HostMessage::Signal { signal }).await;
                } else {
                    queued.push(signal);
                }
            }
            _ = winch.recv(), if terminal => {
                if let Some((rows, cols)) = relay::window_size() {
                    send(&mut cwr, &HostMessage::Resize { rows, cols }).await;
                }
            }
            why = &mut vm_gone => break Outcome::Lost { started, why },
        }
    };
    if let Outcome::Exited(_) = outcome {
        // The guest reports the exit only after closing the output
        // streams; wait until every byte is written out here too.
        let _ = out_done.await;
        if let Some(e) = err_done {
            let _ = e.await;
        }
    }
    Ok((outcome, cwr))
}

async fn send<W: AsyncWrite + Unpin>(w: &mut W, msg: &HostMessage) {
    // A failure here shows up as a broken channel on the read side.
    let _ = write_frame(w, msg).await;
    let _ = w.flush().await;
}

/// This process's own resource limits, named as in the OCI spec. Under
/// runc a container process inherits the runtime's limits for everything
/// its spec does not set; the guest gets the same through these.
pub fn own_rlimits() -> Vec<runvm_protocol::Rlimit> {
    use nix::sys::resource::{getrlimit, Resource};
    [
        ("RLIMIT_AS", Resource::RLIMIT_AS),
        ("RLIMIT_CORE", Resource::RLIMIT_CORE),
        ("RLIMIT_CPU", Resource::RLIMIT_CPU),
        ("RLIMIT_DATA", Resource::RLIMIT_DATA),
        ("RLIMIT_FSIZE", Resource::RLIMIT_FSIZE),
        ("RLIMIT_LOCKS", Resource::RLIMIT_LOCKS),
        ("RLIMIT_MEMLOCK", Resource::RLIMIT_MEMLOCK),
        ("RLIMIT_MSGQUEUE", Resource::RLIMIT_MSGQUEUE),
        ("RLIMIT_NICE", Resource::RLIMIT_NICE),
        ("RLIMIT_NOFILE", Resource::RLIMIT_NOFILE),
        ("RLIMIT_NPROC", Resource::RLIMIT_NPROC),
        ("RLIMIT_RSS", Resource::RLIMIT_RSS),
        ("RLIMIT_RTPRIO", Resource::RLIMIT_RTPRIO),
        ("RLIMIT_RTTIME", Resource::RLIMIT_RTTIME),
        ("RLIMIT_SIGPENDING", Resource::RLIMIT_SIGPENDING),
        ("RLIMIT_STACK", Resource::RLIMIT_STACK),
    ]
    .into_iter()
    .filter_map(|(name, res)| {
        let (soft, hard) = getrlimit(res).ok()?;
        Some(runvm_protocol::Rlimit {
            kind: name.into(),
            soft,
            hard,
        })
    })
    .collect()
}
