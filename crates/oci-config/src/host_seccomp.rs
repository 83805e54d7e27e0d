//! runvm's own seccomp profile for the host side.
//!
//! It replaces the container's `linux.seccomp` in config.json (the
//! container's profile runs in the guest), so runc installs it on the
//! supervisor, which QEMU and virtiofsd inherit, and on every exec client;
//! runc's init runs under it between installing it and exec'ing the
//! supervisor. It never depends on what the container asked for: a
//! `--privileged` or `seccomp=unconfined` container gets it too.
//!
//! An allowlist: every system call not named here fails with EPERM. The
//! list was measured: strace of runc's init from the moment it installs the
//! filter, the supervisor, virtiofsd and QEMU under TCG, across `docker run`
//! with and without a terminal and stdin, `docker exec` (plain, `-t`, `-i`,
//! failing), signals, `docker stop`, the bridge network, volumes (file
//! creation, links, renames, ownership, modes, times, fifos, sync), tmpfs,
//! memory and CPU limits. To that come virtiofsd's file operations that the
//! scenarios did not reach (its own seccomp allowlist bounds them), and what
//! the planned privilege drop needs: the supervisor will drop capabilities
//! and start QEMU as an unprivileged user with QEMU's own `-sandbox`
//! (setuid, setgid, setgroups, capset, prctl, and seccomp for QEMU's own
//! filter stay allowed).
//!
//! Left out on purpose: io_uring (QEMU probes it and falls back to its poll
//! loop), namespaces (`unshare`, `setns`, `clone` with namespace flags),
//! mounts, tracing, modules, keyrings, BPF, perf, file handles (virtiofsd
//! runs with `--inode-file-handles=never`), and legacy or 32-bit-only calls.

use serde_json::{json, Value};

/// A group of system calls allowed for one reason.
#[derive(Debug, Clone, Copy)]
pub struct Group {
    pub why: &'static str,
    pub names: &'static [&'static str],
}

/// System calls allowed without conditions.
pub const ALLOWED: &[Group] = &[
    Group {
        why: "memory (every program; QEMU maps guest RAM into a memfd shared with virtiofsd and sets its NUMA policy)",
        names: &[
            "brk",
            "get_mempolicy",
            "madvise",
            "membarrier",
            "memfd_create",
            "mmap",
            "mprotect",
            "mremap",
            "munmap",
            "set_mempolicy",
        ],
    },
    Group {
        why: "threads and scheduling (tokio, QEMU's vCPU and I/O threads, virtiofsd's pool; arch_prctl sets up thread-local storage at every program start)",
        names: &[
            "arch_prctl",
            "futex",
            "gettid",
            "rseq",
            "sched_getaffinity",
            "sched_yield",
            "set_robust_list",
            "set_tid_address",
        ],
    },
    Group {
        why: "processes: starting QEMU and virtiofsd, reaping them, signalling them, exiting (tgkill: abort() and glibc's set*id across threads)",
        names: &[
            "execve",
            "exit",
            "exit_group",
            "kill",
            "pidfd_open",
            "tgkill",
            "wait4",
        ],
    },
    Group {
        why: "signal handling (the relay of the container's signals, child exits; rt_sigtimedwait: QEMU's vCPU threads under KVM)",
        names: &[
            "rt_sigaction",
            "rt_sigprocmask",
            "rt_sigreturn",
            "rt_sigtimedwait",
            "sigaltstack",
            "signalfd4",
        ],
    },
    Group {
        why: "files and descriptors: runvm's files, sockets and logs, and every file operation virtiofsd performs on the shared root for the guest (virtiofsd's own seccomp allowlist, less what its handle and namespace sandboxes need, which runvm turns off)",
        names: &[
            "access",
            "chmod",
            "chown",
            "fchown",
            "chdir",
            "close",
            "copy_file_range",
            "dup",
            "dup2",
            "faccessat2",
            "fallocate",
            "fchdir",
            "fchmod",
            "fchmodat",
            "fchownat",
            "fcntl",
            "fdatasync",
            "fgetxattr",
            "flistxattr",
            "flock",
            "fremovexattr",
            "fsetxattr",
            "fstat",
            "fstatfs",
            "fsync",
            "ftruncate",
            "getcwd",
            "getdents64",
            "getxattr",
            "ioctl",
            "linkat",
            "listxattr",
            "lseek",
            "mkdir",
            "mkdirat",
            "mknodat",
            "newfstatat",
            "open",
            "openat",
            "openat2",
            "pipe",
            "pipe2",
            "pread64",
            "preadv",
            "preadv2",
            "pwrite64",
            "pwritev",
            "pwritev2",
            "read",
            "readlink",
            "readlinkat",
            "readv",
            "removexattr",
            "renameat",
            "renameat2",
            "setxattr",
            "statfs",
            "statx",
            "symlinkat",
            "syncfs",
            "umask",
            "unlink",
            "unlinkat",
            "utimensat",
            "write",
            "writev",
        ],
    },
    Group {
        why: "waiting for events (tokio's epoll, QEMU's main loop, virtiofsd's vhost-user queues)",
        names: &[
            "clock_nanosleep",
            "epoll_create1",
            "epoll_ctl",
            "epoll_pwait",
            "epoll_wait",
            "eventfd2",
            "poll",
            "ppoll",
        ],
    },
    Group {
        why: "sockets: the exec and agent sockets, vhost-user, netlink for moving the container's network to taps",
        names: &[
            "accept4",
            "bind",
            "connect",
            "getpeername",
            "getsockname",
            "getsockopt",
            "listen",
            "recvfrom",
            "recvmsg",
            "sendmsg",
            "sendto",
            "setsockopt",
            "shutdown",
            "socket",
            "socketpair",
        ],
    },
    Group {
        why: "time, identity and limits",
        names: &[
            "clock_gettime",
            "getegid",
            "geteuid",
            "getgid",
            "getgroups",
            "getpid",
            "getppid",
            "getrandom",
            "getresgid",
            "getresuid",
            "gettimeofday",
            "getuid",
            "prlimit64",
            "sysinfo",
        ],
    },
    Group {
        why: "privileges: runc's init sets the supervisor's credentials; the supervisor will drop capabilities and run QEMU as an unprivileged user, and QEMU's -sandbox (like virtiofsd) installs a filter of its own",
        names: &[
            "capget",
            "capset",
            "prctl",
            "seccomp",
            "setgid",
            "setgroups",
            "setresgid",
            "setresuid",
            "setuid",
        ],
    },
];

/// A system call allowed only when its arguments match.
#[derive(Debug, Clone, Copy)]
pub struct Conditional {
    pub why: &'static str,
    pub name: &'static str,
    /// (argument index, mask, value): allowed when `arg & mask == value`.
    pub masked_eq: (u32, u64, u64),
}

/// `CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC |
/// CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET`.
pub const CLONE_NAMESPACE_FLAGS: u64 = 0x7e02_0000;

pub const CONDITIONAL: &[Conditional] = &[Conditional {
    why: "threads and child processes, but no new namespaces: nothing on the host side makes one",
    name: "clone",
    masked_eq: (0, CLONE_NAMESPACE_FLAGS, 0),
}];

/// System calls answered with ENOSYS rather than EPERM, so that the C
/// library falls back to an older call that the list allows (clone3's
/// flags live in memory, where a filter cannot check them for namespaces).
pub const ENOSYS: &[&str] = &["clone3"];

const ENOSYS_ERRNO: u32 = 38;
const EPERM: u32 = 1;

/// The host's architecture as a libseccomp name: the filter allows native
/// system calls only (any other ABI, such as 32-bit `int 0x80` on x86_64,
/// kills the caller).
fn native_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "SCMP_ARCH_X86_64",
        "aarch64" => "SCMP_ARCH_AARCH64",
        "x86" => "SCMP_ARCH_X86",
        "arm" => "SCMP_ARCH_ARM",
        "powerpc64" if cfg!(target_endian = "little") => "SCMP_ARCH_PPC64LE",
        "powerpc64" => "SCMP_ARCH_PPC64",
        "s390x" => "SCMP_ARCH_S390X",
        "riscv64" => "SCMP_ARCH_RISCV64",
        _ => "SCMP_ARCH_NATIVE",
    }
}

/// Every unconditionally allowed name, in list order.
pub fn allowed_names() -> Vec<&'static str> {
    ALLOWED
        .iter()
        .flat_map(|g| g.names.iter().copied())
        .collect()
}

/// The profile as the `linux.seccomp` object of an OCI config.
pub fn profile() -> Value {
    let mut syscalls = vec![json!({
        "names": allowed_names(),
        "action": "SCMP_ACT_ALLOW",
    })];
    for c in CONDITIONAL {
        let (index, mask, value) = c.masked_eq;
        syscalls.push(json!({
            "names": [c.name],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": index, "value": mask, "valueTwo": value, "op": "SCMP_CMP_MASKED_EQ"}],
        }));
    }
    syscalls.push(json!({
        "names": ENOSYS,
        "action": "SCMP_ACT_ERRNO",
        "errnoRet": ENOSYS_ERRNO,
    }));
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "architectures": [native_arch()],
        "syscalls": syscalls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn the_profile_is_an_allowlist_with_eperm_by_default() {
        let p = profile();
        assert_eq!(p["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(p["defaultErrnoRet"], 1);
        assert_eq!(p["architectures"].as_array().unwrap().len(), 1);
        for rule in p["syscalls"].as_array().unwrap() {
            let action = rule["action"].as_str().unwrap();
            assert!(
                action == "SCMP_ACT_ALLOW"
                    || (action == "SCMP_ACT_ERRNO" && rule["errnoRet"] == ENOSYS_ERRNO),
                "{rule}"
            );
        }
    }

    #[test]
    fn names_are_unique_and_known_to_libseccomp() {
        let mut seen = HashSet::new();
        let all = allowed_names()
            .into_iter()
            .chain(CONDITIONAL.iter().map(|c| c.name))
            .chain(ENOSYS.iter().copied());
        for n in all {
            assert!(seen.insert(n), "{n} is listed twice");
            assert!(
                libseccomp::ScmpSyscall::from_name(n).is_ok(),
                "{n} is not a system call libseccomp knows"
            );
        }
    }

    #[test]
    fn what_must_stay_denied_is_not_listed() {
        // Namespaces, mounts, module loading, tracing and the like: the
        // host side never needs them, and they are what an escape uses.
        let allowed: HashSet<&str> = allowed_names().into_iter().collect();
        for n in [
            "unshare",
            "setns",
            "mount",
            "umount2",
            "pivot_root",
            "chroot",
            "ptrace",
            "process_vm_readv",
            "process_vm_writev",
            "init_module",
            "finit_module",
            "delete_module",
            "kexec_load",
            "kexec_file_load",
            "bpf",
            "perf_event_open",
            "keyctl",
            "add_key",
            "request_key",
            "open_by_handle_at",
            "name_to_handle_at",
            "userfaultfd",
            "reboot",
            "swapon",
            "settimeofday",
            "clock_settime",
            "acct",
            "quotactl",
            "iopl",
            "ioperm",
            "personality",
            "mount_setattr",
            "move_mount",
            "fsopen",
            "fsmount",
            "open_tree",
        ] {
            assert!(
                !allowed.contains(n),
                "{n} must not be allowed on the host side"
            );
        }
    }

    #[test]
    fn the_future_privilege_drop_stays_possible() {
        let allowed: HashSet<&str> = allowed_names().into_iter().collect();
        for n in [
            "setuid",
            "setgid",
            "setgroups",
            "capset",
            "prctl",
            "seccomp",
        ] {
            assert!(allowed.contains(n), "{n}");
        }
    }

    #[test]
    fn the_profile_compiles_and_denies_what_it_does_not_list() {
        use crate::seccomp::compile;
        let f = compile(&profile()).unwrap().unwrap();
        assert!(!f.program.is_empty());
    }
}
