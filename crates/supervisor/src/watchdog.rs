//! Giving up on a guest that never answers, without taking a busy host for
//! a dead guest.
//!
//! A fixed wall-clock deadline cannot tell the two apart: under TCG a VM
//! boots in about 4 s on an idle 2-core host, but 20 VMs booting at once on
//! the same host each took well over two minutes, and a deadline of 120 s
//! killed all of them. What a hung guest does spend is CPU time: a kernel
//! that loops, an agent that spins. So the guest is given a budget of
//! QEMU's own CPU time (user + system, read from `/proc/<pid>/stat`); on a
//! crowded host that time accrues slowly and the boot is left to finish.
//! A guest that hangs without spending CPU (waiting forever on a device)
//! is caught by a wall-clock limit long enough for any load the host can
//! still serve.

use std::time::Duration;

use tokio::time::Instant;

/// QEMU CPU time a guest may spend before it must have answered. A boot to
/// the agent costs about 4 s of it under TCG (less on KVM).
pub const CPU_BUDGET: Duration = Duration::from_secs(120);
/// The wall-clock limit for a guest that spends no CPU and never answers.
pub const WALL_LIMIT: Duration = Duration::from_secs(600);
/// How often QEMU's CPU time is read.
const POLL: Duration = Duration::from_millis(500);

/// Resolves, with a description for the user, once the guest of the QEMU
/// process `pid` (started at `started`) has spent its CPU budget or reached
/// the wall-clock limit. The caller stops waiting for this when the guest
/// answers or QEMU exits.
pub async fn unanswered(pid: u32, started: Instant) -> String {
    unanswered_with(pid, started, CPU_BUDGET, WALL_LIMIT).await
}

async fn unanswered_with(pid: u32, started: Instant, budget: Duration, wall: Duration) -> String {
    let ticks = clock_ticks_per_second();
    loop {
        let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| cpu_time(&stat, ticks));
        let waited = started.elapsed();
        if let Some(cpu) = cpu.filter(|c| *c >= budget) {
            return format!(
                "the guest agent did not answer after {} s of the VM's CPU time ({} s since QEMU's start)",
                cpu.as_secs(),
                waited.as_secs()
            );
        }
        if waited >= wall {
            let used = cpu.map_or_else(|| "unknown".to_owned(), |c| format!("{} s", c.as_secs()));
            return format!(
                "the guest agent did not answer within {} s of QEMU's start (CPU time used: {used})",
                waited.as_secs()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

fn clock_ticks_per_second() -> u64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as u64,
        // USER_HZ is 100 on every Linux architecture runvm runs on.
        _ => 100,
    }
}

/// User plus system CPU time from the text of `/proc/<pid>/stat`. The
/// command name (field 2) is in parentheses and may itself contain spaces
/// and parentheses, so fields are counted after the last `)`.
fn cpu_time(stat: &str, ticks_per_second: u64) -> Option<Duration> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the name: state (field 3) ... utime (14), stime (15).
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = utime.checked_add(stime)?;
    Some(Duration::from_millis(
        ticks.saturating_mul(1000) / ticks_per_second.max(1),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_user_plus_system_after_the_last_parenthesis() {
        let stat = "4242 (qemu) x) (y) S 1 4242 4242 0 -1 4194624 1 0 0 0 250 125 0 0 20 0 3 0";
        assert_eq!(cpu_time(stat, 100), Some(Duration::from_millis(3750)));
        assert_eq!(cpu_time(stat, 250), Some(Duration::from_millis(1500)));
    }

    #[test]
    fn a_short_or_garbled_stat_gives_no_time() {
        assert_eq!(cpu_time("", 100), None);
        assert_eq!(cpu_time("1 (a) S 1 2 3", 100), None);
        assert_eq!(cpu_time("1 (a) S 1 1 1 0 -1 0 0 0 0 0 x 5", 100), None);
        let huge = format!("1 (a) S 1 1 1 0 -1 0 0 0 0 0 {} 1", u64::MAX);
        assert_eq!(cpu_time(&huge, 100), None);
    }

    #[test]
    fn our_own_stat_parses() {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(
            cpu_time(&stat, clock_ticks_per_second()).is_some(),
            "{stat}"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_spinning_process_is_given_up_on_its_cpu_budget() {
        // This test process itself spins on another thread.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let spin = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        };
        let why = unanswered_with(
            std::process::id(),
            Instant::now(),
            Duration::from_millis(300),
            Duration::from_secs(60),
        )
        .await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        spin.join().unwrap();
        assert!(why.contains("of the VM's CPU time"), "{why}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_idle_process_is_given_up_at_the_wall_clock_limit() {
        let mut sleeper = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let why = unanswered_with(
            sleeper.id(),
            Instant::now(),
            Duration::from_secs(30),
            Duration::from_millis(200),
        )
        .await;
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
        assert!(
            why.contains("within 0 s of QEMU's start (CPU time used: 0 s)"),
            "{why}"
        );
    }
}
