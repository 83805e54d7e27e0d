//! Relaying the container's stdio, signals and terminal size to the guest.
//!
//! stdio is read and written by plain threads with blocking system calls:
//! the descriptors Docker hands us may be pipes, FIFOs, a pty, a file or
//! /dev/null, and only threads treat all of them alike. Output goes through
//! a bounded channel so a slow reader of `docker logs` slows the guest down
//! instead of growing memory.

use std::os::fd::{BorrowedFd, RawFd};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot};

use runvm_protocol::session::MuxStream;

const CHUNK: usize = 64 * 1024;

fn borrow(fd: RawFd) -> BorrowedFd<'static> {
    // SAFETY: fds 0, 1 and 2 stay open for the supervisor's whole life.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

fn wait_fd(fd: RawFd, flags: PollFlags) {
    let mut fds = [PollFd::new(borrow(fd), flags)];
    let _ = poll(&mut fds, PollTimeout::NONE);
}

/// Writes all of `buf` to `fd`, coping with non-blocking descriptors.
fn write_all_fd(fd: RawFd, mut buf: &[u8]) -> Result<(), Errno> {
    while !buf.is_empty() {
        match nix::unistd::write(borrow(fd), buf) {
            Ok(n) => buf = &buf[n..],
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => wait_fd(fd, PollFlags::POLLOUT),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Copies a guest output stream to `fd`. The receiver fires once every
/// byte of the stream has been written to `fd`.
pub fn output(mut stream: MuxStream, fd: RawFd) -> oneshot::Receiver<()> {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(16);
    let (done_tx, done_rx) = oneshot::channel();
    std::thread::spawn(move || {
        let mut broken = false;
        while let Some(chunk) = rx.blocking_recv() {
            // After a write error keep draining, so the guest is never
            // blocked by a reader that went away.
            if !broken && write_all_fd(fd, &chunk).is_err() {
                broken = true;
            }
        }
        let _ = done_tx.send(());
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(buf[..n].to_vec()).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    done_rx
}

/// Copies the container's stdin to a guest stream; end of file on stdin
/// closes the stream.
pub fn input(mut stream: MuxStream) {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(16);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match nix::unistd::read(0, &mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => wait_fd(0, PollFlags::POLLIN),
                Err(_) => break,
            }
        }
    });
    tokio::spawn(async move {
        while let Some(chunk) = rx.recv().await {
            if stream.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = stream.shutdown().await;
    });
}

/// Signals that are forwarded to the workload: every catchable one except
/// SIGCHLD (our helpers' exits) and SIGWINCH (handled as a resize).
/// SIGSEGV, SIGBUS, SIGILL and SIGFPE cannot be caught safely and are
/// left alone; SIGKILL and SIGSTOP cannot be caught at all.
pub fn forwarded_signals() -> Vec<i32> {
    let skip = [
        libc::SIGKILL,
        libc::SIGSTOP,
        libc::SIGCHLD,
        libc::SIGWINCH,
        libc::SIGSEGV,
        libc::SIGBUS,
        libc::SIGILL,
        libc::SIGFPE,
    ];
    (1..=libc::SIGRTMAX())
        .filter(|s| !skip.contains(s) && !(32..libc::SIGRTMIN()).contains(s))
        .collect()
}

/// Starts forwarding signals into `tx`.
pub fn forward_signals(tx: mpsc::UnboundedSender<i32>) {
    for sig in forwarded_signals() {
        let Ok(mut stream) = signal(SignalKind::from_raw(sig)) else {
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if tx.send(sig).is_err() {
                    return;
                }
            }
        });
    }
}

/// The terminal size of fd 0, if it is a terminal with a size.
pub fn window_size() -> Option<(u16, u16)> {
    // SAFETY: `winsize` is plain data; zeroed is a valid value.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes a `winsize` to a valid pointer.
    let rc = unsafe { libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
}

/// Puts the container's terminal in raw mode: the guest's pty does the
/// line discipline, ours must pass bytes through untouched.
pub fn make_raw() {
    use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
    let fd = borrow(0);
    if let Ok(mut t) = tcgetattr(fd) {
        cfmakeraw(&mut t);
        let _ = tcsetattr(fd, SetArg::TCSANOW, &t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_signals_cover_the_usual_ones_and_skip_the_unforwardable() {
        let s = forwarded_signals();
        for sig in [
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGHUP,
            libc::SIGUSR1,
            libc::SIGUSR2,
            libc::SIGQUIT,
        ] {
            assert!(s.contains(&sig));
        }
        for sig in [
            libc::SIGKILL,
            libc::SIGSTOP,
            libc::SIGCHLD,
            libc::SIGWINCH,
            libc::SIGSEGV,
        ] {
            assert!(!s.contains(&sig));
        }
        assert!(s.contains(&libc::SIGRTMIN()));
        assert!(s.contains(&libc::SIGRTMAX()));
    }
}
