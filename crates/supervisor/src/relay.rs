//! Relaying the container's stdio, signals and terminal size to the guest.
//!
//! stdio is read and written by plain threads with blocking system calls:
//! the descriptors Docker hands us may be pipes, FIFOs, a pty, a file or
//! /dev/null, and only threads treat all of them alike. Output goes through
//! a bounded channel so a slow reader of `docker logs` slows the guest down
//! instead of growing memory.

use std::os::fd::{BorrowedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering as AtomicOrdering};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
/// SIGCHLD (our helpers' exits) and SIGWINCH (handled as a resize), and
/// except those the supervisor causes itself (see [`self_inflicted`]).
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

/// The write end of the pipe that the signal handler writes signal
/// numbers to (-1 before [`forward_signals`]).
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

/// Signals forwarded but not yet taken by the session: more of the same are
/// dropped, as the kernel merges pending signals.
pub const SIGNAL_QUEUE: usize = 64;

/// Whether a signal this process received was caused by the process itself
/// rather than sent to it by someone else (Docker, runc, a user): those are
/// never forwarded. The supervisor writing to a pipe whose reader went away
/// gets a SIGPIPE from the kernel; under runc the workload would never see
/// it, so neither may the guest.
///
/// * A signal the kernel raises against the writer (broken pipe, file size
///   or CPU limit) comes either as `SI_USER` naming this very process as
///   the sender, or as `SI_KERNEL`.
/// * A signal sent with kill/tgkill/sigqueue names its sender; Docker and
///   runc live outside the container's PID namespace, so they appear as
///   pid 0 and are forwarded. (`docker kill -s PIPE` still reaches the
///   workload.)
pub fn self_inflicted(signal: i32, code: i32, sender: i32, own_pid: i32) -> bool {
    match code {
        libc::SI_KERNEL => matches!(signal, libc::SIGPIPE | libc::SIGXFSZ | libc::SIGXCPU),
        libc::SI_USER | libc::SI_TKILL | libc::SI_QUEUE => sender == own_pid,
        _ => false,
    }
}

extern "C" fn on_signal(signal: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // A signal handler must leave errno as it found it.
    let saved_errno = Errno::last_raw();
    let (code, sender) = if info.is_null() {
        (libc::SI_USER, 0)
    } else {
        // SAFETY: with SA_SIGINFO the kernel passes a valid siginfo_t;
        // si_pid is meaningful for the SI_USER/SI_TKILL/SI_QUEUE codes that
        // `self_inflicted` looks at it for.
        unsafe { ((*info).si_code, (*info).si_pid()) }
    };
    let own = nix::unistd::getpid().as_raw();
    let fd = SIGNAL_PIPE.load(AtomicOrdering::Relaxed);
    if fd >= 0 && !self_inflicted(signal, code, sender, own) {
        // SAFETY: the pipe's write end is never closed once stored.
        let pipe = unsafe { BorrowedFd::borrow_raw(fd) };
        // write(2) is async-signal-safe; the pipe is non-blocking, so a full
        // pipe drops the signal instead of blocking the handler.
        let _ = nix::unistd::write(pipe, &[signal as u8]);
    }
    Errno::set_raw(saved_errno);
}

/// Starts forwarding every signal of [`forwarded_signals`] into `tx`,
/// except those this process caused itself (see [`self_inflicted`]).
pub fn forward_signals(tx: mpsc::Sender<i32>) -> std::io::Result<()> {
    forward(&forwarded_signals(), tx)
}

/// Installs an SA_SIGINFO handler for `signals` that passes each signal to
/// be forwarded, through a pipe, to a task feeding `tx`.
fn forward(signals: &[i32], tx: mpsc::Sender<i32>) -> std::io::Result<()> {
    use nix::fcntl::OFlag;
    let (rd, wr) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
    let mut rd = tokio::net::unix::pipe::Receiver::from_owned_fd(rd)?;
    // The write end lives as long as the process: the handler may run at
    // any time.
    SIGNAL_PIPE.store(
        std::os::fd::IntoRawFd::into_raw_fd(wr),
        AtomicOrdering::Relaxed,
    );
    // Raw sigaction(2): nix's takes a `Signal`, which has no real-time
    // signals, and those are forwarded too (`docker kill -s RTMIN+3`).
    // SAFETY: `sigaction` is plain data; zeroed is a valid value (empty
    // mask, no flags) that is filled in below.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = on_signal as *const () as usize;
    act.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
    for &sig in signals {
        // SAFETY: installs an async-signal-safe handler (atomics, getpid
        // and a non-blocking write) with a valid sigaction structure whose
        // mask is empty; failures (uncatchable signals) are skipped.
        unsafe {
            libc::sigaction(sig, &act, std::ptr::null_mut());
        }
    }
    tokio::spawn(async move {
        let mut buf = [0u8; 64];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    for &b in &buf[..n] {
                        if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(b as i32) {
                            return;
                        }
                    }
                }
            }
        }
    });
    Ok(())
}

/// The terminal size of fd 0, if it is a terminal with a size.
pub fn window_size() -> Option<(u16, u16)> {
    nix::ioctl_read_bad!(tiocgwinsz, libc::TIOCGWINSZ, nix::pty::Winsize);
    let mut ws = nix::pty::Winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a `winsize` to a valid pointer.
    let ok = unsafe { tiocgwinsz(0, &mut ws) }.is_ok();
    (ok && ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
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
        assert!(
            s.contains(&libc::SIGPIPE),
            "docker kill -s PIPE is forwarded"
        );
    }

    #[test]
    fn self_inflicted_signals_are_told_apart_from_sent_ones() {
        let own = 1;
        // The kernel's SIGPIPE for a write to a closed pipe names the writer.
        assert!(self_inflicted(libc::SIGPIPE, libc::SI_USER, own, own));
        // docker kill / runc kill: the sender is outside our PID namespace.
        assert!(!self_inflicted(libc::SIGPIPE, libc::SI_USER, 0, own));
        assert!(!self_inflicted(libc::SIGTERM, libc::SI_USER, 0, own));
        // A process in the container other than ourselves.
        assert!(!self_inflicted(libc::SIGPIPE, libc::SI_USER, 42, own));
        // raise() and sigqueue() to ourselves.
        assert!(self_inflicted(libc::SIGUSR1, libc::SI_TKILL, own, own));
        assert!(self_inflicted(libc::SIGUSR1, libc::SI_QUEUE, own, own));
        // Resource limits hit by the supervisor itself.
        assert!(self_inflicted(libc::SIGXCPU, libc::SI_KERNEL, 0, own));
        assert!(self_inflicted(libc::SIGXFSZ, libc::SI_KERNEL, 0, own));
        // The terminal's hangup is the kernel's too, and meant for the
        // workload as under runc.
        assert!(!self_inflicted(libc::SIGHUP, libc::SI_KERNEL, 0, own));
    }

    /// The handler in action, on signals no other test uses: a SIGPIPE the
    /// kernel raises for a write to a closed pipe and a signal sent to
    /// ourselves are dropped; the same signals sent by another process
    /// are forwarded.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_signals_from_others_are_forwarded() {
        let (tx, mut rx) = mpsc::channel(SIGNAL_QUEUE);
        forward(&[libc::SIGPIPE, libc::SIGUSR2], tx).unwrap();
        let own = std::process::id().to_string();

        // A write to a pipe without a reader.
        let (r, w) = nix::unistd::pipe().unwrap();
        drop(r);
        assert_eq!(nix::unistd::write(&w, b"x"), Err(Errno::EPIPE));
        // A signal to ourselves.
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGUSR2).unwrap();
        let quiet = tokio::time::timeout(std::time::Duration::from_millis(300), rx.recv()).await;
        assert!(
            quiet.is_err(),
            "a self-inflicted signal was forwarded: {quiet:?}"
        );

        for (name, sig) in [("PIPE", libc::SIGPIPE), ("USR2", libc::SIGUSR2)] {
            let st = std::process::Command::new("kill")
                .args(["-s", name, &own])
                .status()
                .unwrap();
            assert!(st.success());
            let got = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
                .await
                .expect("a signal from another process is forwarded");
            assert_eq!(got, Some(sig), "{name}");
        }
    }
}
