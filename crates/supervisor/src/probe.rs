//! `runvm-supervisor boot-probe DIR`: boots the machine a container's VM
//! is ([`vmm::probe_args`]), with no container, no root filesystem and no
//! NIC, until the guest agent says it is ready, and reports how long that
//! took. `runvm boot-probe` prepares `DIR/vm.json` the way `runvm create`
//! would and runs this; `make bench` uses it as the floor runvm's own boot
//! is compared with, so the floor is always this code's machine, kernel
//! and initramfs, never a copy of them.
//!
//! It runs on the host, as the user who called `runvm`, outside any
//! container: a diagnostic, not a sandbox (QEMU keeps its own `-sandbox`).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use runvm_contract::guest::PROBE_READY;
use runvm_contract::VmConfig;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::time::Instant;

use crate::error::{Result, SupervisorError};
use crate::{ring, vmm, HELPER_LOG_BYTES};

/// The name of the VM configuration inside the probe's directory.
pub const CONFIG_NAME: &str = "vm.json";

/// How long a probe boot may take before it counts as hung. Generous: a
/// TCG boot on a busy host takes tens of seconds, and a probe that gives up
/// too early measures nothing.
const LIMIT: Duration = Duration::from_secs(600);

/// Boots the probe VM described in `dir`; prints the time to ready.
pub async fn run(dir: &Path) -> Result<i32> {
    let config = dir.join(CONFIG_NAME);
    let cfg: VmConfig = crate::load_config_from(&config)?;
    let socket = dir.join("agent.sock");
    let args = vmm::probe_args(&cfg, &socket.to_string_lossy());
    // Listening before QEMU starts: no signal between kills us alone.
    let mut interrupted = Interrupt::listen()?;
    // `runvm boot-probe` blocks these signals while it waits (it passes
    // them on to us), and a blocked mask survives exec: unblock them, for
    // us and for QEMU.
    let _ = nix::sys::signal::SigSet::empty().thread_set_mask();
    tracing::debug!("starting {} {}", cfg.qemu, args.join(" "));
    let started = Instant::now();
    let mut qemu = Command::new(&cfg.qemu)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| SupervisorError::Spawn {
            program: cfg.qemu.clone(),
            source,
        })?;
    let stderr = ring::Log::new(HELPER_LOG_BYTES);
    if let Some(e) = qemu.stderr.take() {
        stderr.capture(e, cfg.debug);
    }
    let console = qemu.stdout.take().expect("QEMU's stdout is piped");
    let mut lines = BufReader::new(console).lines();
    let mut last = Vec::new();
    let boot = tokio::time::timeout(LIMIT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if cfg.debug {
                eprintln!("{line}");
            }
            if line.contains(PROBE_READY) {
                return true;
            }
            last.push(ring::printable(&line));
            if last.len() > 5 {
                last.remove(0);
            }
        }
        false
    });
    // Ctrl-C, or `runvm boot-probe` stopped: QEMU goes with the probe.
    let ready = tokio::select! {
        biased;
        signal = interrupted.recv() => {
            let _ = qemu.kill().await;
            return Err(SupervisorError::Probe(format!(
                "interrupted by {signal}; QEMU was stopped"
            )));
        }
        ready = boot => ready,
    };
    let elapsed = started.elapsed();
    let _ = qemu.kill().await;
    match ready {
        Ok(true) => {
            println!(
                "the guest agent was ready {:.3} s after QEMU started ({}, {} vCPUs, {} MiB, {})",
                elapsed.as_secs_f64(),
                cfg.accel,
                cfg.vcpus,
                cfg.memory_mib,
                cfg.kernel,
            );
            Ok(0)
        }
        Ok(false) => Err(SupervisorError::Probe(format!(
            "QEMU exited ({}) before the guest agent was ready; last console lines: {}; QEMU said: {}",
            crate::status_text(qemu.wait().await),
            or_nothing(&last),
            or_nothing(&stderr.last_lines(5)),
        ))),
        Err(_) => Err(SupervisorError::Probe(format!(
            "the guest agent was not ready {} s after QEMU started; last console lines: {}",
            LIMIT.as_secs(),
            or_nothing(&last),
        ))),
    }
}

/// The signals that stop a probe: the terminal's (SIGINT, SIGQUIT, SIGHUP)
/// and SIGTERM, which `runvm boot-probe` passes on when it gets one.
/// Without them, the supervisor would die without stopping QEMU.
struct Interrupt(Vec<(&'static str, tokio::signal::unix::Signal)>);

impl Interrupt {
    fn listen() -> Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        let kinds = [
            ("SIGINT", SignalKind::interrupt()),
            ("SIGTERM", SignalKind::terminate()),
            ("SIGHUP", SignalKind::hangup()),
            ("SIGQUIT", SignalKind::quit()),
        ];
        kinds
            .into_iter()
            .map(|(name, kind)| {
                signal(kind)
                    .map(|s| (name, s))
                    .map_err(|e| SupervisorError::io(format!("handle {name}"), e))
            })
            .collect::<Result<_>>()
            .map(Interrupt)
    }

    /// The name of the first of the signals to arrive.
    async fn recv(&mut self) -> &'static str {
        let waits = self.0.iter_mut().map(|(name, s)| {
            Box::pin(async move {
                s.recv().await;
                *name
            })
        });
        futures::future::select_all(waits).await.0
    }
}

fn or_nothing(lines: &[String]) -> String {
    if lines.is_empty() {
        "(none)".into()
    } else {
        lines.join(" | ")
    }
}
