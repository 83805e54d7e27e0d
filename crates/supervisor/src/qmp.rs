//! A QMP client for the few commands the supervisor sends QEMU: handing
//! over a tap descriptor (`getfd`, which needs SCM_RIGHTS on the socket),
//! adding and removing a netdev and a device, and waiting for a device's
//! removal.
//!
//! Hand-written rather than taken from a QMP crate: the one maintained
//! crate (qapi) cannot attach a descriptor to a command, and the protocol
//! needed here is a handful of JSON lines.
//!
//! QEMU runs under its own uid and is as trusted as the guest it emulates:
//! every line it sends is read with a size limit, and every wait has a
//! deadline.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// Longest line accepted from QEMU.
const MAX_LINE: usize = 1024 * 1024;

/// How long a command may take to be answered.
const ANSWER_WAIT: Duration = Duration::from_secs(30);

/// Most events kept while waiting for an answer.
const MAX_EVENTS: usize = 64;

/// What failed on the monitor.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QEMU's monitor failed")]
    Io(#[from] std::io::Error),
    #[error("QEMU's monitor closed")]
    Closed,
    #[error("QEMU's monitor sent a line that is not JSON")]
    Json(#[from] serde_json::Error),
    #[error("QEMU's monitor sent a line longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("QEMU did not answer {0} within {ANSWER_WAIT:?}")]
    Timeout(String),
    #[error("QEMU refused {command}: {message}")]
    Refused { command: String, message: String },
}

/// One command as QMP reads it: a JSON object on a line of its own.
fn command_line(command: &str, arguments: Value) -> Result<Vec<u8>, QmpError> {
    let mut line = serde_json::to_vec(&json!({"execute": command, "arguments": arguments}))?;
    line.push(b'\n');
    Ok(line)
}

pub struct Qmp {
    rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
    /// Events that arrived while a command waited for its answer.
    events: VecDeque<Value>,
}

impl Qmp {
    /// Reads QEMU's greeting and leaves negotiation mode.
    pub async fn handshake(stream: UnixStream) -> Result<Self, QmpError> {
        let (rd, wr) = stream.into_split();
        let mut q = Qmp {
            rd: BufReader::new(rd),
            wr,
            events: VecDeque::new(),
        };
        let greeting = tokio::time::timeout(ANSWER_WAIT, q.line())
            .await
            .map_err(|_| QmpError::Timeout("the greeting".into()))??;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Refused {
                command: "the greeting".into(),
                message: "not a QMP greeting".into(),
            });
        }
        q.execute("qmp_capabilities", json!({})).await?;
        Ok(q)
    }

    async fn line(&mut self) -> Result<Value, QmpError> {
        let mut buf = Vec::new();
        let mut limited = (&mut self.rd).take(MAX_LINE as u64 + 1);
        let n = limited.read_until(b'\n', &mut buf).await?;
        if n == 0 {
            return Err(QmpError::Closed);
        }
        if n > MAX_LINE {
            return Err(QmpError::TooLong);
        }
        Ok(serde_json::from_slice(&buf)?)
    }

    /// Sends `command` with `arguments` and waits for its answer; events
    /// that come first are kept for [`Qmp::wait_device_deleted`].
    pub async fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, QmpError> {
        self.wr
            .write_all(&command_line(command, arguments)?)
            .await?;
        self.answer(command).await
    }

    async fn answer(&mut self, command: &str) -> Result<Value, QmpError> {
        let wait = async {
            loop {
                let v = self.line().await?;
                if let Some(ret) = v.get("return") {
                    return Ok(ret.clone());
                }
                if let Some(err) = v.get("error") {
                    return Err(QmpError::Refused {
                        command: command.to_owned(),
                        message: err
                            .get("desc")
                            .and_then(Value::as_str)
                            .unwrap_or("no description")
                            .to_owned(),
                    });
                }
                if v.get("event").is_some() {
                    if self.events.len() == MAX_EVENTS {
                        self.events.pop_front();
                    }
                    self.events.push_back(v);
                }
            }
        };
        tokio::time::timeout(ANSWER_WAIT, wait)
            .await
            .map_err(|_| QmpError::Timeout(command.to_owned()))?
    }

    /// Hands `fd` to QEMU under `name` (`getfd`): the command and the
    /// descriptor travel in one message.
    pub async fn send_fd(&mut self, name: &str, fd: BorrowedFd<'_>) -> Result<(), QmpError> {
        let msg = command_line("getfd", json!({"fdname": name}))?;
        let fds = [fd.as_raw_fd()];
        let socket = self.wr.as_ref();
        loop {
            socket.writable().await?;
            let sent = socket.try_io(tokio::io::Interest::WRITABLE, || {
                let cmsg = [ControlMessage::ScmRights(&fds)];
                sendmsg::<()>(
                    socket.as_raw_fd(),
                    &[IoSlice::new(&msg)],
                    &cmsg,
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .map_err(std::io::Error::from)
            });
            match sent {
                Ok(n) if n == msg.len() => break,
                // A unix stream socket takes a small message whole.
                Ok(_) => return Err(std::io::Error::other("getfd was sent in part").into()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
            }
        }
        self.answer("getfd").await.map(|_| ())
    }

    /// Waits until QEMU reports the removal of device `id`
    /// (`DEVICE_DELETED`), up to `limit`. False if it did not come.
    pub async fn wait_device_deleted(&mut self, id: &str, limit: Duration) -> bool {
        let is_it = |v: &Value| {
            v.get("event").and_then(Value::as_str) == Some("DEVICE_DELETED")
                && v.pointer("/data/device").and_then(Value::as_str) == Some(id)
        };
        if let Some(at) = self.events.iter().position(is_it) {
            self.events.remove(at);
            return true;
        }
        let wait = async {
            loop {
                match self.line().await {
                    Ok(v) if is_it(&v) => return true,
                    Ok(_) => {}
                    Err(_) => return false,
                }
            }
        };
        tokio::time::timeout(limit, wait).await.unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// A fake QEMU on the other end of a socket pair: greets, then answers
    /// each command by `answer`.
    fn fake_qemu(
        answer: impl Fn(&Value) -> Vec<Value> + Send + 'static,
    ) -> (UnixStream, tokio::task::JoinHandle<Vec<Value>>) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let task = tokio::spawn(async move {
            let (rd, mut wr) = theirs.into_split();
            let mut rd = BufReader::new(rd);
            wr.write_all(b"{\"QMP\": {\"version\": {}}}\n")
                .await
                .unwrap();
            let mut seen = Vec::new();
            let mut line = String::new();
            while rd.read_line(&mut line).await.unwrap() > 0 {
                let v: Value = serde_json::from_str(&line).unwrap();
                for out in answer(&v) {
                    wr.write_all(format!("{out}\n").as_bytes()).await.unwrap();
                }
                seen.push(v);
                line.clear();
            }
            seen
        });
        (ours, task)
    }

    #[tokio::test]
    async fn commands_get_their_answers_past_events() {
        let (s, task) = fake_qemu(|v| match v["execute"].as_str() {
            Some("device_del") => vec![
                json!({"event": "DEVICE_DELETED", "data": {"device": "nic3"}}),
                json!({"return": {}}),
            ],
            Some("netdev_add") => {
                vec![json!({"error": {"class": "GenericError", "desc": "Duplicate ID"}})]
            }
            _ => vec![json!({"return": {}})],
        });
        let mut q = Qmp::handshake(s).await.unwrap();
        q.execute("device_del", json!({"id": "nic3"}))
            .await
            .unwrap();
        // The event came before the answer: it is kept.
        assert!(
            q.wait_device_deleted("nic3", Duration::from_millis(100))
                .await
        );
        assert!(
            !q.wait_device_deleted("nic4", Duration::from_millis(100))
                .await
        );
        let err = q
            .execute("netdev_add", json!({"id": "net3"}))
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "QEMU refused netdev_add: Duplicate ID");
        drop(q);
        let seen = task.await.unwrap();
        assert_eq!(seen[0]["execute"], "qmp_capabilities");
        assert_eq!(seen.len(), 3);
    }

    #[tokio::test]
    async fn a_descriptor_travels_with_getfd() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let peer = tokio::spawn(async move {
            let mut theirs = theirs;
            theirs.write_all(b"{\"QMP\": {}}\n").await.unwrap();
            // qmp_capabilities
            let mut buf = [0u8; 4096];
            let n = theirs.read(&mut buf).await.unwrap();
            assert!(String::from_utf8_lossy(&buf[..n]).contains("qmp_capabilities"));
            theirs.write_all(b"{\"return\": {}}\n").await.unwrap();
            // getfd, with a descriptor
            theirs.readable().await.unwrap();
            let fds = {
                let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
                let mut iov = [std::io::IoSliceMut::new(&mut buf)];
                let got = nix::sys::socket::recvmsg::<()>(
                    theirs.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::empty(),
                )
                .unwrap();
                got.cmsgs().unwrap().count()
            };
            assert_eq!(fds, 1, "one descriptor");
            theirs.write_all(b"{\"return\": {}}\n").await.unwrap();
        });
        let mut q = Qmp::handshake(ours).await.unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        q.send_fd("tap7", file.as_fd()).await.unwrap();
        peer.await.unwrap();
    }

    #[tokio::test]
    async fn a_monitor_that_is_not_qmp_or_sends_garbage_is_an_error() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        theirs.write_all(b"hello\n").await.unwrap();
        assert!(matches!(Qmp::handshake(ours).await, Err(QmpError::Json(_))));
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        theirs.write_all(b"{\"x\": 1}\n").await.unwrap();
        assert!(Qmp::handshake(ours).await.is_err());
        let (ours, theirs) = UnixStream::pair().unwrap();
        drop(theirs);
        assert!(matches!(Qmp::handshake(ours).await, Err(QmpError::Closed)));
    }
}
