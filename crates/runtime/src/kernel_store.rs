//! `runvm kernel list|add|remove|prune`: the kernel store, where
//! `RUNVM_KERNEL` picks kernels by name
//! (`/var/lib/runvm/kernel/<name>/boot/vmlinuz-<v>` with `lib/modules/<v>`),
//! and the cache of what runvm made from kernels (`/var/lib/runvm/cache`:
//! initramfs archives, and the copies of kernels shipped in images).
//!
//! Only the administrator runs these (root on the host): the paths given to
//! `add` are trusted. A name is a plain file name, as `RUNVM_KERNEL` takes
//! it. A kernel is added under `<name>.partial` and renamed when complete,
//! so a container never sees half a kernel; one in use by a running
//! container is not removed.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use runvm_initramfs::Kernel;

use crate::error::{Result, RuntimeError};

const USAGE: &str = "usage: runvm kernel list | runvm kernel default [NAME] | runvm kernel add NAME VMLINUZ [MODULES_DIR] | runvm kernel add NAME --package DEBIAN_PACKAGE | runvm kernel remove NAME | runvm kernel prune";

/// Runs `runvm kernel ARGS` against the store `store` and the cache `cache`.
pub fn run(store: &Path, cache: &Path, args: &[String]) -> Result<i32> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["list"] => list(store),
        ["prune"] => prune(store, cache),
        ["default"] => {
            let k = Kernel::discover(store)?;
            println!("{} ({})", dir_name_of(&k.root), k.version);
            Ok(0)
        }
        ["default", name] => set_default(store, name),
        ["add", name, "--package", package] => add_package(store, name, package),
        ["add", name, vmlinuz] => add_files(store, name, Path::new(vmlinuz), None),
        ["add", name, vmlinuz, modules] => {
            add_files(store, name, Path::new(vmlinuz), Some(Path::new(modules)))
        }
        ["remove", name] => remove(store, name),
        _ => Err(RuntimeError::Usage(USAGE.into())),
    }
}

/// A store name: one `RUNVM_KERNEL` can pick (so a plain file name), not
/// a partial add's, not starting with a dash.
pub fn valid_name(name: &str) -> bool {
    runvm_config::options::is_kernel_name(name)
        && !name.ends_with(".partial")
        && !name.starts_with('-')
        && name != runvm_initramfs::DEFAULT_KERNEL_FILE
}

fn check_name(name: &str) -> Result<()> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(RuntimeError::Usage(format!(
            "{name:?} is not a kernel name: give a plain name (letters, digits, dots, dashes), as RUNVM_KERNEL takes it"
        )))
    }
}

fn list(store: &Path) -> Result<i32> {
    let all = Kernel::all_in_store(store)?;
    let default = Kernel::discover(store).ok().map(|k| k.root);
    println!(
        "{:<28} {:<28} {:<8} {:<7} DEFAULT",
        "NAME", "VERSION", "MODULES", "IN USE"
    );
    for k in &all {
        println!(
            "{:<28} {:<28} {:<8} {:<7} {}",
            dir_name_of(&k.root),
            k.version,
            if k.has_modules() { "yes" } else { "no" },
            users(k).len(),
            if Some(&k.root) == default.as_ref() {
                "*"
            } else {
                ""
            }
        );
    }
    Ok(0)
}

/// The pids of the running supervisors whose VM boots kernel `k`: their
/// root's `/runvm/vmlinuz` is `k`'s file (bound in by the runtime).
fn users(k: &Kernel) -> Vec<u32> {
    let Ok(ours) = fs::metadata(&k.vmlinuz) else {
        return Vec::new();
    };
    let Ok(procs) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim_end() == "runvm-superviso")
        })
        .filter(|pid| {
            fs::metadata(format!("/proc/{pid}/root{}", runvm_contract::paths::KERNEL))
                .is_ok_and(|m| m.dev() == ours.dev() && m.ino() == ours.ino())
        })
        .collect()
}

/// `default NAME`: the kernel containers boot when `RUNVM_KERNEL` names
/// none. Written to a temporary file and renamed, so a container being
/// created reads the old name or the new one, never half of one.
fn set_default(store: &Path, name: &str) -> Result<i32> {
    check_name(name)?;
    let k = Kernel::from_store(store, name)?;
    let chosen = dir_name_of(&k.root);
    let file = store.join(runvm_initramfs::DEFAULT_KERNEL_FILE);
    let tmp = store.join(format!(".{}.new", runvm_initramfs::DEFAULT_KERNEL_FILE));
    fs::write(&tmp, format!("{chosen}\n"))
        .and_then(|()| fs::rename(&tmp, &file))
        .map_err(|source| RuntimeError::Write {
            path: file.clone(),
            source,
        })?;
    println!("default kernel: {chosen} ({})", k.version);
    Ok(0)
}

fn remove(store: &Path, name: &str) -> Result<i32> {
    check_name(name)?;
    let k = Kernel::from_store(store, name)?;
    if Kernel::default_name(store)?.is_some() && Kernel::discover(store).ok().as_ref() == Some(&k) {
        return Err(RuntimeError::Usage(format!(
            "kernel {name} is the store's default: pick another with `runvm kernel default NAME` first"
        )));
    }
    let pids = users(&k);
    if !pids.is_empty() {
        return Err(RuntimeError::Usage(format!(
            "kernel {name} is in use by {} running container(s) (supervisor pids {}): stop them first",
            pids.len(),
            pids.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
        )));
    }
    fs::remove_dir_all(&k.root).map_err(|source| RuntimeError::Write {
        path: k.root.clone(),
        source,
    })?;
    println!("removed kernel {} ({})", dir_name_of(&k.root), k.version);
    Ok(0)
}

/// `prune`: removes from the cache what no container is being created
/// with and no next start needs as it is, also the archives of kernels no
/// longer in the store (see
/// [`runvm_initramfs::prune_cache`]), printing each path and what it freed.
/// A running container keeps what it booted: its mounts pin the files.
fn prune(store: &Path, cache: &Path) -> Result<i32> {
    let versions: Vec<String> = Kernel::all_in_store(store)?
        .into_iter()
        .map(|k| k.version)
        .collect();
    let freed = runvm_initramfs::prune_cache(cache, Some(&versions));
    for (path, bytes) in &freed {
        println!("removed {} ({})", path.display(), human(*bytes));
    }
    let total: u64 = freed.iter().map(|(_, b)| b).sum();
    if freed.is_empty() {
        println!("nothing to prune in {}", cache.display());
    } else {
        println!("freed {} in {} item(s)", human(total), freed.len());
    }
    Ok(0)
}

/// `bytes` in KiB or MiB, one decimal.
fn human(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

/// Where a new kernel goes, refusing a name the store has.
fn new_root(store: &Path, name: &str) -> Result<(PathBuf, PathBuf)> {
    check_name(name)?;
    let root = store.join(name);
    if root.exists() {
        return Err(RuntimeError::Usage(format!(
            "the kernel store has {name} already: remove it first (runvm kernel remove {name}) or pick another name"
        )));
    }
    let partial = store.join(format!("{name}.partial"));
    let _ = fs::remove_dir_all(&partial);
    fs::create_dir_all(&partial).map_err(|source| RuntimeError::Write {
        path: partial.clone(),
        source,
    })?;
    Ok((root, partial))
}

/// Runs an external tool; its failure names it and what it said.
fn tool(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| RuntimeError::Spawn {
            program: program.into(),
            source,
        })?;
    if out.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&out.stderr);
    Err(RuntimeError::Usage(format!(
        "{program} {} failed ({}): {}",
        args.join(" "),
        out.status,
        said.lines().last().unwrap_or("").trim()
    )))
}

/// Moves a complete `partial` into place as `root`, after depmod has
/// indexed its modules (the initramfs builder and modprobe read them).
fn finish(partial: &Path, root: &Path, version: &str) -> Result<i32> {
    let has_modules = partial.join("lib/modules").join(version).is_dir();
    if has_modules {
        tool("depmod", &["-b", &partial.to_string_lossy(), version])?;
    }
    fs::rename(partial, root).map_err(|source| RuntimeError::Write {
        path: root.to_owned(),
        source,
    })?;
    let name = dir_name_of(root);
    println!(
        "added kernel {name} ({version}{}); use it with RUNVM_KERNEL={name}",
        if has_modules {
            ", with modules"
        } else {
            ", no modules"
        },
    );
    Ok(0)
}

fn dir_name_of(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `add NAME VMLINUZ [MODULES_DIR]`: the version comes from the modules
/// directory's name (`lib/modules/<version>`), else from `vmlinuz-<version>`.
fn add_files(store: &Path, name: &str, vmlinuz: &Path, modules: Option<&Path>) -> Result<i32> {
    if !vmlinuz.is_file() {
        return Err(RuntimeError::Usage(format!(
            "{} is not a kernel image file: give the path of a vmlinuz",
            vmlinuz.display()
        )));
    }
    if let Some(m) = modules {
        if !m.is_dir() {
            return Err(RuntimeError::Usage(format!(
                "{} is not a directory: give the kernel's lib/modules/<version> directory",
                m.display()
            )));
        }
    }
    let version = modules
        .map(dir_name_of)
        .or_else(|| {
            vmlinuz
                .file_name()?
                .to_str()?
                .strip_prefix("vmlinuz-")
                .map(str::to_owned)
        })
        .filter(|v| valid_name(v))
        .ok_or_else(|| {
            RuntimeError::Usage(format!(
                "cannot tell the version of {}: name it vmlinuz-<version> or give its modules directory",
                vmlinuz.display()
            ))
        })?;
    let (root, partial) = new_root(store, name)?;
    let result = (|| {
        let boot = partial.join("boot");
        fs::create_dir_all(&boot).map_err(|source| RuntimeError::Write {
            path: boot.clone(),
            source,
        })?;
        let target = boot.join(format!("vmlinuz-{version}"));
        fs::copy(vmlinuz, &target).map_err(|source| RuntimeError::Write {
            path: target,
            source,
        })?;
        if let Some(m) = modules {
            let dest = partial.join("lib/modules");
            fs::create_dir_all(&dest).map_err(|source| RuntimeError::Write {
                path: dest.clone(),
                source,
            })?;
            // cp -a keeps the tree as it is (symlinks, modes) without a
            // hand-written recursive copy.
            tool(
                "cp",
                &[
                    "-a",
                    "--",
                    &m.to_string_lossy(),
                    &dest.join(&version).to_string_lossy(),
                ],
            )?;
        }
        finish(&partial, &root, &version)
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&partial);
    }
    result
}

/// `add NAME --package PKG`: downloads a Debian kernel package with apt
/// and unpacks it (never installs it: the host's boot is not touched).
fn add_package(store: &Path, name: &str, package: &str) -> Result<i32> {
    let plain_package = package.starts_with("linux-image-")
        && package
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.+~".contains(c));
    if !plain_package {
        return Err(RuntimeError::Usage(format!(
            "{package:?} is not a Debian kernel package name: give linux-image-<version>, e.g. linux-image-6.1.0-57-cloud-amd64"
        )));
    }
    let version = package.trim_start_matches("linux-image-").to_owned();
    let (root, partial) = new_root(store, name)?;
    let result = (|| {
        let download = tempfile::tempdir().map_err(|source| RuntimeError::Write {
            path: std::env::temp_dir(),
            source,
        })?;
        let dir = download.path().to_string_lossy().into_owned();
        tool(
            "sh",
            &[
                "-c",
                "cd \"$1\" && apt-get download -q \"$2\"",
                "sh",
                &dir,
                package,
            ],
        )?;
        let deb = fs::read_dir(download.path())
            .ok()
            .and_then(|mut d| d.find_map(|e| e.ok().map(|e| e.path())))
            .ok_or_else(|| {
                RuntimeError::Usage(format!("apt-get download {package} gave no file"))
            })?;
        tool(
            "dpkg-deb",
            &["-x", &deb.to_string_lossy(), &partial.to_string_lossy()],
        )?;
        finish(&partial, &root, &version)
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&partial);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_file_names() {
        for ok in ["6.1.0-57-cloud-amd64", "minimal", "my.kernel_2"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "/etc",
            "x.partial",
            "-rf",
            "a\0b",
            "two words",
            ".hidden",
            "default",
        ] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn add_list_and_remove_on_a_store_of_files() {
        let store = tempfile::tempdir().unwrap();
        let src = tempfile::tempdir().unwrap();
        let vmlinuz = src.path().join("vmlinuz-9.9.9-test");
        fs::write(&vmlinuz, b"not really a kernel").unwrap();
        let s = store.path();
        assert_eq!(add_files(s, "test", &vmlinuz, None).unwrap(), 0);
        let k = Kernel::from_store(s, "test").unwrap();
        assert_eq!(k.version, "9.9.9-test");
        assert!(!k.has_modules());
        // A name the store has is refused, and leaves nothing behind.
        let e = add_files(s, "test", &vmlinuz, None).unwrap_err();
        assert!(e.to_string().contains("has test already"), "{e}");
        assert!(!s.join("test.partial").exists());
        // A version that cannot be told is refused.
        let odd = src.path().join("bzImage");
        fs::write(&odd, b"x").unwrap();
        let e = add_files(s, "odd", &odd, None).unwrap_err();
        assert!(e.to_string().contains("cannot tell the version"), "{e}");
        assert!(!s.join("odd").exists() && !s.join("odd.partial").exists());
        // Bad names never reach the file system.
        assert!(add_files(s, "../escape", &vmlinuz, None).is_err());
        assert!(!store.path().parent().unwrap().join("escape").exists());
        assert_eq!(remove(s, "test").unwrap(), 0);
        assert!(Kernel::from_store(s, "test").is_err());
        assert!(remove(s, "test").is_err());
    }

    #[test]
    fn the_default_is_set_by_name_and_cannot_be_removed() {
        let store = tempfile::tempdir().unwrap();
        let s = store.path();
        for v in ["6.1.0-57-cloud-amd64", "6.1.192-runvm"] {
            let f = s.join(format!("vmlinuz-{v}"));
            fs::write(&f, b"x").unwrap();
            add_files(s, v, &f, None).unwrap();
        }
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            run(s, s, &args(&["default", "6.1.0-57-cloud-amd64"])).unwrap(),
            0
        );
        assert_eq!(Kernel::discover(s).unwrap().version, "6.1.0-57-cloud-amd64");
        assert!(!s.join(".default.new").exists());
        let e = remove(s, "6.1.0-57-cloud-amd64").unwrap_err();
        assert!(e.to_string().contains("runvm kernel default NAME"), "{e}");
        assert!(run(s, s, &args(&["default", "nope"])).is_err());
        assert!(run(s, s, &args(&["default", "../x"])).is_err());
        assert_eq!(Kernel::discover(s).unwrap().version, "6.1.0-57-cloud-amd64");
        assert_eq!(run(s, s, &args(&["default", "6.1.192-runvm"])).unwrap(), 0);
        assert_eq!(remove(s, "6.1.0-57-cloud-amd64").unwrap(), 0);
    }

    #[test]
    fn prune_runs_on_an_empty_or_missing_cache() {
        let cache = tempfile::tempdir().unwrap();
        let store = cache.path().join("kernel");
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(run(&store, cache.path(), &args(&["prune"])).unwrap(), 0);
        assert_eq!(
            run(&store, &cache.path().join("none"), &args(&["prune"])).unwrap(),
            0
        );
        // The store has 6.1.0-9; an archive of an older build than another
        // of that kernel, and one of a kernel not in the store.
        let vmlinuz = cache.path().join("vmlinuz-6.1.0-9");
        fs::write(&vmlinuz, b"not really a kernel").unwrap();
        add_files(&store, "k", &vmlinuz, None).unwrap();
        let removed = cache.path().join("initramfs-6.1.0-8-0123456789abcdef.img");
        fs::write(&removed, b"x").unwrap();
        let name = |key: &str| cache.path().join(format!("initramfs-6.1.0-9-{key}.img"));
        fs::write(name("0123456789abcdef"), vec![0u8; 3 << 20]).unwrap();
        let old = fs::File::open(name("0123456789abcdef")).unwrap();
        old.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(60))
            .unwrap();
        fs::write(name("fedcba9876543210"), b"x").unwrap();
        assert_eq!(run(&store, cache.path(), &args(&["prune"])).unwrap(), 0);
        assert!(!name("0123456789abcdef").exists());
        assert!(name("fedcba9876543210").exists());
        assert!(!removed.exists());
        assert!(run(&store, cache.path(), &args(&["prune", "x"])).is_err());
        assert_eq!(human(3 << 20), "3.0 MiB");
        assert_eq!(human(1536), "1.5 KiB");
    }

    #[test]
    fn a_package_name_is_checked_before_apt_sees_it() {
        let store = tempfile::tempdir().unwrap();
        for bad in ["bash", "linux-image-x; rm -rf /", "-oDebug=1"] {
            let e = add_package(store.path(), "k", bad).unwrap_err();
            assert!(e.to_string().contains("not a Debian kernel package"), "{e}");
        }
        assert_eq!(fs::read_dir(store.path()).unwrap().count(), 0);
    }
}
