//! The guest kernel's module helper: the agent binary run as
//! `/sbin/modprobe -q -- <name>` when the kernel wants a module it lacks
//! (a file system type, a socket family, a netfilter table, a link kind:
//! what dockerd's overlay2, bridge and iptables need).
//!
//! The kernel runs its helpers in the initramfs's root (PID 1 took a root
//! of its own before the container's became PID 1's, see `main`), as full
//! root in the guest and outside every confinement of the workload, so
//! the helper must not be anything of the image's. It is this code, and
//! it reads only the kernel's module tree that the agent mounted in that
//! root from the host's kernel store, read-only, before the workload
//! started: no container process can change what it loads. A kernel
//! shipped in the image has no such tree here: its modules load only
//! through a `modprobe` of the workload's own (with `CAP_SYS_MODULE`).
//!
//! The lookup (name, alias, soft dependencies, built-ins) is kmod's, from
//! the text index files; see `runvm_modindex::plan_modprobe`. A hand-written
//! helper instead of kmod's or busybox's `modprobe`: those are C programs
//! of the host that the static initramfs would have to carry with their
//! libraries, for a lookup that is some 150 lines of Rust here.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Component, Path};

use runvm_modindex::{plan_modprobe, IndexFiles};

/// The name the kernel runs this helper by.
pub const NAME: &str = "modprobe";

/// The most bytes of an index file read (a full distribution kernel's
/// `modules.alias` is about 1.5 MB).
const MAX_INDEX_BYTES: u64 = 16 << 20;

/// `finit_module`'s flag for a compressed file (linux/module.h; not in
/// the libc crate).
const MODULE_INIT_COMPRESSED_FILE: u32 = 4;

/// Marks, in the helper's root (`/run` of the initramfs, which no
/// container process sees), that the container may open any device: only
/// then are drivers loaded for a device number (see
/// `ContainerSpec::any_device`). Written by the agent before the
/// container's root becomes its own.
pub const ANY_DEVICE_MARK: &str = "/run/runvm-modprobe-any-device";

/// Marks that the helper has said once that it has no module tree.
const NO_TREE_SAID: &str = "/run/runvm-modprobe-no-tree";

/// Runs the helper with the process's arguments (the kernel's; a name
/// that is not UTF-8, which a workload can make the kernel ask for, is a
/// module no index has); returns its exit code.
pub fn main(args: &[std::ffi::OsString]) -> i32 {
    let args: Vec<String> = match args.iter().map(|a| a.clone().into_string()).collect() {
        Ok(args) => args,
        Err(_) => return 1,
    };
    let Some(name) = requested_module(&args) else {
        kmsg("usage: modprobe [-q] [--] MODULE");
        return 2;
    };
    if by_device_number(name) && !Path::new(ANY_DEVICE_MARK).exists() {
        // runc's device cgroup refuses the open before the kernel asks.
        return 1;
    }
    match load(name) {
        Ok(()) => 0,
        Err(e) => {
            if !e.is_empty() {
                kmsg(&format!("cannot load {name}: {e}"));
            }
            1
        }
    }
}

/// Whether the kernel asks for a driver by device number (at the open of
/// a node whose driver it lacks): `char-major-M[-N]`, `block-major-M[-N]`,
/// except tun/tap (10:200), which runc's device rules allow every
/// container (VPN images make `/dev/net/tun` and open it).
fn by_device_number(name: &str) -> bool {
    let name = name.replace('_', "-");
    (name.starts_with("char-major-") || name.starts_with("block-major-"))
        && name != "char-major-10-200"
}

/// The one module name in `args` (after any options and `--`).
fn requested_module(args: &[String]) -> Option<&str> {
    let mut names = Vec::new();
    let mut options_done = false;
    for a in args.iter().skip(1) {
        if options_done || !a.starts_with('-') {
            names.push(a.as_str());
        } else if a == "--" {
            options_done = true;
        }
    }
    match names.as_slice() {
        [one] if !one.is_empty() => Some(one),
        _ => None,
    }
}

/// Loads `name` and what it needs. The error is empty for a module the
/// index does not know (the kernel asks for many that do not exist; as
/// `modprobe -q`, that is quiet).
pub fn load(name: &str) -> Result<(), String> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_err(|e| format!("cannot read the kernel release: {e}"))?;
    let release = release.trim();
    if release.is_empty() || release.contains('/') || release.starts_with('.') {
        return Err(format!("odd kernel release {release:?}"));
    }
    let dir = Path::new("/lib/modules").join(release);
    if !dir.join("modules.dep").exists() {
        // A kernel of the image's (or a store kernel whose tree could not
        // be mounted): said once per boot.
        let first = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(NO_TREE_SAID)
            .is_ok();
        return Err(if first {
            format!(
                "no module tree for kernel {release}: a kernel shipped in the image gets no \
                 module loading on request; its modules load only through a modprobe of the \
                 workload's, with CAP_SYS_MODULE"
            )
        } else {
            String::new()
        });
    }
    let read = |file: &str| read_bounded(&dir.join(file));
    let dep = String::from_utf8(read("modules.dep")?)
        .map_err(|_| "modules.dep is not text".to_owned())?;
    let text = |file: &str| read(file).map(|b| String::from_utf8_lossy(&b).into_owned());
    // modules.symbols has the same form (`alias symbol:NAME module`), for
    // the kernel's symbol_request().
    let alias = text("modules.alias")? + "\n" + &text("modules.symbols")?;
    let softdep = text("modules.softdep")?;
    let builtin = text("modules.builtin")?;
    let builtin_modinfo = read("modules.builtin.modinfo")?;
    let index = IndexFiles {
        dep: &dep,
        alias: &alias,
        softdep: &softdep,
        builtin: &builtin,
        builtin_modinfo: &builtin_modinfo,
    };
    let plans = match plan_modprobe(&index, name) {
        Ok(plans) => plans,
        Err(runvm_modindex::IndexError::ModuleNotFound(_)) => return Err(String::new()),
        Err(e) => return Err(e.to_string()),
    };
    // Every module the name stands for, each on its own: the request is
    // served if one of them loads (or the name is built in).
    let mut errors = Vec::new();
    let mut loaded = plans.is_empty();
    for plan in plans {
        match plan.iter().try_for_each(|file| insert(&dir, file)) {
            Ok(()) => loaded = true,
            Err(e) => errors.push(e),
        }
    }
    if loaded {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// A file of the index, at most [`MAX_INDEX_BYTES`]; empty if missing.
fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot open {}: {e}", path.display())),
    };
    let mut bytes = Vec::new();
    file.take(MAX_INDEX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_INDEX_BYTES {
        return Err(format!(
            "{} is larger than {MAX_INDEX_BYTES} bytes",
            path.display()
        ));
    }
    Ok(bytes)
}

/// Loads one module file (relative to the tree, as `modules.dep` names
/// it); one already loaded is fine.
fn insert(dir: &Path, file: &str) -> Result<(), String> {
    let relative = Path::new(file);
    if !relative
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(format!("modules.dep names {file:?}, outside the tree"));
    }
    let path = dir.join(relative);
    let module = File::open(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    // A compressed module is the kernel's to decompress
    // (`MODULE_INIT_COMPRESSED_FILE`, for kernels built with
    // CONFIG_MODULE_DECOMPRESS).
    let compressed = [".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .any(|s| file.ends_with(s));
    let flags = if compressed {
        nix::kmod::ModuleInitFlags::from_bits_retain(MODULE_INIT_COMPRESSED_FILE)
    } else {
        nix::kmod::ModuleInitFlags::empty()
    };
    match nix::kmod::finit_module(&module, c"", flags) {
        Ok(()) | Err(nix::Error::EEXIST) => Ok(()),
        Err(e) => Err(format!("{file}: {e}")),
    }
}

/// A line in the guest kernel's log (the helper has no output of its own).
///
/// The initramfs's `/dev` is the guest's one devtmpfs, which is also every
/// container's `/dev`: a container root may have replaced `/dev/kmsg` by
/// a symlink (to `/proc/sys/kernel/modprobe`, say), a FIFO that blocks, or
/// another node. So it is opened without following a link and without
/// blocking, and written only if it is the kernel log's device, 1:11.
fn kmsg(line: &str) {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
    let Ok(mut k) = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open("/dev/kmsg")
    else {
        return;
    };
    let is_kmsg = k.metadata().is_ok_and(|m| {
        m.file_type().is_char_device()
            && nix::sys::stat::major(m.rdev()) == 1
            && nix::sys::stat::minor(m.rdev()) == 11
    });
    if is_kmsg {
        let _ = k.write_all(format!("<3>runvm-modprobe: {line}\n").as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_kernels_call_names_one_module() {
        let kernel = args(&["/sbin/modprobe", "-q", "--", "fs-overlay"]);
        assert_eq!(requested_module(&kernel), Some("fs-overlay"));
        assert_eq!(
            requested_module(&args(&["modprobe", "-q", "--", "-odd"])),
            Some("-odd")
        );
        assert_eq!(requested_module(&args(&["modprobe", "veth"])), Some("veth"));
        for bad in [
            &["modprobe"][..],
            &["modprobe", "-q"],
            &["modprobe", "a", "b"],
            &["modprobe", "--", ""],
        ] {
            assert_eq!(requested_module(&args(bad)), None, "{bad:?}");
        }
    }

    #[test]
    fn device_number_requests_are_told_apart() {
        for name in [
            "char-major-10-144",
            "block-major-1-0",
            "char_major_10",
            "block-major-147",
        ] {
            assert!(by_device_number(name), "{name}");
        }
        for name in [
            "fs-overlay",
            "net-pf-16-proto-12",
            "devname:loop-control",
            "major",
        ] {
            assert!(!by_device_number(name), "{name}");
        }
    }

    #[test]
    fn a_name_that_is_not_utf8_is_not_found() {
        use std::os::unix::ffi::OsStringExt;
        let args = [
            "modprobe".into(),
            "-q".into(),
            "--".into(),
            std::ffi::OsString::from_vec(b"crypto-\xff".to_vec()),
        ];
        assert_eq!(main(&args), 1);
    }

    #[test]
    fn index_files_are_bounded_and_may_be_missing() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_bounded(&dir.path().join("none")).unwrap().is_empty());
        let big = dir.path().join("big");
        let f = File::create(&big).unwrap();
        f.set_len(MAX_INDEX_BYTES + 1).unwrap();
        assert!(read_bounded(&big).unwrap_err().contains("larger than"));
    }

    #[test]
    fn module_paths_stay_in_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        for file in ["../x.ko", "/etc/x.ko", "kernel/../../x.ko"] {
            let err = insert(dir.path(), file).unwrap_err();
            assert!(err.contains("outside the tree"), "{file}: {err}");
        }
    }
}
