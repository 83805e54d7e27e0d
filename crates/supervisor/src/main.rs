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
mod sandbox;
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
    // One thread: the supervisor drops its capabilities once the VM runs,
    // and capabilities belong to threads, so no runtime thread may exist
    // before that (the stdio relays' threads start later and inherit the
    // reduced sets). Its work is relaying bytes; one thread is plenty.
    let rt = tokio::runtime::Builder::new_current_thread()
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

/// Clears close-on-exec so a helper inherits `fd`.
fn inheritable(fd: i32) -> Result<()> {
    // SAFETY: F_SETFD on a descriptor this process owns.
    let rc = unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    if rc < 0 {
        return Err(SupervisorError::io(
            "clear close-on-exec",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Starts virtiofsd or QEMU: no stdin or stdout, stderr to its log, and
/// killed if the supervisor goes away.
fn spawn_helper(
    cfg: &VmConfig,
    program: &str,
    args: Vec<String>,
    name: &str,
    confine: impl FnOnce(&mut Command),
) -> Result<Child> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(helper_log(cfg, name)?)
        .kill_on_drop(true);
    confine(&mut cmd);
    cmd.spawn().map_err(|source| SupervisorError::Spawn {
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
    if cfg.container.readonly_root {
        let dirs: Vec<String> = cfg
            .container
            .mounts
            .iter()
            .map(|m| m.destination.clone())
            .collect();
        runvm_mounts::make_mountpoints(root, &dirs);
        runvm_mounts::make_readonly(root)?;
    }
    Ok(())
}

async fn supervise() -> Result<i32> {
    let cfg = load_config()?;
    place_mounts(&cfg)?;
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

    // Both sockets listen before the helpers start: nobody ever connects
    // to a socket that is not ready.
    let vfs_listener = std::os::unix::net::UnixListener::bind(vmm::VIRTIOFS_SOCKET)
        .map_err(|e| SupervisorError::io(format!("listen on {}", vmm::VIRTIOFS_SOCKET), e))?;
    let vfs_fd = std::os::fd::AsRawFd::as_raw_fd(&vfs_listener);
    inheritable(vfs_fd)?;
    let agent_listener = tokio::net::UnixListener::bind(vmm::AGENT_SOCKET)
        .map_err(|e| SupervisorError::io(format!("listen on {}", vmm::AGENT_SOCKET), e))?;

    let mut virtiofsd = spawn_helper(
        &cfg,
        &cfg.virtiofsd,
        vmm::virtiofsd_args(&cfg, vfs_fd),
        "virtiofsd",
        |c| sandbox::bound_capabilities(c, sandbox::VIRTIOFSD_CAPS),
    )?;
    drop(vfs_listener); // virtiofsd has it

    let nic_args: Vec<vmm::NicArg> = nics
        .iter()
        .map(|n| vmm::NicArg {
            mac: n.interface.mac.clone(),
            tap_fd: std::os::fd::AsRawFd::as_raw_fd(&n.tap),
        })
        .collect();
    // QEMU runs under its own unprivileged uid: it gets the sockets it
    // connects to and its console file, and inherits only the taps.
    let (quid, qgid) = (cfg.qemu_uid, cfg.qemu_gid);
    if !cfg.debug {
        std::fs::File::create(vmm::CONSOLE_LOG)
            .map_err(|e| SupervisorError::io(format!("create {}", vmm::CONSOLE_LOG), e))?;
    }
    for path in [vmm::AGENT_SOCKET, vmm::VIRTIOFS_SOCKET]
        .into_iter()
        .chain((!cfg.debug).then_some(vmm::CONSOLE_LOG))
    {
        sandbox::give_to(path, quid, qgid)
            .map_err(|e| SupervisorError::io(format!("give {path} to QEMU's uid {quid}"), e))?;
    }
    let tap_fds: Vec<i32> = nic_args.iter().map(|n| n.tap_fd).collect();
    let mut qemu = spawn_helper(
        &cfg,
        &cfg.qemu,
        vmm::qemu_args(&cfg, &nic_args),
        "qemu",
        |c| sandbox::run_unprivileged(c, quid, qgid, tap_fds),
    )?;
    // Both helpers run: from here on the supervisor needs no privilege but
    // stopping QEMU, which runs under another uid.
    sandbox::drop_own_capabilities(sandbox::SUPERVISOR_KEEPS)
        .map_err(|e| SupervisorError::io("drop capabilities", std::io::Error::other(e)))?;
    let mut interfaces = Vec::new();
    for n in nics {
        interfaces.push(n.interface);
        drop(n.tap); // QEMU has its own copy now
    }
    let sock = tokio::select! {
        accepted = agent_listener.accept() => {
            accepted.map_err(|e| SupervisorError::io("accept QEMU's agent connection", e))?.0
        }
        _ = tokio::time::sleep(Duration::from_secs(30)) => {
            return Err(SupervisorError::Timeout {
                what: "QEMU's connection to the agent socket",
                secs: 30,
                detail: helper_log_tail("qemu"),
            });
        }
        st = qemu.wait() => {
            return Err(SupervisorError::HelperDied {
                program: "qemu",
                status: st.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
                detail: helper_log_tail("qemu"),
            });
        }
        st = virtiofsd.wait() => {
            return Err(SupervisorError::HelperDied {
                program: "virtiofsd",
                status: st.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
                detail: helper_log_tail("virtiofsd"),
            });
        }
    };
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
