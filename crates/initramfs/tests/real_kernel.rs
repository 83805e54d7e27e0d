//! Checks the resolver and archive builder against a real unpacked kernel,
//! given as `RUNVM_TEST_KERNEL_ROOT=<root>` (with `<root>/boot/vmlinuz-<ver>`
//! and `<root>/lib/modules/<ver>/modules.dep` from `depmod -b <root> <ver>`).
//!
//! Ignored by a plain `cargo test`; `make unit` installs the guest kernel
//! runs it (`--include-ignored`) on the kernel store's newest kernel.

use std::fs;
use std::path::Path;

use runvm_initramfs::{build_initramfs, resolve_modules, Kernel, DEFAULT_MODULES};

#[test]
#[ignore = "needs a real kernel: set RUNVM_TEST_KERNEL_ROOT and pass --include-ignored (make unit does)"]
fn default_modules_on_real_kernel() {
    let root = std::env::var_os("RUNVM_TEST_KERNEL_ROOT")
        .expect("RUNVM_TEST_KERNEL_ROOT names an unpacked kernel (see the file's header)");
    let root = Path::new(&root);
    let vmlinuz = fs::read_dir(root.join("boot"))
        .expect("RUNVM_TEST_KERNEL_ROOT has no boot/ directory")
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .expect("RUNVM_TEST_KERNEL_ROOT has no boot/vmlinuz-*");
    let kernel = Kernel::from_vmlinuz(&vmlinuz).unwrap();
    assert!(kernel.has_modules(), "{kernel:?} has no modules directory");

    let dep = fs::read_to_string(kernel.modules_dir.join("modules.dep"))
        .expect("modules.dep missing: run depmod -b ROOT VERSION");
    let builtin = fs::read_to_string(kernel.modules_dir.join("modules.builtin")).ok();
    let order = resolve_modules(&dep, builtin.as_deref(), DEFAULT_MODULES).unwrap();
    println!("load order for {}:", kernel.version);
    for m in &order {
        println!("  {m}");
    }

    // Every module's dependencies come earlier.
    for (i, m) in order.iter().enumerate() {
        let line = dep
            .lines()
            .find_map(|l| l.strip_prefix(m.as_str())?.strip_prefix(':'))
            .unwrap();
        for d in line.split_whitespace() {
            let j = order.iter().position(|o| o == d).unwrap();
            assert!(j < i, "{d} must precede {m}");
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let agent = dir.path().join("agent");
    fs::write(&agent, b"fake agent").unwrap();
    let out = dir.path().join("initramfs.img");
    build_initramfs(&kernel, &agent, DEFAULT_MODULES, &out).unwrap();
    println!("initramfs: {} bytes", fs::metadata(&out).unwrap().len());
}

/// The same unpacked kernel, seen as an image that ships it (Debian's
/// layout): found, its version read from the bzImage, and copied out.
/// `RUNVM_TEST_IMAGE_KERNEL_ROOT` may name another such tree (one with
/// compressed modules, say) to try instead.
#[test]
#[ignore = "needs a real kernel: set RUNVM_TEST_KERNEL_ROOT and pass --include-ignored (make unit does)"]
fn real_kernel_as_an_image_kernel() {
    use runvm_initramfs::image::{cache_image_kernel, detect, ImageRoot};
    let root = std::env::var_os("RUNVM_TEST_IMAGE_KERNEL_ROOT")
        .or_else(|| std::env::var_os("RUNVM_TEST_KERNEL_ROOT"))
        .expect("RUNVM_TEST_KERNEL_ROOT names an unpacked kernel (see the file's header)");
    let image = ImageRoot::open(Path::new(&root)).unwrap();
    let found = detect(&image);
    assert!(found.skipped.is_empty(), "{:?}", found.skipped);
    let c = found.candidates.first().expect("no kernel found");
    println!("found {} at {}", c.version, c.vmlinuz_path);
    let dir = tempfile::tempdir().unwrap();
    let k = cache_image_kernel(&image, c, DEFAULT_MODULES, dir.path()).unwrap();
    let agent = dir.path().join("agent");
    fs::write(&agent, b"fake agent").unwrap();
    let initrd =
        runvm_initramfs::ensure_initramfs(&k.kernel, &agent, DEFAULT_MODULES, dir.path()).unwrap();
    println!(
        "initramfs: {} bytes",
        fs::metadata(&initrd.path).unwrap().len()
    );
}
