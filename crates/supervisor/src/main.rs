//! runvm's supervisor: PID 1 of a runvm container.
//!
//! It moves the container's network to tap devices, starts virtiofsd on the
//! container's root filesystem and QEMU on runvm's kernel and initramfs,
//! then hands the container to the guest agent over a virtio-serial port
//! and relays stdio, signals, terminal size and finally the exit status.

mod disks;
mod dns;
mod error;
mod exec;
mod network;
mod phases;
mod probe;
mod qmp;
mod relay;
mod ring;
mod sandbox;
mod session;
mod vmm;
mod watchdog;

use runvm_contract::report::ErrorChain;
use runvm_protocol::exit::ExitCode;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use error::{Result, SupervisorError};
use qmp::Qmp;
use runvm_contract::{paths, sockets, VmConfig};
use runvm_protocol::session::{write_frame, Mode, Mux};
use runvm_protocol::{GuestNetwork, HostMessage, StartContainer, StreamHeader};

/// Exit code when the VM itself fails (as opposed to the workload).
const VM_FAILURE: i32 = ExitCode::VmFailure.code();

/// After the VM failed, how long the relays may take to deliver the
/// output the guest had already sent.
const DRAIN_SECS: u64 = 10;

/// What is kept of the guest's console and of each helper's stderr.
const CONSOLE_BYTES: usize = 64 * 1024;
pub(crate) const HELPER_LOG_BYTES: usize = 16 * 1024;
/// Console lines quoted when the VM fails.
const CONSOLE_LINES: usize = 15;

fn main() {
    // One thread: the supervisor drops its capabilities once the VM runs,
    // and capabilities belong to threads, so no runtime thread may exist
    // before that (the stdio relays' threads start later and inherit the
    // reduced sets). Its work is relaying bytes; one thread is plenty.
    runvm_protocol::log::init("runvm");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let code = match rt {
        Ok(rt) => match rt.block_on(async {
            let args: Vec<String> = std::env::args().skip(1).collect();
            match args.first().map(String::as_str) {
                Some("exec") => exec::client().await,
                Some("boot-probe") if args.len() == 2 => {
                    probe::run(std::path::Path::new(&args[1])).await
                }
                _ => supervise().await,
            }
        }) {
            Ok(code) => code,
            Err(e) => {
                tracing::error!("{}", e.chain());
                VM_FAILURE
            }
        },
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            VM_FAILURE
        }
    };
    // Exit at once: threads blocked reading stdin must not hold us up.
    std::process::exit(code);
}

fn load_config() -> Result<VmConfig> {
    load_config_from(std::path::Path::new(paths::VM_CONFIG))
}

fn load_config_from(path: &std::path::Path) -> Result<VmConfig> {
    let name = || path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| SupervisorError::Config {
        path: name(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| SupervisorError::ConfigJson {
        path: name(),
        source,
    })
}

/// Starts virtiofsd or QEMU: no stdin or stdout, stderr kept in `log`
/// (and copied to ours when debugging), killed if the supervisor goes away.
///
/// The fork and exec run on the runtime's one thread, on purpose: they
/// happen at startup, before any relay or exec server shares that thread,
/// so nothing waits behind them; and a helper thread (`spawn_blocking`)
/// would still exist, or linger in `/proc/self/task`, when the supervisor
/// drops its capabilities, which it can only do while it has one thread.
/// (The guest agent, whose runtime serves many streams while it starts
/// processes, forks on a thread of its own.)
fn spawn_helper(
    cfg: &VmConfig,
    program: &str,
    args: Vec<String>,
    log: &ring::Log,
    confine: impl FnOnce(&mut Command),
) -> Result<Child> {
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| SupervisorError::io("create a pipe for a helper's stderr", e))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(wr))
        .kill_on_drop(true);
    confine(&mut cmd);
    let child = cmd.spawn().map_err(|source| SupervisorError::Spawn {
        program: program.to_owned(),
        source,
    })?;
    let rd = tokio::net::unix::pipe::Receiver::from_owned_fd(rd)
        .map_err(|e| SupervisorError::io("read a helper's stderr", e))?;
    log.capture(rd, cfg.debug);
    Ok(child)
}

/// Starts a virtiofsd on a listening socket of its own at `socket`, made
/// before QEMU starts, so that QEMU never connects to a socket that does
/// not listen yet. `args` gets the socket's descriptor, which stays
/// close-on-exec here: only virtiofsd's child makes it inheritable.
fn start_virtiofsd(
    cfg: &VmConfig,
    socket: &str,
    args: fn(&VmConfig, i32) -> Vec<String>,
    log: &ring::Log,
) -> Result<Child> {
    let listener = std::os::unix::net::UnixListener::bind(socket)
        .map_err(|e| SupervisorError::io(format!("listen on {socket}"), e))?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
    spawn_helper(cfg, &cfg.virtiofsd, args(cfg, fd), log, |c| {
        sandbox::bound_capabilities(c, sandbox::VIRTIOFSD_CAPS, vec![fd])
    })
    // The listener closes here: virtiofsd has its own copy.
}

/// The helpers' stderr and the guest console.
struct Logs {
    console: ring::Log,
    qemu: ring::Log,
    virtiofsd: ring::Log,
}

/// The last lines of a helper's stderr, as a suffix for a message.
fn tail_suffix(log: &ring::Log) -> String {
    let last = log.last_lines(5);
    if last.is_empty() {
        String::new()
    } else {
        format!(": {}", last.join(" | "))
    }
}

fn status_text(st: std::io::Result<ExitStatus>) -> String {
    st.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string())
}

async fn stop(child: &mut Child, grace: Duration) {
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

/// Places Docker's staged mounts inside the image root, unless the runtime
/// already did after `runc create` (it always does, except under `runc
/// run`, which has no step between creating and starting).
fn place_mounts(cfg: &VmConfig) -> Result<()> {
    if std::path::Path::new(paths::MOUNTS_PLACED).exists() {
        return Ok(());
    }
    let root = std::path::Path::new(&cfg.rootfs);
    runvm_mounts::place_all(root, &cfg.staged_mounts)?;
    runvm_mounts::disks::prepare_all(root, &cfg.disks, cfg.container.readonly_root)
        .map_err(runvm_mounts::MountError::from)?;
    if cfg.container.readonly_root {
        runvm_mounts::make_mountpoints(root, &cfg.container.guest_mountpoints());
        runvm_mounts::make_readonly(root)?;
    }
    Ok(())
}

/// Which helper ended first.
enum HelperEnd {
    Qemu(std::io::Result<ExitStatus>),
    Virtiofsd(std::io::Result<ExitStatus>),
}

/// Resolves once the VM is dead, with what ended it. Without virtiofsd the
/// guest has no files: QEMU is then killed too.
async fn vm_end(qemu: &mut Child, virtiofsd: &mut Child) -> String {
    let end = tokio::select! {
        st = qemu.wait() => HelperEnd::Qemu(st),
        st = virtiofsd.wait() => HelperEnd::Virtiofsd(st),
    };
    match end {
        HelperEnd::Qemu(st) => format!("QEMU exited ({})", status_text(st)),
        HelperEnd::Virtiofsd(st) => {
            // virtiofsd also ends, cleanly, when QEMU has gone: then QEMU's
            // end is the cause.
            if let Ok(Ok(qst)) = tokio::time::timeout(Duration::from_secs(1), qemu.wait()).await {
                return format!("QEMU exited ({qst})");
            }
            let _ = qemu.kill().await;
            format!(
                "virtiofsd, which serves the container's files to the VM, exited ({}); QEMU was stopped",
                status_text(st)
            )
        }
    }
}

async fn supervise() -> Result<i32> {
    phases::mark(phases::Phase::Supervisor);
    let cfg = load_config()?;
    phases::mark_at(phases::Phase::Rewritten, cfg.rewritten_unix_ms);
    runvm_protocol::log::set_debug(cfg.debug);
    place_mounts(&cfg)?;
    let terminal = cfg.container.process.terminal;

    // Signals first, so that none sent during boot is lost: they are queued
    // until the workload runs.
    let (sig_tx, sig_rx) = mpsc::channel(relay::SIGNAL_QUEUE);
    relay::forward_signals(sig_tx).map_err(|e| SupervisorError::io("forward signals", e))?;
    if terminal {
        relay::make_raw();
    }
    if cfg.debug {
        if let Some(w) = &cfg.accel_warning {
            tracing::warn!("{w}");
        }
    }

    std::fs::create_dir_all(sockets::RUN_DIR)
        .map_err(|e| SupervisorError::io(format!("create {}", sockets::RUN_DIR), e))?;
    // Execs may arrive while the VM boots: listen now, serve once ready.
    let (agent_tx, agent_rx) = watch::channel(None);
    let listener = tokio::net::UnixListener::bind(sockets::EXEC)
        .map_err(|e| SupervisorError::io(format!("listen on {}", sockets::EXEC), e))?;
    tokio::spawn(exec::serve(listener, agent_rx));

    // Watched before the snapshot is taken: no change is missed between.
    let network_changes = if cfg.own_network {
        network::hotplug::watch()
    } else {
        None
    };
    let (nics, routes) = network::capture(cfg.own_network).await?;
    if nics.len() > vmm::NIC_SLOTS.count() {
        return Err(SupervisorError::TooManyNics(nics.len()));
    }

    // The sockets listen before the helpers start: nobody ever connects
    // to a socket that is not ready.
    let agent_listener = tokio::net::UnixListener::bind(sockets::AGENT)
        .map_err(|e| SupervisorError::io(format!("listen on {}", sockets::AGENT), e))?;
    let console_listener = tokio::net::UnixListener::bind(sockets::CONSOLE)
        .map_err(|e| SupervisorError::io(format!("listen on {}", sockets::CONSOLE), e))?;
    let qmp_listener = tokio::net::UnixListener::bind(sockets::QMP)
        .map_err(|e| SupervisorError::io(format!("listen on {}", sockets::QMP), e))?;
    let logs = Logs {
        console: ring::Log::new(CONSOLE_BYTES),
        qemu: ring::Log::new(HELPER_LOG_BYTES),
        virtiofsd: ring::Log::new(HELPER_LOG_BYTES),
    };
    // The console is read all the time, so the guest never waits for it.
    let console = logs.console.clone();
    let echo_console = cfg.debug;
    tokio::spawn(async move {
        if let Ok((conn, _)) = console_listener.accept().await {
            console.capture(conn, echo_console);
        }
    });

    let mut virtiofsd = start_virtiofsd(
        &cfg,
        sockets::VIRTIOFS,
        vmm::virtiofsd_args,
        &logs.virtiofsd,
    )?;
    // The kernel's modules, for modprobe in the guest, from a virtiofsd of
    // their own (read-only). Killed when dropped, at the end.
    let modules_virtiofsd = match cfg.container.kernel_modules {
        None => None,
        Some(_) => Some(start_virtiofsd(
            &cfg,
            sockets::MODULES_VIRTIOFS,
            vmm::modules_virtiofsd_args,
            &logs.virtiofsd,
        )?),
    };

    phases::mark(phases::Phase::Helpers);

    let nic_args: Vec<vmm::NicArg> = nics
        .iter()
        .zip(vmm::NIC_SLOTS)
        .map(|(n, slot)| vmm::NicArg {
            mac: n.interface.mac.to_string(),
            tap_fd: std::os::fd::AsRawFd::as_raw_fd(&n.tap),
            slot,
        })
        .collect();
    // QEMU runs under its own unprivileged uid: it gets the sockets it
    // connects to, and inherits only the taps.
    let (quid, qgid) = (cfg.qemu_uid, cfg.qemu_gid);
    let mut qemu_sockets = vec![
        sockets::AGENT,
        sockets::VIRTIOFS,
        sockets::CONSOLE,
        sockets::QMP,
    ];
    if modules_virtiofsd.is_some() {
        qemu_sockets.push(sockets::MODULES_VIRTIOFS);
    }
    for path in qemu_sockets {
        sandbox::give_to(path, quid, qgid)
            .map_err(|e| SupervisorError::io(format!("give {path} to QEMU's uid {quid}"), e))?;
    }
    let disks = disks::open_all(&cfg)?;
    let disk_fds: Vec<[i32; 2]> = disks.iter().map(disks::OpenDisk::fds).collect();
    let inherited: Vec<i32> = nic_args
        .iter()
        .map(|n| n.tap_fd)
        .chain(disk_fds.iter().flatten().copied())
        .collect();
    let qemu_args = vmm::qemu_args(&cfg, &nic_args, &disk_fds);
    tracing::debug!("starting {} {}", cfg.qemu, qemu_args.join(" "));
    let mut qemu = spawn_helper(&cfg, &cfg.qemu, qemu_args, &logs.qemu, |c| {
        sandbox::run_unprivileged(c, quid, qgid, inherited)
    })?;
    phases::mark(phases::Phase::Qemu);
    // Both helpers run: from here on the supervisor needs no privilege but
    // stopping QEMU, which runs under another uid.
    sandbox::drop_own_capabilities(sandbox::SUPERVISOR_KEEPS)
        .map_err(|e| SupervisorError::io("drop capabilities", std::io::Error::other(e)))?;
    // A guest that never answers is given up on (see watchdog.rs): the
    // request to start the container must be answered before then.
    let qemu_pid = qemu.id().unwrap_or_default();
    let mut give_up = Box::pin(watchdog::unanswered(qemu_pid, Instant::now()));
    // Each tap is dropped here: QEMU has its own copy now.
    let plugged: Vec<network::hotplug::Plugged> = nics
        .into_iter()
        .zip(vmm::NIC_SLOTS)
        .map(|(n, slot)| network::hotplug::Plugged {
            link: n.link,
            slot,
            interface: n.interface,
        })
        .collect();
    let interfaces = plugged.iter().map(|p| p.interface.clone()).collect();
    let sock = tokio::select! {
        accepted = agent_listener.accept() => {
            accepted.map_err(|e| SupervisorError::io("accept QEMU's agent connection", e))?.0
        }
        why = &mut give_up => {
            return Err(SupervisorError::NoAgentConnection {
                why,
                detail: tail_suffix(&logs.qemu),
            });
        }
        st = qemu.wait() => {
            return Err(SupervisorError::HelperDied {
                program: "qemu",
                status: status_text(st),
                detail: tail_suffix(&logs.qemu),
            });
        }
        st = virtiofsd.wait() => {
            return Err(SupervisorError::HelperDied {
                program: "virtiofsd",
                status: status_text(st),
                detail: tail_suffix(&logs.virtiofsd),
            });
        }
    };
    let (mux, _) = Mux::start(sock, Mode::Client);
    // The DNS relay is open before the workload starts, which may look a
    // name up at once.
    let dns_relay = cfg.own_network;
    if dns_relay {
        let stream = mux.open_typed(&StreamHeader::Dns).await?;
        tokio::spawn(dns::serve(stream, dns::EMBEDDED_RESOLVER, dns::ANSWER_WAIT));
    }
    // Networks connected and disconnected from now on reach the VM.
    if let Some(changes) = network_changes {
        let (mux, routes) = (mux.clone(), routes.clone());
        tokio::spawn(async move {
            let qmp =
                match tokio::time::timeout(Duration::from_secs(60), qmp_listener.accept()).await {
                    Ok(Ok((conn, _))) => Qmp::handshake(conn).await,
                    _ => Err(qmp::QmpError::Closed),
                };
            match qmp {
                Ok(qmp) => {
                    network::hotplug::follow(changes, qmp, mux, plugged, routes, dns_relay).await
                }
                Err(e) => tracing::warn!(
                    "QEMU's monitor is not there ({e}): networks connected while the container runs will not reach the VM"
                ),
            }
        });
    }

    let mut spec = cfg.container.clone();
    spec.process.inherited_rlimits = session::own_rlimits();
    if terminal {
        spec.process.console_size = relay::window_size().or(spec.process.console_size);
    }
    // Execs go to the agent from now on; the agent queues them until the
    // container runs.
    let _ = agent_tx.send(Some(mux.clone()));
    let (outcome, mut control, drain) = session::run(
        &mux,
        HostMessage::StartContainer(Box::new(StartContainer {
            container: spec,
            network: GuestNetwork {
                interfaces,
                routes,
                dns_relay,
            },
        })),
        terminal,
        sig_rx,
        Some(vm_end(&mut qemu, &mut virtiofsd)),
        Some(give_up),
    )
    .await?;
    let status = match outcome {
        session::Outcome::Exited(status) => {
            drain.wait(None).await;
            status
        }
        session::Outcome::StartFailed { message, exit_code } => {
            tracing::error!("{message}");
            exit_code
        }
        session::Outcome::SetupFailed(message) => {
            tracing::error!("the VM could not set up the container: {message}");
            VM_FAILURE
        }
        session::Outcome::Lost { why, .. } => {
            // Whatever the guest sent before the end reaches the logs
            // first; the relays end once the channel is closed, which
            // killing QEMU guarantees.
            let _ = qemu.kill().await;
            let _ = virtiofsd.kill().await;
            drain.wait(Some(Duration::from_secs(DRAIN_SECS))).await;
            report_vm_failure(&why, &logs);
            return Ok(VM_FAILURE);
        }
        session::Outcome::NoAnswer(why) => {
            let _ = qemu.kill().await;
            let _ = virtiofsd.kill().await;
            report_vm_failure(&why, &logs);
            return Ok(VM_FAILURE);
        }
    };
    let _ = write_frame(&mut control, &HostMessage::Shutdown).await;
    let _ = control.flush().await;
    stop(&mut qemu, Duration::from_secs(10)).await;
    stop(&mut virtiofsd, Duration::from_secs(2)).await;
    phases::mark(phases::Phase::Stopped);
    if cfg.phases {
        tracing::info!("{}", phases::line(cfg.created_unix_ms));
    }
    Ok(status)
}

/// Names the cause of a VM failure in the container's stderr (so in
/// `docker logs`), with what QEMU said and the last console lines.
fn report_vm_failure(cause: &str, logs: &Logs) {
    let console = logs.console.last_lines(CONSOLE_LINES);
    let cause = match logs.console.last_line_with("Kernel panic - not syncing") {
        Some(line) => format!("the guest kernel panicked ({}); {cause}", line.trim()),
        None => cause.to_owned(),
    };
    tracing::error!("the VM stopped before the workload finished: {cause}");
    let qemu = logs.qemu.last_lines(5);
    if !qemu.is_empty() {
        tracing::error!("QEMU said: {}", qemu.join(" | "));
    }
    let virtiofsd = logs.virtiofsd.last_lines(5);
    if !virtiofsd.is_empty() {
        tracing::error!("virtiofsd said: {}", virtiofsd.join(" | "));
    }
    if !console.is_empty() {
        tracing::error!("last guest console lines:\n{}", console.join("\n"));
    }
}
