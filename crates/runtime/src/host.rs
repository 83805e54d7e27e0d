//! What runvm finds on the host: its own files, the guest kernel, QEMU,
//! virtiofsd, devices, and whether KVM can be used.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use runvm_config::rewrite::{HostDevice, HostEntry};
use runvm_config::AccelRequest;
use runvm_contract::Accel;

use crate::error::{Result, RuntimeError};

/// runvm's installation: binaries next to each other, data in one dir.
#[derive(Debug, Clone)]
pub struct Install {
    /// Directory with runvm-supervisor, runvm-agent and (optionally) virtiofsd.
    pub libexec: PathBuf,
    /// Kernels (`kernel/`) and the initramfs cache (`cache/`).
    pub data: PathBuf,
}

impl Install {
    /// Locates the installation: `$RUNVM_LIBEXEC_DIR`, else
    /// `<prefix>/lib/runvm` for `<prefix>/bin/runvm`, else the directory of
    /// the runvm binary itself (a development build in `target/`).
    pub fn locate() -> Self {
        let data = std::env::var_os("RUNVM_DATA_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/lib/runvm"));
        if let Some(d) = std::env::var_os("RUNVM_LIBEXEC_DIR") {
            return Self {
                libexec: d.into(),
                data,
            };
        }
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/usr/local/bin/runvm"));
        let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
        let prefixed = dir
            .parent()
            .map(|p| p.join("lib/runvm"))
            .unwrap_or_default();
        let libexec = if prefixed.join("runvm-supervisor").exists() {
            prefixed
        } else {
            dir
        };
        Self { libexec, data }
    }

    pub fn supervisor(&self) -> Result<PathBuf> {
        existing(
            "runvm's supervisor",
            &[self.libexec.join("runvm-supervisor")],
            "run `make install`",
        )
    }

    pub fn agent(&self) -> Result<PathBuf> {
        let mut c = vec![self.libexec.join("runvm-agent")];
        // A development tree keeps the static agent under its target triple.
        if let Some(target) = self.libexec.parent() {
            c.push(target.join("x86_64-unknown-linux-gnu/release/runvm-agent"));
        }
        existing("runvm's guest agent", &c, "run `make install`")
    }

    pub fn virtiofsd(&self) -> Result<PathBuf> {
        // RUNVM_VIRTIOFSD, when set, is the only candidate (as RUNVM_QEMU).
        if let Some(p) = std::env::var_os("RUNVM_VIRTIOFSD") {
            return existing(
                "virtiofsd",
                &[PathBuf::from(p)],
                "point RUNVM_VIRTIOFSD at virtiofsd, or unset it",
            );
        }
        let c = [
            self.libexec.join("virtiofsd"),
            "/usr/local/lib/runvm/virtiofsd".into(),
            // Debian 13 packages the Rust virtiofsd here. (Debian 12's
            // /usr/lib/qemu/virtiofsd is the old C one, with other options.)
            "/usr/libexec/virtiofsd".into(),
            "/usr/local/bin/virtiofsd".into(),
        ];
        existing(
            "virtiofsd",
            &c,
            "run `make install` (it installs virtiofsd with cargo) or set RUNVM_VIRTIOFSD",
        )
    }

    /// QEMU: `RUNVM_QEMU` when set (only it: a wrong setting is an error,
    /// not a fall-back), else Debian's.
    pub fn qemu(&self) -> Result<PathBuf> {
        let c = match std::env::var_os("RUNVM_QEMU") {
            Some(p) => vec![PathBuf::from(p)],
            None => vec!["/usr/bin/qemu-system-x86_64".into()],
        };
        existing(
            "QEMU",
            &c,
            "install it with `apt-get install qemu-system-x86` (or `make install`)",
        )
    }

    /// The firmware the VM boots with: qboot, which does only what booting
    /// a Linux kernel needs (SeaBIOS, QEMU's default, also looks for boot
    /// devices and prints a banner: about 60 ms more under TCG), when
    /// QEMU's data directory (`<prefix>/share/qemu`, beside `<prefix>/bin`)
    /// has it; else QEMU's default.
    pub fn firmware(qemu: &Path) -> Option<PathBuf> {
        let rom = qemu.parent()?.parent()?.join("share/qemu/qboot.rom");
        rom.is_file().then_some(rom)
    }

    /// A static e2fsck for the guest (Debian's e2fsck-static).
    pub fn e2fsck(&self) -> Result<PathBuf> {
        existing(
            "e2fsck.static (the guest checks its disks with it)",
            &[
                "/usr/sbin/e2fsck.static".into(),
                "/sbin/e2fsck.static".into(),
            ],
            "install it with `apt-get install e2fsck-static` (or `make install`)",
        )
    }

    pub fn kernels_dir(&self) -> PathBuf {
        self.data.join("kernel")
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.data.join("cache")
    }
}

fn existing(what: &'static str, candidates: &[PathBuf], fix: &'static str) -> Result<PathBuf> {
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| RuntimeError::Missing {
            what,
            looked: candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            fix,
        })
}

/// The top-level entries of the host's root that QEMU and virtiofsd need:
/// `/usr` and the library and binary directories (bound if they are real
/// directories, reproduced if they are merged-/usr symlinks).
pub fn host_entries() -> Vec<HostEntry> {
    let mut out = vec![HostEntry::Bind("/usr".into())];
    for p in ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"] {
        match std::fs::symlink_metadata(p) {
            Ok(m) if m.file_type().is_symlink() => {
                if let Ok(t) = std::fs::read_link(p) {
                    out.push(HostEntry::Symlink {
                        path: p.into(),
                        target: t.to_string_lossy().into_owned(),
                    });
                }
            }
            Ok(m) if m.is_dir() => out.push(HostEntry::Bind(p.into())),
            _ => {}
        }
    }
    out
}

/// The host's memory (MemTotal) in MiB; a large value if it cannot be read.
pub fn memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kib| kib / 1024)
        .unwrap_or(u64::MAX / (1024 * 1024))
}

/// Character devices the supervisor needs: the tap device and KVM.
pub fn devices(accel: Accel) -> Vec<HostDevice> {
    let mut paths = vec!["/dev/net/tun"];
    if accel == Accel::Kvm {
        paths.push("/dev/kvm");
    }
    paths
        .into_iter()
        .filter_map(|p| {
            let m = std::fs::metadata(p).ok()?;
            if !m.file_type().is_char_device() {
                return None;
            }
            let rdev = m.rdev();
            Some(HostDevice {
                path: p.into(),
                major: nix::sys::stat::major(rdev) as i64,
                minor: nix::sys::stat::minor(rdev) as i64,
            })
        })
        .collect()
}

/// Why KVM cannot be used here, if it cannot.
pub fn kvm_problem() -> Option<String> {
    let dev = Path::new("/dev/kvm");
    if !dev.exists() {
        return Some("/dev/kvm does not exist".into());
    }
    if Path::new("/sys/module/kvm_pvm").exists() {
        return Some(
            "/dev/kvm is PVM-based nested virtualisation, on which a stock kernel hangs at boot"
                .into(),
        );
    }
    match std::fs::OpenOptions::new().read(true).write(true).open(dev) {
        Err(e) => Some(format!("/dev/kvm cannot be opened: {e}")),
        Ok(f) => {
            // KVM_GET_API_VERSION is _IO(KVMIO = 0xAE, 0x00).
            nix::ioctl_none!(kvm_get_api_version, 0xAE, 0x00);
            // SAFETY: KVM_GET_API_VERSION takes no argument and only
            // returns an integer; `f` is an open descriptor.
            match unsafe { kvm_get_api_version(std::os::fd::AsRawFd::as_raw_fd(&f)) } {
                Ok(12) => None,
                Ok(v) => Some(format!("/dev/kvm answers KVM API version {v}, not 12")),
                Err(e) => Some(format!("/dev/kvm does not answer KVM_GET_API_VERSION: {e}")),
            }
        }
    }
}

/// Picks the accelerator for a request: KVM when asked and present, or
/// when usable in auto mode; TCG otherwise, with a warning when the user
/// did not ask for it.
pub fn decide_accel(req: AccelRequest, problem: Option<String>) -> Result<(Accel, Option<String>)> {
    match (req, problem) {
        (AccelRequest::Tcg, _) => Ok((Accel::Tcg, None)),
        // Asked for KVM where it is known not to work (missing, PVM-based,
        // unopenable): refuse in one line rather than let QEMU fail or hang.
        (AccelRequest::Kvm, Some(p)) => Err(RuntimeError::NoKvm(p)),
        (AccelRequest::Kvm, None) => Ok((Accel::Kvm, None)),
        (AccelRequest::Auto, None) => Ok((Accel::Kvm, None)),
        (AccelRequest::Auto, Some(p)) => Ok((
            Accel::Tcg,
            Some(format!(
                "KVM is not usable ({p}); running the VM under TCG software emulation, which is much slower; set RUNVM_ACCEL=tcg to silence this"
            )),
        )),
    }
}

/// Why this process is not root on the host, if it is not: runvm gives
/// QEMU tap devices, cgroup limits and mounts that only the host's root
/// may make. `rootless` is the engine's `--rootless` flag.
pub fn not_root(rootless: Option<&str>) -> Option<String> {
    let uid_map = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
    root_problem(nix::unistd::geteuid().as_raw(), &uid_map, rootless)
}

/// [`not_root`] on its inputs: the effective uid, `/proc/self/uid_map`
/// and the `--rootless` flag.
fn root_problem(euid: u32, uid_map: &str, rootless: Option<&str>) -> Option<String> {
    if rootless == Some("true") {
        return Some("the engine passed --rootless true".into());
    }
    if euid != 0 {
        return Some(format!("it runs as uid {euid}"));
    }
    // The initial user namespace maps every uid to itself in one line.
    let whole = uid_map.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"];
    (!whole).then(|| {
        "it runs in a user namespace, as a rootless engine's root, which is not the host's".into()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn root_is_uid_0_in_the_initial_user_namespace() {
        let host = "         0          0 4294967295\n";
        assert_eq!(super::root_problem(0, host, None), None);
        assert_eq!(super::root_problem(0, host, Some("auto")), None);
        assert_eq!(super::root_problem(0, host, Some("false")), None);
        let rootless_podman =
            "         0       1000          1\n         1     100000      65536\n";
        for (euid, map, flag) in [
            (1000, host, None),
            (0, rootless_podman, None),
            (0, host, Some("true")),
        ] {
            let why = super::root_problem(euid, map, flag);
            assert!(why.is_some(), "{euid} {map:?} {flag:?}");
        }
    }

    use super::*;

    #[test]
    fn tcg_when_asked_kvm_when_usable_warning_when_falling_back() {
        assert_eq!(
            decide_accel(AccelRequest::Tcg, None).unwrap(),
            (Accel::Tcg, None)
        );
        assert_eq!(
            decide_accel(AccelRequest::Auto, None).unwrap(),
            (Accel::Kvm, None)
        );
        let (a, w) = decide_accel(AccelRequest::Auto, Some("no /dev/kvm".into())).unwrap();
        assert_eq!(a, Accel::Tcg);
        let w = w.unwrap();
        assert!(w.contains("no /dev/kvm") && w.contains("RUNVM_ACCEL=tcg"));
    }

    #[test]
    fn missing_things_name_what_where_and_the_fix() {
        let e = existing("QEMU", &["/nonexistent/qemu".into()], "install it").unwrap_err();
        assert_eq!(
            e.to_string(),
            "QEMU not found (/nonexistent/qemu): install it"
        );
    }

    #[test]
    fn usr_is_always_bound() {
        assert_eq!(host_entries()[0], HostEntry::Bind("/usr".into()));
    }
}
