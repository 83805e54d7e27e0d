//! Writing the initramfs cpio archive.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use cpio::newc::{self, ModeFileType};

use crate::{Error, Kernel};
use runvm_contract::guest::{LOAD_ORDER_FILE, MODULES_DIR as GUEST_MODULES_DIR};

/// Directories created in the guest's initial root.
const DIRS: &[(&str, u32)] = &[
    ("dev", 0o755),
    ("proc", 0o755),
    ("sys", 0o755),
    ("run", 0o755),
    ("tmp", 0o1777),
    ("mnt", 0o755),
    ("lib", 0o755),
    ("lib/modules", 0o755),
    ("sbin", 0o755),
];

/// Where the kernel runs its modprobe helper (`CONFIG_MODPROBE_PATH`,
/// `/sbin/modprobe` in every distribution kernel): a link to the agent.
const MODPROBE_LINK: &str = "sbin/modprobe";

/// A host program added to the initramfs (e.g. `e2fsck` for the guest to
/// check its disks before mounting them): a static binary, copied as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tool {
    /// Its path in the archive, relative, e.g. `sbin/e2fsck`.
    pub name: &'static str,
    /// The file on the host.
    pub path: PathBuf,
}

/// What goes into an initramfs besides the agent.
#[derive(Debug, Clone, Copy)]
pub struct Contents<'a> {
    /// Modules loaded at boot (with their dependencies).
    pub modules: &'a [&'a str],
    /// Programs the agent runs.
    pub tools: &'a [Tool],
    /// Part of the cached file's name (`initramfs-<version><flavor>-<key>`)
    /// that keeps archives of other contents for the same kernel from
    /// pruning each other: `""` for the default contents.
    pub flavor: &'a str,
}

impl<'a> Contents<'a> {
    /// Just `modules`: no tools, the default flavor.
    pub const fn modules(modules: &'a [&'a str]) -> Self {
        Contents {
            modules,
            tools: &[],
            flavor: "",
        }
    }
}

/// Builds an initramfs (an uncompressed cpio "newc" archive) at `out` holding:
///
/// - the directories `/dev /proc /sys /run /tmp /mnt /lib /lib/modules`;
/// - `/dev/console`, character device 5:1 mode 0600, so the kernel can open a
///   console before devtmpfs is mounted;
/// - `/init`: the `agent` binary, mode 0755, and `/sbin/modprobe`, a
///   symbolic link to it (the kernel's helper for a missing module);
/// - `/lib/modules/<file name>` (mode 0644) for `wanted_modules` and their
///   dependencies (see [`resolve_modules`](crate::resolve_modules)), and
///   `/lib/modules/load-order` listing those file names one per line in load
///   order, for the agent to `finit_module` in that order.
///
/// A kernel without a modules directory gets no modules (everything is
/// assumed built in). Compressed modules are refused with
/// [`Error::CompressedModule`].
///
/// The archive is written atomically: to a temporary file in `out`'s
/// directory, synced, then renamed over `out`.
pub fn build_initramfs(
    kernel: &Kernel,
    agent: &Path,
    wanted_modules: &[&str],
    out: &Path,
) -> Result<(), Error> {
    build_initramfs_with(kernel, agent, &Contents::modules(wanted_modules), out)
}

/// [`build_initramfs`] with `contents`' modules and, at their names, its
/// tools (mode 0755).
pub fn build_initramfs_with(
    kernel: &Kernel,
    agent: &Path,
    contents: &Contents<'_>,
    out: &Path,
) -> Result<(), Error> {
    let wanted_modules = contents.modules;
    if !agent.is_file() {
        return Err(Error::AgentMissing {
            path: agent.to_owned(),
        });
    }
    let modules = module_files(kernel, wanted_modules)?;

    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".initramfs-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| Error::io("create a temporary file in", dir, e))?;
    let write_err = |e| Error::io("write initramfs", tmp.path(), e);

    let mut w = BufWriter::new(tmp.as_file());
    let mut ino = 0;
    let mut next_ino = || {
        ino += 1;
        ino
    };

    for (name, perm) in DIRS {
        let b = newc::Builder::new(name)
            .ino(next_ino())
            .nlink(2)
            .mode(*perm)
            .set_mode_file_type(ModeFileType::Directory);
        b.write(&mut w, 0).finish().map_err(write_err)?;
    }

    let console = newc::Builder::new("dev/console")
        .ino(next_ino())
        .mode(0o600)
        .set_mode_file_type(ModeFileType::Char)
        .rdev_major(5)
        .rdev_minor(1);
    console.write(&mut w, 0).finish().map_err(write_err)?;

    write_file(&mut w, next_ino(), "init", 0o755, agent, "read guest agent")?;
    // The kernel's usermode helper for a missing module (its
    // `kernel.modprobe`): the agent, which loads modules from the kernel's
    // read-only tree only (see the agent's modprobe module). The
    // container never sees this root, so an image's /sbin/modprobe is
    // never run by the kernel.
    let target = b"/init";
    let link = newc::Builder::new(MODPROBE_LINK)
        .ino(next_ino())
        .mode(0o777)
        .set_mode_file_type(ModeFileType::Symlink);
    let mut entry = link.write(&mut w, target.len() as u32);
    entry.write_all(target).map_err(write_err)?;
    entry.finish().map_err(write_err)?;
    for tool in contents.tools {
        write_file(&mut w, next_ino(), tool.name, 0o755, &tool.path, "read")?;
    }

    let mut load_order = String::new();
    for (file_name, path) in &modules {
        let name = format!("{}/{file_name}", GUEST_MODULES_DIR.trim_start_matches('/'));
        write_file(&mut w, next_ino(), &name, 0o644, path, "read kernel module")?;
        load_order.push_str(file_name);
        load_order.push('\n');
    }
    let name = format!(
        "{}/{LOAD_ORDER_FILE}",
        GUEST_MODULES_DIR.trim_start_matches('/')
    );
    let b = newc::Builder::new(&name)
        .ino(next_ino())
        .mode(0o644)
        .set_mode_file_type(ModeFileType::Regular);
    let mut entry = b.write(&mut w, entry_size(load_order.len() as u64, tmp.path())?);
    entry.write_all(load_order.as_bytes()).map_err(write_err)?;
    entry.finish().map_err(write_err)?;

    newc::trailer(&mut w).map_err(write_err)?;
    w.flush().map_err(write_err)?;
    drop(w);

    let file = tmp.as_file();
    file.set_permissions(fs::Permissions::from_mode(0o644))
        .map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    // Never over an existing archive: one that a container holds must not
    // be replaced by an unheld copy that a pruner could then remove. The
    // name says the contents (its key), so an existing one is as good.
    match tmp.persist_noclobber(out) {
        Ok(_) => {}
        Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(Error::io("rename initramfs into place at", out, e.error)),
    }
    // Make the rename durable; failure here only risks losing a cache entry.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The resolved module files as (file name, full path), in load order.
pub(crate) fn module_files(
    kernel: &Kernel,
    wanted: &[&str],
) -> Result<Vec<(String, PathBuf)>, Error> {
    if wanted.is_empty() || !kernel.has_modules() {
        return Ok(Vec::new());
    }
    let dep_path = kernel.modules_dir.join("modules.dep");
    let dep = fs::read_to_string(&dep_path).map_err(|source| Error::ModulesDep {
        path: dep_path.clone(),
        source,
    })?;
    let builtin_path = kernel.modules_dir.join("modules.builtin");
    let builtin = match fs::read_to_string(&builtin_path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io("read", &builtin_path, e)),
    };

    let resolved = crate::resolve_modules(&dep, builtin.as_deref(), wanted)?;
    let mut files = Vec::with_capacity(resolved.len());
    // modules.dep is data, not trusted paths: a kernel tree (one shipped in
    // an image, say) may name `/etc/shadow` or `../../x`, or hold a symlink
    // that leaves the tree. Every module must be a plain relative path that
    // stays inside the kernel's module directory once resolved.
    let tree = fs::canonicalize(&kernel.modules_dir)
        .map_err(|e| Error::io("resolve", &kernel.modules_dir, e))?;
    let outside = |rel: &str| Error::ModuleOutsideTree {
        path: rel.to_owned(),
        dir: kernel.modules_dir.clone(),
    };
    if let Some(bad) = resolved.iter().find(|rel| {
        !Path::new(rel)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
    }) {
        return Err(outside(bad));
    }
    for rel in resolved {
        let path = kernel.modules_dir.join(&rel);
        if [".xz", ".zst", ".gz"].iter().any(|s| rel.ends_with(s)) {
            return Err(Error::CompressedModule(path));
        }
        match fs::canonicalize(&path) {
            Ok(real) if real.starts_with(&tree) => {}
            Ok(_) => return Err(outside(&rel)),
            Err(e) => return Err(Error::io("read kernel module", &path, e)),
        }
        let file_name = rel.rsplit('/').next().unwrap_or(&rel).to_owned();
        files.push((file_name, path));
    }
    Ok(files)
}

/// Copies the regular file at `src` into the archive as `name`.
fn write_file<W: Write>(
    w: &mut W,
    ino: u32,
    name: &str,
    perm: u32,
    src: &Path,
    what: &str,
) -> Result<(), Error> {
    let read_err = |e| Error::io(what, src, e);
    let file = File::open(src).map_err(read_err)?;
    let len = file.metadata().map_err(read_err)?.len();
    let size = entry_size(len, src)?;
    let b = newc::Builder::new(name)
        .ino(ino)
        .mode(perm)
        .set_mode_file_type(ModeFileType::Regular);
    let mut entry = b.write(w, size);
    let copied = io::copy(&mut file.take(len), &mut entry).map_err(read_err)?;
    if copied != len {
        return Err(read_err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("file shrank from {len} to {copied} bytes while being read"),
        )));
    }
    entry.finish().map_err(read_err)?;
    Ok(())
}

/// newc sizes are 32-bit.
fn entry_size(len: u64, path: &Path) -> Result<u32, Error> {
    u32::try_from(len).map_err(|_| {
        Error::io(
            "add to initramfs",
            path,
            io::Error::new(io::ErrorKind::InvalidInput, "file is 4 GiB or larger"),
        )
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// One archive entry as read back: (mode, rdev, contents).
    pub(crate) type Entries = BTreeMap<String, (u32, (u32, u32), Vec<u8>)>;

    pub(crate) fn read_archive(path: &Path) -> (Vec<String>, Entries) {
        let mut data = io::Cursor::new(fs::read(path).unwrap());
        let mut names = Vec::new();
        let mut entries = BTreeMap::new();
        loop {
            let mut r = newc::Reader::new(data).unwrap();
            if r.entry().is_trailer() {
                break;
            }
            let e = r.entry().clone();
            let mut contents = Vec::new();
            r.read_to_end(&mut contents).unwrap();
            assert_eq!(contents.len() as u32, e.file_size());
            names.push(e.name().to_owned());
            entries.insert(
                e.name().to_owned(),
                (e.mode(), (e.rdev_major(), e.rdev_minor()), contents),
            );
            data = r.finish().unwrap();
        }
        (names, entries)
    }

    /// A fake unpacked kernel with the Debian 6.1 cloud kernel's virtio
    /// module dependencies.
    pub(crate) fn fake_kernel(root: &Path, version: &str) -> Kernel {
        let mdir = root.join("lib/modules").join(version);
        let modules = [
            ("kernel/drivers/virtio/virtio.ko", ""),
            ("kernel/drivers/virtio/virtio_ring.ko", ""),
            (
                "kernel/drivers/virtio/virtio_pci.ko",
                "kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko",
            ),
            (
                "kernel/drivers/char/hw_random/virtio-rng.ko",
                "kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko",
            ),
            ("kernel/fs/fuse/fuse.ko", ""),
            (
                "kernel/fs/fuse/virtiofs.ko",
                "kernel/fs/fuse/fuse.ko kernel/drivers/virtio/virtio_ring.ko \
                 kernel/drivers/virtio/virtio.ko",
            ),
        ];
        let mut dep = String::new();
        for (path, deps) in modules {
            let full = mdir.join(path);
            fs::create_dir_all(full.parent().unwrap()).unwrap();
            fs::write(&full, format!("\x7fELF module {path}")).unwrap();
            dep.push_str(&format!("{path}: {deps}\n"));
        }
        fs::write(mdir.join("modules.dep"), dep).unwrap();
        fs::write(
            mdir.join("modules.builtin"),
            "kernel/drivers/char/hw_random/rng-core.ko\n",
        )
        .unwrap();
        let boot = root.join("boot");
        fs::create_dir_all(&boot).unwrap();
        let vmlinuz = boot.join(format!("vmlinuz-{version}"));
        fs::write(&vmlinuz, b"MZ fake kernel").unwrap();
        Kernel {
            root: root.to_owned(),
            version: version.to_owned(),
            vmlinuz,
            modules_dir: mdir,
        }
    }

    #[test]
    fn archive_has_expected_entries() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = fake_kernel(&dir.path().join("k"), "6.1.0-56-cloud-amd64");
        let agent = dir.path().join("agent");
        fs::write(&agent, b"\x7fELF agent binary!").unwrap();
        let out = dir.path().join("initramfs.img");

        build_initramfs(
            &kernel,
            &agent,
            &["virtiofs", "virtio-pci", "virtio_rng", "rng_core"],
            &out,
        )
        .unwrap();
        assert_eq!(
            fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            0o644
        );

        let (names, entries) = read_archive(&out);
        for (d, perm) in DIRS {
            let (mode, _, data) = &entries[*d];
            assert_eq!(*mode, 0o040000 | perm, "{d}");
            assert!(data.is_empty());
        }
        assert_eq!(entries["dev/console"].0, 0o020600);
        assert_eq!(entries["dev/console"].1, (5, 1));
        assert_eq!(entries["init"].0, 0o100755);
        assert_eq!(entries["init"].2, b"\x7fELF agent binary!");
        assert_eq!(entries["sbin/modprobe"].0, 0o120777);
        assert_eq!(entries["sbin/modprobe"].2, b"/init");

        let load_order = String::from_utf8(entries["lib/modules/load-order"].2.clone()).unwrap();
        assert_eq!(entries["lib/modules/load-order"].0, 0o100644);
        let order: Vec<&str> = load_order.lines().collect();
        assert_eq!(order.len(), 6, "{order:?}");
        let pos = |m: &str| order.iter().position(|o| *o == m).unwrap();
        assert!(pos("fuse.ko") < pos("virtiofs.ko"));
        for dependent in ["virtiofs.ko", "virtio_pci.ko", "virtio-rng.ko"] {
            assert!(pos("virtio.ko") < pos(dependent));
            assert!(pos("virtio_ring.ko") < pos(dependent));
        }
        for m in &order {
            let (mode, _, data) = &entries[&format!("lib/modules/{m}")];
            assert_eq!(*mode, 0o100644, "{m}");
            assert!(
                data.starts_with(b"\x7fELF module ") && data.ends_with(m.as_bytes()),
                "{m}"
            );
        }
        // Exactly the directories, console, init, modprobe, modules and
        // load-order.
        assert_eq!(names.len(), DIRS.len() + 3 + order.len() + 1, "{names:?}");
        // Directories come before anything inside them.
        for (i, name) in names.iter().enumerate() {
            if let Some((parent, _)) = name.rsplit_once('/') {
                let p = names.iter().position(|n| n == parent).unwrap();
                assert!(p < i, "{parent} after {name}");
            }
        }
        // No temporary files left behind.
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn kernel_without_modules_dir_gets_no_modules() {
        let dir = tempfile::tempdir().unwrap();
        let vmlinuz = dir.path().join("bzImage");
        fs::write(&vmlinuz, b"MZ").unwrap();
        let kernel = Kernel::from_vmlinuz(&vmlinuz).unwrap();
        let agent = dir.path().join("agent");
        fs::write(&agent, b"agent").unwrap();
        let out = dir.path().join("out.img");
        build_initramfs(&kernel, &agent, crate::DEFAULT_MODULES, &out).unwrap();
        let (_, entries) = read_archive(&out);
        assert!(entries["lib/modules/load-order"].2.is_empty());
        assert!(!entries.keys().any(|k| k.ends_with(".ko")));
    }

    #[test]
    fn build_errors() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = fake_kernel(&dir.path().join("k"), "6.1.0-9");
        let agent = dir.path().join("agent");
        let out = dir.path().join("out.img");

        let err = build_initramfs(&kernel, &agent, &["virtiofs"], &out).unwrap_err();
        assert!(matches!(err, Error::AgentMissing { .. }), "{err}");
        fs::write(&agent, b"agent").unwrap();

        let err = build_initramfs(&kernel, &agent, &["virtio_gpu"], &out).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Index(runvm_modindex::IndexError::ModuleNotFound(_))
            ),
            "{err}"
        );

        let dep = kernel.modules_dir.join("modules.dep");
        let text = fs::read_to_string(&dep).unwrap();
        fs::write(&dep, text.replace("fuse/fuse.ko", "fuse/fuse.ko.xz")).unwrap();
        let err = build_initramfs(&kernel, &agent, &["virtiofs"], &out).unwrap_err();
        assert!(
            matches!(err, Error::CompressedModule(ref p) if p.ends_with("fuse.ko.xz")),
            "{err}"
        );
        assert!(!out.exists());

        // Paths that leave the module tree, by name or by symlink.
        for evil in ["/etc/shadow", "../../../../etc/passwd", "kernel/../../x.ko"] {
            fs::write(
                &dep,
                text.replace("kernel/fs/fuse/fuse.ko:", &format!("{evil}:"))
                    .replace(" kernel/fs/fuse/fuse.ko", &format!(" {evil}")),
            )
            .unwrap();
            let err = build_initramfs(&kernel, &agent, &["virtiofs"], &out).unwrap_err();
            assert!(
                matches!(err, Error::ModuleOutsideTree { .. }),
                "{evil}: {err}"
            );
            assert!(!out.exists());
        }
        let link = kernel.modules_dir.join("kernel/fs/fuse/fuse.ko");
        fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", &link).unwrap();
        fs::write(&dep, &text).unwrap();
        let err = build_initramfs(&kernel, &agent, &["virtiofs"], &out).unwrap_err();
        assert!(matches!(err, Error::ModuleOutsideTree { .. }), "{err}");
        assert!(!out.exists());

        fs::remove_file(&dep).unwrap();
        let err = build_initramfs(&kernel, &agent, &["virtiofs"], &out).unwrap_err();
        assert!(matches!(err, Error::ModulesDep { .. }), "{err}");
        assert!(err.to_string().contains("depmod -b"), "{err}");
    }
}
