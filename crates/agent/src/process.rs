//! Starting a process inside the container: namespaces, confinement
//! (masked and read-only paths, seccomp), credentials, limits, working
//! directory and stdio.

use runvm_protocol::exit::ExitCode;
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use nix::errno::Errno;
use nix::mount::MsFlags;
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
use nix::sys::stat::{umask, Mode};
use nix::sys::statvfs::FsFlags;
use nix::unistd::{chdir, setgid, setgroups, setsid, setuid, Gid, Uid};
use runvm_protocol::runc_compat::{look_path, path_of_env, FileInfo, LookPathError};
use runvm_protocol::{ContainerSpec, ProcessSpec, SeccompFilter};

/// Why a process could not be started, with the exit code to report.
#[derive(Debug)]
pub struct StartError {
    pub message: String,
    pub exit_code: i32,
}

impl From<LookPathError> for StartError {
    fn from(e: LookPathError) -> Self {
        StartError {
            exit_code: e.exit_code(),
            message: e.to_string(),
        }
    }
}

/// The parent's ends of a started process's stdio.
pub enum ParentStdio {
    Pipes {
        stdin: OwnedFd,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
    Pty {
        master: OwnedFd,
    },
}

/// The container's confinement beyond credentials, as runc applies it.
/// The mount rules apply once, in the init's mount namespace (execs join
/// it); the seccomp filter applies to the init and to every exec, as runc
/// takes an exec's filter from the container's config.
#[derive(Debug, Clone, Default)]
pub struct Confinement {
    pub masked_paths: Vec<String>,
    pub readonly_paths: Vec<String>,
    pub sysfs_readonly: bool,
    pub cgroup_readonly: bool,
    pub seccomp: Option<SeccompFilter>,
    /// The workload's cgroup (see [`crate::cgroup`]), held open, which the
    /// init and every exec join, in a cgroup namespace of the init's.
    pub cgroup: Option<Arc<OwnedFd>>,
    /// The agent's `/proc`, held open from before the workload ran: a
    /// process's own `oom_score_adj` is written through it.
    pub proc_dir: Option<Arc<OwnedFd>>,
}

impl Confinement {
    pub fn of(spec: &ContainerSpec, cgroup: Option<OwnedFd>) -> Self {
        Confinement {
            cgroup: cgroup.map(Arc::new),
            proc_dir: std::fs::File::open("/proc")
                .ok()
                .map(|f| Arc::new(OwnedFd::from(f))),
            masked_paths: spec.masked_paths.clone(),
            readonly_paths: spec.readonly_paths.clone(),
            sysfs_readonly: spec.sysfs_readonly,
            cgroup_readonly: spec.cgroup_readonly,
            seccomp: spec.seccomp.clone(),
        }
    }
}

/// Which namespaces the new process gets.
pub enum Namespaces<'a> {
    /// New PID and mount namespaces: the container's init.
    NewContainer,
    /// The container's PID and mount namespaces: an exec.
    Join(&'a ContainerNamespaces),
}

/// The container's PID and mount namespaces, held open from the moment its
/// init starts. An exec joins these, never `/proc/<pid>/ns` of a pid that
/// may by then belong to another process.
#[derive(Debug)]
pub struct ContainerNamespaces {
    /// The init's pid (a child of the agent's, not reaped while the
    /// container runs).
    init: i32,
    mnt: OwnedFd,
    pid: OwnedFd,
    /// None on a kernel without cgroup namespaces.
    cgroup: Option<OwnedFd>,
}

impl ContainerNamespaces {
    /// Opens the namespaces of `pid`, which must be a child that has not
    /// been reaped (so the pid cannot have been reused).
    fn of_child(pid: i32) -> io::Result<Self> {
        let open =
            |kind: &str| std::fs::File::open(format!("/proc/{pid}/ns/{kind}")).map(OwnedFd::from);
        Ok(ContainerNamespaces {
            init: pid,
            mnt: open("mnt")?,
            pid: open("pid")?,
            cgroup: open("cgroup").ok(),
        })
    }
}

/// A started process: the parent's ends of its stdio and, for the
/// container's init, its namespaces (None if it ended before they could be
/// opened).
pub struct Started {
    pub stdio: ParentStdio,
    pub namespaces: Option<ContainerNamespaces>,
    /// The init's console (see [`Console`]), to drop once the init has
    /// exited: its relay then ends.
    pub console: Option<Console>,
}

/// The `/dev/console` of a container without a terminal: a pty whose
/// output a thread copies into the init's stdout, as `docker logs` shows
/// a runc container's console. The agent keeps the replica open while the
/// init lives, so the console never hangs up while the workload may still
/// open it.
pub struct Console {
    _replica: OwnedFd,
}

/// Opens the console pty (raw: no `\r` is added to `docker logs`) and
/// starts copying its output into `stdout` (a duplicate of the init's
/// stdout pipe). Returns the replica, to bind at `/dev/console`, and the
/// [`Console`] that keeps it open.
fn open_console(stdout: &OwnedFd) -> io::Result<(OwnedFd, Console)> {
    use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
    let (master, replica) = open_pty()?;
    let mut t = tcgetattr(&replica)?;
    cfmakeraw(&mut t);
    tcsetattr(&replica, SetArg::TCSANOW, &t)?;
    let out = stdout.try_clone()?;
    let holder = replica.try_clone()?;
    std::thread::Builder::new()
        .name("console".into())
        .spawn(move || {
            let mut master = std::fs::File::from(master);
            let mut out = std::fs::File::from(out);
            // Ends with EIO once the last replica is closed.
            let _ = copy_without_cr(&mut master, &mut out);
        })?;
    Ok((replica, Console { _replica: holder }))
}

fn stat_in_root(p: &Path) -> io::Result<FileInfo> {
    use std::os::unix::fs::PermissionsExt;
    let m = std::fs::metadata(p)?;
    Ok(FileInfo {
        is_dir: m.is_dir(),
        mode: m.permissions().mode(),
    })
}

/// A NULL-terminated array of pointers into `CString`s owned by the same
/// `ChildSetup`, for execve.
struct PtrArray(Vec<*const libc::c_char>);

impl PtrArray {
    fn of(strings: &[CString]) -> Self {
        PtrArray(
            strings
                .iter()
                .map(|a| a.as_ptr())
                .chain([std::ptr::null()])
                .collect(),
        )
    }
}

// SAFETY: the pointers refer to heap buffers of `CString`s that live in the
// same `ChildSetup` and are never mutated; moving the struct to another
// thread moves those owners along, and the buffers do not move.
unsafe impl Send for PtrArray {}
// SAFETY: as above; the data is only ever read.
unsafe impl Sync for PtrArray {}

/// Everything the child needs after fork, prepared before it (no
/// allocation happens between fork and exec).
struct ChildSetup {
    new_mount_ns: bool,
    /// Mount namespace to join (opened before the fork).
    join_mount_ns: Option<OwnedFd>,
    terminal: bool,
    uid: Uid,
    gid: Gid,
    groups: Vec<Gid>,
    umask: Option<Mode>,
    rlimits: Vec<Limit>,
    /// Inherited limits: applied best-effort.
    soft_rlimits: Vec<Limit>,
    caps: Option<crate::caps::Masks>,
    no_new_privileges: bool,
    /// The value for `self/oom_score_adj` (`--oom-score-adj`), written
    /// through `proc_fd`.
    oom_score_adj: Option<CString>,
    oom_score_adj_path: CString,
    proc_fd: Option<OwnedFd>,
    /// The workload's cgroup: the process joins it first (`cgroup.procs`
    /// under this descriptor).
    cgroup: Option<OwnedFd>,
    /// An exec's second choice: the init's cgroup of the moment, when the
    /// workload's cgroup no longer takes processes (dockerd in the VM
    /// moves itself into a child and enables controllers: EBUSY), as runc
    /// joins an exec to the init's cgroup.
    cgroup_fallback: Option<OwnedFd>,
    cgroup_procs: CString,
    /// The init: a cgroup namespace of its own (rooted at its cgroup), and
    /// `/sys/fs/cgroup` mounted anew in it.
    new_cgroup_ns: bool,
    /// An exec: the init's cgroup namespace.
    join_cgroup_ns: Option<OwnedFd>,
    cgroup2: CString,
    cgroup_dir: CString,
    cwd: CString,
    /// Written to when the working directory cannot be entered.
    chdir_failed: OwnedFd,
    /// What to execute, prepared before the fork: execve is called from the
    /// child directly so that the environment keeps its order (std's
    /// `Command` sorts it).
    path: CString,
    argv: Vec<CString>,
    argv_ptrs: PtrArray,
    envp: Vec<CString>,
    envp_ptrs: PtrArray,
    proc_src: CString,
    proc_dir: CString,
    proc_type: CString,
    root: CString,
    /// Mount points remounted read-only (`/sys`, `/sys/fs/cgroup`).
    remount_readonly: Vec<CString>,
    readonly_paths: Vec<CString>,
    masked_paths: Vec<CString>,
    dev_null: CString,
    tmpfs: CString,
    /// The init's console, bound at `/dev/console`: the terminal (as runc
    /// binds it there), or a pty whose output goes to stdout (see
    /// [`Console`]). What the init writes to the console (systemd's boot
    /// messages) goes to `docker logs`, not to the VM's serial port.
    console_src: Option<CString>,
    console_dst: CString,
    seccomp: Option<Seccomp>,
}

/// A seccomp filter in the kernel's layout, prepared before the fork.
struct Seccomp {
    program: Vec<libc::sock_filter>,
    flags: u32,
}

impl Seccomp {
    fn new(f: &SeccompFilter) -> Result<Self, StartError> {
        // The kernel refuses an empty program or one over BPF_MAXINSNS.
        if f.program.is_empty() || f.program.len() > 4096 {
            return Err(StartError {
                message: format!(
                    "the container's seccomp filter has {} instructions: not loadable",
                    f.program.len()
                ),
                exit_code: ExitCode::CannotExecute.code(),
            });
        }
        Ok(Seccomp {
            program: f
                .program
                .iter()
                .map(|i| libc::sock_filter {
                    code: i.code(),
                    jt: i.jt(),
                    jf: i.jf(),
                    k: i.k(),
                })
                .collect(),
            flags: f.flags,
        })
    }

    /// Installs the filter on the calling thread.
    ///
    /// # Safety
    /// Only system calls on data owned by `self`; safe between fork and
    /// exec.
    unsafe fn install(&self) -> io::Result<()> {
        let prog = libc::sock_fprog {
            len: self.program.len() as libc::c_ushort,
            filter: self.program.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: `prog` points to `len` initialised instructions that
        // outlive the call; the kernel copies them.
        unsafe {
            // As runc: prctl when there are no flags, seccomp(2) otherwise.
            // Raw: nix wraps neither PR_SET_SECCOMP nor seccomp(2).
            if self.flags == 0 {
                check(libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                    &prog as *const libc::sock_fprog,
                    0,
                    0,
                ))
            } else {
                let rc = libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER as libc::c_ulong,
                    self.flags as libc::c_ulong,
                    &prog as *const libc::sock_fprog,
                );
                check(if rc < 0 { -1 } else { 0 })
            }
        }
    }
}

/// A resource limit, as setrlimit takes it.
#[derive(Debug, Clone, Copy)]
struct Limit {
    resource: Resource,
    soft: u64,
    hard: u64,
}

/// An OCI rlimit as setrlimit takes it; unknown names are skipped.
fn native_rlimit(r: &runvm_protocol::Rlimit) -> Option<Limit> {
    Some(Limit {
        resource: runvm_protocol::rlimits::resource(&r.kind)?,
        soft: r.soft,
        hard: r.hard,
    })
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `mount(2)` of `source` on `target`, with no data. Paths are `&CStr`
/// prepared before the fork, so nix passes them on without allocating:
/// safe between fork and exec.
fn mount_at(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: MsFlags,
) -> nix::Result<()> {
    nix::mount::mount(source, target, fstype, flags, None::<&CStr>)
}

/// Writes `data` to the file `name` under the directory `dir`. Safe between
/// fork and exec: `name` is a `CStr` prepared before, and closing the file
/// is a plain `close`.
fn write_at(dir: &OwnedFd, name: &CStr, data: &[u8]) -> nix::Result<()> {
    let fd = nix::fcntl::openat(
        Some(dir.as_raw_fd()),
        name,
        nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    // SAFETY: `openat` just returned this descriptor; nothing else owns it.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    nix::unistd::write(&fd, data)?;
    Ok(())
}

/// The mount flags a bind remount must keep (runc's `readonlyPath`).
fn locked_flags(path: &CStr) -> nix::Result<MsFlags> {
    let st = nix::sys::statfs::statfs(path)?;
    let f = st.flags();
    let mut keep = MsFlags::empty();
    keep.set(MsFlags::MS_NOSUID, f.contains(FsFlags::ST_NOSUID));
    keep.set(MsFlags::MS_NODEV, f.contains(FsFlags::ST_NODEV));
    keep.set(MsFlags::MS_NOEXEC, f.contains(FsFlags::ST_NOEXEC));
    Ok(keep)
}

/// Makes a mount point read-only in this mount namespace. Safe between
/// fork and exec (see [`mount_at`]).
fn remount_readonly(path: &CStr) -> nix::Result<()> {
    let flags = locked_flags(path)?;
    mount_at(
        Some(path),
        path,
        None,
        flags | MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
    )
}

impl ChildSetup {
    /// runc's `readonlyPath`: bind the path onto itself, then remount the
    /// bind read-only. A path that does not exist is skipped. Safe between
    /// fork and exec.
    fn readonly_path(&self, path: &CStr) -> nix::Result<()> {
        match mount_at(Some(path), path, None, MsFlags::MS_BIND | MsFlags::MS_REC) {
            Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(e),
            Ok(()) => remount_readonly(path),
        }
    }

    /// runc's `maskPath`: `/dev/null` over a file, an empty read-only tmpfs
    /// over a directory; a path that does not exist is skipped. Safe
    /// between fork and exec.
    fn mask_path(&self, path: &CStr) -> nix::Result<()> {
        match mount_at(Some(&self.dev_null), path, None, MsFlags::MS_BIND) {
            Err(Errno::ENOENT) => Ok(()),
            Err(Errno::ENOTDIR) => mount_at(
                Some(&self.tmpfs),
                path,
                Some(&self.tmpfs),
                MsFlags::MS_RDONLY,
            ),
            r => r,
        }
    }

    /// Runs in the child between fork and exec.
    ///
    /// # Safety
    /// Must only be called in a freshly forked child; it calls only
    /// async-signal-safe functions on data prepared before the fork.
    unsafe fn apply(&self) -> io::Result<()> {
        // Every call below is a nix wrapper or a system call on data owned
        // by `self` and prepared before the fork (paths as `&CStr`, ids,
        // flag sets, fixed-size structures): nothing allocates.
        // As root with every capability: lowering it needs
        // CAP_SYS_RESOURCE.
        if let (Some(adj), Some(proc_fd)) = (&self.oom_score_adj, &self.proc_fd) {
            write_at(proc_fd, &self.oom_score_adj_path, adj.as_bytes())?;
        }
        // The cgroup first, through the descriptor held since it was made.
        if let Some(dir) = &self.cgroup {
            match (
                write_at(dir, &self.cgroup_procs, b"0"),
                &self.cgroup_fallback,
            ) {
                (Err(Errno::EBUSY), Some(init)) => write_at(init, &self.cgroup_procs, b"0")?,
                (r, _) => r?,
            }
        }
        if self.new_cgroup_ns {
            unshare(CloneFlags::CLONE_NEWCGROUP)?;
        }
        if let Some(fd) = &self.join_cgroup_ns {
            setns(fd, CloneFlags::CLONE_NEWCGROUP)?;
        }
        if let Some(fd) = &self.join_mount_ns {
            setns(fd, CloneFlags::CLONE_NEWNS)?;
        }
        if self.new_mount_ns {
            unshare(CloneFlags::CLONE_NEWNS)?;
            mount_at(
                None,
                &self.root,
                None,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            )?;
            // A /proc that shows the new PID namespace, instead of the
            // agent's (over it, unmounting it would show the VM's
            // processes).
            match nix::mount::umount2(self.proc_dir.as_c_str(), nix::mount::MntFlags::MNT_DETACH) {
                Ok(()) | Err(Errno::EINVAL) => {}
                Err(e) => return Err(e.into()),
            }
            mount_at(
                Some(&self.proc_src),
                &self.proc_dir,
                Some(&self.proc_type),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            )?;
            if self.new_cgroup_ns {
                // A cgroup2 mount shows the hierarchy from the mounting
                // process's cgroup namespace root: the workload's cgroup.
                nix::mount::umount2(self.cgroup_dir.as_c_str(), nix::mount::MntFlags::MNT_DETACH)?;
                mount_at(
                    Some(&self.cgroup2),
                    &self.cgroup_dir,
                    Some(&self.cgroup2),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                )?;
            }
            if let Some(src) = &self.console_src {
                // Best-effort: a container without /dev/console keeps none.
                let _ = mount_at(Some(src), &self.console_dst, None, MsFlags::MS_BIND);
            }
            // The container's read-only kernel filesystems, then its
            // read-only and masked paths, in runc's order. They live in
            // this mount namespace, which every exec joins.
            for p in &self.remount_readonly {
                match remount_readonly(p) {
                    // Not a mount point (no cgroup2 in this kernel):
                    // nothing of its own to protect.
                    Err(Errno::EINVAL) => {}
                    r => r?,
                }
            }
            for p in &self.readonly_paths {
                self.readonly_path(p)?;
            }
            for p in &self.masked_paths {
                self.mask_path(p)?;
            }
        }
        setsid()?;
        if self.terminal {
            // TIOCSCTTY takes an int argument (0: do not steal).
            nix::ioctl_write_int_bad!(tiocsctty, libc::TIOCSCTTY);
            // SAFETY: fd 0 is the pty's replica; the argument is an int.
            unsafe { tiocsctty(0, 0) }?;
        }
        // Limits first, while still privileged (raising a hard limit
        // needs CAP_SYS_RESOURCE).
        for l in &self.soft_rlimits {
            let _ = setrlimit(l.resource, l.soft, l.hard);
        }
        for l in &self.rlimits {
            setrlimit(l.resource, l.soft, l.hard)?;
        }
        if self.no_new_privileges {
            nix::sys::prctl::set_no_new_privs()?;
        }
        // runc's order: without no-new-privileges installing a filter
        // needs CAP_SYS_ADMIN, so it goes in before the capabilities
        // are dropped; with it, as the last step before execve.
        if let (Some(f), false) = (&self.seccomp, self.no_new_privileges) {
            // SAFETY: we run between fork and exec (the caller's promise).
            unsafe { f.install() }?;
        }
        if let Some(m) = &self.caps {
            nix::sys::prctl::set_keepcaps(true)?;
            // SAFETY: as above.
            unsafe { crate::caps::drop_bounding(m) }?;
        }
        setgroups(&self.groups)?;
        setgid(self.gid)?;
        setuid(self.uid)?;
        if let Some(m) = &self.caps {
            // SAFETY: as above.
            unsafe { crate::caps::apply_sets(m) }?;
        }
        if let Some(mask) = self.umask {
            umask(mask);
        }
        if let Err(e) = chdir(self.cwd.as_c_str()) {
            // Tell the parent which step failed (spawn only gives it the
            // errno); the pipe closes on exec otherwise.
            let _ = nix::unistd::write(&self.chdir_failed, b"c");
            return Err(e.into());
        }
        if let (Some(f), true) = (&self.seccomp, self.no_new_privileges) {
            // SAFETY: as above.
            unsafe { f.install() }?;
        }
        // Signals the agent ignores or blocks must not stay so.
        sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
        // nix's execve builds its argument arrays on the heap, which a
        // forked child of this threaded process must not do: the arrays
        // were built before the fork, and execve is called directly.
        // SAFETY: NUL-terminated strings and NULL-terminated pointer arrays
        // owned by `self`, valid for the call.
        unsafe {
            libc::execve(
                self.path.as_ptr(),
                self.argv_ptrs.0.as_ptr(),
                self.envp_ptrs.0.as_ptr(),
            );
        }
        // Only reached when execve failed.
        Err(io::Error::last_os_error())
    }
}

/// Whether `spec`'s program (looked up as for starting it, in the
/// container's root) is systemd: `/sbin/init`, `/lib/systemd/systemd`, or
/// any link to it: the real file is `systemd` in a `lib/systemd`
/// directory (`/lib/systemd`, `/usr/lib/systemd`), where distributions
/// install it. (Only the container itself is affected by the answer.)
pub fn runs_systemd(spec: &ProcessSpec) -> bool {
    let cwd = if spec.cwd.is_empty() { "/" } else { &spec.cwd };
    let Some(program) = spec.args.first() else {
        return false;
    };
    let Ok(found) = look_path(
        program,
        path_of_env(&spec.env),
        Path::new(cwd),
        stat_in_root,
    ) else {
        return false;
    };
    let found = Path::new(cwd).join(found);
    std::fs::canonicalize(found).is_ok_and(|p| p.file_name().is_some_and(|n| n == "systemd"))
}

/// The home directory of `uid` in the container's /etc/passwd, or "/".
fn home_of(uid: u32) -> String {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 6 && f[2].parse::<u32>().ok() == Some(uid)).then(|| f[5].to_owned())
        })
        .next()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "/".into())
}

fn cstring(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in string"))
}

/// Starts `spec` with the given stdio. Returns the pid (as seen by the
/// agent), the parent's ends of stdio and, for a new container, its
/// namespaces. Call it where the child cannot be reaped meanwhile (see
/// `Reaper::spawn_and_expect`).
///
/// The new process becomes PID 1 of a new PID namespace when asked, so the
/// workload sees itself as PID 1 and the kernel treats it as a namespace init
/// (signals it has no handler for are ignored; its death ends the namespace),
/// exactly as under runc.
pub fn start(
    spec: &ProcessSpec,
    ns: Namespaces,
    confinement: &Confinement,
) -> Result<(i32, Started), StartError> {
    let cwd = if spec.cwd.is_empty() {
        "/"
    } else {
        spec.cwd.as_str()
    };
    // runc makes the init's working directory; an exec's must exist.
    if matches!(ns, Namespaces::NewContainer) {
        crate::mounts::ensure_dir(Path::new(cwd));
    }
    let program = spec.args.first().ok_or(StartError {
        message: "no command given".into(),
        exit_code: ExitCode::NotFound.code(),
    })?;
    let resolved: PathBuf = look_path(
        program,
        path_of_env(&spec.env),
        Path::new(cwd),
        stat_in_root,
    )?;
    let resolved = if resolved.is_absolute() {
        resolved
    } else {
        Path::new(cwd).join(resolved)
    };

    let io_err = |what: &str, e: io::Error| StartError {
        message: format!("{what}: {e}"),
        exit_code: ExitCode::CannotExecute.code(),
    };
    let argv: Vec<CString> = spec
        .args
        .iter()
        .map(|a| cstring(a))
        .collect::<io::Result<_>>()
        .map_err(|e| io_err("an argument contains a NUL byte", e))?;
    let mut env = spec.env.clone();
    if !env.iter().any(|kv| kv.starts_with("HOME=")) {
        // As runc: HOME from the user's passwd entry, else "/".
        env.push(format!("HOME={}", home_of(spec.uid)));
    }
    let envp: Vec<CString> = env
        .iter()
        .map(|a| cstring(a))
        .collect::<io::Result<_>>()
        .map_err(|e| io_err("an environment variable contains a NUL byte", e))?;
    let paths = |list: &[String]| -> Result<Vec<CString>, StartError> {
        list.iter()
            .map(|p| cstring(p).map_err(|e| io_err("a masked or read-only path", e)))
            .collect()
    };
    let new_container = matches!(ns, Namespaces::NewContainer);
    // Mount rules only for the init: an exec joins its mount namespace.
    let (masked_paths, readonly_paths, remount_readonly) = if new_container {
        let mut ro = Vec::new();
        if confinement.sysfs_readonly {
            ro.push(c"/sys".to_owned());
        }
        if confinement.cgroup_readonly {
            ro.push(c"/sys/fs/cgroup".to_owned());
        }
        (
            paths(&confinement.masked_paths)?,
            paths(&confinement.readonly_paths)?,
            ro,
        )
    } else {
        (Vec::new(), Vec::new(), Vec::new())
    };
    let seccomp = confinement.seccomp.as_ref().map(Seccomp::new).transpose()?;
    let dup = |fd: &OwnedFd| {
        fd.try_clone()
            .map_err(|e| io_err("cannot duplicate a namespace descriptor", e))
    };
    let (join_mount_ns, join_pid_ns, join_cgroup_ns) = match ns {
        Namespaces::Join(c) => (
            Some(dup(&c.mnt)?),
            Some(dup(&c.pid)?),
            c.cgroup.as_ref().map(dup).transpose()?,
        ),
        Namespaces::NewContainer => (None, None, None),
    };
    let cgroup = confinement.cgroup.as_deref().map(dup).transpose()?;
    let cgroup_fallback = match (&ns, &cgroup) {
        (Namespaces::Join(c), Some(_)) => crate::cgroup::of_process(c.init),
        _ => None,
    };
    let (chdir_r, chdir_w) = pipe()?;
    let setup = ChildSetup {
        new_mount_ns: new_container,
        join_mount_ns,
        terminal: spec.terminal,
        uid: Uid::from_raw(spec.uid),
        gid: Gid::from_raw(spec.gid),
        groups: unique_groups(&spec.additional_gids),
        umask: spec
            .umask
            .map(|m| Mode::from_bits_truncate(m as libc::mode_t)),
        rlimits: spec.rlimits.iter().filter_map(native_rlimit).collect(),
        soft_rlimits: spec
            .inherited_rlimits
            .iter()
            .filter(|r| !spec.rlimits.iter().any(|x| x.kind == r.kind))
            .filter_map(native_rlimit)
            .collect(),
        caps: spec.capabilities.as_ref().map(crate::caps::Masks::new),
        no_new_privileges: spec.no_new_privileges,
        oom_score_adj: spec
            .oom_score_adj
            .map(|a| cstring(&a.to_string()))
            .transpose()
            .map_err(|e| io_err("bad oom_score_adj", e))?,
        oom_score_adj_path: c"self/oom_score_adj".to_owned(),
        proc_fd: confinement.proc_dir.as_deref().map(dup).transpose()?,
        new_cgroup_ns: new_container && cgroup.is_some(),
        cgroup,
        cgroup_fallback,
        cgroup_procs: c"cgroup.procs".to_owned(),
        join_cgroup_ns,
        cgroup2: c"cgroup2".to_owned(),
        cgroup_dir: c"/sys/fs/cgroup".to_owned(),
        cwd: cstring(cwd).map_err(|e| io_err("bad working directory", e))?,
        chdir_failed: chdir_w,
        path: cstring(&resolved.to_string_lossy()).map_err(|e| io_err("bad program path", e))?,
        argv,
        argv_ptrs: PtrArray(Vec::new()),
        envp,
        envp_ptrs: PtrArray(Vec::new()),
        proc_src: c"proc".to_owned(),
        proc_dir: c"/proc".to_owned(),
        proc_type: c"proc".to_owned(),
        root: c"/".to_owned(),
        remount_readonly,
        readonly_paths,
        masked_paths,
        dev_null: c"/dev/null".to_owned(),
        tmpfs: c"tmpfs".to_owned(),
        // Set below, once the console's descriptor is known.
        console_src: None,
        console_dst: c"/dev/console".to_owned(),
        seccomp,
    };

    let mut setup = setup;
    setup.argv_ptrs = PtrArray::of(&setup.argv);
    setup.envp_ptrs = PtrArray::of(&setup.envp);
    // `Command` forks and wires stdio; the child's own execve (in
    // `ChildSetup::apply`) runs the program.
    let mut cmd = Command::new(&resolved);
    cmd.arg0(program).env_clear();
    let mut console = None;
    let parent = if spec.terminal {
        let (master, slave) = open_pty().map_err(|e| io_err("cannot open a pseudo-terminal", e))?;
        if let Some((rows, cols)) = spec.console_size {
            resize(master.as_raw_fd(), rows, cols);
        }
        cmd.stdin(Stdio::from(
            slave.try_clone().map_err(|e| io_err("dup", e))?,
        ));
        cmd.stdout(Stdio::from(
            slave.try_clone().map_err(|e| io_err("dup", e))?,
        ));
        if new_container {
            setup.console_src = Some(pts_path(&slave).map_err(|e| io_err("console", e))?);
        }
        cmd.stderr(Stdio::from(slave));
        ParentStdio::Pty { master }
    } else {
        let (in_r, in_w) = pipe()?;
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        if new_container {
            // Best-effort (`--tmpfs /dev/pts`, say): without it the
            // container has the VM's own console, as before.
            match open_console(&out_w).and_then(|(r, h)| Ok((pts_path(&r)?, h))) {
                Ok((path, holder)) => {
                    setup.console_src = Some(path);
                    console = Some(holder);
                }
                Err(e) => tracing::warn!("no console for the container: {e}"),
            }
        }
        cmd.stdin(Stdio::from(in_r));
        cmd.stdout(Stdio::from(out_w));
        cmd.stderr(Stdio::from(err_w));
        ParentStdio::Pipes {
            stdin: in_w,
            stdout: out_r,
            stderr: err_r,
        }
    };
    // SAFETY: `apply` only makes async-signal-safe system calls on data
    // prepared before the fork.
    unsafe {
        cmd.pre_exec(move || setup.apply());
    }

    let new_pidns = matches!(ns, Namespaces::NewContainer);
    // unshare(CLONE_NEWPID) applies to the children of the calling thread,
    // so the fork must happen on a thread of its own that did the unshare.
    let child = std::thread::spawn(move || -> io::Result<std::process::Child> {
        if new_pidns {
            unshare(CloneFlags::CLONE_NEWPID)?;
        }
        if let Some(fd) = &join_pid_ns {
            nix::sched::setns(fd, CloneFlags::CLONE_NEWPID)?;
        }
        cmd.spawn()
    })
    .join()
    .map_err(|_| StartError {
        message: "the thread starting the process panicked".into(),
        exit_code: ExitCode::CannotExecute.code(),
    })?;
    // `cmd`, and with it the pipe's other end, is gone: this read ends.
    let mut step = [0u8; 1];
    let chdir_failed = loop {
        match nix::unistd::read(chdir_r.as_raw_fd(), &mut step) {
            Err(Errno::EINTR) => continue,
            r => break matches!(r, Ok(1)),
        }
    };
    if chdir_failed {
        let e = child
            .err()
            .unwrap_or_else(|| io::Error::from_raw_os_error(libc::EIO));
        return Err(StartError {
            message: format!(
                "chdir to cwd ({cwd:?}) set in config.json failed: {}",
                runvm_protocol::runc_compat::go_errno_text(&e)
            ),
            exit_code: ExitCode::CannotExecute.code(),
        });
    }
    let child = child.map_err(|e| StartError {
        exit_code: match e.raw_os_error() {
            Some(libc::ENOENT) => ExitCode::NotFound.code(),
            _ => ExitCode::CannotExecute.code(),
        },
        message: format!(
            "exec: \"{program}\": {}",
            runvm_protocol::runc_compat::go_errno_text(&e)
        ),
    })?;
    // `Command` keeps the child's ends of stdio; they are dropped with it,
    // so only the parent's ends stay open here.
    let pid = child.id() as i32;
    drop(child);
    // The child has exec'd (spawn waits for that), so its namespaces are
    // made; it is not reaped yet, so the pid is still its own.
    let namespaces = if new_pidns {
        ContainerNamespaces::of_child(pid).ok()
    } else {
        None
    };
    Ok((
        pid,
        Started {
            stdio: parent,
            namespaces,
            console,
        },
    ))
}

/// The supplementary groups without repeats, in their first order: the
/// engine lists a group twice when the user is a member and `--group-add`
/// names it too, and runc's container has it once.
fn unique_groups(gids: &[u32]) -> Vec<Gid> {
    let mut seen = std::collections::HashSet::new();
    gids.iter()
        .filter(|g| seen.insert(**g))
        .map(|&g| Gid::from_raw(g))
        .collect()
}

fn pipe() -> Result<(OwnedFd, OwnedFd), StartError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| StartError {
        message: format!("cannot create a pipe: {e}"),
        exit_code: ExitCode::CannotExecute.code(),
    })
}

/// Opens a pseudo-terminal: its master and its replica, both close-on-exec
/// from the start. (`openpty(3)` leaves both inheritable: every process the
/// agent started afterwards, any `docker exec -u nobody` included, held the
/// master of the container's terminal and could type into its root shell.)
/// Race-free: the agent forks on other threads while this runs.
fn open_pty() -> io::Result<(OwnedFd, OwnedFd)> {
    use nix::fcntl::OFlag;
    use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
    use std::os::unix::fs::OpenOptionsExt;
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let name = ptsname_r(&master)?;
    // std opens with O_CLOEXEC.
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(&name)?;
    // nix's PtyMaster converts to no OwnedFd; the duplicate is
    // close-on-exec too (F_DUPFD_CLOEXEC), and the original is closed here.
    let master = master.as_fd().try_clone_to_owned()?;
    Ok((master, OwnedFd::from(slave)))
}

/// Copies `from` to `to`, dropping each `\r` that comes just before a
/// `\n`: whoever opens the console may set it back to a terminal's
/// output mode (systemd does), whose `\r\n` does not belong in
/// `docker logs`.
fn copy_without_cr(from: &mut impl io::Read, to: &mut impl io::Write) -> io::Result<()> {
    let mut buf = [0u8; 8192];
    let mut held_cr = false;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                if held_cr {
                    to.write_all(b"\r")?;
                }
                return Err(e);
            }
        };
        let mut out = Vec::with_capacity(n + 1);
        for &b in &buf[..n] {
            if held_cr && b != b'\n' {
                out.push(b'\r');
            }
            held_cr = b == b'\r';
            if !held_cr {
                out.push(b);
            }
        }
        to.write_all(&out)?;
    }
    if held_cr {
        to.write_all(b"\r")?;
    }
    Ok(())
}

/// The `/dev/pts/<n>` path of a pty replica. The child binds the path,
/// which names the same node in its copy of the mount namespace (a bind
/// from a descriptor would name a mount of the agent's namespace, which
/// mount(2) refuses).
fn pts_path(replica: &OwnedFd) -> io::Result<CString> {
    let path = std::fs::read_link(format!("/proc/self/fd/{}", replica.as_raw_fd()))?;
    cstring(&path.to_string_lossy())
}

/// Sets the window size of a pty master.
pub fn resize(master: RawFd, rows: u16, cols: u16) {
    nix::ioctl_write_ptr_bad!(tiocswinsz, libc::TIOCSWINSZ, nix::pty::Winsize);
    let ws = nix::pty::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a `winsize` from a valid pointer.
    let _ = unsafe { tiocswinsz(master, &ws) };
}

#[cfg(test)]
mod tests {
    #[test]
    fn groups_listed_twice_are_given_once() {
        let got: Vec<u32> = super::unique_groups(&[1000, 100, 100, 27, 1000])
            .iter()
            .map(|g| g.as_raw())
            .collect();
        assert_eq!(got, [1000, 100, 27]);
    }

    use super::*;
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};

    fn close_on_exec(fd: &OwnedFd) -> bool {
        let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFD).unwrap();
        FdFlag::from_bits_retain(flags).contains(FdFlag::FD_CLOEXEC)
    }

    #[test]
    fn the_console_copy_drops_cr_before_lf_only() {
        struct Chunks(Vec<&'static [u8]>);
        impl io::Read for Chunks {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0.is_empty() {
                    return Ok(0);
                }
                let c = self.0.remove(0);
                buf[..c.len()].copy_from_slice(c);
                Ok(c.len())
            }
        }
        let mut out = Vec::new();
        copy_without_cr(
            &mut Chunks(vec![b"a\r\nb\r", b"\nc\rd\r\r\n", b"e\r"]),
            &mut out,
        )
        .unwrap();
        assert_eq!(out, b"a\nb\nc\rd\r\ne\r");
    }

    #[test]
    fn a_pty_is_close_on_exec_on_both_ends_and_connected() {
        let (master, slave) = open_pty().unwrap();
        assert!(close_on_exec(&master), "the master is inheritable");
        assert!(close_on_exec(&slave), "the replica is inheritable");
        resize(master.as_raw_fd(), 30, 100);
        nix::ioctl_read_bad!(tiocgwinsz, libc::TIOCGWINSZ, nix::pty::Winsize);
        let mut ws = nix::pty::Winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes a `winsize` to a valid pointer.
        unsafe { tiocgwinsz(slave.as_raw_fd(), &mut ws) }.unwrap();
        assert_eq!((ws.ws_row, ws.ws_col), (30, 100));
        // What the master writes, the replica reads (canonical mode: a line).
        nix::unistd::write(&master, b"hi\n").unwrap();
        let mut buf = [0u8; 16];
        let n = nix::unistd::read(slave.as_raw_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hi\n");
    }

    #[test]
    fn a_process_started_while_a_pty_is_open_does_not_inherit_it() {
        let (master, slave) = open_pty().unwrap();
        let target = |fd: &OwnedFd| {
            std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
                .unwrap()
                .to_string_lossy()
                .into_owned()
        };
        let (master_path, slave_path) = (target(&master), target(&slave));
        assert!(master_path.ends_with("ptmx"), "{master_path}");
        let out = Command::new("/bin/sh")
            .args(["-c", "ls -l /proc/self/fd"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&out.stdout);
        for path in [&master_path, &slave_path] {
            assert!(
                !listing.contains(&format!("-> {path}")),
                "{path} inherited:\n{listing}"
            );
        }
    }
}
