//! Bounded logs in memory: the guest's serial console and the helpers'
//! stderr. Each keeps only its last few KiB, whatever the guest (or a
//! helper it provokes) writes, so endless output costs neither memory nor
//! space in the container's small /run tmpfs. They are quoted when the VM
//! fails and, with `RUNVM_DEBUG=1`, copied to the container's stderr as
//! they arrive.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// The last `cap` bytes written to it.
#[derive(Debug)]
pub struct Ring {
    buf: VecDeque<u8>,
    cap: usize,
    /// Bytes pushed out at the front so far.
    dropped: u64,
}

impl Ring {
    pub fn new(cap: usize) -> Self {
        Ring {
            buf: VecDeque::with_capacity(cap),
            cap,
            dropped: 0,
        }
    }

    /// Appends `data`, forgetting the oldest bytes beyond the capacity.
    pub fn push(&mut self, data: &[u8]) {
        let data = if data.len() > self.cap {
            self.dropped += (data.len() - self.cap) as u64;
            &data[data.len() - self.cap..]
        } else {
            data
        };
        let overflow = (self.buf.len() + data.len()).saturating_sub(self.cap);
        self.buf.drain(..overflow);
        self.dropped += overflow as u64;
        self.buf.extend(data);
    }

    /// What the ring holds, oldest first.
    pub fn contents(&self) -> Vec<u8> {
        self.buf.iter().copied().collect()
    }

    /// Whether older bytes were forgotten (the first line held may then
    /// be the end of a longer one).
    pub fn truncated(&self) -> bool {
        self.dropped > 0
    }

    /// The last `n` non-blank lines, without terminal escape sequences and
    /// control characters; a line cut by the ring's start is left out.
    pub fn last_lines(&self, n: usize) -> Vec<String> {
        let bytes = self.contents();
        let text = printable(&String::from_utf8_lossy(&bytes));
        let mut lines: Vec<&str> = text.lines().collect();
        if self.truncated() && !lines.is_empty() {
            lines.remove(0);
        }
        let lines: Vec<&str> = lines.into_iter().filter(|l| !l.trim().is_empty()).collect();
        let start = lines.len().saturating_sub(n);
        lines[start..].iter().map(|l| l.to_string()).collect()
    }
}

/// A ring shared between the thread that fills it and whoever reports.
#[derive(Clone, Debug)]
pub struct Log(Arc<Mutex<Ring>>);

impl Log {
    pub fn new(cap: usize) -> Self {
        Log(Arc::new(Mutex::new(Ring::new(cap))))
    }

    pub fn push(&self, data: &[u8]) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(data);
    }

    pub fn last_lines(&self, n: usize) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_lines(n)
    }

    /// The last line held that contains `needle`.
    pub fn last_line_with(&self, needle: &str) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_lines(usize::MAX)
            .into_iter()
            .rev()
            .find(|l| l.contains(needle))
    }

    /// Reads `source` to its end in a task of its own, keeping the last
    /// bytes here and, when `echo` is set, copying everything to stderr.
    /// (A task, not a thread: the supervisor drops its capabilities while
    /// it has one thread, after its helpers start.)
    pub fn capture<R>(&self, mut source: R, echo: bool)
    where
        R: tokio::io::AsyncRead + Unpin + Send + 'static,
    {
        use tokio::io::AsyncReadExt;
        let log = self.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match source.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        log.push(&buf[..n]);
                        if echo {
                            let _ = std::io::Write::write_all(&mut std::io::stderr(), &buf[..n]);
                        }
                    }
                }
            }
        });
    }
}

/// Removes terminal escape sequences and control characters (the BIOS
/// clears the screen on the serial console).
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // ESC [ params final-byte
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if ('@'..='~').contains(&d) {
                        break;
                    }
                }
            } else {
                chars.next(); // a two-character sequence such as ESC c
            }
        } else if c == '\n' || c == '\t' || !c.is_control() {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_last_bytes() {
        let mut r = Ring::new(8);
        r.push(b"abc");
        r.push(b"defg");
        assert_eq!(r.contents(), b"abcdefg");
        assert!(!r.truncated());
        r.push(b"hij");
        assert_eq!(r.contents(), b"cdefghij");
        assert!(r.truncated());
        r.push(b"0123456789xyz");
        assert_eq!(r.contents(), b"56789xyz");
        assert_eq!(r.contents().len(), 8);
    }

    #[test]
    fn endless_output_stays_within_the_capacity() {
        let mut r = Ring::new(64 * 1024);
        let line = b"[  123.456] a guest that never stops talking\n";
        for _ in 0..100_000 {
            r.push(line);
        }
        assert_eq!(r.contents().len(), 64 * 1024);
        let last = r.last_lines(3);
        assert_eq!(last.len(), 3);
        assert!(last
            .iter()
            .all(|l| l == "[  123.456] a guest that never stops talking"));
    }

    #[test]
    fn last_lines_skip_blank_lines_escapes_and_a_cut_first_line() {
        let mut r = Ring::new(32);
        r.push(b"a very long first line that will be cut\n\nsecond\r\n\x1b[2Jthird\n");
        assert!(r.truncated());
        assert_eq!(r.last_lines(10), ["second", "third"]);
        assert_eq!(r.last_lines(1), ["third"]);
        let mut r = Ring::new(1024);
        r.push(b"only line without newline");
        assert_eq!(r.last_lines(5), ["only line without newline"]);
    }

    #[test]
    fn a_line_is_found_above_the_tail() {
        let log = Log::new(4096);
        log.push(b"[ 6.4] Kernel panic - not syncing: sysrq triggered crash\n");
        for i in 0..40 {
            log.push(format!("[ 6.5]  trace line {i}\n").as_bytes());
        }
        assert!(!log.last_lines(15).iter().any(|l| l.contains("panic")));
        assert_eq!(
            log.last_line_with("Kernel panic - not syncing").as_deref(),
            Some("[ 6.4] Kernel panic - not syncing: sysrq triggered crash")
        );
        assert_eq!(log.last_line_with("absent"), None);
    }

    #[test]
    fn console_text_loses_escape_sequences() {
        assert_eq!(
            printable("\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS 1.16\r\nBooting\n"),
            "SeaBIOS 1.16\nBooting\n"
        );
    }

    #[tokio::test]
    async fn capture_reads_a_pipe_to_its_end() {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let log = Log::new(16);
        let mut w = std::fs::File::from(w);
        log.capture(
            tokio::net::unix::pipe::Receiver::from_owned_fd(r).unwrap(),
            false,
        );
        std::io::Write::write_all(&mut w, b"line one\nline two\nline three\n").unwrap();
        drop(w);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while log.last_lines(5) != ["line three"] {
            assert!(
                std::time::Instant::now() < deadline,
                "{:?}",
                log.last_lines(5)
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}
