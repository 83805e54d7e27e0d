//! Resolving kernel modules and their dependencies from `modules.dep`.

use std::collections::{HashMap, HashSet};

use crate::IndexError as Error;

/// At most this many modules are resolved for one initramfs (runvm's
/// default set needs about 15, with the disk modules about 20).
pub const MAX_MODULES: usize = 256;

/// The most modules a `modules.dep` may list (a distribution's full
/// kernel has some 6,000).
pub const MAX_INDEX_LINES: usize = 16384;

/// Suffixes of module files, longest first.
const MODULE_SUFFIXES: &[&str] = &[".ko.xz", ".ko.zst", ".ko.gz", ".ko"];

/// The module name of a module file path: the file name without its `.ko*`
/// suffix, with `-` normalised to `_` (`virtio-rng.ko` is module `virtio_rng`).
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = MODULE_SUFFIXES
        .iter()
        .find_map(|s| file.strip_suffix(s))
        .unwrap_or(file);
    normalize(stem)
}

pub(crate) fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// Parses `modules.dep` text (lines like `kernel/a/b.ko: kernel/c.ko kernel/d.ko`;
/// files may also end in `.ko.xz`, `.ko.zst` or `.ko.gz`) and returns the module
/// files (relative, as in `modules.dep`) for the `wanted` module names,
/// together with all their dependencies, each once, in an order where every
/// module comes after all of its dependencies.
///
/// Module names match with `-` and `_` treated alike. A wanted module that is
/// not in `modules.dep` is skipped if `modules_builtin` (the text of
/// `modules.builtin`) lists it, and is otherwise an
/// [`Error::ModuleNotFound`]. More than [`MAX_MODULES`] modules in all is
/// an [`Error::TooManyModules`].
pub fn resolve_modules(
    modules_dep: &str,
    modules_builtin: Option<&str>,
    wanted: &[&str],
) -> Result<Vec<String>, Error> {
    // path -> its dependency paths, and module name -> path. The index
    // may come from a hostile image: its size in lines and in
    // dependencies per module is bounded, so the maps stay small.
    let mut deps: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut by_name: HashMap<String, &str> = HashMap::new();
    for line in modules_dep.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((path, rest)) = line.split_once(':') else {
            continue;
        };
        if deps.len() >= MAX_INDEX_LINES {
            return Err(Error::IndexTooLarge {
                file: "modules.dep",
                limit: MAX_INDEX_LINES,
            });
        }
        let path = path.trim();
        let mut line_deps: Vec<&str> = Vec::new();
        for d in rest.split_whitespace() {
            if !line_deps.contains(&d) {
                if line_deps.len() >= MAX_MODULES {
                    return Err(Error::TooManyModules { limit: MAX_MODULES });
                }
                line_deps.push(d);
            }
        }
        deps.insert(path, line_deps);
        by_name.entry(module_name(path)).or_insert(path);
    }
    // Looked up by scanning, for the few wanted modules that modules.dep
    // lacks, rather than collected.
    let is_builtin = |name: &str| {
        modules_builtin.unwrap_or_default().lines().any(|l| {
            let l = l.trim();
            !l.is_empty() && module_name(l) == name
        })
    };

    let mut order = Vec::new();
    let mut done: HashSet<&str> = HashSet::new();
    for name in wanted {
        let name = normalize(name.trim());
        match by_name.get(&name) {
            Some(path) => visit(path, &deps, &mut done, &mut order)?,
            None if is_builtin(&name) => {}
            None => return Err(Error::ModuleNotFound(name)),
        }
    }
    Ok(order)
}

/// Depth-first post-order, with a stack of its own (a `modules.dep` may
/// come from a hostile image, and a chain of 300,000 modules must not
/// overflow the thread's stack): pushes `path` after all its dependencies.
/// `in_progress` breaks cycles (which `depmod` never writes). Every module
/// on the stack ends up in `order`, so more than [`MAX_MODULES`] on the
/// stack and in `order` together is an error as soon as it happens.
fn visit<'a>(
    path: &'a str,
    deps: &HashMap<&'a str, Vec<&'a str>>,
    done: &mut HashSet<&'a str>,
    order: &mut Vec<String>,
) -> Result<(), Error> {
    if done.contains(path) {
        return Ok(());
    }
    if order.len() >= MAX_MODULES {
        return Err(Error::TooManyModules { limit: MAX_MODULES });
    }
    let mut in_progress: HashSet<&str> = HashSet::from([path]);
    // (module, index of its next dependency to look at)
    let mut stack: Vec<(&str, usize)> = vec![(path, 0)];
    while let Some((current, next)) = stack.last_mut() {
        let current: &str = current;
        let current_deps = deps.get(current).map(Vec::as_slice).unwrap_or_default();
        if let Some(&dep) = current_deps.get(*next) {
            *next += 1;
            if !done.contains(dep) && in_progress.insert(dep) {
                if order.len() + stack.len() >= MAX_MODULES {
                    return Err(Error::TooManyModules { limit: MAX_MODULES });
                }
                stack.push((dep, 0));
            }
            continue;
        }
        stack.pop();
        in_progress.remove(current);
        done.insert(current);
        order.push(current.to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixture: the virtio set runvm's initramfs loads at boot. (The
    /// initramfs crate's own list is checked against a real kernel in its
    /// tests; this crate cannot see it.)
    const DEFAULT_MODULES: &[&str] = &[
        "virtio_pci",
        "virtio_console",
        "virtiofs",
        "virtio_net",
        "virtio_blk",
        "virtio_rng",
    ];

    /// The dependency facts of Debian 12's 6.1 cloud kernel (dependency
    /// lists deliberately not in load order), plus unrelated noise.
    const DEP: &str = "\
kernel/fs/fuse/fuse.ko:
kernel/fs/fuse/cuse.ko: kernel/fs/fuse/fuse.ko
kernel/fs/fuse/virtiofs.ko: kernel/drivers/virtio/virtio.ko kernel/fs/fuse/fuse.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/char/virtio_console.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/virtio_net.ko: kernel/net/core/failover.ko kernel/drivers/net/net_failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
";

    const BUILTIN: &str = "\
kernel/crypto/rng.ko
kernel/drivers/char/hw_random/rng-core.ko
";

    fn assert_valid_order(order: &[String]) {
        let mut seen = HashSet::new();
        for path in order {
            assert!(seen.insert(path.as_str()), "{path} listed twice: {order:?}");
        }
        let deps: HashMap<&str, Vec<&str>> = DEP
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(p, d)| (p, d.split_whitespace().collect()))
            .collect();
        for (i, path) in order.iter().enumerate() {
            for dep in &deps[path.as_str()] {
                let j = order
                    .iter()
                    .position(|p| p == dep)
                    .unwrap_or_else(|| panic!("{dep} (needed by {path}) missing: {order:?}"));
                assert!(j < i, "{dep} must come before {path}: {order:?}");
            }
        }
    }

    #[test]
    fn default_modules_resolve_in_dependency_order() {
        let order = resolve_modules(DEP, Some(BUILTIN), DEFAULT_MODULES).unwrap();
        assert_valid_order(&order);
        let names: HashSet<String> = order.iter().map(|p| module_name(p)).collect();
        let expected = [
            "virtio",
            "virtio_ring",
            "virtio_pci_modern_dev",
            "virtio_pci_legacy_dev",
            "virtio_pci",
            "virtio_console",
            "fuse",
            "virtiofs",
            "failover",
            "net_failover",
            "virtio_net",
            "virtio_blk",
            "virtio_rng",
        ];
        assert_eq!(names.len(), expected.len(), "{order:?}");
        for name in expected {
            assert!(names.contains(name), "{name} missing from {order:?}");
        }
        assert!(!names.contains("cuse"));
        assert!(order.contains(&"kernel/drivers/char/hw_random/virtio-rng.ko".to_owned()));
    }

    #[test]
    fn dash_and_underscore_match_and_duplicates_collapse() {
        let order =
            resolve_modules(DEP, None, &["virtio-rng", "virtio_rng", "virtio-net"]).unwrap();
        assert_valid_order(&order);
        assert_eq!(order.len(), 6, "{order:?}");
    }

    #[test]
    fn builtin_modules_are_skipped() {
        let order = resolve_modules(DEP, Some(BUILTIN), &["rng_core", "virtio_blk"]).unwrap();
        assert_eq!(
            order,
            [
                "kernel/drivers/virtio/virtio.ko",
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/drivers/block/virtio_blk.ko"
            ]
        );
        assert!(resolve_modules(DEP, Some(BUILTIN), &["rng"])
            .unwrap()
            .is_empty());
    }

    #[test]
    fn unknown_module_is_an_error() {
        let err = resolve_modules(DEP, Some(BUILTIN), &["virtio_gpu"]).unwrap_err();
        assert!(
            matches!(&err, Error::ModuleNotFound(n) if n == "virtio_gpu"),
            "{err}"
        );
        // Without modules.builtin, a built-in module is unknown too.
        let err = resolve_modules(DEP, None, &["rng-core"]).unwrap_err();
        assert!(
            matches!(&err, Error::ModuleNotFound(n) if n == "rng_core"),
            "{err}"
        );
    }

    #[test]
    fn a_deep_or_wide_closure_is_refused_without_recursion() {
        // 300,000 modules in one chain: a recursive walk overflows the
        // stack; the index is refused before any walk, for its size.
        let chain = |n: usize| {
            let mut dep = String::new();
            for i in 0..n {
                dep.push_str(&format!("kernel/m{i}.ko: kernel/m{}.ko\n", i + 1));
            }
            dep.push_str(&format!("kernel/m{n}.ko:\n"));
            dep
        };
        let err = resolve_modules(&chain(300_000), None, &["m0"]).unwrap_err();
        assert!(
            matches!(
                err,
                Error::IndexTooLarge {
                    limit: MAX_INDEX_LINES,
                    ..
                }
            ),
            "{err}"
        );
        // The longest chain an index may hold stops at the module limit.
        let err = resolve_modules(&chain(MAX_INDEX_LINES - 1), None, &["m0"]).unwrap_err();
        assert!(
            matches!(err, Error::TooManyModules { limit: MAX_MODULES }),
            "{err}"
        );
        assert!(err.to_string().contains("more than 256"), "{err}");
        // A closure of exactly the limit is fine; one more is not.
        let mut dep = String::new();
        for i in 0..MAX_MODULES - 1 {
            dep.push_str(&format!("kernel/m{i}.ko: kernel/m{}.ko\n", i + 1));
        }
        dep.push_str(&format!("kernel/m{}.ko:\n", MAX_MODULES - 1));
        let order = resolve_modules(&dep, None, &["m0"]).unwrap();
        assert_eq!(order.len(), MAX_MODULES);
        assert_eq!(order[0], format!("kernel/m{}.ko", MAX_MODULES - 1));
        assert_eq!(order.last().unwrap(), "kernel/m0.ko");
        let wide: String = (0..=MAX_MODULES)
            .map(|i| format!(" kernel/w{i}.ko"))
            .collect();
        let dep = format!("kernel/top.ko:{wide}\n");
        let err = resolve_modules(&dep, None, &["top"]).unwrap_err();
        assert!(matches!(err, Error::TooManyModules { .. }), "{err}");
    }

    #[test]
    fn compressed_suffixes_and_cycles() {
        let dep = "\
kernel/a.ko.zst: kernel/b.ko.xz
kernel/b.ko.xz: kernel/c-x.ko.gz
kernel/c-x.ko.gz: kernel/a.ko.zst
";
        let order = resolve_modules(dep, None, &["a", "c_x"]).unwrap();
        assert_eq!(order.len(), 3, "{order:?}");
        assert_eq!(order.last().unwrap(), "kernel/a.ko.zst");
        assert_eq!(module_name("kernel/c-x.ko.gz"), "c_x");
    }
}
