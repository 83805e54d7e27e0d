//! runvm's guest agent: the VM's PID 1.
//!
//! It loads the kernel modules the VM needs, opens the host channel, and
//! waits for the supervisor to describe the container. Then it mounts the
//! container's root filesystem (virtiofs), reproduces the container's
//! hostname, network and mounts, and runs the workload in its own PID and
//! mount namespaces, so that inside the VM the workload is PID 1 exactly as
//! under runc. It relays stdio, signals and the exit status, reaps every
//! zombie, and finally syncs and powers the VM off.
//!
//! Run as `/sbin/modprobe` (a link in the initramfs), it is instead the
//! kernel's helper for loading a missing module (see `modprobe`).

mod caps;
mod cgroup;
mod devices;
mod disks;
mod dns;
mod early;
mod error;
mod modprobe;
mod mounts;
mod network;
mod process;
mod reaper;
mod server;
mod sysctl;

use runvm_contract::report::ErrorChain;
use std::time::Duration;

fn main() {
    // (args_os: the kernel passes the module name a workload asked for,
    // which need not be UTF-8.)
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let invoked_as = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .and_then(|n| n.to_str());
    if invoked_as == Some(modprobe::NAME) && std::process::id() != 1 {
        std::process::exit(modprobe::main(&args));
    }
    if std::process::id() != 1 {
        eprintln!("runvm-agent: this program is the VM's init and must run as PID 1");
        std::process::exit(2);
    }
    early::INIT_MS.get_or_init(early::uptime_ms);
    runvm_protocol::log::init("runvm-agent");
    // A panic must not leave the VM hanging: report it and power off, which
    // ends QEMU, which the supervisor reports as a VM failure.
    std::panic::set_hook(Box::new(|info| {
        tracing::error!("internal error: {info}");
        early::power_off();
    }));
    // The kernel starts PID 1 sharing its root directory with the kernel's
    // own threads, which run usermode helpers (`/sbin/modprobe` for a
    // missing module, and the like) as full root. The container's root
    // becomes ours later; it must never become theirs, or an image's
    // /sbin/modprobe would run outside every confinement. So PID 1 takes a
    // root of its own now, while it has one thread: the helpers stay in the
    // initramfs, which has none of them.
    if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS) {
        tracing::error!("cannot separate from the kernel's root: {e}");
        early::power_off();
    }
    if let Err(e) = early::setup() {
        tracing::error!("{}", e.chain());
        early::power_off();
    }
    // /proc is mounted now: the host asks for debug entries on the kernel
    // command line.
    runvm_protocol::log::set_debug(early::kernel_flag(runvm_contract::guest::DEBUG_FLAG));
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            early::power_off();
        }
    };
    let result = rt.block_on(server::serve());
    if let Err(e) = result {
        tracing::error!("{}", e.chain());
    }
    rt.shutdown_timeout(Duration::from_millis(100));
    early::power_off();
}
