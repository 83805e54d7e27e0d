//! runvm's supervisor: PID 1 of a runvm container.
//!
//! It moves the container's network to tap devices, starts virtiofsd on the
//! container's root filesystem and QEMU on runvm's kernel and initramfs,
//! then hands the container to the guest agent over a virtio-serial port
//! and relays stdio, signals, terminal size and finally the exit status.

mod error;
mod exec;
mod network;
mod relay;
mod session;
mod vmm;

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};

use error::{Result, SupervisorError};
use runvm_config::{paths, VmConfig};
use runvm_protocol::session::{write_frame, Mode, Mux};
use runvm_protocol::HostMessage;

/// Exit code when the VM itself fails (as opposed to the workload).
const VM_FAILURE: i32 = 255;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    let code = match rt {
        Ok(rt) => match rt.block_on(async {
            if std::env::args().nth(1).as_deref() == Some("exec") {
                exec::client().await
            } else {
                supervise().await
            }
        }) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("runvm: {e}");
                VM_FAILURE
            }
        },
        Err(e) => {
            eprintln!("runvm: cannot start the async runtime: {e}");
            VM_FAILURE
        }
    };
    // Exit at once: threads blocked reading stdin must not hold us up.
    std::process::exit(code);
}

fn load_config() -> Result<VmConfig> {
    let text =
        std::fs::read_to_string(paths::VM_CONFIG).map_err(|source| SupervisorError::Config {
            path: paths::VM_CONFIG.into(),
            source,
        })?;
    serde_json::from_str(&text).map_err(|source| SupervisorError::ConfigJson {
        path: paths::VM_CONFIG.into(),
        source,
    })
}

/// Where a helper's stderr goes: the container's stderr when debugging,
/// else a log file that is quoted if the helper fails.
fn helper_log(cfg: &VmConfig, name: &str) -> Result<Stdio> {
    if cfg.debug {
        return Ok(Stdio::inherit());
    }
    let path = format!("{}/{name}.log", vmm::RUN_DIR);
    let f = std::fs::File::create(&path)
        .map_err(|e| SupervisorError::io(format!("create {path}"), e))?;
    Ok(Stdio::from(f))
}

/// Starts virtiofsd or QEMU: no stdin or stdout, stderr to its log, and
/// killed if the supervisor goes away.
fn spawn_helper(cfg: &VmConfig, program: &str, args: Vec<String>, name: &str) -> Result<Child> {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(helper_log(cfg, name)?)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| SupervisorError::Spawn {
            program: program.to_owned(),
            source,
        })
}

fn helper_log_tail(name: &str) -> String {
    let text = std::fs::read_to_string(format!("{}/{name}.log", vmm::RUN_DIR)).unwrap_or_default();
    let last: Vec<&str> = text.lines().rev().take(5).collect();
    if last.is_empty() {
        String::new()
    } else {
        format!(
            ": {}",
            last.into_iter().rev().collect::<Vec<_>>().join(" | ")
        )
    }
}

fn exited(child: &mut Child, program: &'static str) -> Result<()> {
    match child.try_wait() {
        Ok(Some(status)) => Err(SupervisorError::HelperDied {
            program,
            status: status.to_string(),
            detail: helper_log_tail(program),
        }),
        _ => Ok(()),
    }
}

async fn stop(child: &mut Child, grace: Duration) {
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

async fn supervise() -> Result<i32> {
    let cfg = load_config()?;
    let terminal = cfg.container.process.terminal;

    // Signals first, so that none sent during boot is lost: they are queued
    // until the workload runs.
    let (sig_tx, sig_rx) = mpsc::unbounded_channel();
    relay::forward_signals(sig_tx);
    if terminal {
        relay::make_raw();
    }
    if cfg.debug {
        if let Some(w) = &cfg.accel_warning {
            eprintln!("runvm: warning: {w}");
        }
    }

    std::fs::create_dir_all(vmm::RUN_DIR)
        .map_err(|e| SupervisorError::io(format!("create {}", vmm::RUN_DIR), e))?;
    // Execs may arrive while the VM boots: listen now, serve once ready.
    let (agent_tx, agent_rx) = watch::channel(None);
    let listener = tokio::net::UnixListener::bind(exec::EXEC_SOCKET)
        .map_err(|e| SupervisorError::io(format!("listen on {}", exec::EXEC_SOCKET), e))?;
    tokio::spawn(exec::serve(listener, agent_rx));

    let (nics, routes) = if cfg.own_network {
        network::capture().await?
    } else {
        (Vec::new(), Vec::new())
    };

    let mut virtiofsd = spawn_helper(&cfg, &cfg.virtiofsd, vmm::virtiofsd_args(&cfg), "virtiofsd")?;
    vmm::wait_for_path(vmm::VIRTIOFS_SOCKET, "virtiofsd's socket", 20, || {
        exited(&mut virtiofsd, "virtiofsd")
    })
    .await?;

    let nic_args: Vec<vmm::NicArg> = nics
        .iter()
        .map(|n| vmm::NicArg {
            mac: n.interface.mac.clone(),
            tap_fd: std::os::fd::AsRawFd::as_raw_fd(&n.tap),
        })
        .collect();
    let mut qemu = spawn_helper(&cfg, &cfg.qemu, vmm::qemu_args(&cfg, &nic_args), "qemu")?;
    let mut interfaces = Vec::new();
    for n in nics {
        interfaces.push(n.interface);
        drop(n.tap); // QEMU has its own copy now
    }
    vmm::wait_for_path(vmm::AGENT_SOCKET, "QEMU's agent socket", 20, || {
        exited(&mut qemu, "qemu")
    })
    .await?;
    let sock = tokio::net::UnixStream::connect(vmm::AGENT_SOCKET)
        .await
        .map_err(|e| SupervisorError::io("connect to QEMU's agent socket", e))?;
    let (mux, _inbound) = Mux::start(sock, Mode::Client);

    let mut spec = cfg.container.clone();
    spec.interfaces = interfaces;
    spec.routes = routes;
    spec.process.inherited_rlimits = session::own_rlimits();
    if terminal {
        spec.process.console_size = relay::window_size().or(spec.process.console_size);
    }
    // Execs go to the agent from now on; the agent queues them until the
    // container runs.
    let _ = agent_tx.send(Some(mux.clone()));
    let vm_gone = async {
        match qemu.wait().await {
            Ok(s) => format!("QEMU exited: {s}"),
            Err(e) => format!("QEMU could not be waited for: {e}"),
        }
    };
    let (outcome, mut control) = session::run(
        &mux,
        HostMessage::StartContainer(Box::new(spec)),
        terminal,
        sig_rx,
        vm_gone,
    )
    .await?;
    let status = match outcome {
        session::Outcome::Exited(status) => status,
        session::Outcome::StartFailed { message, exit_code } => {
            eprintln!("runvm: {message}");
            exit_code
        }
        session::Outcome::SetupFailed(message) => {
            eprintln!("runvm: the VM could not set up the container: {message}");
            VM_FAILURE
        }
        session::Outcome::Lost { why, .. } => {
            report_vm_death(&why);
            return Ok(VM_FAILURE);
        }
    };
    let _ = write_frame(&mut control, &HostMessage::Shutdown).await;
    let _ = control.flush().await;
    stop(&mut qemu, Duration::from_secs(10)).await;
    stop(&mut virtiofsd, Duration::from_secs(2)).await;
    Ok(status)
}

fn report_vm_death(how: &str) {
    let tail = vmm::console_tail(15);
    let qemu_err = helper_log_tail("qemu");
    eprintln!("runvm: the VM stopped before the workload finished ({how}){qemu_err}");
    if !tail.is_empty() {
        eprintln!("runvm: last guest console lines:\n{tail}");
    }
}
