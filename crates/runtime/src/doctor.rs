//! `runvm check`: what runvm needs on this host, each finding with what to
//! do about it. The checks read the host through [`System`], so the logic
//! is tested with a fake host (`tests` below) and the real one is only
//! read, never changed.

use std::fmt;
use std::path::{Path, PathBuf};

/// How a finding stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// runvm works, slower or with less than it could.
    Warning,
    /// runvm cannot run containers until this is fixed.
    Missing,
}

/// One line of `runvm check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub status: Status,
    pub what: &'static str,
    pub detail: String,
    /// What to do, for a warning or a missing piece.
    pub fix: Option<String>,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.status {
            Status::Ok => "ok",
            Status::Warning => "warning",
            Status::Missing => "MISSING",
        };
        write!(f, "{tag:<7} {}: {}", self.what, self.detail)?;
        if let Some(fix) = &self.fix {
            write!(f, "; fix: {fix}")?;
        }
        Ok(())
    }
}

fn ok(what: &'static str, detail: impl Into<String>) -> Finding {
    Finding {
        status: Status::Ok,
        what,
        detail: detail.into(),
        fix: None,
    }
}

fn warning(what: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding {
        status: Status::Warning,
        what,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

fn missing(what: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding {
        status: Status::Missing,
        what,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

/// What the checks read of the host.
pub trait System {
    fn read(&self, path: &Path) -> Option<String>;
    fn exists(&self, path: &Path) -> bool;
    /// The first line of a successful run's stdout (a version), else None.
    fn first_line(&self, program: &Path, args: &[&str]) -> Option<String>;
    /// `program` found in `PATH`.
    fn which(&self, program: &str) -> Option<PathBuf>;
}

/// The real host.
pub struct RealSystem;

impl System for RealSystem {
    fn read(&self, path: &Path) -> Option<String> {
        std::fs::read_to_string(path).ok()
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn first_line(&self, program: &Path, args: &[&str]) -> Option<String> {
        let out = std::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .map(|l| l.trim().to_owned())
    }

    fn which(&self, program: &str) -> Option<PathBuf> {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(program))
                .find(|p| p.is_file())
        })
    }
}

/// Where runvm's own parts were found (or why not), from [`crate::host`].
pub struct Parts {
    pub runvm: PathBuf,
    pub runc: Option<PathBuf>,
    pub supervisor: Result<PathBuf, String>,
    pub agent: Result<PathBuf, String>,
    pub virtiofsd: Result<PathBuf, String>,
    pub qemu: Result<PathBuf, String>,
    pub kernel: Result<String, String>,
    pub store: Option<String>,
    /// The accelerator and, when not KVM, why.
    pub accel: Result<(String, Option<String>), String>,
}

/// Guest RAM plus QEMU's overhead of a container without a memory limit.
const DEFAULT_VM_MIB: u64 =
    runvm_config::rewrite::DEFAULT_MEMORY_MIB + runvm_config::rewrite::VM_OVERHEAD_MIB;

/// Every finding, in the order `runvm check` prints them.
pub fn findings(sys: &dyn System, parts: &Parts) -> Vec<Finding> {
    let mut out = Vec::new();
    let part = |what: &'static str, r: &Result<PathBuf, String>| match r {
        Ok(p) => ok(what, p.display().to_string()),
        Err(e) => missing(what, e.clone(), "run `make install`"),
    };
    out.push(part("supervisor", &parts.supervisor));
    out.push(part("guest agent", &parts.agent));
    out.push(versioned(
        sys,
        "virtiofsd",
        &parts.virtiofsd,
        &["--version"],
    ));
    out.push(versioned(sys, "qemu", &parts.qemu, &["--version"]));
    out.push(match &parts.runc {
        Some(p) => versioned(sys, "runc", &Ok(p.clone()), &["--version"]),
        None => missing(
            "runc",
            "not found (runvm runs each container's host side with it)",
            "apt-get install runc",
        ),
    });
    out.push(match &parts.kernel {
        Ok(k) => ok("guest kernel", k.clone()),
        Err(e) => missing(
            "guest kernel",
            e.clone(),
            "run `make kernel` (or `make install`)",
        ),
    });
    if let Some(store) = &parts.store {
        out.push(ok("kernel store", store.clone()));
    }
    out.push(match &parts.accel {
        Ok((a, None)) => ok("accelerator", a.clone()),
        Ok((a, Some(why))) => warning(
            "accelerator",
            format!("{a}: {why}"),
            "run on a host with /dev/kvm usable by root (bare metal, or a VM with nested virtualisation)",
        ),
        Err(e) => missing("accelerator", e.clone(), "install QEMU with TCG, or enable KVM"),
    });
    // Not used yet (QEMU's own virtio-net backend serves the tap): shown
    // so a reader knows what the host offers for the KVM path.
    for (dev, module) in [
        ("/dev/vhost-net", "vhost_net"),
        ("/dev/vhost-vsock", "vhost_vsock"),
    ] {
        out.push(ok(
            "vhost",
            if sys.exists(Path::new(dev)) {
                format!("{dev} is there (runvm does not use it yet)")
            } else {
                format!("no {dev} (runvm does not need it; `modprobe {module}` makes it)")
            },
        ));
    }
    out.push(cgroups(sys));
    out.push(memory(sys));
    out.push(docker(sys, parts));
    out.push(podman(sys, parts));
    out
}

/// A part found by path, with its version when it answers `args`.
fn versioned(
    sys: &dyn System,
    what: &'static str,
    found: &Result<PathBuf, String>,
    args: &[&str],
) -> Finding {
    match found {
        Ok(p) => match sys.first_line(p, args) {
            Some(v) => ok(what, format!("{} ({v})", p.display())),
            None => missing(
                what,
                format!(
                    "{} does not run (`{} {}` failed)",
                    p.display(),
                    p.display(),
                    args.join(" ")
                ),
                "reinstall it (`make install`)",
            ),
        },
        Err(e) => missing(what, e.clone(), "run `make install`"),
    }
}

fn cgroups(sys: &dyn System) -> Finding {
    let mounts = sys.read(Path::new("/proc/mounts")).unwrap_or_default();
    let v2 = mounts.lines().any(|l| {
        l.split_whitespace().nth(1) == Some("/sys/fs/cgroup")
            && l.split_whitespace().nth(2) == Some("cgroup2")
    });
    ok(
        "cgroups",
        if v2 {
            "v2 (the host's limits hold each VM; the guest holds the workload to the container's)"
        } else {
            "v1 (the host's limits hold each VM; the guest holds the workload to the container's)"
        },
    )
}

fn memory(sys: &dyn System) -> Finding {
    let meminfo = sys.read(Path::new("/proc/meminfo")).unwrap_or_default();
    let available = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib / 1024);
    match available {
        Some(mib) if mib >= DEFAULT_VM_MIB => ok(
            "memory",
            format!("{mib} MiB available: room for {} VMs of the default size ({DEFAULT_VM_MIB} MiB at most each, less when idle)", mib / DEFAULT_VM_MIB),
        ),
        Some(mib) => warning(
            "memory",
            format!("{mib} MiB available, less than one VM of the default size may take ({DEFAULT_VM_MIB} MiB)"),
            "give containers a memory limit (-m), or set RUNVM_MEMORY",
        ),
        None => warning("memory", "cannot read MemAvailable from /proc/meminfo", "check /proc is mounted"),
    }
}

/// Whether `/etc/docker/daemon.json` names this runvm.
fn docker(sys: &dyn System, parts: &Parts) -> Finding {
    if sys.which("dockerd").is_none() {
        return ok("docker", "not installed (nothing to register)");
    }
    let path = Path::new("/etc/docker/daemon.json");
    let registered = sys
        .read(path)
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| {
            v.pointer("/runtimes/runvm/path")?
                .as_str()
                .map(PathBuf::from)
        });
    match registered {
        Some(p) if p == parts.runvm => ok(
            "docker",
            format!("runtime \"runvm\" is {} in {}", p.display(), path.display()),
        ),
        Some(p) => warning(
            "docker",
            format!(
                "runtime \"runvm\" in {} is {}, not this runvm ({})",
                path.display(),
                p.display(),
                parts.runvm.display()
            ),
            format!(
                "{} docker-register, then `kill -HUP $(pidof dockerd)`",
                parts.runvm.display()
            ),
        ),
        None => warning(
            "docker",
            format!("{} has no runtime \"runvm\"", path.display()),
            format!(
                "{} docker-register, then `kill -HUP $(pidof dockerd)`",
                parts.runvm.display()
            ),
        ),
    }
}

/// runvm's drop-in of Podman's configuration (`runvm podman-register`).
pub const PODMAN_DROP_IN: &str = "/etc/containers/containers.conf.d/runvm.conf";

/// The drop-in that registers `runvm` (this binary) with Podman.
pub fn podman_drop_in(runvm: &Path) -> String {
    format!(
        "# Written by `runvm podman-register`; `runvm podman-unregister` removes it.\n\
         [engine.runtimes]\n\
         runvm = [\"{}\"]\n",
        runvm.display()
    )
}

/// Whether Podman's configuration (`containers.conf` or runvm's drop-in)
/// names this runvm.
fn podman(sys: &dyn System, parts: &Parts) -> Finding {
    if sys.which("podman").is_none() {
        return ok("podman", "not installed (nothing to register)");
    }
    let want = parts.runvm.display().to_string();
    let names_it = |text: &str| {
        text.lines()
            .any(|l| l.trim_start().starts_with("runvm") && l.contains(&format!("\"{want}\"")))
    };
    let found = [PODMAN_DROP_IN, "/etc/containers/containers.conf"]
        .into_iter()
        .find(|p| sys.read(Path::new(p)).is_some_and(|t| names_it(&t)));
    match found {
        Some(p) => ok("podman", format!("runtime \"runvm\" is {want} in {p}")),
        None => warning(
            "podman",
            format!("Podman's configuration has no runtime \"runvm\" naming {want}"),
            format!("{want} podman-register"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[derive(Default)]
    struct Fake {
        files: HashMap<PathBuf, String>,
        versions: HashMap<PathBuf, String>,
        path: HashMap<String, PathBuf>,
    }

    impl System for Fake {
        fn read(&self, p: &Path) -> Option<String> {
            self.files.get(p).cloned()
        }
        fn exists(&self, p: &Path) -> bool {
            self.files.contains_key(p)
        }
        fn first_line(&self, p: &Path, _: &[&str]) -> Option<String> {
            self.versions.get(p).cloned()
        }
        fn which(&self, program: &str) -> Option<PathBuf> {
            self.path.get(program).cloned()
        }
    }

    fn parts() -> Parts {
        Parts {
            runvm: "/usr/local/bin/runvm".into(),
            runc: Some("/usr/sbin/runc".into()),
            supervisor: Ok("/usr/local/lib/runvm/runvm-supervisor".into()),
            agent: Ok("/usr/local/lib/runvm/runvm-agent".into()),
            virtiofsd: Ok("/usr/local/lib/runvm/virtiofsd".into()),
            qemu: Ok("/usr/bin/qemu-system-x86_64".into()),
            kernel: Ok("6.1.192-runvm".into()),
            store: Some("6.1.192-runvm".into()),
            accel: Ok(("KVM".into(), None)),
        }
    }

    fn healthy() -> Fake {
        let mut f = Fake::default();
        for (p, v) in [
            ("/usr/local/lib/runvm/virtiofsd", "virtiofsd backend 1.13.2"),
            (
                "/usr/bin/qemu-system-x86_64",
                "QEMU emulator version 7.2.19",
            ),
            ("/usr/sbin/runc", "runc version 1.1.5+ds1"),
        ] {
            f.versions.insert(p.into(), v.into());
        }
        f.files.insert("/dev/vhost-net".into(), String::new());
        f.files.insert(
            "/proc/mounts".into(),
            "cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n".into(),
        );
        f.files.insert(
            "/proc/meminfo".into(),
            "MemTotal: 24000000 kB\nMemAvailable: 20000000 kB\n".into(),
        );
        f.path.insert("dockerd".into(), "/usr/sbin/dockerd".into());
        f.files.insert(
            "/etc/docker/daemon.json".into(),
            r#"{"runtimes": {"runvm": {"path": "/usr/local/bin/runvm"}}}"#.into(),
        );
        f
    }

    fn find<'a>(all: &'a [Finding], what: &str) -> &'a Finding {
        all.iter()
            .find(|f| f.what == what)
            .unwrap_or_else(|| panic!("no finding {what}"))
    }

    #[test]
    fn a_healthy_host_is_all_ok() {
        let all = findings(&healthy(), &parts());
        for f in &all {
            assert_eq!(f.status, Status::Ok, "{f}");
        }
        assert!(find(&all, "qemu").detail.contains("7.2.19"));
        assert!(find(&all, "cgroups").detail.starts_with("v2"));
    }

    #[test]
    fn each_missing_piece_is_named_with_its_fix() {
        let mut p = parts();
        p.runc = None;
        p.qemu = Err("QEMU not found".into());
        p.kernel = Err("no kernel in the store".into());
        let mut sys = healthy();
        sys.versions
            .remove(Path::new("/usr/local/lib/runvm/virtiofsd"));
        let all = findings(&sys, &p);
        for (what, fix) in [
            ("runc", "apt-get install runc"),
            ("qemu", "make install"),
            ("guest kernel", "make kernel"),
            ("virtiofsd", "reinstall"),
        ] {
            let f = find(&all, what);
            assert_eq!(f.status, Status::Missing, "{f}");
            assert!(f.to_string().contains(fix), "{f}");
            assert!(!f.to_string().contains('\n'), "{f}");
        }
    }

    #[test]
    fn registration_and_headroom_problems_are_warnings_with_fixes() {
        let mut sys = healthy();
        sys.files
            .insert("/etc/docker/daemon.json".into(), "{}".into());
        sys.files.remove(Path::new("/dev/vhost-net"));
        sys.files
            .insert("/proc/meminfo".into(), "MemAvailable: 300000 kB\n".into());
        sys.path.insert("podman".into(), "/usr/bin/podman".into());
        let mut p = parts();
        p.accel = Ok(("TCG".into(), Some("/dev/kvm is missing".into())));
        let all = findings(&sys, &p);
        for (what, fix) in [
            ("docker", "docker-register"),
            ("podman", "podman-register"),
            ("memory", "-m"),
            ("accelerator", "/dev/kvm"),
        ] {
            let f = find(&all, what);
            assert_eq!(f.status, Status::Warning, "{f}");
            assert!(f.to_string().contains(fix), "{f}");
        }
        // Docker registered under another binary.
        sys.files.insert(
            "/etc/docker/daemon.json".into(),
            r#"{"runtimes": {"runvm": {"path": "/opt/old/runvm"}}}"#.into(),
        );
        let f = findings(&sys, &parts())
            .into_iter()
            .find(|f| f.what == "docker")
            .unwrap();
        assert!(f.detail.contains("/opt/old/runvm"), "{f}");
    }

    #[test]
    fn podmans_drop_in_registers_this_runvm() {
        let mut sys = healthy();
        sys.path.insert("podman".into(), "/usr/bin/podman".into());
        sys.files.insert(
            PODMAN_DROP_IN.into(),
            podman_drop_in(Path::new("/usr/local/bin/runvm")),
        );
        let all = findings(&sys, &parts());
        assert_eq!(
            find(&all, "podman").status,
            Status::Ok,
            "{}",
            find(&all, "podman")
        );
    }

    #[test]
    fn engines_that_are_not_installed_need_nothing() {
        let mut sys = healthy();
        sys.path.clear();
        let all = findings(&sys, &parts());
        assert_eq!(find(&all, "docker").status, Status::Ok);
        assert_eq!(find(&all, "podman").status, Status::Ok);
    }
}
