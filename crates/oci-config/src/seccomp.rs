//! Compiling an OCI `linux.seccomp` profile into the BPF program that the
//! guest agent installs on the workload and on every exec.
//!
//! The compiler is libseccomp, through the `libseccomp` crate (bindings to
//! the host's C library; youki uses the same crate). runc compiles profiles
//! with libseccomp too (libseccomp-golang over the same C library), so a
//! profile means in the VM exactly what it means under runc: the same
//! syscall-name tables, the same multi-architecture handling (x86_64, x86,
//! x32 in Docker's profile; multiplexed socketcall/ipc), the same 64-bit
//! argument comparisons and the same program layout. A pure-Rust compiler
//! (seccompiler) has its own name tables and argument semantics, which could
//! drift from runc's. Compiling happens on the host, at `create`; the guest
//! receives raw `struct sock_filter` instructions, so the static guest agent
//! links no C library and only calls seccomp(2).
//!
//! runc's own steps are reproduced around the compiler: actions and errno
//! values as runc maps them, rules equal to the default action skipped,
//! unknown syscall names skipped, conditions on the same argument split into
//! separate rules, and runc's `-ENOSYS` stub (syscalls newer than every one
//! the profile names fail with ENOSYS rather than the default action, so
//! that programs fall back to older syscalls).

use nix::sys::memfd::MemFdCreateFlag;
use std::io::{Read, Seek};

use libseccomp::ScmpSyscall;
use libseccomp::{ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext};
use serde_json::Value;

use runvm_protocol::{SeccompFilter, SockFilter};

/// `SECCOMP_FILTER_FLAG_LOG`.
pub const FLAG_LOG: u32 = 1 << 1;
/// `SECCOMP_FILTER_FLAG_SPEC_ALLOW`.
pub const FLAG_SPEC_ALLOW: u32 = 1 << 2;
/// The kernel's limit on a filter's length (`BPF_MAXINSNS`).
pub const MAX_INSTRUCTIONS: usize = 4096;

const ENOSYS: u32 = 38;
const EPERM: i32 = 1;
/// `SECCOMP_RET_ERRNO | ENOSYS`.
const RET_ERRNO_ENOSYS: u32 = 0x0005_0000 | ENOSYS;
/// x32 system calls have this bit set in their number.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Why a profile cannot be compiled.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("config.json field linux.seccomp.{field} is malformed: {why}")]
    Malformed { field: String, why: String },
    #[error("config.json field linux.seccomp.{field}: {value:?} is not a seccomp {kind}; use one of {known}")]
    Unknown {
        field: String,
        kind: &'static str,
        value: String,
        known: &'static str,
    },
    #[error("config.json field linux.seccomp.{field}: {what} is not supported by runvm ({why}); remove it from the seccomp profile")]
    Unsupported {
        field: String,
        what: String,
        why: &'static str,
    },
    #[error("libseccomp cannot {what}")]
    Library {
        what: String,
        #[source]
        source: libseccomp::error::SeccompError,
    },
    #[error("cannot export the compiled seccomp filter")]
    Export(#[source] std::io::Error),
    #[error("the seccomp profile compiles to {0} BPF instructions, more than the kernel's limit of {MAX_INSTRUCTIONS}; shorten the profile")]
    TooLong(usize),
}

fn lib(what: impl Into<String>) -> impl FnOnce(libseccomp::error::SeccompError) -> SeccompError {
    let what = what.into();
    move |source| SeccompError::Library { what, source }
}

fn malformed(field: impl Into<String>, why: impl Into<String>) -> SeccompError {
    SeccompError::Malformed {
        field: field.into(),
        why: why.into(),
    }
}

const KNOWN_ACTIONS: &str = "SCMP_ACT_ALLOW, SCMP_ACT_ERRNO, SCMP_ACT_KILL, SCMP_ACT_KILL_THREAD, SCMP_ACT_KILL_PROCESS, SCMP_ACT_TRAP, SCMP_ACT_TRACE, SCMP_ACT_LOG";

/// An action as runc maps it: ERRNO and TRACE return `errnoRet` (EPERM
/// without it, truncated to 16 bits as runc does), KILL kills the thread.
fn action(field: &str, name: &str, errno_ret: Option<u64>) -> Result<ScmpAction, SeccompError> {
    let ret = errno_ret.map(|e| e as u16).unwrap_or(EPERM as u16);
    Ok(match name {
        "SCMP_ACT_ALLOW" => ScmpAction::Allow,
        "SCMP_ACT_ERRNO" => ScmpAction::Errno(ret.into()),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => ScmpAction::KillThread,
        "SCMP_ACT_KILL_PROCESS" => ScmpAction::KillProcess,
        "SCMP_ACT_TRAP" => ScmpAction::Trap,
        "SCMP_ACT_TRACE" => ScmpAction::Trace(ret),
        "SCMP_ACT_LOG" => ScmpAction::Log,
        "SCMP_ACT_NOTIFY" => {
            return Err(SeccompError::Unsupported {
                field: field.into(),
                what: "SCMP_ACT_NOTIFY".into(),
                why: "a seccomp agent on the host cannot serve processes inside the VM",
            })
        }
        other => {
            return Err(SeccompError::Unknown {
                field: field.into(),
                kind: "action",
                value: other.into(),
                known: KNOWN_ACTIONS,
            })
        }
    })
}

/// An OCI architecture name: libseccomp's token and the kernel's
/// `AUDIT_ARCH_*` value (what a filter compares `seccomp_data.arch` with).
fn arch(field: &str, name: &str) -> Result<(ScmpArch, u32), SeccompError> {
    Ok(match name {
        "SCMP_ARCH_X86" => (ScmpArch::X86, 0x4000_0003),
        "SCMP_ARCH_X86_64" => (ScmpArch::X8664, 0xc000_003e),
        // x32 shares x86_64's audit arch; its syscalls set bit 30.
        "SCMP_ARCH_X32" => (ScmpArch::X32, 0xc000_003e),
        "SCMP_ARCH_ARM" => (ScmpArch::Arm, 0x4000_0028),
        "SCMP_ARCH_AARCH64" => (ScmpArch::Aarch64, 0xc000_00b7),
        "SCMP_ARCH_MIPS" => (ScmpArch::Mips, 0x0000_0008),
        "SCMP_ARCH_MIPS64" => (ScmpArch::Mips64, 0x8000_0008),
        "SCMP_ARCH_MIPS64N32" => (ScmpArch::Mips64N32, 0xa000_0008),
        "SCMP_ARCH_MIPSEL" => (ScmpArch::Mipsel, 0x4000_0008),
        "SCMP_ARCH_MIPSEL64" => (ScmpArch::Mipsel64, 0xc000_0008),
        "SCMP_ARCH_MIPSEL64N32" => (ScmpArch::Mipsel64N32, 0xe000_0008),
        "SCMP_ARCH_PPC" => (ScmpArch::Ppc, 0x0000_0014),
        "SCMP_ARCH_PPC64" => (ScmpArch::Ppc64, 0x8000_0015),
        "SCMP_ARCH_PPC64LE" => (ScmpArch::Ppc64Le, 0xc000_0015),
        "SCMP_ARCH_S390" => (ScmpArch::S390, 0x0000_0016),
        "SCMP_ARCH_S390X" => (ScmpArch::S390X, 0x8000_0016),
        "SCMP_ARCH_RISCV64" => (ScmpArch::Riscv64, 0xc000_00f3),
        other => {
            return Err(SeccompError::Unknown {
                field: field.into(),
                kind: "architecture",
                value: other.into(),
                known: "SCMP_ARCH_X86_64, SCMP_ARCH_X86, SCMP_ARCH_X32, SCMP_ARCH_AARCH64, SCMP_ARCH_ARM, SCMP_ARCH_MIPS*, SCMP_ARCH_PPC*, SCMP_ARCH_S390*, SCMP_ARCH_RISCV64",
            })
        }
    })
}

fn operator(field: &str, name: &str, value: u64) -> Result<ScmpCompareOp, SeccompError> {
    Ok(match name {
        "SCMP_CMP_NE" => ScmpCompareOp::NotEqual,
        "SCMP_CMP_LT" => ScmpCompareOp::Less,
        "SCMP_CMP_LE" => ScmpCompareOp::LessOrEqual,
        "SCMP_CMP_EQ" => ScmpCompareOp::Equal,
        "SCMP_CMP_GE" => ScmpCompareOp::GreaterEqual,
        "SCMP_CMP_GT" => ScmpCompareOp::Greater,
        // As runc: `value` is the mask, `valueTwo` what the masked
        // argument must equal.
        "SCMP_CMP_MASKED_EQ" => ScmpCompareOp::MaskedEqual(value),
        other => {
            return Err(SeccompError::Unknown {
                field: field.into(),
                kind: "comparison operator",
                value: other.into(),
                known: "SCMP_CMP_EQ, SCMP_CMP_NE, SCMP_CMP_LT, SCMP_CMP_LE, SCMP_CMP_GT, SCMP_CMP_GE, SCMP_CMP_MASKED_EQ",
            })
        }
    })
}

/// A profile's fields, read from the JSON with errors naming the field.
struct Fields<'a> {
    p: &'a Value,
}

impl<'a> Fields<'a> {
    fn str(&self, v: Option<&'a Value>, field: &str) -> Result<Option<&'a str>, SeccompError> {
        match v {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(malformed(field, "not a string")),
        }
    }
    fn u64(&self, v: Option<&'a Value>, field: &str) -> Result<Option<u64>, SeccompError> {
        match v {
            None | Some(Value::Null) => Ok(None),
            Some(n) => n
                .as_u64()
                .map(Some)
                .ok_or_else(|| malformed(field, "not a non-negative integer")),
        }
    }
    fn array(&self, v: Option<&'a Value>, field: &str) -> Result<&'a [Value], SeccompError> {
        match v {
            None | Some(Value::Null) => Ok(&[]),
            Some(Value::Array(a)) => Ok(a),
            Some(_) => Err(malformed(field, "not an array")),
        }
    }
    fn strings(&self, v: Option<&'a Value>, field: &str) -> Result<Vec<&'a str>, SeccompError> {
        self.array(v, field)?
            .iter()
            .map(|s| {
                s.as_str()
                    .ok_or_else(|| malformed(field, "contains a non-string"))
            })
            .collect()
    }
}

/// One syscall rule after runc's conversion (one per name).
struct Rule<'a> {
    name: &'a str,
    action: ScmpAction,
    conditions: Vec<ScmpArgCompare>,
    /// Some argument is compared more than once: runc then adds one rule
    /// per condition.
    split: bool,
}

/// Compiles `profile` (the value of config.json's `linux.seccomp`).
/// `None` when the profile disables seccomp (no default action and no
/// rules), as runc reads it.
pub fn compile(profile: &Value) -> Result<Option<SeccompFilter>, SeccompError> {
    if profile.is_null() {
        return Ok(None);
    }
    if !profile.is_object() {
        return Err(malformed("(itself)", "not an object"));
    }
    let f = Fields { p: profile };
    let default_name = f.str(f.p.get("defaultAction"), "defaultAction")?;
    let rules_json = f.array(f.p.get("syscalls"), "syscalls")?;
    let default_name = match default_name {
        None | Some("") if rules_json.is_empty() => return Ok(None),
        None | Some("") => return Err(malformed("defaultAction", "missing")),
        Some(d) => d,
    };
    let default_errno = f.u64(f.p.get("defaultErrnoRet"), "defaultErrnoRet")?;
    let default_action = action("defaultAction", default_name, default_errno)?;
    if let Some(path) = f.str(f.p.get("listenerPath"), "listenerPath")? {
        if !path.is_empty() {
            return Err(SeccompError::Unsupported {
                field: "listenerPath".into(),
                what: format!("a seccomp agent ({path})"),
                why: "a seccomp agent on the host cannot serve processes inside the VM",
            });
        }
    }
    let mut flags = 0;
    for name in f.strings(f.p.get("flags"), "flags")? {
        match name {
            "SECCOMP_FILTER_FLAG_LOG" => flags |= FLAG_LOG,
            "SECCOMP_FILTER_FLAG_SPEC_ALLOW" => flags |= FLAG_SPEC_ALLOW,
            // As runc: the filter is installed by a single-threaded process
            // just before execve, so thread synchronisation means nothing.
            "SECCOMP_FILTER_FLAG_TSYNC" => {}
            "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV" => {
                return Err(SeccompError::Unsupported {
                    field: "flags".into(),
                    what: name.into(),
                    why: "it only applies to SCMP_ACT_NOTIFY, which runvm does not support",
                })
            }
            other => {
                return Err(SeccompError::Unknown {
                    field: "flags".into(),
                    kind: "filter flag",
                    value: other.into(),
                    known: "SECCOMP_FILTER_FLAG_LOG, SECCOMP_FILTER_FLAG_SPEC_ALLOW, SECCOMP_FILTER_FLAG_TSYNC",
                })
            }
        }
    }
    let mut arches = Vec::new();
    for (i, name) in f
        .strings(f.p.get("architectures"), "architectures")?
        .into_iter()
        .enumerate()
    {
        let (scmp, audit) = arch(&format!("architectures[{i}]"), name)?;
        arches.push((name, scmp, audit));
    }

    let mut rules = Vec::new();
    for (i, r) in rules_json.iter().enumerate() {
        let field = |k: &str| format!("syscalls[{i}].{k}");
        let act_name = f
            .str(r.get("action"), &field("action"))?
            .ok_or_else(|| malformed(field("action"), "missing"))?;
        let errno = f.u64(r.get("errnoRet"), &field("errnoRet"))?;
        let act = action(&field("action"), act_name, errno)?;
        let mut conditions = Vec::new();
        let mut per_arg = [0u32; 6];
        for (j, a) in f.array(r.get("args"), &field("args"))?.iter().enumerate() {
            let afield = |k: &str| format!("syscalls[{i}].args[{j}].{k}");
            let index = f
                .u64(a.get("index"), &afield("index"))?
                .ok_or_else(|| malformed(afield("index"), "missing"))?;
            if index > 5 {
                return Err(malformed(
                    afield("index"),
                    format!("{index} is out of range: system calls have arguments 0 to 5"),
                ));
            }
            let value = f.u64(a.get("value"), &afield("value"))?.unwrap_or(0);
            let value_two = f.u64(a.get("valueTwo"), &afield("valueTwo"))?.unwrap_or(0);
            let op_name = f
                .str(a.get("op"), &afield("op"))?
                .ok_or_else(|| malformed(afield("op"), "missing"))?;
            let op = operator(&afield("op"), op_name, value)?;
            let datum = if matches!(op, ScmpCompareOp::MaskedEqual(_)) {
                value_two
            } else {
                value
            };
            per_arg[index as usize] += 1;
            conditions.push(ScmpArgCompare::new(index as u32, op, datum));
        }
        let split = per_arg.iter().any(|n| *n > 1);
        for name in f.strings(r.get("names"), &field("names"))? {
            if name.is_empty() {
                return Err(malformed(field("names"), "contains an empty name"));
            }
            rules.push(Rule {
                name,
                action: act,
                conditions: conditions.clone(),
                split,
            });
        }
    }

    let mut ctx = ScmpFilterContext::new(default_action).map_err(lib("create a filter"))?;
    for (name, scmp, _) in &arches {
        ctx.add_arch(*scmp)
            .map_err(lib(format!("add architecture {name}")))?;
    }
    for rule in &rules {
        // A rule equal to the default action changes nothing, and
        // libseccomp refuses it: runc skips it silently.
        if rule.action == default_action {
            continue;
        }
        // As runc: a name this libseccomp does not know is a syscall this
        // kernel generation does not have; it is skipped.
        let Ok(nr) = ScmpSyscall::from_name(rule.name) else {
            continue;
        };
        let what = || format!("add the rule for {}", rule.name);
        if rule.split {
            for c in &rule.conditions {
                ctx.add_rule_conditional(rule.action, nr, std::slice::from_ref(c))
                    .map_err(lib(what()))?;
            }
        } else {
            ctx.add_rule_conditional(rule.action, nr, &rule.conditions)
                .map_err(lib(what()))?;
        }
    }
    let mut program = enosys_stub(default_name, default_errno, &arches, &rules)?;
    program.extend(export(&ctx)?);
    if program.len() > MAX_INSTRUCTIONS {
        return Err(SeccompError::TooLong(program.len()));
    }
    Ok(Some(SeccompFilter { program, flags }))
}

/// The filter's BPF program, as libseccomp exports it.
fn export(ctx: &ScmpFilterContext) -> Result<Vec<SockFilter>, SeccompError> {
    let fd = nix::sys::memfd::memfd_create(c"runvm-seccomp", MemFdCreateFlag::MFD_CLOEXEC)
        .map_err(|e| SeccompError::Export(e.into()))?;
    let mut file = std::fs::File::from(fd);
    ctx.export_bpf(&file).map_err(lib("export the filter"))?;
    file.rewind().map_err(SeccompError::Export)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(SeccompError::Export)?;
    if bytes.len() % 8 != 0 {
        return Err(SeccompError::Export(std::io::Error::other(format!(
            "{} bytes is not a whole number of instructions",
            bytes.len()
        ))));
    }
    // seccomp_export_bpf writes `struct sock_filter` in host byte order.
    Ok(bytes
        .chunks_exact(8)
        .map(|c| {
            SockFilter(
                u16::from_ne_bytes([c[0], c[1]]),
                c[2],
                c[3],
                u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
            )
        })
        .collect())
}

// Classic BPF opcodes used by the stub.
const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JGT_K: u16 = 0x25;
const JSET_K: u16 = 0x45;
const JA: u16 = 0x05;
const RET_K: u16 = 0x06;
/// Offsets in `struct seccomp_data`.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;

/// A jump target inside the stub, resolved once the stub is laid out.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Target {
    Next,
    /// The instruction after the current one plus `n`.
    Skip(u8),
    Enosys,
    Filter,
    Section(usize),
}

#[derive(Clone, Copy, Debug)]
enum Insn {
    Load(u32),
    Jump {
        code: u16,
        k: u32,
        jt: Target,
        jf: Target,
    },
    Always(Target),
}

/// runc's `-ENOSYS` stub (libcontainer/seccomp/patchbpf), prepended to the
/// filter: for each listed architecture, a syscall number above the
/// highest one the profile names returns ENOSYS. runc generates it unless
/// the default action lets calls through (ALLOW, LOG, TRACE) or
/// `defaultErrnoRet` equals the whole `SCMP_ACT_ERRNO(ENOSYS)` value.
fn enosys_stub(
    default_name: &str,
    default_errno: Option<u64>,
    arches: &[(&str, ScmpArch, u32)],
    rules: &[Rule],
) -> Result<Vec<SockFilter>, SeccompError> {
    if default_errno == Some(u64::from(RET_ERRNO_ENOSYS))
        || matches!(
            default_name,
            "SCMP_ACT_ALLOW" | "SCMP_ACT_LOG" | "SCMP_ACT_TRACE"
        )
    {
        return Ok(Vec::new());
    }
    // Highest syscall number per audit arch, per libseccomp arch (x86_64
    // and x32 share an audit arch).
    let mut last: Vec<(u32, Vec<(ScmpArch, u32)>)> = Vec::new();
    for &(_, scmp, audit) in arches {
        let largest = rules
            .iter()
            .filter_map(|r| ScmpSyscall::from_name_by_arch(r.name, scmp).ok())
            .map(|s| s.as_raw_syscall())
            .filter(|n| *n > 0)
            .max();
        let Some(largest) = largest else { continue };
        let entry = match last.iter_mut().find(|(a, _)| *a == audit) {
            Some(e) => e,
            None => {
                last.push((audit, Vec::new()));
                last.last_mut().expect("just pushed")
            }
        };
        if !entry.1.iter().any(|(a, _)| *a == scmp) {
            entry.1.push((scmp, largest as u32));
        }
    }
    if last.is_empty() {
        return Ok(Vec::new());
    }

    let mut sections: Vec<Vec<Insn>> = Vec::new();
    for (audit, per_arch) in &last {
        let mut s = vec![Insn::Load(DATA_NR)];
        let jgt = |max: u32| Insn::Jump {
            code: JGT_K,
            k: max,
            jt: Target::Enosys,
            jf: Target::Filter,
        };
        match per_arch.as_slice() {
            [(scmp, max)] => {
                if matches!(scmp, ScmpArch::S390 | ScmpArch::S390X) {
                    // setup(2), number 0, multiplexes unknown large
                    // syscalls on s390: runc answers it with ENOSYS.
                    s.push(Insn::Jump {
                        code: JEQ_K,
                        k: 0,
                        jt: Target::Enosys,
                        jf: Target::Next,
                    });
                }
                match (scmp, *audit == 0xc000_003e) {
                    (ScmpArch::X8664, true) => s.push(Insn::Jump {
                        code: JSET_K,
                        k: X32_SYSCALL_BIT,
                        jt: Target::Filter,
                        jf: Target::Next,
                    }),
                    (ScmpArch::X32, true) => s.push(Insn::Jump {
                        code: JSET_K,
                        k: X32_SYSCALL_BIT,
                        jt: Target::Next,
                        jf: Target::Filter,
                    }),
                    _ => {}
                }
                s.push(jgt(*max));
            }
            [a, b] => {
                let find = |want: ScmpArch| [a, b].into_iter().find(|(s, _)| *s == want);
                let (Some((_, x86_64)), Some((_, x32))) =
                    (find(ScmpArch::X8664), find(ScmpArch::X32))
                else {
                    return Err(malformed(
                        "architectures",
                        "two architectures share an audit architecture other than x86_64 and x32",
                    ));
                };
                s.push(Insn::Jump {
                    code: JSET_K,
                    k: X32_SYSCALL_BIT,
                    jt: Target::Skip(1),
                    jf: Target::Next,
                });
                s.push(jgt(*x86_64));
                s.push(jgt(*x32));
            }
            _ => unreachable!("an audit architecture has one or two libseccomp architectures"),
        }
        sections.push(s);
    }

    // Layout: arch dispatch, sections, the ENOSYS return; the filter
    // follows.
    let mut head = vec![Insn::Load(DATA_ARCH)];
    for (i, (audit, _)) in last.iter().enumerate() {
        head.push(Insn::Jump {
            code: JEQ_K,
            k: *audit,
            jt: Target::Section(i),
            jf: Target::Next,
        });
    }
    head.push(Insn::Always(Target::Filter));
    let mut starts = Vec::new();
    let mut pos = head.len();
    for s in &sections {
        starts.push(pos);
        pos += s.len();
    }
    let enosys_at = pos;
    let filter_at = pos + 1;
    let all: Vec<Insn> = head
        .into_iter()
        .chain(sections.into_iter().flatten())
        .collect();
    let resolve = |at: usize, t: Target| -> usize {
        match t {
            Target::Next => at + 1,
            Target::Skip(n) => at + 1 + n as usize,
            Target::Enosys => enosys_at,
            Target::Filter => filter_at,
            Target::Section(i) => starts[i],
        }
    };
    let short = |at: usize, t: Target| -> Result<u8, SeccompError> {
        u8::try_from(resolve(at, t) - at - 1).map_err(|_| {
            malformed(
                "architectures",
                "too many architectures for the -ENOSYS stub",
            )
        })
    };
    let mut out = Vec::with_capacity(all.len() + 1);
    for (at, insn) in all.iter().enumerate() {
        out.push(match *insn {
            Insn::Load(off) => SockFilter(LD_W_ABS, 0, 0, off),
            Insn::Jump { code, k, jt, jf } => SockFilter(code, short(at, jt)?, short(at, jf)?, k),
            Insn::Always(t) => SockFilter(JA, 0, 0, (resolve(at, t) - at - 1) as u32),
        });
    }
    out.push(SockFilter(RET_K, 0, 0, RET_ERRNO_ENOSYS));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Runs a BPF program on (arch, nr, args) the way the kernel does;
    /// returns the action value.
    pub(crate) fn run(prog: &[SockFilter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_ne_bytes());
        data[4..8].copy_from_slice(&arch.to_ne_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_ne_bytes());
        }
        let (mut acc, mut x, mut mem) = (0u32, 0u32, [0u32; 16]);
        let mut pc = 0usize;
        loop {
            let SockFilter(code, jt, jf, k) = prog[pc];
            pc += 1;
            let word = |off: u32| {
                let o = off as usize;
                u32::from_ne_bytes([data[o], data[o + 1], data[o + 2], data[o + 3]])
            };
            match code {
                0x20 => acc = word(k),
                0x00 => acc = k,
                0x01 => x = k,
                0x02 => mem[k as usize] = acc,
                0x03 => mem[k as usize] = x,
                0x60 => acc = mem[k as usize],
                0x61 => x = mem[k as usize],
                0x87 => acc = x,
                0x07 => x = acc,
                0x54 => acc &= k,
                0x05 => pc += k as usize,
                0x15 | 0x25 | 0x35 | 0x45 | 0x1d | 0x2d | 0x3d | 0x4d => {
                    let v = if code & 0x08 != 0 { x } else { k };
                    let cond = match code & 0xf0 {
                        0x10 => acc == v,
                        0x20 => acc > v,
                        0x30 => acc >= v,
                        _ => acc & v != 0,
                    };
                    pc += if cond { jt } else { jf } as usize;
                }
                0x06 => return k,
                0x16 => return acc,
                other => panic!("instruction {other:#x} not emulated"),
            }
        }
    }

    const X86_64: u32 = 0xc000_003e;
    const I386: u32 = 0x4000_0003;
    const ALLOW: u32 = 0x7fff_0000;
    fn errno(e: u32) -> u32 {
        0x0005_0000 | e
    }

    fn nr(name: &str) -> u32 {
        ScmpSyscall::from_name(name).unwrap().as_raw_syscall() as u32
    }

    #[test]
    fn a_small_profile_compiles_and_behaves() {
        let f = compile(&json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
        }))
        .unwrap()
        .unwrap();
        assert!(!f.program.is_empty());
        assert_eq!(f.flags, 0);
        let p = &f.program;
        assert_eq!(run(p, X86_64, nr("mkdir"), [0; 6]), errno(1));
        assert_eq!(run(p, X86_64, nr("mkdirat"), [0; 6]), errno(1));
        assert_eq!(run(p, X86_64, nr("read"), [0; 6]), ALLOW);
        // Another architecture than the native one is killed, as libseccomp
        // does by default.
        assert_eq!(run(p, I386, 1, [0; 6]), 0);
    }

    #[test]
    fn unsupported_and_unknown_actions_are_errors_naming_the_field() {
        let e = compile(&json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]
        }))
        .unwrap_err()
        .to_string();
        assert!(e.contains("linux.seccomp.syscalls[0].action"), "{e}");
        assert!(e.contains("SCMP_ACT_NOTIFY"), "{e}");
        assert!(!e.contains('\n'));
        let e = compile(&json!({"defaultAction": "SCMP_ACT_EXPLODE"}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("linux.seccomp.defaultAction"), "{e}");
        let e =
            compile(&json!({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/agent.sock"}))
                .unwrap_err()
                .to_string();
        assert!(e.contains("linux.seccomp.listenerPath"), "{e}");
        let e = compile(
            &json!({"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_NOPE"]}),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("linux.seccomp.flags"), "{e}");
        let e = compile(
            &json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_VAX"]}),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("linux.seccomp.architectures[0]"), "{e}");
        let e = compile(&json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 7, "value": 1, "op": "SCMP_CMP_EQ"}]}]
        }))
        .unwrap_err()
        .to_string();
        assert!(e.contains("linux.seccomp.syscalls[0].args[0].index"), "{e}");
    }

    #[test]
    fn no_profile_or_an_empty_one_means_unconfined() {
        assert!(compile(&Value::Null).unwrap().is_none());
        assert!(compile(&json!({})).unwrap().is_none());
        assert!(compile(&json!({"defaultAction": ""})).unwrap().is_none());
    }

    #[test]
    fn default_errno_and_argument_comparisons() {
        let f = compile(&json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 13,
            "syscalls": [
                {"names": ["read", "write", "no_such_syscall_anywhere"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
                {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
                {"names": ["lseek"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 2, "value": 1, "op": "SCMP_CMP_LE"},
                          {"index": 1, "value": 100, "op": "SCMP_CMP_GT"}]},
                {"names": ["kill"], "action": "SCMP_ACT_ERRNO", "errnoRet": 3,
                 "args": [{"index": 1, "value": 9, "op": "SCMP_CMP_EQ"},
                          {"index": 1, "value": 15, "op": "SCMP_CMP_EQ"}]},
                {"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
                {"names": ["close"], "action": "SCMP_ACT_KILL_PROCESS"},
                {"names": ["dup"], "action": "SCMP_ACT_TRAP"},
                {"names": ["dup2"], "action": "SCMP_ACT_KILL"},
                {"names": ["pipe"], "action": "SCMP_ACT_LOG"},
                {"names": ["pipe2"], "action": "SCMP_ACT_TRACE", "errnoRet": 7}
            ]
        }))
        .unwrap()
        .unwrap();
        let p = &f.program;
        let go = |name: &str, args: [u64; 6]| run(p, X86_64, nr(name), args);
        assert_eq!(go("read", [0; 6]), ALLOW);
        assert_eq!(go("open", [0; 6]), errno(13));
        assert_eq!(go("personality", [8, 0, 0, 0, 0, 0]), ALLOW);
        assert_eq!(go("personality", [0x40000, 0, 0, 0, 0, 0]), errno(13));
        assert_eq!(go("clone", [0x11, 0, 0, 0, 0, 0]), ALLOW);
        assert_eq!(go("clone", [0x1000_0000, 0, 0, 0, 0, 0]), errno(13));
        // Conditions on different arguments are ANDed in one rule.
        assert_eq!(go("lseek", [0, 101, 1, 0, 0, 0]), ALLOW);
        assert_eq!(go("lseek", [0, 100, 1, 0, 0, 0]), errno(13));
        assert_eq!(go("lseek", [0, 101, 2, 0, 0, 0]), errno(13));
        // Two conditions on one argument: one rule each (either matches).
        assert_eq!(go("kill", [0, 9, 0, 0, 0, 0]), errno(3));
        assert_eq!(go("kill", [0, 15, 0, 0, 0, 0]), errno(3));
        assert_eq!(go("kill", [0, 1, 0, 0, 0, 0]), errno(13));
        // Same as the default: skipped, still the default.
        assert_eq!(go("getpid", [0; 6]), errno(13));
        assert_eq!(go("close", [0; 6]), 0x8000_0000);
        assert_eq!(go("dup", [0; 6]), 0x0003_0000);
        assert_eq!(go("dup2", [0; 6]), 0);
        assert_eq!(go("pipe", [0; 6]), 0x7ffc_0000);
        assert_eq!(go("pipe2", [0; 6]), 0x7ff0_0007);
    }

    #[test]
    fn newer_syscalls_than_the_profile_knows_get_enosys_as_under_runc() {
        let f = compile(&json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [{"names": ["read", "write", "openat"], "action": "SCMP_ACT_ALLOW"}]
        }))
        .unwrap()
        .unwrap();
        let p = &f.program;
        let openat = nr("openat");
        assert_eq!(run(p, X86_64, nr("read"), [0; 6]), ALLOW);
        // Known to the profile's range but not allowed: the default.
        assert_eq!(run(p, X86_64, nr("mkdir"), [0; 6]), errno(EPERM as u32));
        // Beyond the highest syscall the profile names: ENOSYS.
        assert_eq!(run(p, X86_64, openat + 1, [0; 6]), errno(ENOSYS));
        assert_eq!(run(p, X86_64, nr("clone3"), [0; 6]), errno(ENOSYS));
        // x32 and i386 have their own ranges.
        let x32_openat = ScmpSyscall::from_name_by_arch("openat", ScmpArch::X32)
            .unwrap()
            .as_raw_syscall() as u32;
        assert_eq!(run(p, X86_64, x32_openat + 1, [0; 6]), errno(ENOSYS));
        assert_eq!(run(p, X86_64, x32_openat, [0; 6]), ALLOW);
        let i386_openat = ScmpSyscall::from_name_by_arch("openat", ScmpArch::X86)
            .unwrap()
            .as_raw_syscall() as u32;
        assert_eq!(run(p, I386, i386_openat, [0; 6]), ALLOW);
        assert_eq!(run(p, I386, i386_openat + 1, [0; 6]), errno(ENOSYS));
        assert_eq!(run(p, I386, 39, [0; 6]), errno(EPERM as u32)); // mkdir on i386

        // A permissive default gets no stub: unknown syscalls are allowed.
        let f = compile(&json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO"}]
        }))
        .unwrap()
        .unwrap();
        assert_eq!(run(&f.program, X86_64, 400, [0; 6]), ALLOW);
    }

    #[test]
    fn the_audit_arch_table_matches_libseccomp() {
        // libseccomp's program compares seccomp_data.arch with each
        // architecture's AUDIT_ARCH value: ours must be the same. (A filter
        // holds architectures of one byte order: the little-endian ones
        // are checked here, as this host is.)
        for name in [
            "SCMP_ARCH_X86",
            "SCMP_ARCH_X86_64",
            "SCMP_ARCH_ARM",
            "SCMP_ARCH_AARCH64",
            "SCMP_ARCH_MIPSEL",
            "SCMP_ARCH_MIPSEL64",
            "SCMP_ARCH_MIPSEL64N32",
            "SCMP_ARCH_PPC64LE",
            "SCMP_ARCH_RISCV64",
        ] {
            let (_, audit) = arch("x", name).unwrap();
            let f = compile(&json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "architectures": [name],
                "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO"}]
            }))
            .unwrap()
            .unwrap();
            assert!(
                f.program
                    .iter()
                    .any(|i| i.code() == JEQ_K && i.k() == audit),
                "{name}: {audit:#x} not in libseccomp's program"
            );
        }
    }

    #[test]
    fn flags_are_passed_on() {
        let f = compile(&json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "flags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW", "SECCOMP_FILTER_FLAG_TSYNC"],
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]
        }))
        .unwrap()
        .unwrap();
        assert_eq!(f.flags, FLAG_LOG | FLAG_SPEC_ALLOW);
    }

    #[test]
    fn dockers_default_profile_compiles_within_the_kernel_limit() {
        let path = format!(
            "{}/tests/fixtures/docker-20.10-default.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let config: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let f = compile(&config["linux"]["seccomp"]).unwrap().unwrap();
        assert!(f.program.len() < MAX_INSTRUCTIONS);
        // clone3 answers ENOSYS so that libc falls back to clone.
        assert_eq!(run(&f.program, X86_64, nr("clone3"), [0; 6]), errno(ENOSYS));
    }
}
