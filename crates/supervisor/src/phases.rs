//! Where a container's start spends its time: the moment each phase ends,
//! on the host's clock, from `runvm create` to the VM's end.
//!
//! The host's marks are taken here as the supervisor passes them; the
//! guest's (kernel started, agent at `/init`, host channel open, workload
//! started) come in the agent's `Started` message as guest uptimes and are
//! placed on the host's clock by the moment that message arrived. With
//! `RUNVM_DEBUG=phases` (or `=1`) the supervisor prints them as one line
//! at the end, which `make bench` reads.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use runvm_protocol::BootMarks;

/// A phase of the start, named by the moment it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// runvm has rewritten the bundle (runc runs next).
    Rewritten,
    /// The supervisor runs (runc has made and started the container).
    Supervisor,
    /// Its sockets listen, the network is captured, virtiofsd runs.
    Helpers,
    /// QEMU is started.
    Qemu,
    /// The guest kernel started (firmware and kernel loading done).
    Kernel,
    /// The agent runs as `/init` (the kernel has booted).
    Init,
    /// The agent has opened the host channel.
    Ready,
    /// The request to start the container reached the agent.
    Request,
    /// The guest has set the container up (root, mounts, network).
    Prepared,
    /// The workload runs.
    Workload,
    /// Its exit status reached the host.
    Exited,
    /// QEMU and virtiofsd have stopped.
    Stopped,
}

impl Phase {
    /// Every phase, in the order they end.
    pub const ALL: [Phase; 12] = [
        Phase::Rewritten,
        Phase::Supervisor,
        Phase::Helpers,
        Phase::Qemu,
        Phase::Kernel,
        Phase::Init,
        Phase::Ready,
        Phase::Request,
        Phase::Prepared,
        Phase::Workload,
        Phase::Exited,
        Phase::Stopped,
    ];

    /// Its name in the printed line.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Rewritten => "rewritten",
            Phase::Supervisor => "supervisor",
            Phase::Helpers => "helpers",
            Phase::Qemu => "qemu",
            Phase::Kernel => "kernel",
            Phase::Init => "init",
            Phase::Ready => "ready",
            Phase::Request => "request",
            Phase::Prepared => "prepared",
            Phase::Workload => "workload",
            Phase::Exited => "exited",
            Phase::Stopped => "stopped",
        }
    }
}

/// The marks of one start: for each phase, when it ended (ms since the
/// Unix epoch), if it did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Marks([Option<u64>; Phase::ALL.len()]);

impl Marks {
    /// Records that `phase` ended at `unix_ms` (the first time only).
    pub fn set(&mut self, phase: Phase, unix_ms: u64) {
        let slot = &mut self.0[phase as usize];
        if slot.is_none() {
            *slot = Some(unix_ms);
        }
    }

    /// Places the guest's milestones on the host's clock: `boot` arrived
    /// at `arrived_unix_ms`, when the guest's uptime was `boot.started_ms`.
    /// Marks the guest could not have reached in that order are dropped.
    pub fn set_guest(&mut self, boot: BootMarks, arrived_unix_ms: u64) {
        let guest = [
            boot.init_ms,
            boot.ready_ms,
            boot.request_ms,
            boot.prepared_ms,
            boot.started_ms,
        ];
        let ordered = guest.windows(2).all(|w| w[0] <= w[1]);
        let Some(kernel) = arrived_unix_ms.checked_sub(boot.started_ms) else {
            return;
        };
        if !ordered {
            return;
        }
        self.set(Phase::Kernel, kernel);
        self.set(Phase::Init, kernel + boot.init_ms);
        self.set(Phase::Ready, kernel + boot.ready_ms);
        self.set(Phase::Request, kernel + boot.request_ms);
        self.set(Phase::Prepared, kernel + boot.prepared_ms);
        self.set(Phase::Workload, kernel + boot.started_ms);
    }

    /// The line the supervisor prints: `t0=<unix ms>` (when `runvm create`
    /// began), then `<phase>=<ms since t0>` for each phase that ended.
    pub fn line(&self, t0_unix_ms: u64) -> String {
        let mut out = format!("phases (ms since runvm create): t0={t0_unix_ms}");
        for phase in Phase::ALL {
            if let Some(at) = self.0[phase as usize] {
                let since = at as i64 - t0_unix_ms as i64;
                out.push_str(&format!(" {}={since}", phase.name()));
            }
        }
        out
    }
}

static MARKS: Mutex<Marks> = Mutex::new(Marks([None; Phase::ALL.len()]));

/// Now, in ms since the Unix epoch.
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Records that `phase` ended at `unix_ms` (0: unknown, not recorded).
pub fn mark_at(phase: Phase, unix_ms: u64) {
    if unix_ms == 0 {
        return;
    }
    if let Ok(mut m) = MARKS.lock() {
        m.set(phase, unix_ms);
    }
}

/// Records that `phase` ends now.
pub fn mark(phase: Phase) {
    let now = now_unix_ms();
    if let Ok(mut m) = MARKS.lock() {
        m.set(phase, now);
    }
}

/// Records the guest's milestones, which arrived now.
pub fn guest(boot: BootMarks) {
    let now = now_unix_ms();
    if let Ok(mut m) = MARKS.lock() {
        m.set_guest(boot, now);
    }
}

/// The line of this process's marks.
pub fn line(t0_unix_ms: u64) -> String {
    MARKS.lock().map(|m| m.line(t0_unix_ms)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guests_milestones_are_placed_by_the_arrival_of_its_message() {
        let mut m = Marks::default();
        m.set(Phase::Rewritten, 1_000_100);
        m.set(Phase::Supervisor, 1_000_300);
        m.set(Phase::Qemu, 1_000_400);
        m.set(Phase::Qemu, 1_000_999);
        m.set_guest(
            BootMarks {
                init_ms: 700,
                ready_ms: 900,
                request_ms: 920,
                prepared_ms: 980,
                started_ms: 1000,
            },
            1_002_000,
        );
        m.set(Phase::Exited, 1_002_100);
        assert_eq!(
            m.line(1_000_000),
            "phases (ms since runvm create): t0=1000000 rewritten=100 supervisor=300 qemu=400 \
             kernel=1000 init=1700 ready=1900 request=1920 prepared=1980 workload=2000 exited=2100"
        );
    }

    #[test]
    fn a_guest_that_reports_nonsense_marks_nothing() {
        let mut m = Marks::default();
        let odd = BootMarks {
            init_ms: 5,
            ready_ms: 3,
            started_ms: 9,
            ..Default::default()
        };
        m.set_guest(odd, 1000);
        let huge = BootMarks {
            started_ms: u64::MAX,
            ..Default::default()
        };
        m.set_guest(huge, 1000);
        assert_eq!(m, Marks::default());
    }
}
