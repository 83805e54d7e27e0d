//! Running one process in the guest from the host side: open its stdio and
//! control streams, send the request, relay stdio, signals and terminal
//! size, and wait for the outcome. Used by the supervisor for the
//! container's init and by the exec client for `docker exec`.

use runvm_contract::report::ErrorChain;
use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt, WriteHalf};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::error::{Result, SupervisorError};
use crate::relay;
use runvm_protocol::framing::MAX_SMALL_FRAME;
use runvm_protocol::session::{read_frame_limited, write_frame, Mux, MuxStream};
use runvm_protocol::{FrameError, GuestMessage, HostMessage, StreamHeader};

/// After the VM is gone, how long the channel may still deliver what the
/// guest sent before it went (an exit report among it).
const CHANNEL_GRACE: Duration = Duration::from_secs(5);

/// How a process ended.
#[derive(Debug)]
pub enum Outcome {
    /// It ran and exited with this status; all its output was delivered.
    Exited(i32),
    /// It could not be started.
    StartFailed { message: String, exit_code: i32 },
    /// The guest could not set up the container.
    SetupFailed(String),
    /// The channel broke (the VM went away) after the request was sent.
    Lost { started: bool, why: String },
    /// The guest sent no answer at all before the caller gave up on it
    /// (why, for the user).
    NoAnswer(String),
}

/// The control stream's write half, kept to send `Shutdown` afterwards.
pub type ControlWriter = WriteHalf<MuxStream>;

/// The output relays of a process: done once every byte the guest sent on
/// stdout and stderr has been written out.
pub struct Drain(Vec<oneshot::Receiver<()>>);

impl Drain {
    /// Waits for the relays, at most `limit` if given. Returns whether all
    /// of them finished.
    pub async fn wait(self, limit: Option<Duration>) -> bool {
        let all = async {
            for done in self.0 {
                let _ = done.await;
            }
        };
        match limit {
            Some(limit) => tokio::time::timeout(limit, all).await.is_ok(),
            None => {
                all.await;
                true
            }
        }
    }
}

/// Runs a process in the guest. `request` is its first control message;
/// `vm_gone`, when the caller watches the VM, resolves (with a description)
/// once the VM is dead; if `give_up` resolves before the guest has sent
/// any answer, the outcome is [`Outcome::NoAnswer`] with its description.
///
/// The relays go on after this returns: [`Drain::wait`] for them (after
/// [`Outcome::Exited`] the guest has closed them, so they end; otherwise
/// they end once the channel closes).
pub async fn run(
    mux: &Mux,
    request: HostMessage,
    terminal: bool,
    mut signals: mpsc::Receiver<i32>,
    vm_gone: Option<impl Future<Output = String>>,
    give_up: Option<impl Future<Output = String>>,
) -> Result<(Outcome, ControlWriter, Drain)> {
    let watching_vm = vm_gone.is_some();
    let vm_gone = or_pending(vm_gone);
    let give_up = or_pending(give_up);
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

    let mut drain = vec![relay::output(stdout_s, 1)];
    drain.extend(stderr_s.map(|s| relay::output(s, 2)));
    relay::input(stdin_s);

    tokio::pin!(vm_gone);
    tokio::pin!(give_up);
    let grace = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(grace);
    let mut answered = false;
    let mut started = false;
    // Why the VM went away, once it has.
    let mut gone: Option<String> = None;
    let mut queued: Vec<i32> = Vec::new();
    let outcome = loop {
        tokio::select! {
            msg = read_frame_limited::<_, GuestMessage>(&mut crd, MAX_SMALL_FRAME) => {
                answered = true;
                match msg {
                    Ok(GuestMessage::Started { boot, .. }) => {
                        started = true;
                        if let Some(boot) = boot {
                            crate::phases::guest(boot);
                        }
                        for signal in queued.drain(..) {
                            send(&mut cwr, &HostMessage::Signal { signal }).await;
                        }
                    }
                    Ok(GuestMessage::Exited { status }) => {
                        crate::phases::mark(crate::phases::Phase::Exited);
                        break Outcome::Exited(status);
                    }
                    Ok(GuestMessage::StartFailed { message, exit_code }) => {
                        break Outcome::StartFailed { message, exit_code }
                    }
                    Ok(GuestMessage::SetupFailed { message }) => break Outcome::SetupFailed(message),
                    Err(e) => {
                        // Name the VM's end rather than its consequence, the
                        // closed channel, when the two come together.
                        let why = match gone.take() {
                            Some(why) => why,
                            None if watching_vm => tokio::time::timeout(CHANNEL_GRACE, &mut vm_gone)
                                .await
                                .unwrap_or_else(|_| channel_failure(&e)),
                            None => channel_failure(&e),
                        };
                        break Outcome::Lost { started, why };
                    }
                }
            },
            Some(signal) = signals.recv() => {
                if started {
                    send(&mut cwr, &HostMessage::Signal { signal }).await;
                } else if queued.len() < relay::SIGNAL_QUEUE && !queued.contains(&signal) {
                    queued.push(signal);
                }
            }
            _ = winch.recv(), if terminal => {
                if let Some((rows, cols)) = relay::window_size() {
                    send(&mut cwr, &HostMessage::Resize { rows, cols }).await;
                }
            }
            // The VM is dead, but what it sent before may still be on its
            // way: the channel closes after it, or the grace time ends.
            why = &mut vm_gone, if gone.is_none() => {
                gone = Some(why);
                grace.as_mut().reset(Instant::now() + CHANNEL_GRACE);
            }
            _ = &mut grace, if gone.is_some() => {
                break Outcome::Lost { started, why: gone.take().unwrap_or_default() };
            }
            why = &mut give_up, if !answered => break Outcome::NoAnswer(why),
        }
    };
    Ok((outcome, cwr, Drain(drain)))
}

/// `f`'s output, or never without one.
async fn or_pending<T>(f: Option<impl Future<Output = T>>) -> T {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

fn channel_failure(e: &FrameError) -> String {
    format!("the host-guest channel failed: {}", e.chain())
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
    use nix::sys::resource::getrlimit;
    runvm_protocol::rlimits::RLIMITS
        .iter()
        .copied()
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

#[cfg(test)]
mod tests {
    use super::*;
    use runvm_protocol::session::{read_frame, FdStream, Mode};
    use std::os::fd::OwnedFd;

    /// A host session over a socket pair, and the streams the guest gets.
    fn channel() -> (Mux, mpsc::Receiver<MuxStream>) {
        let (h, g) = std::os::unix::net::UnixStream::pair().unwrap();
        let host = FdStream::new(OwnedFd::from(h)).unwrap();
        let guest = FdStream::new(OwnedFd::from(g)).unwrap();
        let (host_mux, _) = Mux::start(host, Mode::Client);
        let (_, guest_in) = Mux::start(guest, Mode::Server);
        (host_mux, guest_in)
    }

    fn exec_request() -> HostMessage {
        HostMessage::Exec(Box::default())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_guest_that_never_answers_is_given_up_at_the_deadline() {
        let (mux, mut guest_in) = channel();
        // The guest takes its streams and says nothing.
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Some(s) = guest_in.recv().await {
                held.push(s);
            }
        });
        let (_tx, rx) = mpsc::channel(1);
        let start = Instant::now();
        let (outcome, _, _) = run(
            &mux,
            exec_request(),
            false,
            rx,
            None::<std::future::Pending<String>>,
            Some(async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                "silent".to_owned()
            }),
        )
        .await
        .unwrap();
        assert!(
            matches!(&outcome, Outcome::NoAnswer(why) if why == "silent"),
            "{outcome:?}"
        );
        assert!(start.elapsed() < Duration::from_secs(5));
        silent.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_exit_sent_before_the_vm_died_still_counts() {
        let (mux, mut guest_in) = channel();
        let guest = tokio::spawn(async move {
            let mut streams = Vec::new();
            while let Some(mut s) = guest_in.recv().await {
                let h: StreamHeader = read_frame(&mut s).await.unwrap();
                if let StreamHeader::Control { .. } = h {
                    let _: HostMessage = read_frame(&mut s).await.unwrap();
                    write_frame(&mut s, &GuestMessage::Started { pid: 7, boot: None })
                        .await
                        .unwrap();
                    write_frame(&mut s, &GuestMessage::Exited { status: 3 })
                        .await
                        .unwrap();
                }
                // Held open: the report is what counts.
                streams.push(s);
            }
        });
        let (_tx, rx) = mpsc::channel(1);
        // The VM is reported dead at once; the exit still arrives.
        let (outcome, _, _) = run(
            &mux,
            exec_request(),
            false,
            rx,
            Some(async { "QEMU exited (signal: 9 (SIGKILL))".to_owned() }),
            None::<std::future::Pending<String>>,
        )
        .await
        .unwrap();
        assert!(matches!(outcome, Outcome::Exited(3)), "{outcome:?}");
        guest.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_closed_channel_is_reported_with_the_vms_end() {
        let (h, g) = std::os::unix::net::UnixStream::pair().unwrap();
        let (mux, _) = Mux::start(FdStream::new(OwnedFd::from(h)).unwrap(), Mode::Client);
        // The guest reads the request, then the whole VM goes away.
        let guest = tokio::spawn(async move {
            let (_m, mut guest_in) =
                Mux::start(FdStream::new(OwnedFd::from(g)).unwrap(), Mode::Server);
            let mut n = 0;
            while let Some(mut s) = guest_in.recv().await {
                let h: StreamHeader = read_frame(&mut s).await.unwrap();
                n += 1;
                if let StreamHeader::Control { .. } = h {
                    let _: HostMessage = read_frame(&mut s).await.unwrap();
                    return n;
                }
            }
            n
        });
        let (_tx, rx) = mpsc::channel(1);
        let (gone_tx, gone_rx) = oneshot::channel::<String>();
        let vm_gone = async move { gone_rx.await.unwrap_or_default() };
        let run = tokio::spawn(async move {
            run(
                &mux,
                exec_request(),
                false,
                rx,
                Some(vm_gone),
                None::<std::future::Pending<String>>,
            )
            .await
            .map(|(o, _, d)| (o, d))
        });
        assert_eq!(guest.await.unwrap(), 4, "four streams, control last");
        // The guest's session ended with its task: the channel is closed.
        let _ = gone_tx.send("QEMU exited (exit status: 1)".into());
        let (outcome, drain) = run.await.unwrap().unwrap();
        match outcome {
            Outcome::Lost { started, why } => {
                assert!(!started);
                assert_eq!(why, "QEMU exited (exit status: 1)");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            drain.wait(Some(Duration::from_secs(5))).await,
            "the relays end with the channel"
        );
    }
}
