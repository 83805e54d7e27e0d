//! `runvm boot-probe`: boots the VM a container with no `RUNVM_*` settings
//! of its own would get (the same kernel, initramfs, accelerator, vCPUs and
//! memory, chosen by the same code as `create`), without a container, and
//! prints how long the guest agent took to be ready. It checks that the
//! installation can boot a VM at all, and it is the floor of `make bench`.
//! The supervisor boots it (`runvm-supervisor boot-probe DIR`), with the
//! machine its containers' VMs have.

use std::process::Command;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag};

use runvm_config::rewrite::{guest_cpus, guest_memory_mib};
use runvm_config::VmOptions;
use runvm_contract::VmConfig;
use runvm_protocol::ContainerSpec;

use crate::create::Guest;
use crate::error::{Result, RuntimeError};
use crate::host::Install;

pub fn boot_probe(debug: bool) -> Result<i32> {
    let opts = VmOptions::from_env(&[], |k| std::env::var(k).ok())?;
    let install = Install::locate();
    let supervisor = install.supervisor()?;
    let qemu = install.qemu()?;
    let guest = Guest::choose(&opts, &install, None)?;
    let host_cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    // Sized as `create` sizes a container's VM with no limits of its own.
    let vcpus = guest_cpus(&opts, None, host_cpus)?;
    let memory_mib = guest_memory_mib(&opts, None, crate::host::memory_mib())?;
    let vm = VmConfig {
        accel: guest.accel,
        accel_warning: guest.accel_warning.clone(),
        vcpus,
        memory_mib,
        qemu: qemu.to_string_lossy().into_owned(),
        firmware: crate::host::Install::firmware(&qemu).map(|p| p.to_string_lossy().into_owned()),
        virtiofsd: String::new(),
        kernel: guest.kernel.vmlinuz.to_string_lossy().into_owned(),
        initrd: guest.initrd.path.to_string_lossy().into_owned(),
        rootfs: String::new(),
        debug: debug || opts.debug,
        phases: false,
        created_unix_ms: 0,
        rewritten_unix_ms: 0,
        kernel_append: opts.kernel_append.clone(),
        own_network: false,
        qemu_uid: 0,
        qemu_gid: 0,
        staged_mounts: Vec::new(),
        disks: Vec::new(),
        container: ContainerSpec::default(),
    };
    // Private: tempfile makes directories 0777 less the umask, and QEMU's
    // agent socket lives here.
    let dir = tempfile::Builder::new()
        .prefix("runvm-boot-probe-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir()
        .map_err(|source| RuntimeError::Write {
            path: std::env::temp_dir(),
            source,
        })?;
    let config = dir.path().join("vm.json");
    let json = serde_json::to_vec_pretty(&vm).expect("VmConfig serialises");
    std::fs::write(&config, json).map_err(|source| RuntimeError::Write {
        path: config,
        source,
    })?;
    // The signals that would end runvm before it removes `dir` are blocked
    // here and passed on to the supervisor, which stops QEMU and ends (it
    // unblocks them first: the mask survives exec).
    let stop = stop_signals();
    // (pthread_sigmask fails only for an invalid `how`.)
    let _ = stop.thread_block();
    // `guest` holds the initramfs's lock until the probe has ended.
    let mut child = Command::new(&supervisor)
        .arg("boot-probe")
        .arg(dir.path())
        .spawn()
        .map_err(|source| RuntimeError::Spawn {
            program: supervisor.display().to_string(),
            source,
        })?;
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    // Signals go to the child only while it is unreaped (its pid cannot be
    // anyone else's): `ended` is set, under the lock, before it is reaped.
    let ended = std::sync::Arc::new(std::sync::Mutex::new(false));
    let forwarder_ended = ended.clone();
    // The thread inherits the mask: the signals wait for it in `wait`.
    std::thread::spawn(move || {
        while let Ok(signal) = stop.wait() {
            let ended = forwarder_ended.lock().unwrap_or_else(|e| e.into_inner());
            if !*ended {
                let _ = nix::sys::signal::kill(pid, signal);
            }
        }
    });
    // Wait for the end without reaping, mark it, then reap.
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT;
    while let Err(nix::errno::Errno::EINTR) = waitid(Id::Pid(pid), flags) {}
    *ended.lock().unwrap_or_else(|e| e.into_inner()) = true;
    let status = child.wait().map_err(|source| RuntimeError::Spawn {
        program: supervisor.display().to_string(),
        source,
    })?;
    drop(guest);
    Ok(status.code().unwrap_or(1))
}

/// Ctrl-C and the other signals that stop `runvm boot-probe`.
fn stop_signals() -> SigSet {
    [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ]
    .into_iter()
    .collect()
}
