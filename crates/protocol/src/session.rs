//! The yamux session over the virtio-serial port, and the helpers both ends
//! use to open and accept typed streams.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use serde::Serialize;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::framing::FrameError;
pub use crate::framing::{read_frame, write_frame};

use futures::future::poll_fn;
use std::collections::VecDeque;
use tokio::sync::{mpsc, oneshot};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

pub use yamux::Mode;

/// One multiplexed stream, usable with tokio's I/O traits.
pub type MuxStream = Compat<yamux::Stream>;

/// Errors of the multiplexer.
#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    #[error("the host-guest channel closed")]
    Closed,
    #[error("the host-guest channel failed: {0}")]
    Yamux(#[from] yamux::ConnectionError),
}

/// yamux settings for the host↔guest link (the crate's defaults: it has no
/// keep-alive pings, so a VM frozen by `docker pause` keeps its session).
pub fn config() -> yamux::Config {
    yamux::Config::default()
}

/// A handle that opens streams on a running yamux session.
#[derive(Clone)]
pub struct Mux {
    open: mpsc::UnboundedSender<oneshot::Sender<Result<MuxStream, MuxError>>>,
}

impl Mux {
    /// Starts a yamux session on `io` in a background task. Returns the
    /// handle to open streams and the receiver of streams the peer opens.
    /// The task ends when the peer closes the session or it fails.
    pub fn start<T>(io: T, mode: Mode) -> (Self, mpsc::UnboundedReceiver<MuxStream>)
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (open_tx, mut open_rx) =
            mpsc::unbounded_channel::<oneshot::Sender<Result<MuxStream, MuxError>>>();
        let (in_tx, in_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut conn = yamux::Connection::new(io.compat(), config(), mode);
            let mut pending: VecDeque<oneshot::Sender<Result<MuxStream, MuxError>>> =
                VecDeque::new();
            let mut handles_gone = false;
            // The connection is driven only while it is polled: this loop
            // polls it for inbound streams (which also moves all data) and
            // serves requests for outbound streams.
            let result = poll_fn(|cx| loop {
                while !handles_gone {
                    match open_rx.poll_recv(cx) {
                        Poll::Ready(Some(req)) => pending.push_back(req),
                        Poll::Ready(None) => handles_gone = true,
                        Poll::Pending => break,
                    }
                }
                while !pending.is_empty() {
                    match conn.poll_new_outbound(cx) {
                        Poll::Ready(r) => {
                            let req = pending.pop_front().expect("checked non-empty");
                            let _ = req.send(r.map(|s| s.compat()).map_err(MuxError::from));
                        }
                        Poll::Pending => break,
                    }
                }
                match conn.poll_next_inbound(cx) {
                    Poll::Ready(Some(Ok(s))) => {
                        let _ = in_tx.send(s.compat());
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                    Poll::Ready(None) => return Poll::Ready(Ok(())),
                    Poll::Pending => return Poll::Pending,
                }
            })
            .await;
            for req in pending {
                let _ = req.send(Err(MuxError::Closed));
            }
            if let Err(e) = result {
                tracing_like_log(&format!("yamux session ended: {e}"));
            }
        });
        (Self { open: open_tx }, in_rx)
    }

    /// Opens a new stream to the peer.
    pub async fn open(&self) -> Result<MuxStream, MuxError> {
        let (tx, rx) = oneshot::channel();
        self.open.send(tx).map_err(|_| MuxError::Closed)?;
        rx.await.map_err(|_| MuxError::Closed)?
    }

    /// Opens a stream and sends its header.
    pub async fn open_typed<H: Serialize>(&self, header: &H) -> Result<MuxStream, FrameError> {
        let mut s = self.open().await.map_err(|e| {
            FrameError::Io(io::Error::new(io::ErrorKind::BrokenPipe, e.to_string()))
        })?;
        write_frame(&mut s, header).await?;
        Ok(s)
    }
}

fn tracing_like_log(msg: &str) {
    if std::env::var_os("RUNVM_MUX_DEBUG").is_some() {
        eprintln!("runvm: {msg}");
    }
}

/// A non-blocking file descriptor (virtio-serial port, pty master, pipe)
/// driven by tokio's reactor.
///
/// tokio's own `fs::File` cannot be used for a character device that is read
/// and written at the same time: it runs one blocking operation at a time, so
/// a pending read would hold up every write.
pub struct FdStream {
    fd: AsyncFd<OwnedFd>,
    /// A pty master reports EIO once the last slave is closed; that is the
    /// end of the terminal's output, not an error.
    eio_is_eof: bool,
}

impl FdStream {
    /// Wraps `fd`, switching it to non-blocking mode.
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        set_nonblocking(&fd)?;
        // SAFETY: `fd` is an open descriptor owned by the `OwnedFd` that the
        // `AsyncFd` takes ownership of; it stays open and unchanged until the
        // `AsyncFd` is dropped, and `OwnedFd::as_raw_fd` always returns it.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)?;
        Ok(Self {
            fd,
            eio_is_eof: false,
        })
    }

    /// Wraps a pty master: EIO on read is end of file.
    pub fn pty_master(fd: OwnedFd) -> io::Result<Self> {
        let mut s = Self::new(fd)?;
        s.eio_is_eof = true;
        Ok(s)
    }

    pub fn get_ref(&self) -> &OwnedFd {
        self.fd.get_ref()
    }
}

/// Puts `fd` in non-blocking mode.
pub fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL).map_err(io::Error::from)?;
    let flags = OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK;
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
    Ok(())
}

impl AsyncRead for FdStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let res = guard.try_io(|inner| {
                nix::unistd::read(inner.get_ref().as_raw_fd(), unfilled).map_err(io::Error::from)
            });
            match res {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if self.eio_is_eof && e.raw_os_error() == Some(libc_eio()) => {
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for FdStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard
                .try_io(|inner| nix::unistd::write(inner.get_ref(), buf).map_err(io::Error::from))
            {
                Ok(res) => return Poll::Ready(res),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn libc_eio() -> i32 {
    nix::errno::Errno::EIO as i32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::StreamHeader;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn yamux_over_a_socketpair_carries_typed_streams_and_large_data() {
        let (h, g) = std::os::unix::net::UnixStream::pair().unwrap();
        let host = FdStream::new(OwnedFd::from(h)).unwrap();
        let guest = FdStream::new(OwnedFd::from(g)).unwrap();
        let (host_mux, _host_in) = Mux::start(host, Mode::Client);
        let (_guest_mux, mut guest_in) = Mux::start(guest, Mode::Server);

        let data: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
        let expected = data.clone();
        // Host writes only (like stdin); guest reads only.
        let sender = tokio::spawn(async move {
            let mut s = host_mux
                .open_typed(&StreamHeader::Stdin { process: 9 })
                .await
                .unwrap();
            s.write_all(&data).await.unwrap();
            s.shutdown().await.unwrap();
            // And the reverse direction on a second stream (like stdout).
            let mut out = host_mux
                .open_typed(&StreamHeader::Stdout { process: 9 })
                .await
                .unwrap();
            let mut got = Vec::new();
            out.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut stream = guest_in.recv().await.unwrap();
        let h: StreamHeader = read_frame(&mut stream).await.unwrap();
        assert_eq!(h, StreamHeader::Stdin { process: 9 });
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.unwrap();
        assert!(got == expected, "stdin arrived whole");

        let mut out = guest_in.recv().await.unwrap();
        let h: StreamHeader = read_frame(&mut out).await.unwrap();
        assert_eq!(h, StreamHeader::Stdout { process: 9 });
        out.write_all(&expected).await.unwrap();
        out.shutdown().await.unwrap();
        let back = tokio::time::timeout(Duration::from_secs(30), sender)
            .await
            .expect("no stall")
            .unwrap();
        assert!(back == expected, "stdout arrived whole");
    }
}
