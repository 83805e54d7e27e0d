//! PID 1's duty: reap every child, and hand exit statuses to whoever waits
//! for a particular process.

use runvm_protocol::exit::ExitCode;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

/// Reaps children on SIGCHLD; statuses are kept until claimed.
pub struct Reaper {
    slots: Mutex<HashMap<i32, oneshot::Sender<Exit>>>,
}

/// How a child ended: the exit code a container runtime reports, and the
/// signal that killed it, if one did (exit code 130 and death by SIGINT
/// are told apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub code: i32,
    pub signal: Option<i32>,
}

/// The exit code a container runtime reports for a wait status.
pub fn exit_code(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, sig, _) => Some(ExitCode::Signaled(sig as i32).code()),
        _ => None,
    }
}

impl Reaper {
    /// Starts reaping. Must be called before any child is started.
    pub fn start() -> std::io::Result<Arc<Self>> {
        let reaper = Arc::new(Self {
            slots: Mutex::new(HashMap::new()),
        });
        let mut sigchld = signal(SignalKind::child())?;
        let r = reaper.clone();
        tokio::spawn(async move {
            loop {
                r.reap_all();
                if sigchld.recv().await.is_none() {
                    break;
                }
            }
        });
        Ok(reaper)
    }

    fn reap_all(&self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(status) => {
                    let (Some(pid), Some(code)) = (status.pid(), exit_code(status)) else {
                        continue;
                    };
                    let mut slots = self.slots.lock().expect("reaper lock");
                    // Processes nobody waits for (orphans) are just reaped.
                    // A waited-for one is always registered before it can be
                    // reaped: `spawn_and_expect` holds this lock.
                    if let Some(tx) = slots.remove(&pid.as_raw()) {
                        let signal = match status {
                            WaitStatus::Signaled(_, sig, _) => Some(sig as i32),
                            _ => None,
                        };
                        let _ = tx.send(Exit { code, signal });
                    }
                }
            }
        }
    }

    /// Sends `signal` to the waited-for child `pid`, unless it has been
    /// reaped already: under the reaper's lock the pid cannot be reaped
    /// meanwhile, so it cannot name a new process. Returns whether the
    /// signal was sent.
    pub fn signal(&self, pid: i32, signal: i32) -> bool {
        let slots = self.slots.lock().expect("reaper lock");
        if !slots.contains_key(&pid) {
            return false;
        }
        // Raw kill(2): nix's takes a `Signal`, which has no real-time
        // signals, and any signal number may come from `docker kill -s`.
        // SAFETY: kill() has no memory-safety preconditions; `pid` is an
        // unreaped child (see above).
        unsafe { libc::kill(pid, signal) == 0 }
    }

    /// Runs `spawn` with the reaper's lock held, so a child that exits at
    /// once cannot be reaped before it is registered.
    pub fn spawn_and_expect<T, E>(
        &self,
        spawn: impl FnOnce() -> Result<(i32, T), E>,
    ) -> Result<(i32, oneshot::Receiver<Exit>, T), E> {
        let mut slots = self.slots.lock().expect("reaper lock");
        let (pid, extra) = spawn()?;
        let (tx, rx) = oneshot::channel();
        slots.insert(pid, tx);
        Ok((pid, rx, extra))
    }
}
