//! Resolving kernel modules and their dependencies from `modules.dep`.

use std::collections::{HashMap, HashSet};

use crate::Error;

/// Suffixes of module files, longest first.
const MODULE_SUFFIXES: &[&str] = &[".ko.xz", ".ko.zst", ".ko.gz", ".ko"];

/// The module name of a module file path: the file name without its `.ko*`
/// suffix, with `-` normalised to `_` (`virtio-rng.ko` is module `virtio_rng`).
pub(crate) fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = MODULE_SUFFIXES
        .iter()
        .find_map(|s| file.strip_suffix(s))
        .unwrap_or(file);
    normalize(stem)
}

fn normalize(name: &str) -> String {
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
/// [`Error::ModuleNotFound`].
pub fn resolve_modules(
    modules_dep: &str,
    modules_builtin: Option<&str>,
    wanted: &[&str],
) -> Result<Vec<String>, Error> {
    // path -> its dependency paths, and module name -> path.
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
        let path = path.trim();
        deps.insert(path, rest.split_whitespace().collect());
        by_name.entry(module_name(path)).or_insert(path);
    }
    let builtin: HashSet<String> = modules_builtin
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(module_name)
        .collect();

    let mut order = Vec::new();
    let mut done: HashSet<&str> = HashSet::new();
    for name in wanted {
        let name = normalize(name.trim());
        match by_name.get(&name) {
            Some(path) => visit(path, &deps, &mut done, &mut HashSet::new(), &mut order),
            None if builtin.contains(&name) => {}
            None => return Err(Error::ModuleNotFound(name)),
        }
    }
    Ok(order)
}

/// Depth-first post-order: pushes `path` after all its dependencies.
/// `in_progress` breaks cycles (which `depmod` never writes).
fn visit<'a>(
    path: &'a str,
    deps: &HashMap<&'a str, Vec<&'a str>>,
    done: &mut HashSet<&'a str>,
    in_progress: &mut HashSet<&'a str>,
    order: &mut Vec<String>,
) {
    if done.contains(path) || !in_progress.insert(path) {
        return;
    }
    for dep in deps.get(path).into_iter().flatten() {
        visit(dep, deps, done, in_progress, order);
    }
    in_progress.remove(path);
    done.insert(path);
    order.push(path.to_owned());
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let order = resolve_modules(DEP, Some(BUILTIN), crate::DEFAULT_MODULES).unwrap();
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
