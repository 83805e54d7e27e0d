//! The agent's side of the host channel: accepts the streams the host
//! opens, starts the container, relays stdio and signals, reports the exit.

use runvm_contract::guest::{AGENT_PORT_NAME, MODULES_TAG, ROOTFS_TAG};
use runvm_contract::report::ErrorChain;
use runvm_protocol::exit::ExitCode;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

use crate::error::{AgentError, Result};
use crate::process::{self, Confinement, ContainerNamespaces, Namespaces, ParentStdio};
use crate::reaper::Reaper;
use crate::{cgroup, devices, disks, dns, early, mounts, network, sysctl};
use nix::mount::MsFlags;
use runvm_protocol::session::{read_frame, write_frame, FdStream, Mode, Mux, MuxStream};
use runvm_protocol::CgroupFs;
use runvm_protocol::{
    ContainerSpec, GuestMessage, GuestNetwork, HostMessage, NetworkUpdated, StreamHeader,
};

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Kind {
    Stdin,
    Stdout,
    Stderr,
    /// The DNS relay's stream (process 0, the container's).
    Dns,
}

/// Stdio streams that arrived, waiting for their process.
#[derive(Default)]
struct Streams {
    map: Mutex<HashMap<(u32, Kind), MuxStream>>,
    arrived: Notify,
}

/// How long a stdio stream waits for its process before it is dropped (its
/// exec client went away before sending the request): longer than an exec
/// waits for the container to start.
const UNCLAIMED_STREAM: Duration = Duration::from_secs(300);

impl Streams {
    fn put(self: &Arc<Self>, process: u32, kind: Kind, s: MuxStream) {
        self.map
            .lock()
            .expect("streams lock")
            .insert((process, kind), s);
        self.arrived.notify_waiters();
        // Process numbers are never reused: whatever is still here then was
        // never claimed.
        let streams = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(UNCLAIMED_STREAM).await;
            streams.take_now(process, kind);
        });
    }

    fn take_now(&self, process: u32, kind: Kind) -> Option<MuxStream> {
        self.map
            .lock()
            .expect("streams lock")
            .remove(&(process, kind))
    }

    async fn take(&self, process: u32, kind: Kind) -> Option<MuxStream> {
        let wait = async {
            loop {
                let notified = self.arrived.notified();
                if let Some(s) = self
                    .map
                    .lock()
                    .expect("streams lock")
                    .remove(&(process, kind))
                {
                    return s;
                }
                notified.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), wait)
            .await
            .ok()
    }
}

/// How long an exec or a network update that arrives while the container
/// starts waits for it.
const START_WAIT: Duration = Duration::from_secs(120);

/// Where the container is once it is no longer starting (or
/// [`Container::Gone`] if it still is after [`START_WAIT`]).
async fn past_start(agent: &Agent) -> Container {
    let mut rx = agent.container.subscribe();
    let waited = tokio::time::timeout(
        START_WAIT,
        rx.wait_for(|c| !matches!(c, Container::Starting)),
    )
    .await;
    match waited {
        Ok(Ok(c)) => c.clone(),
        _ => Container::Gone,
    }
}

/// Where the container is, for execs.
#[derive(Clone, Debug)]
enum Container {
    /// Not started yet: execs that arrive now (`docker exec` right after
    /// `docker run -d`) wait.
    Starting,
    /// Its init runs; execs join these namespaces.
    Running(Arc<ContainerNamespaces>),
    /// It failed to start or its init has ended.
    Gone,
}

struct Agent {
    reaper: Arc<Reaper>,
    streams: Arc<Streams>,
    started: Mutex<bool>,
    container: tokio::sync::watch::Sender<Container>,
    /// The container's confinement, set before its init starts; execs get
    /// its seccomp filter.
    confinement: std::sync::OnceLock<Arc<Confinement>>,
    /// Fired when the host allows the VM to power off.
    shutdown: Notify,
    /// The container's network as last configured; `None` until the
    /// container is set up. Held during an update, so updates take turns.
    network: tokio::sync::Mutex<Option<GuestNetwork>>,
    /// The container's init is systemd: `docker stop`'s SIGTERM (which
    /// systemd takes as "re-execute") becomes SIGRTMIN+4 (power off), and
    /// its power-off (SIGINT from reboot(2) in its PID namespace) exits 0.
    init_is_systemd: std::sync::atomic::AtomicBool,
}

/// Runs until the container has ended and the host has acknowledged it.
pub async fn serve() -> Result<()> {
    let reaper = Reaper::start().map_err(|e| AgentError::sys("watch for child exits", e))?;
    let port = tokio::task::spawn_blocking(|| early::open_port(AGENT_PORT_NAME))
        .await
        .map_err(|e| AgentError::sys("open the host channel", std::io::Error::other(e)))??;
    early::READY_MS.get_or_init(early::uptime_ms);
    if early::kernel_flag(runvm_contract::guest::PROBE_FLAG) {
        // Boot probe (`runvm boot-probe`): the agent is ready; say so on
        // the console, where the probe watches for it, and stop.
        eprintln!("{}", runvm_contract::guest::PROBE_READY);
        return Ok(());
    }
    let port = FdStream::new(port).map_err(|e| AgentError::sys("poll the host channel", e))?;
    let (_mux, mut inbound) = Mux::start(port, Mode::Server);
    let agent = Arc::new(Agent {
        reaper,
        streams: Arc::default(),
        started: Mutex::new(false),
        container: tokio::sync::watch::channel(Container::Starting).0,
        confinement: std::sync::OnceLock::new(),
        shutdown: Notify::new(),
        network: tokio::sync::Mutex::new(None),
        init_is_systemd: std::sync::atomic::AtomicBool::new(false),
    });
    let shutdown = agent.shutdown.notified();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            s = inbound.recv() => match s {
                Some(s) => { tokio::spawn(handle_stream(agent.clone(), s)); }
                None => return Ok(()), // the host went away
            },
            _ = &mut shutdown => return Ok(()),
        }
    }
}

async fn handle_stream(agent: Arc<Agent>, mut s: MuxStream) {
    let header: StreamHeader = match read_frame(&mut s).await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!("bad stream header: {}", e.chain());
            return;
        }
    };
    match header {
        StreamHeader::Stdin { process } => agent.streams.put(process, Kind::Stdin, s),
        StreamHeader::Stdout { process } => agent.streams.put(process, Kind::Stdout, s),
        StreamHeader::Stderr { process } => agent.streams.put(process, Kind::Stderr, s),
        StreamHeader::Dns => agent.streams.put(0, Kind::Dns, s),
        StreamHeader::Network => network_update(&agent, s).await,
        StreamHeader::Control { process } => {
            if let Err(e) = control(agent.clone(), process, s).await {
                tracing::error!("{}", e.chain());
            }
        }
    }
}

/// Sends one message on the control stream's write half.
async fn send<W: AsyncWrite + Unpin>(w: &tokio::sync::Mutex<W>, msg: &GuestMessage) -> Result<()> {
    let mut w = w.lock().await;
    write_frame(&mut *w, msg).await?;
    Ok(())
}

async fn control(agent: Arc<Agent>, process: u32, s: MuxStream) -> Result<()> {
    let (mut rd, wr) = tokio::io::split(s);
    let wr = tokio::sync::Mutex::new(wr);
    match read_frame::<_, HostMessage>(&mut rd).await? {
        HostMessage::StartContainer(start) => {
            early::REQUEST_MS.get_or_init(early::uptime_ms);
            let spec = &start.container;
            {
                let mut started = agent.started.lock().expect("started lock");
                if *started {
                    return Err(AgentError::AlreadyStarted);
                }
                *started = true;
            }
            let prepared = prepare_container(&agent.reaper, spec, &start.network).await;
            if let Ok(Prepared { systemd, .. }) = &prepared {
                let systemd = *systemd;
                early::PREPARED_MS.get_or_init(early::uptime_ms);
                agent
                    .init_is_systemd
                    .store(systemd, std::sync::atomic::Ordering::SeqCst);
                *agent.network.lock().await = Some(start.network.clone());
                if start.network.dns_relay {
                    if let Some(host) = agent.streams.take(0, Kind::Dns).await {
                        start_dns_relay(host).await;
                    }
                }
            }
            match prepared {
                Err(e) => {
                    agent.container.send_replace(Container::Gone);
                    let message = e.chain().to_string();
                    send(&wr, &GuestMessage::SetupFailed { message }).await?;
                }
                Ok(prepared) => {
                    let _ = agent.confinement.set(Arc::new(Confinement::of(
                        spec,
                        prepared.cgroup.map(|c| c.fd),
                    )));
                    let ran = run_process(&agent, process, &spec.process, None, &mut rd, &wr).await;
                    agent.container.send_replace(Container::Gone);
                    ran?;
                }
            }
            // The container is over: wait for the host's go-ahead, then stop.
            wait_for_shutdown(&mut rd).await;
            agent.shutdown.notify_one();
            Ok(())
        }
        HostMessage::Exec(spec) => {
            let Container::Running(namespaces) = past_start(&agent).await else {
                send(
                    &wr,
                    &GuestMessage::StartFailed {
                        message: "the container is not running".into(),
                        exit_code: ExitCode::CannotExecute.code(),
                    },
                )
                .await?;
                return Ok(());
            };
            run_process(&agent, process, &spec, Some(&namespaces), &mut rd, &wr).await
        }
        _ => Err(AgentError::UnexpectedRequest),
    }
}

/// Starts one process (the container's init when `join` is None, else an
/// exec joining the container's namespaces), relays its stdio and signals,
/// and reports its exit once its output is drained.
///
/// An exec whose control stream ends before it exits has lost its client
/// (Docker kills the exec client when a health check times out): it is
/// killed with SIGKILL, as Docker has runc's exec process killed.
async fn run_process<R, W>(
    agent: &Arc<Agent>,
    process: u32,
    spec: &runvm_protocol::ProcessSpec,
    join: Option<&ContainerNamespaces>,
    rd: &mut R,
    wr: &tokio::sync::Mutex<W>,
) -> Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let ns = match join {
        None => Namespaces::NewContainer,
        Some(c) => Namespaces::Join(c),
    };
    // Set before the init starts, so an exec (which waits for the init)
    // always finds it.
    let confinement = agent.confinement.get().cloned().unwrap_or_default();
    let spawned = agent
        .reaper
        .spawn_and_expect(|| process::start(spec, ns, &confinement));
    let (pid, exit_rx, started) = match spawned {
        Ok(x) => x,
        Err(e) => {
            // No process will use the stdio streams: close them so the
            // host's relays end and none lingers in the registry.
            for kind in [Kind::Stdin, Kind::Stdout, Kind::Stderr] {
                if let Some(mut s) = agent.streams.take_now(process, kind) {
                    let _ = s.shutdown().await;
                }
            }
            return send(
                wr,
                &GuestMessage::StartFailed {
                    message: e.message,
                    exit_code: e.exit_code,
                },
            )
            .await;
        }
    };
    let stdio = started.stdio;
    let console = started.console;
    if join.is_none() {
        agent.container.send_replace(match started.namespaces {
            Some(ns) => Container::Running(Arc::new(ns)),
            None => Container::Gone,
        });
    }

    // Relays: output tasks are awaited before the exit is reported.
    let mut outputs = Vec::new();
    let mut pty_master: Option<OwnedFd> = None;
    match stdio {
        ParentStdio::Pipes {
            stdin,
            stdout,
            stderr,
        } => {
            let a = agent.clone();
            tokio::spawn(async move {
                if let Some(s) = a.streams.take(process, Kind::Stdin).await {
                    relay_in(s, stdin).await;
                }
            });
            for (fd, kind) in [(stdout, Kind::Stdout), (stderr, Kind::Stderr)] {
                let a = agent.clone();
                outputs.push(tokio::spawn(async move {
                    let s = a.streams.take(process, kind).await;
                    relay_out(fd, s).await;
                }));
            }
        }
        ParentStdio::Pty { master } => {
            // A duplicate kept for resizing.
            pty_master = master.try_clone().ok();
            match FdStream::pty_master(master) {
                Ok(m) => {
                    let (mut m_rd, mut m_wr) = tokio::io::split(m);
                    let a = agent.clone();
                    tokio::spawn(async move {
                        if let Some(mut s) = a.streams.take(process, Kind::Stdin).await {
                            let _ = tokio::io::copy(&mut s, &mut m_wr).await;
                        }
                    });
                    let a = agent.clone();
                    outputs.push(tokio::spawn(async move {
                        if let Some(mut s) = a.streams.take(process, Kind::Stdout).await {
                            let _ = tokio::io::copy(&mut m_rd, &mut s).await;
                            let _ = s.shutdown().await;
                        }
                    }));
                }
                Err(e) => tracing::error!("cannot poll the terminal: {e}"),
            }
        }
    }
    // A failed report means the host end of the control stream is gone;
    // the command loop below sees the same and acts on it.
    let boot = Some(early::boot_marks());
    let _ = send(wr, &GuestMessage::Started { pid, boot }).await;

    let master_raw = pty_master.as_ref().map(|m| m.as_raw_fd());
    let systemd = agent
        .init_is_systemd
        .load(std::sync::atomic::Ordering::SeqCst);
    let commands = async {
        loop {
            match read_frame::<_, HostMessage>(rd).await {
                Ok(HostMessage::Signal { signal }) => {
                    let signal = if join.is_none() && systemd && signal == libc::SIGTERM {
                        libc::SIGRTMIN() + 4
                    } else {
                        signal
                    };
                    agent.reaper.signal(pid, signal);
                    if join.is_none() && disks::is_stop_signal(signal) {
                        disks::flush_from_now_on();
                    }
                }
                Ok(HostMessage::Resize { rows, cols }) => {
                    if let Some(fd) = master_raw {
                        process::resize(fd, rows, cols);
                    }
                }
                Ok(_) => {}
                Err(_) => {
                    if join.is_some() {
                        // The exec's client is gone. Only the process is
                        // killed: under runc its children would live on too.
                        agent.reaper.signal(pid, libc::SIGKILL);
                    }
                    // Wait for the exit anyway (for the init, the host
                    // going away ends the VM).
                    std::future::pending::<()>().await
                }
            }
        }
    };
    let exit = tokio::select! {
        s = exit_rx => s.ok(),
        _ = commands => unreachable!("the command loop never ends"),
    };
    // systemd powered off or halted: reboot(2) in a PID namespace ends its
    // init with SIGINT. That is a clean end (exit 0, as runq reports it);
    // a reboot (SIGHUP, 129) stays a failure, for restart policies.
    let status = match exit {
        Some(e) if join.is_none() && systemd && e.signal == Some(libc::SIGINT) => 0,
        Some(e) => e.code,
        None => ExitCode::VmFailure.code(),
    };
    // The console's relay ends once no one holds its replica.
    drop(console);
    for o in outputs {
        let _ = o.await;
    }
    drop(pty_master);
    send(wr, &GuestMessage::Exited { status }).await
}

/// Waits until the host says the VM may stop (or the host is gone).
async fn wait_for_shutdown<R: tokio::io::AsyncRead + Unpin>(rd: &mut R) {
    let wait = async {
        loop {
            match read_frame::<_, HostMessage>(rd).await {
                Ok(HostMessage::Shutdown) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(30), wait).await;
}

/// What [`prepare_container`] found and made.
struct Prepared {
    /// The container's init is systemd.
    systemd: bool,
    /// The workload's cgroup, when the container has limits (see
    /// [`cgroup`]).
    cgroup: Option<cgroup::WorkloadCgroup>,
}

/// The root, mounts, hostname, network, sysctls and cgroup of the container.
async fn prepare_container(
    reaper: &Reaper,
    spec: &ContainerSpec,
    net: &GuestNetwork,
) -> Result<Prepared> {
    // A `--read-only` root is read-only on the host side (the supervisor's
    // /rootfs mount), where virtiofsd enforces it. Mounting the share
    // read-only here would also make every volume read-only: the guest
    // kernel gives virtiofs submounts the flags of the mount above them.
    mounts::mount_fs(ROOTFS_TAG, disks::SHARE, "virtiofs", MsFlags::empty(), None)?;
    // With a root disk, the root is the disk (read-only for `--read-only`).
    // (Those in /dev are in the guest's devtmpfs, not on the disk.)
    let guest_mountpoints: Vec<String> = spec
        .guest_mountpoints()
        .into_iter()
        .filter(|d| !d.starts_with("/dev/"))
        .collect();
    let root = disks::prepare_root(
        reaper,
        &spec.disks,
        &spec.docker_mounts,
        &guest_mountpoints,
        spec.readonly_root,
    )
    .await?;
    disks::mount_all(reaper, &spec.disks, &root).await?;
    // The kernel's module helper (the agent as /sbin/modprobe) runs in
    // this root, the initramfs, and loads from the store's tree mounted
    // here, which no container process can reach.
    if let Some(version) = &spec.kernel_modules {
        mounts::mount_kernel_modules(MODULES_TAG, version);
    }
    // Sysctls of modules nothing has loaded yet (conntrack's, the bridge's)
    // exist once their module is in: loaded from that tree, here, where
    // the image has no say. One that cannot load leaves its keys missing,
    // and their write fails as on a host without the module.
    for module in sysctl::modules_for(&spec.sysctl) {
        if let Err(e) = crate::modprobe::load(module) {
            tracing::warn!("cannot load {module} for its sysctls: {e}");
        }
    }
    if spec.any_device {
        if let Err(e) = std::fs::write(crate::modprobe::ANY_DEVICE_MARK, b"") {
            tracing::warn!("drivers will not load on request for device nodes: {e}");
        }
    }
    mounts::switch_to_root(&root)?;
    // systemd mounts its cgroups itself; others get the unified hierarchy
    // (dockerd without systemd needs one), unless RUNVM_CGROUPFS says.
    let systemd = process::runs_systemd(&spec.process);
    let cgroupfs = spec.cgroupfs.unwrap_or(if systemd {
        CgroupFs::None
    } else {
        CgroupFs::V2
    });
    mounts::mount_container_filesystems(&spec.mounts, cgroupfs, spec.cgroup_readonly)?;
    disks::link_raw(&spec.disks)?;
    devices::create(&spec.devices)?;
    if let Some(version) = &spec.kernel_modules {
        let created = mounts::mount_kernel_modules(MODULES_TAG, version);
        mounts::remember_kernel_modules(version, created);
    }
    if let Some(h) = &spec.hostname {
        nix::unistd::sethostname(h).map_err(|e| AgentError::sys("set the hostname", e))?;
    }
    network::configure(&net.interfaces, &net.routes).await?;
    // After the network: a key may name an interface.
    sysctl::apply(&spec.sysctl)?;
    // The limits need the cgroup v2 hierarchy the agent mounted; with
    // another layout (systemd's own, RUNVM_CGROUPFS=v1) they hold the
    // whole VM, on the host.
    let cgroup = match cgroupfs {
        CgroupFs::V2 => cgroup::create(&spec.limits, true)?,
        CgroupFs::None => cgroup::create(&spec.limits, false)?,
        // The host side refuses this pairing; never run unlimited.
        CgroupFs::V1 | CgroupFs::Hybrid if spec.limits.any() => {
            return Err(AgentError::sys(
                "hold the container to its limits with RUNVM_CGROUPFS's v1 hierarchies",
                std::io::Error::from_raw_os_error(libc::ENOTSUP),
            ))
        }
        CgroupFs::V1 | CgroupFs::Hybrid => None,
    };
    Ok(Prepared { systemd, cgroup })
}

/// One network change (see [`StreamHeader::Network`]): configures the
/// guest for the network the host sends and answers.
async fn network_update(agent: &Agent, mut s: MuxStream) {
    let new: GuestNetwork = match read_frame(&mut s).await {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!("bad network update: {}", e.chain());
            return;
        }
    };
    // A network connected while the VM boots comes before the container's
    // own setup: it waits for it, as an exec does.
    past_start(agent).await;
    let mut current = agent.network.lock().await;
    let error = match current.as_ref() {
        None => Some("the container's network was never set up".to_owned()),
        Some(old) => match network::reconfigure(old, &new).await {
            Ok(()) => None,
            Err(e) => Some(e.chain().to_string()),
        },
    };
    if error.is_none() {
        *current = Some(new);
    }
    let _ = write_frame(&mut s, &NetworkUpdated { error }).await;
    let _ = s.shutdown().await;
}

/// Answers Docker's embedded resolver address in the guest when the
/// container's resolv.conf names it (see [`dns`]). A relay that cannot
/// start leaves lookups failing as they would without it: logged, not
/// fatal.
async fn start_dns_relay(host: MuxStream) {
    let conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    if !dns::names_embedded_resolver(&conf) {
        return;
    }
    if let Err(e) = dns::relay(host, dns::EMBEDDED_RESOLVER).await {
        tracing::warn!(
            "cannot answer DNS on {}: {e}; name lookups will fail",
            dns::EMBEDDED_RESOLVER
        );
    }
}

/// Copies host bytes to the process's stdin; end of stream closes it.
async fn relay_in(mut s: MuxStream, fd: OwnedFd) {
    let Ok(mut pipe) = tokio::net::unix::pipe::Sender::from_owned_fd(fd) else {
        return;
    };
    let _ = tokio::io::copy(&mut s, &mut pipe).await;
    // Dropping the pipe closes the process's stdin.
}

/// Copies a process's output pipe to its stream until the pipe's end, then
/// closes the stream so the host sees end of file.
async fn relay_out(fd: OwnedFd, s: Option<MuxStream>) {
    let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
        return;
    };
    match s {
        Some(mut s) => {
            let _ = tokio::io::copy(&mut pipe, &mut s).await;
            let _ = s.shutdown().await;
        }
        None => {
            // No stream to write to: drain so the process never blocks.
            let _ = tokio::io::copy(&mut pipe, &mut tokio::io::sink()).await;
        }
    }
}
