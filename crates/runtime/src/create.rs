//! `create` and `run`: turn Docker's bundle into a runvm bundle, let runc
//! create the container, then check the workload's program the way runc
//! would have, so errors (and Docker's exit codes) are runc's.

use std::fs;
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use runvm_config::rewrite::{HostEntry, KernelModules};
use runvm_config::{rewrite_config, HostLayout, VmOptions};
use runvm_contract::report::ErrorChain;
use runvm_contract::{paths, Accel, StagedMount};
use runvm_initramfs::image::{self, ImageKernel, ImageRoot};
use runvm_initramfs::{ensure_initramfs_with, Contents, Initramfs, Kernel, Tool, DEFAULT_MODULES};
use runvm_protocol::runc_compat::{go_errno_text, look_path, path_of_env, FileInfo, LookPathError};
use serde_json::Value;

use crate::error::{Result, RuntimeError};
use crate::host::{self, Install};

/// Name of runvm's directory inside a bundle (it becomes the root).
pub const ROOT_DIR_NAME: &str = "runvm-root";

/// What was prepared, for the steps after `runc create`.
pub struct Prepared {
    pub process: runvm_protocol::ProcessSpec,
    /// Docker's mounts, staged by runc, to be placed inside the image root.
    pub staged_mounts: Vec<StagedMount>,
    /// The disks, whose files are found or made once the mounts are placed.
    pub disks: Vec<runvm_contract::VmDisk>,
    pub readonly_root: bool,
    /// Where the guest mounts filesystems of its own (`--tmpfs`): created
    /// before a read-only root is made read-only.
    pub guest_mountpoints: Vec<String>,
    /// runvm's root directory on the host (the container's root).
    pub new_root: PathBuf,
    /// The initramfs, locked against pruning until runc has mounted it.
    pub initrd: runvm_initramfs::Initramfs,
    /// The image's own kernel when it boots that one, locked likewise.
    pub image_kernel: Option<ImageKernel>,
}

fn read_json(path: &Path) -> Result<Value> {
    let text = fs::read_to_string(path).map_err(|source| RuntimeError::Read {
        path: path.into(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| RuntimeError::Json {
        path: path.into(),
        source,
    })
}

/// Writes `data` to `path` atomically (temp file + rename).
fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("runvm-tmp");
    let werr = |source| RuntimeError::Write {
        path: path.into(),
        source,
    };
    let mut f = fs::File::create(&tmp).map_err(werr)?;
    f.write_all(data).map_err(werr)?;
    f.sync_all().map_err(werr)?;
    fs::rename(&tmp, path).map_err(werr)
}

/// What a container's VM boots: the kernel, the accelerator and the
/// initramfs (built for that kernel with the installed agent, and locked
/// against pruning while held).
pub struct Guest {
    pub kernel: Kernel,
    /// Set when the kernel is the image's own (copied into runvm's cache,
    /// locked there while held): the guest then uses the image's own
    /// `/lib/modules/<version>`, not the store's.
    pub image_kernel: Option<ImageKernel>,
    pub accel: Accel,
    /// Why KVM is not used, when the user did not ask for TCG.
    pub accel_warning: Option<String>,
    pub initrd: runvm_initramfs::Initramfs,
}

impl Guest {
    /// The guest `opts` ask for on this host (also `runvm boot-probe`'s,
    /// which has no image). The kernel is, in this order: the store's
    /// kernel `RUNVM_KERNEL` names; the kernel the image at `image_root`
    /// ships, if it has a usable one; the store's default kernel.
    pub fn choose(opts: &VmOptions, install: &Install, image_root: Option<&Path>) -> Result<Self> {
        let agent = install.agent()?;
        let cache = install.cache_dir();
        let contents = GuestContents::for_options(opts, install)?;
        let from_image = match (&opts.kernel, image_root) {
            (None, Some(root)) => image_kernel(root, &agent, &contents.get(), &cache),
            _ => None,
        };
        let (kernel, initrd, image_kernel) = match from_image {
            Some((ik, initrd)) => (ik.kernel.clone(), Some(initrd), Some(ik)),
            None => {
                let kernel = match &opts.kernel {
                    Some(name) => Kernel::from_store(&install.kernels_dir(), name)?,
                    None => Kernel::discover(&install.kernels_dir())?,
                };
                (kernel, None, None)
            }
        };
        let (accel, accel_warning) = host::decide_accel(opts.accel, host::kvm_problem())?;
        if let Some(w) = &accel_warning {
            tracing::warn!("runvm: {w}");
        }
        let initrd = match initrd {
            Some(i) => i,
            None => ensure_initramfs_with(&kernel, &agent, &contents.get(), &cache)?,
        };
        Ok(Guest {
            kernel,
            image_kernel,
            accel,
            accel_warning,
            initrd,
        })
    }
}

/// What the initramfs holds besides the agent: the default modules, or,
/// for a container with disks, the file systems' modules and a static
/// e2fsck (the guest checks its ext4 disks with it before mounting them:
/// the initramfs's own, never the image's).
struct GuestContents {
    modules: Vec<&'static str>,
    tools: Vec<Tool>,
    flavor: &'static str,
}

impl GuestContents {
    fn for_options(opts: &VmOptions, install: &Install) -> Result<Self> {
        if opts.disks.is_empty() {
            return Ok(Self {
                modules: DEFAULT_MODULES.to_vec(),
                tools: Vec::new(),
                flavor: "",
            });
        }
        let xfs = opts
            .disks
            .iter()
            .any(|d| d.fs == runvm_protocol::DiskFs::Xfs);
        Ok(Self {
            modules: runvm_initramfs::disk_modules(xfs),
            tools: vec![Tool {
                name: "sbin/e2fsck",
                path: install.e2fsck()?,
            }],
            flavor: if xfs { "+disks-xfs" } else { "+disks" },
        })
    }

    fn get(&self) -> Contents<'_> {
        Contents {
            modules: &self.modules,
            tools: &self.tools,
            flavor: self.flavor,
        }
    }
}

/// The kernel the image whose root is `root` ships, copied into runvm's
/// cache, with its initramfs; `None` if it has none that runvm can boot.
/// Never an error: an image whose kernel is unusable boots the default
/// kernel, with one line in the log saying why (only if the image looked
/// like it had a kernel).
fn image_kernel(
    root: &Path,
    agent: &Path,
    contents: &Contents<'_>,
    cache: &Path,
) -> Option<(ImageKernel, Initramfs)> {
    let image = match ImageRoot::open(root) {
        Ok(image) => image,
        Err(e) => {
            tracing::debug!("runvm: image root {}: {e}", root.display());
            return None;
        }
    };
    let found = image::detect(&image);
    let mut why = found.skipped;
    // Newest first; an unusable one gives way to the next.
    for c in &found.candidates {
        let ready = image::cache_image_kernel(&image, c, contents.modules, cache)
            .map_err(|e| e.to_string())
            .and_then(|ik| {
                let initrd = image::ensure_image_initramfs(&ik, agent, contents, cache)
                    .map_err(|e| e.chain().to_string())?;
                Ok((ik, initrd))
            });
        match ready {
            Ok(ready) => {
                tracing::info!(
                    "runvm: booting the image's own kernel {} ({})",
                    c.version,
                    c.vmlinuz_path
                );
                return Some(ready);
            }
            Err(e) => why.push(format!("{}: {e}", c.vmlinuz_path)),
        }
    }
    if !why.is_empty() {
        // The image chose these bytes: no control characters in the log.
        let why: String = why
            .join("; ")
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        tracing::warn!(
            "runvm: not booting the image's own kernel ({why}): booting the default kernel"
        );
    }
    None
}

/// Rewrites the bundle at `bundle` for runvm. Nothing is written unless
/// every check passed, so a refused container leaves nothing behind.
/// `for_run`: the bundle is for `runc run`, which has no step between
/// creating and starting; the supervisor then places the mounts itself.
/// The engine's own config.json, kept beside the rewritten one: Podman
/// starts a stopped container again (a restart policy, `podman start`)
/// from the same bundle, whose config.json runvm has rewritten; Docker
/// writes a new bundle for each start.
const ORIGINAL_CONFIG: &str = "config.json.runvm-original";

/// The size of the tmpfs the engine binds at `/dev/shm` (Podman), if it
/// binds one there. The source is the engine's own directory, read before
/// anything of the container runs.
fn bound_shm_bytes(config: &serde_json::Value) -> Option<u64> {
    let mounts = config["mounts"].as_array()?;
    let shm = mounts.iter().rfind(|m| m["destination"] == "/dev/shm")?;
    if shm["type"] != "bind" {
        return None;
    }
    let st = nix::sys::statfs::statfs(shm["source"].as_str()?).ok()?;
    (st.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
        .then(|| st.blocks() * st.block_size() as u64)
}

pub fn prepare_bundle(bundle: &Path, for_run: bool) -> Result<Prepared> {
    let config_path = bundle.join("config.json");
    let mut config = read_json(&config_path)?;
    let original_path = bundle.join(ORIGINAL_CONFIG);
    let rewritten_before = config
        .pointer(&format!(
            "/annotations/{}",
            paths::ANNOTATION.replace('/', "~1")
        ))
        .is_some();
    if rewritten_before && original_path.is_file() {
        config = read_json(&original_path)?;
    } else {
        write_atomic(
            &original_path,
            &std::fs::read(&config_path).map_err(|source| RuntimeError::Read {
                path: config_path.clone(),
                source,
            })?,
        )?;
    }
    let env: Vec<String> = config["process"]["env"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let opts = VmOptions::from_env(&env, |k| std::env::var(k).ok())?;

    let install = Install::locate();
    let supervisor = install.supervisor()?;
    let virtiofsd = install.virtiofsd()?;
    let qemu = install.qemu()?;
    // The image's root (config.json's root.path, relative to the bundle).
    let image_root = config["root"]["path"].as_str().map(|p| bundle.join(p));
    let Guest {
        kernel,
        image_kernel,
        accel,
        accel_warning,
        initrd,
    } = Guest::choose(&opts, &install, image_root.as_deref())?;

    // runc refuses a root path that goes through a symlink (/var/run is one).
    let bundle_real = fs::canonicalize(bundle).map_err(|source| RuntimeError::Read {
        path: bundle.into(),
        source,
    })?;
    let new_root = bundle_real.join(ROOT_DIR_NAME);
    let host_entries = host::host_entries();
    let layout = HostLayout {
        created_unix_ms: crate::started_unix_ms(),
        new_root: new_root.to_string_lossy().into_owned(),
        host_entries: host_entries.clone(),
        supervisor: supervisor.to_string_lossy().into_owned(),
        virtiofsd: virtiofsd.to_string_lossy().into_owned(),
        kernel: kernel.vmlinuz.to_string_lossy().into_owned(),
        initrd: initrd.path.to_string_lossy().into_owned(),
        // An image's own kernel has its modules in the image already.
        modules: (image_kernel.is_none() && kernel.has_modules()).then(|| KernelModules {
            dir: kernel.modules_dir.to_string_lossy().into_owned(),
            version: kernel.version.clone(),
        }),
        firmware: crate::host::Install::firmware(&qemu).map(|p| p.to_string_lossy().into_owned()),
        qemu: qemu.to_string_lossy().into_owned(),
        devices: host::devices(accel),
        host_cpus: std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
        host_memory_mib: host::memory_mib(),
        qemu_ids: runvm_config::rewrite::qemu_ids(&bundle_real.to_string_lossy()),
        accel,
        accel_warning,
        bound_shm_bytes: bound_shm_bytes(&config),
    };
    let mut rewritten = rewrite_config(config, &opts, &layout)?;
    if for_run {
        runvm_config::rewrite::grant_mount_placement(&mut rewritten.config);
    }

    // The supervisor's root: mount points, merged-/usr symlinks, vm.json.
    let _ = fs::remove_dir_all(&new_root);
    let mk = |p: PathBuf| {
        fs::create_dir_all(&p).map_err(|source| RuntimeError::Write { path: p, source })
    };
    for d in [
        "proc",
        "dev",
        "sys",
        "run",
        "tmp",
        "rootfs",
        "runvm/bin",
        "runvm/mnt",
        "runvm/modules",
        "runvm/disks",
    ] {
        mk(new_root.join(d))?;
    }
    // The disks' slots (bind-mount targets for their files), and where
    // what covers their files from the guest is made.
    let disks_dir = new_root.join(paths::DISKS_DIR.trim_start_matches('/'));
    let slots = (0..rewritten.vm.disks.len()).map(|n| n.to_string());
    for name in slots.chain(["cover-file".to_owned()]) {
        let p = disks_dir.join(name);
        fs::write(&p, b"").map_err(|source| RuntimeError::Write { path: p, source })?;
    }
    mk(disks_dir.join("cover-dir"))?;
    for e in &host_entries {
        match e {
            HostEntry::Bind(dir) => mk(new_root.join(dir.trim_start_matches('/')))?,
            HostEntry::Symlink { path, target } => {
                let link = new_root.join(path.trim_start_matches('/'));
                symlink(target, &link)
                    .map_err(|source| RuntimeError::Write { path: link, source })?;
            }
        }
    }
    // runvm's own work is done: runc's (create, then start) follows.
    rewritten.vm.rewritten_unix_ms = crate::now_unix_ms();
    let vm_json = serde_json::to_vec_pretty(&rewritten.vm).expect("VmConfig serialises");
    write_atomic(
        &new_root.join(paths::VM_CONFIG.trim_start_matches('/')),
        &vm_json,
    )?;
    let config_bytes = serde_json::to_vec(&rewritten.config).expect("a Value serialises");
    write_atomic(&config_path, &config_bytes)?;
    let guest_mountpoints = rewritten.vm.container.guest_mountpoints();
    Ok(Prepared {
        process: rewritten.vm.container.process,
        staged_mounts: rewritten.vm.staged_mounts,
        disks: rewritten.vm.disks,
        readonly_root: rewritten.vm.container.readonly_root,
        guest_mountpoints,
        new_root,
        initrd,
        image_kernel,
    })
}

/// Moves Docker's staged mounts to their destinations inside the image
/// root of the created (not yet started) container whose init is `pid`,
/// makes the root read-only when asked, and tells the supervisor it is
/// done. Every destination is resolved inside the image root, so nothing
/// the image ships or a guest left behind can send a mount elsewhere.
pub fn place_mounts(pid: i32, prepared: &Prepared) -> Result<()> {
    runvm_mounts::place_in_container(
        pid,
        paths::ROOTFS,
        &prepared.staged_mounts,
        &prepared.disks,
        prepared.readonly_root,
        &prepared.guest_mountpoints,
    )?;
    let marker = prepared
        .new_root
        .join(paths::MOUNTS_PLACED.trim_start_matches('/'));
    write_atomic(&marker, b"1\n")
}

/// Checks, inside the created container's root, that the workload's
/// program can be executed, with runc's rules and wording; with
/// `check_cwd` (an exec, whose working directory runc does not make), that
/// its working directory can be entered.
pub fn check_program(
    container_pid: i32,
    process: &runvm_protocol::ProcessSpec,
    check_cwd: bool,
) -> Result<()> {
    use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let root_path = format!("/proc/{container_pid}/root{}", paths::ROOTFS);
    let root = match fs::File::open(&root_path) {
        Ok(f) => f,
        // The container is gone already; runc start will report it.
        Err(_) => return Ok(()),
    };
    let stat = |p: &Path| -> std::io::Result<FileInfo> {
        let rel = p.strip_prefix("/").unwrap_or(p);
        let rel = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT);
        let raw = openat2(root.as_raw_fd(), rel, how)?;
        // SAFETY: openat2 just returned this descriptor; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let st = nix::sys::stat::fstat(fd.as_raw_fd())?;
        Ok(FileInfo {
            is_dir: st.st_mode & libc::S_IFMT == libc::S_IFDIR,
            mode: st.st_mode,
        })
    };
    let Some(program) = process.args.first() else {
        return Ok(());
    };
    let cwd = if process.cwd.is_empty() {
        "/"
    } else {
        &process.cwd
    };
    if check_cwd {
        let enter = match stat(Path::new(cwd)) {
            Ok(info) if info.is_dir => Ok(()),
            Ok(_) => Err(std::io::Error::from_raw_os_error(libc::ENOTDIR)),
            Err(e) => Err(e),
        };
        if let Err(e) = enter {
            return Err(RuntimeError::Exec(LookPathError::Cwd {
                cwd: cwd.to_owned(),
                error: go_errno_text(&e),
            }));
        }
    }
    look_path(program, path_of_env(&process.env), Path::new(cwd), stat)
        .map(|_| ())
        .map_err(RuntimeError::Exec)
}
