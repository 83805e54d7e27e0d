//! Boot steps that happen before the host speaks: kernel filesystems,
//! modules, and the host channel.

use nix::sys::signal::Signal;
use std::fs;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::mount::MsFlags;

use crate::error::{AgentError, Result};
use crate::mounts::mount_fs;

use runvm_contract::guest::{LOAD_ORDER, MODULES_DIR};

/// The guest's uptime in ms (CLOCK_BOOTTIME starts with the kernel).
pub fn uptime_ms() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).map_or(0, |t| {
        t.tv_sec() as u64 * 1000 + t.tv_nsec() as u64 / 1_000_000
    })
}

/// When the agent started as `/init` and when it opened the host channel
/// (guest uptimes in ms), for the phase timings the host prints.
pub static INIT_MS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
pub static READY_MS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
/// When the request to start the container arrived, and when the
/// container was set up.
pub static REQUEST_MS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
pub static PREPARED_MS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// The milestones so far, with now as the workload's start.
pub fn boot_marks() -> runvm_protocol::BootMarks {
    runvm_protocol::BootMarks {
        init_ms: INIT_MS.get().copied().unwrap_or_default(),
        ready_ms: READY_MS.get().copied().unwrap_or_default(),
        request_ms: REQUEST_MS.get().copied().unwrap_or_default(),
        prepared_ms: PREPARED_MS.get().copied().unwrap_or_default(),
        started_ms: uptime_ms(),
    }
}

/// Mounts the kernel filesystems of the initramfs and loads the modules.
pub fn setup() -> Result<()> {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    mount_fs(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        None,
    )?;
    mount_fs("proc", "/proc", "proc", nosuid, None)?;
    mount_fs("sysfs", "/sys", "sysfs", nosuid, None)?;
    // The kernel's module helper is this binary, whatever the command line
    // said (runvm refuses `sysctl` parameters in RUNVM_KERNEL_APPEND; this
    // holds for any other way one could get there).
    // (A kernel without module support has no such file, and no helper.)
    match fs::write("/proc/sys/kernel/modprobe", b"/sbin/modprobe") {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(AgentError::sys("set the kernel's module helper", e));
        }
        _ => {}
    }
    load_modules()?;
    Ok(())
}

/// Loads the modules listed in the initramfs's load order, in that order.
fn load_modules() -> Result<()> {
    let Ok(order) = fs::read_to_string(LOAD_ORDER) else {
        return Ok(()); // a kernel with everything built in
    };
    for name in order.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = Path::new(MODULES_DIR).join(name);
        let file = fs::File::open(&path).map_err(|source| AgentError::Module {
            module: name.to_owned(),
            source,
        })?;
        match nix::kmod::finit_module(&file, c"", nix::kmod::ModuleInitFlags::empty()) {
            Ok(()) | Err(nix::Error::EEXIST) => {}
            Err(e) => {
                return Err(AgentError::Module {
                    module: name.to_owned(),
                    source: e.into(),
                })
            }
        }
    }
    Ok(())
}

/// Opens the virtio-serial port named `name`, waiting for the driver to
/// create it.
pub fn open_port(name: &'static str) -> Result<OwnedFd> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(entries) = fs::read_dir("/sys/class/virtio-ports") {
            for e in entries.flatten() {
                let port_name = fs::read_to_string(e.path().join("name")).unwrap_or_default();
                if port_name.trim() == name {
                    let dev = Path::new("/dev").join(e.file_name());
                    if let Ok(f) = fs::OpenOptions::new().read(true).write(true).open(&dev) {
                        return Ok(f.into());
                    }
                }
            }
        }
        if Instant::now() > deadline {
            return Err(AgentError::NoPort(name));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Syncs the filesystems and powers the VM off. Never returns.
pub fn power_off() -> ! {
    nix::unistd::sync();
    // Every process but ourselves.
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-1), Signal::SIGKILL);
    crate::mounts::release_kernel_modules();
    crate::disks::release();
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    // reboot() only returns on failure; PID 1 must not exit (that panics
    // the kernel, which also ends the VM, so it is the last resort).
    std::process::exit(1);
}

/// Whether the kernel command line has the word `flag` (the host's
/// settings for the agent: `guest::PROBE_FLAG`, `guest::DEBUG_FLAG`).
pub fn kernel_flag(flag: &str) -> bool {
    fs::read_to_string("/proc/cmdline").is_ok_and(|c| c.split_whitespace().any(|w| w == flag))
}
