//! runvm: a runc-compatible OCI runtime that runs each container as a
//! lightweight VM. README.md ("How it works") describes the design.

mod cli;
mod create;
mod docker;
mod doctor;
mod error;
mod host;
mod kernel_store;
mod logging;
mod probe;

use runvm_contract::report::ErrorChain;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;

use cli::Cli;
use error::{Result, RuntimeError};
use logging::Log;

/// When this process started, for the phase timings of a `create`.
static STARTED: std::sync::OnceLock<std::time::SystemTime> = std::sync::OnceLock::new();

/// [`STARTED`] in milliseconds since the Unix epoch.
pub(crate) fn started_unix_ms() -> u64 {
    STARTED
        .get()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}

/// Now, in milliseconds since the Unix epoch.
pub(crate) fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn main() {
    STARTED.get_or_init(std::time::SystemTime::now);
    let cli = Cli::parse();
    let log = Log {
        path: cli.log.clone(),
        json: cli.log_format.as_deref() == Some("json"),
        debug: cli.debug,
        engine_verb: !matches!(
            cli.command.first().map(String::as_str),
            None | Some(
                "check"
                    | "kernel"
                    | "boot-probe"
                    | "docker-register"
                    | "docker-unregister"
                    | "podman-register"
                    | "podman-unregister"
            )
        ),
    };
    log.init();
    match run(&cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            let msg = match &e {
                RuntimeError::Exec(_) | RuntimeError::ExecInContainer(_) => e.chain().to_string(),
                _ => format!("runvm: {}", e.chain()),
            };
            // With a log file (Docker's shim, containerd's) the entry goes
            // there and the message to stderr; without one (Podman's conmon)
            // the plain message only, which Podman shows as runc's.
            if cli.log.is_some() {
                tracing::error!("{msg}");
            }
            eprintln!("{msg}");
            std::process::exit(1);
        }
    }
}

/// The runtime runvm drives.
fn runc_path(cli: &Cli) -> String {
    if let Some(r) = &cli.runc {
        return r.clone();
    }
    for p in [
        "/usr/sbin/runc",
        "/usr/bin/runc",
        "/usr/local/sbin/runc",
        "/usr/local/bin/runc",
    ] {
        if Path::new(p).is_file() {
            return p.into();
        }
    }
    "runc".into()
}

fn runc(cli: &Cli, verb_and_args: &[String]) -> Command {
    let mut cmd = Command::new(runc_path(cli));
    cmd.args(cli.runc_globals());
    if cli.log.is_none() && !cli.debug {
        // Without a log file runc writes its error as a logrus line
        // (`time="…" level=error msg="…"`) on stderr; with one, the plain
        // message, as runvm's own. An engine that passes no log (Podman's
        // conmon) shows stderr to the user as runc's own error.
        cmd.args(["--log", "/dev/null"]);
    }
    cmd.args(verb_and_args);
    tracing::debug!("runvm: running {cmd:?}");
    cmd
}

/// Replaces this process with runc.
fn exec_runc(cli: &Cli, verb_and_args: &[String]) -> Result<i32> {
    let err = runc(cli, verb_and_args).exec();
    Err(RuntimeError::Spawn {
        program: runc_path(cli),
        source: err,
    })
}

fn run(cli: &Cli) -> Result<i32> {
    if cli.version {
        println!("runvm version {}", env!("CARGO_PKG_VERSION"));
        println!("spec: 1.0.2-dev");
        return Ok(0);
    }
    let Some(verb) = cli.command.first() else {
        return Err(RuntimeError::Usage(
            "no command given: runvm takes runc's commands (create, start, state, kill, delete, exec, …) and check, kernel, boot-probe, docker-register, docker-unregister, podman-register, podman-unregister".into(),
        ));
    };
    let args = &cli.command[1..];
    tracing::debug!("runvm {}: {verb} {args:?}", env!("CARGO_PKG_VERSION"));
    match verb.as_str() {
        "create" | "run" => create_or_run(cli, verb, args),
        "exec" => exec(cli, args),
        "update" => update(cli, args),
        "checkpoint" | "restore" => Err(RuntimeError::Usage(format!(
            "{verb} is not supported: a runvm container's state lives in its VM, which runc's CRIU checkpointing cannot capture; stop and start the container instead"
        ))),
        "check" => check(cli),
        "kernel" => {
            let install = host::Install::locate();
            kernel_store::run(&install.kernels_dir(), &install.cache_dir(), args)
        }
        "boot-probe" => probe::boot_probe(cli.debug),
        "docker-register" => docker_edit(args, true),
        "docker-unregister" => docker_edit(args, false),
        "podman-register" => podman_edit(args, true),
        "podman-unregister" => podman_edit(args, false),
        _ => exec_runc(cli, &cli.command),
    }
}

fn create_or_run(cli: &Cli, verb: &str, args: &[String]) -> Result<i32> {
    if let Some(why) = host::not_root(cli.rootless.as_deref()) {
        return Err(RuntimeError::Rootless { why });
    }
    let parsed = cli::parse_create_args(args);
    let bundle = PathBuf::from(parsed.bundle.clone().unwrap_or_else(|| ".".into()));
    let prepared = create::prepare_bundle(&bundle, verb == "run")?;
    if verb == "run" {
        // runc takes over: it inherits the locks on the initramfs (and on
        // an image's kernel), which then last until runc has mounted them.
        // The descriptor is made inheritable here, in the process that
        // becomes runc (exec, not fork): runc is the child that needs it.
        let locks = std::iter::once(prepared.initrd.lock_fd())
            .chain(prepared.image_kernel.as_ref().map(|k| k.lock_fd()));
        for fd in locks {
            let _ = nix::fcntl::fcntl(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
            );
        }
        return exec_runc(cli, &cli.command);
    }
    let status = runc(cli, &cli.command)
        .status()
        .map_err(|source| RuntimeError::Spawn {
            program: runc_path(cli),
            source,
        })?;
    if !status.success() {
        return Ok(status.code().unwrap_or(1));
    }
    // runc checks the program in `runc init` before `create` returns; with
    // runvm the program runs in the guest, so check it here, the same way.
    let pid = parsed
        .pid_file
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|s| s.trim().parse::<i32>().ok());
    let Some(id) = parsed.id.as_ref() else {
        return Ok(0);
    };
    let pid = pid.or_else(|| container_pid(cli, id));
    let after_create = || -> Result<()> {
        let pid = pid.ok_or_else(|| {
            RuntimeError::Usage(format!(
                "cannot find the pid of container {id} after runc create"
            ))
        })?;
        create::place_mounts(pid, &prepared)?;
        create::check_program(pid, &prepared.process, false)
    };
    if let Err(e) = after_create() {
        let _ = runc(cli, &["delete".into(), "--force".into(), id.clone()]).status();
        return Err(e);
    }
    Ok(0)
}

fn exec(cli: &Cli, args: &[String]) -> Result<i32> {
    let parsed = cli::parse_exec_args(args);
    let (Some(process_path), Some(id)) = (parsed.process.as_ref(), parsed.id.as_ref()) else {
        return Err(RuntimeError::Usage(
            "runvm exec needs --process FILE and a container id (as containerd calls it); a command line exec is not supported".into(),
        ));
    };
    let path = PathBuf::from(process_path);
    let text = std::fs::read_to_string(&path).map_err(|source| RuntimeError::Read {
        path: path.clone(),
        source,
    })?;
    let mut process: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| RuntimeError::Json {
            path: path.clone(),
            source,
        })?;
    let pid = container_pid(cli, id);
    let vm = pid.and_then(booted_vm);
    let container_caps = vm
        .as_ref()
        .and_then(|vm| vm.container.process.capabilities.clone())
        .unwrap_or_default();
    runvm_config::exec_caps_from_container(&mut process, &container_caps);
    let (rewritten, spec) = runvm_config::rewrite_exec_process(process)?;
    if let Some(pid) = pid {
        // A working directory only the guest has (a --tmpfs, a disk) is
        // for the guest to judge; it reports a missing one in runc's words.
        let check_cwd = !vm.is_some_and(|vm| vm.container.guest_only(&spec.cwd));
        if let Err(RuntimeError::Exec(e)) = create::check_program(pid, &spec, check_cwd) {
            return Err(RuntimeError::ExecInContainer(e));
        }
    }
    let bytes = serde_json::to_vec(&rewritten).expect("a Value serialises");
    std::fs::write(&path, bytes).map_err(|source| RuntimeError::Write { path, source })?;
    exec_runc(cli, &cli.command)
}

/// `update`: the memory limit keeps room for QEMU. containerd passes the
/// resources as JSON (`--resources -` on stdin, or a file); other forms go
/// to runc unchanged.
fn update(cli: &Cli, args: &[String]) -> Result<i32> {
    let pos = args.iter().position(|a| a == "--resources" || a == "-r");
    let Some(source) = pos.and_then(|p| args.get(p + 1)) else {
        return exec_runc(cli, &cli.command);
    };
    let text = if source == "-" {
        let mut t = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut t).map_err(|source| {
            RuntimeError::Read {
                path: "stdin".into(),
                source,
            }
        })?;
        t
    } else {
        std::fs::read_to_string(source).map_err(|e| RuntimeError::Read {
            path: source.into(),
            source: e,
        })?
    };
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| RuntimeError::Json {
        path: source.into(),
        source: e,
    })?;
    let booted = args
        .last()
        .and_then(|id| container_pid(cli, id))
        .and_then(booted_vm)
        .map(|vm| vm.memory_mib);
    let rewritten = runvm_config::rewrite_update_resources(json, booted);
    let mut cmd = runc(cli, &[]);
    let mut new_args = vec!["update".to_string()];
    new_args.extend(args.iter().cloned());
    let p = pos.expect("found above") + 1;
    new_args[p + 1] = "-".into();
    cmd.args(&new_args).stdin(std::process::Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| RuntimeError::Spawn {
        program: runc_path(cli),
        source,
    })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = std::io::Write::write_all(&mut stdin, rewritten.to_string().as_bytes());
    }
    let status = child.wait().map_err(|source| RuntimeError::Spawn {
        program: runc_path(cli),
        source,
    })?;
    Ok(status.code().unwrap_or(1))
}

/// The host pid of a container's init, from `runc state`.
fn container_pid(cli: &Cli, id: &str) -> Option<i32> {
    let out = runc(cli, &["state".into(), id.into()]).output().ok()?;
    let state: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    state["pid"].as_i64().filter(|p| *p > 0).map(|p| p as i32)
}

/// The VM configuration a running container booted with (its `vm.json`,
/// read through the container's root), if it runs.
fn booted_vm(pid: i32) -> Option<runvm_contract::VmConfig> {
    let path = format!("/proc/{pid}/root{}", runvm_contract::paths::VM_CONFIG);
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// `runvm check`: what runvm needs on this host, each finding with its fix
/// (see [`doctor`]); exit code 1 when something runvm cannot do without is
/// missing.
fn check(cli: &Cli) -> Result<i32> {
    let install = host::Install::locate();
    let show = |r: Result<PathBuf>| r.map_err(|e| e.chain().to_string());
    let store = runvm_initramfs::Kernel::all_in_store(&install.kernels_dir())
        .ok()
        .map(|all| {
            let names: Vec<String> = all
                .iter()
                .map(|k| {
                    let dir = k
                        .root
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    if dir == k.version {
                        dir
                    } else {
                        format!("{dir} ({})", k.version)
                    }
                })
                .collect();
            format!(
                "{}: {} (pick one with RUNVM_KERNEL=<name>)",
                install.kernels_dir().display(),
                names.join(", ")
            )
        });
    let runc = Path::new(&runc_path(cli)).to_path_buf();
    let parts = doctor::Parts {
        runvm: std::env::current_exe().unwrap_or_else(|_| "runvm".into()),
        runc: if runc.is_absolute() {
            Some(runc).filter(|p| p.is_file())
        } else {
            doctor::System::which(&doctor::RealSystem, &runc.to_string_lossy())
        },
        supervisor: show(install.supervisor()),
        agent: show(install.agent()),
        virtiofsd: show(install.virtiofsd()),
        qemu: show(install.qemu()),
        kernel: runvm_initramfs::Kernel::discover(&install.kernels_dir())
            .map(|k| format!("{} ({})", k.vmlinuz.display(), k.version))
            .map_err(|e| e.chain().to_string()),
        store,
        accel: host::decide_accel(runvm_config::AccelRequest::Auto, host::kvm_problem())
            .map(|(a, why)| (a.to_string(), why))
            .map_err(|e| e.chain().to_string()),
    };
    let all = doctor::findings(&doctor::RealSystem, &parts);
    for f in &all {
        println!("{f}");
    }
    Ok(if all.iter().any(|f| f.status == doctor::Status::Missing) {
        1
    } else {
        0
    })
}

/// `runvm podman-register [DROP_IN]` / `podman-unregister`: Podman's
/// runtimes come from `containers.conf` and the drop-ins of
/// `containers.conf.d`; runvm's is a drop-in of its own, so every other
/// setting stays the administrator's and unregistering removes exactly it.
fn podman_edit(args: &[String], add: bool) -> Result<i32> {
    let path = PathBuf::from(
        args.first()
            .map(String::as_str)
            .unwrap_or(doctor::PODMAN_DROP_IN),
    );
    if !add {
        return match std::fs::remove_file(&path) {
            Ok(()) => Ok(0),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(source) => Err(RuntimeError::Write { path, source }),
        };
    }
    let exe = std::env::current_exe().map_err(|source| RuntimeError::Read {
        path: "/proc/self/exe".into(),
        source,
    })?;
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(&path, doctor::podman_drop_in(&exe))
        .map_err(|source| RuntimeError::Write { path, source })?;
    Ok(0)
}

/// `runvm docker-register [DAEMON_JSON]` / `docker-unregister`.
fn docker_edit(args: &[String], add: bool) -> Result<i32> {
    let path = PathBuf::from(
        args.first()
            .map(String::as_str)
            .unwrap_or("/etc/docker/daemon.json"),
    );
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => return Err(RuntimeError::Read { path, source }),
    };
    let exe = std::env::current_exe().map_err(|source| RuntimeError::Read {
        path: "/proc/self/exe".into(),
        source,
    })?;
    let doc = if add {
        docker::register(&text, "runvm", &exe.to_string_lossy(), &[])
    } else {
        docker::unregister(&text, "runvm")
    }
    .map_err(|e| RuntimeError::Usage(format!("{}: {e}", path.display())))?;
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let out = serde_json::to_string_pretty(&doc).expect("a Value serialises") + "\n";
    std::fs::write(&path, out).map_err(|source| RuntimeError::Write { path, source })?;
    Ok(0)
}
