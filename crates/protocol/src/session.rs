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
pub use crate::framing::{read_frame, read_frame_limited, write_frame};

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
    #[error("the host-guest channel failed")]
    Yamux(#[from] yamux::ConnectionError),
}

/// Streams the host opens besides the processes' own: the DNS relay's, and
/// one network update's at a time.
pub const OTHER_STREAMS: usize = 2;

/// Most streams the client (the side that opens them) has open at once.
/// The host opens four per process (control, stdin, stdout, stderr), so
/// this allows the container's init and 31 concurrent execs, plus
/// [`OTHER_STREAMS`]; the supervisor refuses execs beyond that before it
/// opens any stream.
pub const MAX_STREAMS: usize = 4 * 32 + OTHER_STREAMS;

/// The limit yamux enforces on the client. yamux refuses a stream beyond
/// it by ending the whole session (the container would end with it), so it
/// lies above [`MAX_STREAMS`], leaving room for streams that were closed
/// but that yamux has not forgotten yet.
const CLIENT_STREAM_LIMIT: usize = MAX_STREAMS + 32;
const _: () = assert!(MAX_STREAMS / 4 * 4 + OTHER_STREAMS == MAX_STREAMS);

/// Most streams the server holds at once: more than the client may open,
/// since the server forgets a stream the client closed a little later than
/// the client does. (A peer that opens a stream beyond this, or overruns a
/// window, gets a go-away frame and the excess is refused; yamux keeps the
/// session until the peer closes it, and buffers nothing more.)
pub const SERVER_MAX_STREAMS: usize = 2 * CLIENT_STREAM_LIMIT;

/// Receive window, across all streams of a session, that yamux may grow
/// beyond its fixed 256 KiB per stream (its auto-tuning for throughput).
const EXTRA_WINDOW: usize = 8 * 1024 * 1024;

/// Largest total receive window of the client's side of a session: what a
/// peer can make the host buffer, whatever it sends (yamux never buffers
/// more than the credit it granted).
pub const MAX_RECEIVE_WINDOW: usize = window_for(CLIENT_STREAM_LIMIT);

const fn window_for(streams: usize) -> usize {
    streams * yamux::DEFAULT_CREDIT as usize + EXTRA_WINDOW
}

/// yamux settings for the host↔guest link: bounded stream count and
/// receive window (see [`MAX_STREAMS`], [`MAX_RECEIVE_WINDOW`]). There are
/// no keep-alive pings, so a VM frozen by `docker pause` keeps its session.
pub fn config(mode: Mode) -> yamux::Config {
    let streams = match mode {
        Mode::Client => CLIENT_STREAM_LIMIT,
        Mode::Server => SERVER_MAX_STREAMS,
    };
    let mut c = yamux::Config::default();
    // In this order: each setter checks window >= 256 KiB * streams.
    c.set_max_num_streams(streams);
    c.set_max_connection_receive_window(Some(window_for(streams)));
    c
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
    ///
    /// Only the client opens streams in this protocol: in [`Mode::Client`]
    /// every stream the peer opens is reset at once (the receiver yields
    /// nothing), so a hostile peer cannot make this side hold any. In
    /// [`Mode::Server`] every stream is handed out; no more than
    /// [`SERVER_MAX_STREAMS`] can wait, as that many are all yamux lets the
    /// peer open.
    pub fn start<T>(io: T, mode: Mode) -> (Self, mpsc::Receiver<MuxStream>)
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (open_tx, mut open_rx) =
            mpsc::unbounded_channel::<oneshot::Sender<Result<MuxStream, MuxError>>>();
        let (in_tx, in_rx) = mpsc::channel(SERVER_MAX_STREAMS);
        let accept_inbound = matches!(mode, Mode::Server);
        let mut in_tx = accept_inbound.then_some(in_tx);
        tokio::spawn(async move {
            let mut conn = yamux::Connection::new(io.compat(), config(mode), mode);
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
                        // A refused stream is dropped here: yamux resets it
                        // and forgets it before it reads the next frame.
                        if let Some(tx) = &in_tx {
                            if let Err(mpsc::error::TrySendError::Closed(_)) =
                                tx.try_send(s.compat())
                            {
                                in_tx = None;
                            }
                        }
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
                tracing::debug!("yamux session ended: {e}");
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

    fn pair() -> (FdStream, FdStream) {
        let (h, g) = std::os::unix::net::UnixStream::pair().unwrap();
        (
            FdStream::new(OwnedFd::from(h)).unwrap(),
            FdStream::new(OwnedFd::from(g)).unwrap(),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_client_resets_every_stream_the_peer_opens_and_keeps_working() {
        let (h, g) = pair();
        let (host_mux, mut host_in) = Mux::start(h, Mode::Client);
        let (guest_mux, mut guest_in) = Mux::start(g, Mode::Server);
        // More streams than a session may hold at once, each with data the
        // host would have to buffer if it kept them.
        for i in 0..(MAX_STREAMS * 3) {
            let mut s = guest_mux.open().await.expect("the guest may open a stream");
            let _ = s.write_all(&[i as u8; 4096]).await;
            let mut buf = [0u8; 1];
            let r = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
                .await
                .expect("a refused stream ends instead of hanging");
            assert!(
                matches!(r, Ok(0) | Err(_)),
                "stream {i} was not reset: {r:?}"
            );
        }
        assert!(
            host_in.recv().await.is_none(),
            "the client hands out no stream"
        );
        // The host's own streams still work.
        let mut s = host_mux
            .open_typed(&StreamHeader::Stdout { process: 1 })
            .await
            .unwrap();
        let mut g = guest_in.recv().await.unwrap();
        let h: StreamHeader = read_frame(&mut g).await.unwrap();
        assert_eq!(h, StreamHeader::Stdout { process: 1 });
        g.write_all(b"still alive").await.unwrap();
        g.shutdown().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"still alive");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streams_are_capped() {
        let (h, g) = pair();
        let (host_mux, _) = Mux::start(h, Mode::Client);
        let (_guest_mux, mut guest_in) = Mux::start(g, Mode::Server);
        // The server takes its streams (so none is refused for waiting).
        let taker = tokio::spawn(async move {
            let mut kept = Vec::new();
            while let Some(s) = guest_in.recv().await {
                kept.push(s);
            }
            kept.len()
        });
        let mut open = Vec::new();
        for _ in 0..CLIENT_STREAM_LIMIT {
            let mut s = host_mux.open().await.expect("within the cap");
            s.write_all(b"x").await.unwrap();
            open.push(s);
        }
        assert!(
            host_mux.open().await.is_err(),
            "a stream beyond {CLIENT_STREAM_LIMIT} is refused"
        );
        drop(open);
        drop(host_mux);
        let _ = tokio::time::timeout(Duration::from_secs(5), taker).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_stream_the_host_may_open_at_once_leaves_the_session_working() {
        // `docker run -i` on a network and 31 `docker exec -i` at once:
        // four streams per process, the DNS relay's, a network update's.
        let (h, g) = pair();
        let (host_mux, _) = Mux::start(h, Mode::Client);
        let (_guest_mux, mut guest_in) = Mux::start(g, Mode::Server);
        let taker = tokio::spawn(async move {
            let mut kept = Vec::new();
            while let Some(mut s) = guest_in.recv().await {
                let h: StreamHeader = read_frame(&mut s).await.unwrap();
                if h == (StreamHeader::Stdout { process: 999 }) {
                    s.write_all(b"alive").await.unwrap();
                    s.shutdown().await.unwrap();
                }
                kept.push(s);
            }
        });
        let mut open = Vec::new();
        for i in 0..4 * (1 + 31) + 2 {
            let s = host_mux
                .open_typed(&StreamHeader::Stdin { process: i })
                .await
                .unwrap_or_else(|e| panic!("stream {i}: {e}"));
            open.push(s);
        }
        // Two closed streams are replaced at once by new ones, before
        // yamux may have forgotten them.
        open.truncate(open.len() - 2);
        for i in 0..2 {
            open.push(
                host_mux
                    .open_typed(&StreamHeader::Stdin { process: 500 + i })
                    .await
                    .unwrap(),
            );
        }
        let mut last = host_mux
            .open_typed(&StreamHeader::Stdout { process: 999 })
            .await
            .expect("the session still works");
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), last.read_to_end(&mut got))
            .await
            .expect("an answer")
            .unwrap();
        assert_eq!(got, b"alive");
        drop(open);
        drop(host_mux);
        taker.abort();
    }

    #[test]
    fn the_receive_window_is_bounded() {
        assert_eq!(
            CLIENT_STREAM_LIMIT * 256 * 1024 + 8 * 1024 * 1024,
            MAX_RECEIVE_WINDOW
        );
        // The settings are accepted by yamux (it asserts their consistency).
        let _ = config(Mode::Client);
        let _ = config(Mode::Server);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_streams_all_reach_a_slow_server() {
        let (h, g) = pair();
        let (host_mux, _) = Mux::start(h, Mode::Client);
        let (_guest_mux, mut guest_in) = Mux::start(g, Mode::Server);
        // The client opens as many streams as it may before the server
        // takes any: none is lost.
        let mut open = Vec::new();
        for i in 0..MAX_STREAMS {
            let mut s = host_mux.open().await.unwrap();
            s.write_all(&[i as u8]).await.unwrap();
            open.push(s);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        for i in 0..MAX_STREAMS {
            let mut s = tokio::time::timeout(Duration::from_secs(10), guest_in.recv())
                .await
                .expect("every stream arrives")
                .unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.unwrap();
            assert_eq!(b[0], i as u8, "in order, none reset");
        }
    }
}
