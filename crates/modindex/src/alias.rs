//! What `modprobe NAME` loads: the kernel asks for a module by alias
//! (`fs-overlay`, `net-pf-16-proto-12`, `nfnetlink-subsys-10`) or by
//! name, and `modprobe` looks it up as kmod does.

use crate::dep::{module_name, normalize, resolve_modules};
use crate::IndexError;

/// The most lines a `modules.alias` may have (a distribution's full
/// kernel has some 30,000).
pub const MAX_ALIAS_LINES: usize = 131_072;

/// The texts of a kernel's index files; a file the kernel lacks is empty.
#[derive(Debug, Default, Clone, Copy)]
pub struct IndexFiles<'a> {
    /// `modules.dep`.
    pub dep: &'a str,
    /// `modules.alias`.
    pub alias: &'a str,
    /// `modules.softdep`.
    pub softdep: &'a str,
    /// `modules.builtin`.
    pub builtin: &'a str,
    /// `modules.builtin.modinfo`: NUL-separated `module.key=value`
    /// strings, of which the `alias` keys name built-in aliases.
    pub builtin_modinfo: &'a [u8],
}

/// What `modprobe NAME` loads: for each module `name` stands for (the
/// module it names, else every module one of whose aliases matches it),
/// the module files (relative, as in `modules.dep`) in load order: the
/// module's soft `pre:` dependencies, the module with its dependencies,
/// its `post:` ones (soft dependencies only if the index has them, and
/// by module name). As kmod does, the caller tries every module and
/// succeeds if one loads (`net-pf-40` names three vsock transports, of
/// which only one suits the machine). Empty if `name` is built into the
/// kernel; [`IndexError::ModuleNotFound`] if nothing matches.
pub fn plan_modprobe(index: &IndexFiles, name: &str) -> Result<Vec<Vec<String>>, IndexError> {
    let builtin = Some(index.builtin).filter(|b| !b.is_empty());
    let mut plans = Vec::new();
    let modules = modules_for(index, name)?;
    let built_in = modules.is_empty();
    for module in modules {
        let mut order: Vec<String> = Vec::new();
        let mut add = |files: Vec<String>| {
            for f in files {
                if !order.contains(&f) {
                    order.push(f);
                }
            }
        };
        let (pre, post) = softdeps(index.softdep, &module);
        for soft in &pre {
            add(resolve_modules(index.dep, builtin, &[soft]).unwrap_or_default());
        }
        // An alias whose module the index lacks (a stale entry) is
        // skipped, as kmod skips it; the others are still tried.
        let main = match resolve_modules(index.dep, builtin, &[&module]) {
            Ok(files) => files,
            Err(IndexError::ModuleNotFound(_)) => continue,
            Err(e) => return Err(e),
        };
        add(main);
        for soft in &post {
            add(resolve_modules(index.dep, builtin, &[soft]).unwrap_or_default());
        }
        plans.push(order);
    }
    if plans.is_empty() && !built_in {
        return Err(IndexError::ModuleNotFound(name.to_owned()));
    }
    Ok(plans)
}

/// The module names `name` stands for: itself if `modules.dep` has it,
/// else the modules of the aliases that match it (in the index's order,
/// each once); none if it is built in.
fn modules_for(index: &IndexFiles, name: &str) -> Result<Vec<String>, IndexError> {
    let as_module = normalize(name);
    let in_dep = index.dep.lines().any(|l| {
        l.split_once(':')
            .is_some_and(|(path, _)| module_name(path.trim()) == as_module)
    });
    if in_dep {
        return Ok(vec![as_module]);
    }
    let Some(wanted) = normalize_alias(name) else {
        return Err(IndexError::ModuleNotFound(name.to_owned()));
    };
    let mut found: Vec<String> = Vec::new();
    for (n, line) in index.alias.lines().enumerate() {
        if n >= MAX_ALIAS_LINES {
            return Err(IndexError::IndexTooLarge {
                file: "modules.alias",
                limit: MAX_ALIAS_LINES,
            });
        }
        let mut words = line.split_whitespace();
        let (Some("alias"), Some(pattern), Some(module), None) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            continue;
        };
        if alias_matches(pattern, &wanted) {
            let module = normalize(module);
            if !found.contains(&module) {
                found.push(module);
            }
        }
    }
    if !found.is_empty() {
        return Ok(found);
    }
    if is_builtin(index, &as_module, &wanted) {
        return Ok(Vec::new());
    }
    Err(IndexError::ModuleNotFound(name.to_owned()))
}

/// Whether the kernel has `module` (or a module with alias `alias`) built in.
fn is_builtin(index: &IndexFiles, module: &str, alias: &str) -> bool {
    let by_name = index.builtin.lines().any(|l| {
        let l = l.trim();
        !l.is_empty() && module_name(l) == module
    });
    by_name
        || index
            .builtin_modinfo
            .split(|b| *b == 0)
            .filter_map(|entry| std::str::from_utf8(entry).ok())
            .filter_map(|entry| entry.split_once('='))
            .any(|(key, pattern)| key.ends_with(".alias") && alias_matches(pattern, alias))
}

/// An alias as kmod compares it: `-` is `_` outside of `[...]` classes.
/// `None` for a malformed one (an unclosed or unopened class).
fn normalize_alias(alias: &str) -> Option<String> {
    let mut out = String::with_capacity(alias.len());
    let mut in_class = false;
    for c in alias.chars() {
        match c {
            '[' if !in_class => in_class = true,
            ']' if in_class => in_class = false,
            ']' => return None,
            '-' if !in_class => {
                out.push('_');
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    (!in_class).then_some(out)
}

/// Whether an alias pattern of `modules.alias` matches the normalised
/// alias `wanted`, as kmod's `fnmatch(pattern, wanted, 0)`.
fn alias_matches(pattern: &str, wanted: &str) -> bool {
    let Some(pattern) = normalize_alias(pattern) else {
        return false;
    };
    // Most patterns start with a literal: most lines are refused on it.
    if let (Some(first), Some(w)) = (pattern.chars().next(), wanted.chars().next()) {
        if !matches!(first, '*' | '?' | '[' | '\\') && first != w {
            return false;
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = wanted.chars().collect();
    fnmatch(&p, &s)
}

/// POSIX `fnmatch` without flags: `*` (any run, `/` too), `?`, `[...]`
/// classes with ranges and `!`/`^` negation, `\` escapes. Written here:
/// the glob crates match paths (`**`, separators) and differ from
/// fnmatch in those corners, which module aliases are free to use.
/// Iterative, with one backtrack point: linear in practice, never
/// recursive, whatever the pattern.
fn fnmatch(p: &[char], s: &[char]) -> bool {
    let (mut pi, mut si) = (0, 0);
    // Where the last `*` was, and how much of `s` it has taken so far.
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        let step = match p.get(pi) {
            Some('*') => {
                star = Some((pi, si));
                pi += 1;
                continue;
            }
            Some('?') => Some(1),
            Some('[') => match class(p, pi, s[si]) {
                Some((true, len)) => Some(len),
                Some((false, _)) => None,
                None => (s[si] == '[').then_some(1),
            },
            Some('\\') if pi + 1 < p.len() => (p[pi + 1] == s[si]).then_some(2),
            Some(c) => (*c == s[si]).then_some(1),
            None => None,
        };
        match (step, star) {
            (Some(len), _) => {
                pi += len;
                si += 1;
            }
            (None, Some((star_pi, star_si))) => {
                // Let the last `*` take one more character and retry.
                star = Some((star_pi, star_si + 1));
                pi = star_pi + 1;
                si = star_si + 1;
            }
            (None, None) => return false,
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// The class `[...]` starting at `p[start]`: whether it matches `c`, and
/// its length in the pattern; `None` if it is not closed (then `[` is a
/// literal).
fn class(p: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = matches!(p.get(i), Some('!' | '^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let lo = *p.get(i)?;
        if lo == ']' && !first {
            return Some((matched != negate, i + 1 - start));
        }
        first = false;
        if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|hi| *hi != ']') {
            let hi = p[i + 2];
            matched |= lo <= c && c <= hi;
            i += 3;
        } else {
            matched |= lo == c;
            i += 1;
        }
    }
}

/// The soft dependencies `modules.softdep` gives `module`: (pre, post).
fn softdeps(softdep: &str, module: &str) -> (Vec<String>, Vec<String>) {
    let (mut pre, mut post) = (Vec::new(), Vec::new());
    for line in softdep.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("softdep") || words.next().map(normalize).as_deref() != Some(module)
        {
            continue;
        }
        // Names before any `pre:` or `post:` are ignored, as kmod does.
        let mut list: Option<&mut Vec<String>> = None;
        for w in words {
            match w {
                "pre:" => list = Some(&mut pre),
                "post:" => list = Some(&mut post),
                name => {
                    if let Some(l) = list.as_deref_mut() {
                        l.push(normalize(name));
                    }
                }
            }
        }
    }
    (pre, post)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines of Debian 12's 6.1 cloud kernel index.
    const DEP: &str = "\
kernel/fs/overlayfs/overlay.ko:
kernel/net/netfilter/nfnetlink.ko:
kernel/net/netfilter/nf_tables.ko: kernel/net/netfilter/nfnetlink.ko kernel/lib/libcrc32c.ko
kernel/lib/libcrc32c.ko:
kernel/crypto/crc32c_generic.ko:
kernel/net/bridge/br_netfilter.ko: kernel/net/bridge/bridge.ko kernel/net/802/stp.ko kernel/net/llc/llc.ko
kernel/net/bridge/bridge.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko
kernel/net/802/stp.ko: kernel/net/llc/llc.ko
kernel/net/llc/llc.ko:
kernel/drivers/net/veth.ko:
";
    const ALIAS: &str = "\
# Aliases extracted from modules themselves.
alias fs-overlay overlay
alias net-pf-16-proto-12 nfnetlink
alias nfnetlink-subsys-10 nf_tables
alias rtnl-link-veth veth
alias rtnl-link-bridge bridge
alias pci:v00001AF4d00001000sv*sd*bc*sc*i* virtio_pci
alias char-major-10-[12]3? misc_thing
";
    const SOFTDEP: &str = "softdep libcrc32c pre: crc32c\n";

    fn index() -> IndexFiles<'static> {
        IndexFiles {
            dep: DEP,
            alias: ALIAS,
            softdep: SOFTDEP,
            builtin: "kernel/fs/ext4/ext4.ko\n",
            builtin_modinfo:
                b"ext4.alias=fs-ext4\0ext4.file=fs/ext4\0loop.alias=devname:loop-control\0",
        }
    }

    #[test]
    fn a_module_name_loads_it_with_its_dependencies() {
        assert_eq!(
            plan_modprobe(&index(), "br-netfilter").unwrap(),
            [[
                "kernel/net/llc/llc.ko",
                "kernel/net/802/stp.ko",
                "kernel/net/bridge/bridge.ko",
                "kernel/net/bridge/br_netfilter.ko"
            ]]
        );
    }

    #[test]
    fn the_kernels_aliases_resolve() {
        assert_eq!(
            plan_modprobe(&index(), "fs-overlay").unwrap(),
            [["kernel/fs/overlayfs/overlay.ko"]]
        );
        assert_eq!(
            plan_modprobe(&index(), "net-pf-16-proto-12").unwrap(),
            [["kernel/net/netfilter/nfnetlink.ko"]]
        );
        assert_eq!(
            plan_modprobe(&index(), "rtnl-link-veth").unwrap(),
            [["kernel/drivers/net/veth.ko"]]
        );
    }

    #[test]
    fn soft_dependencies_come_first_and_are_optional() {
        // Soft dependencies are the requested module's (the kernel asks
        // for what a dependency needs by itself); one the index lacks
        // (`crc32c` is an alias of the crypto API's) is skipped.
        assert_eq!(
            plan_modprobe(&index(), "nfnetlink-subsys-10").unwrap(),
            [[
                "kernel/net/netfilter/nfnetlink.ko",
                "kernel/lib/libcrc32c.ko",
                "kernel/net/netfilter/nf_tables.ko"
            ]]
        );
        assert_eq!(
            plan_modprobe(&index(), "libcrc32c").unwrap(),
            [["kernel/lib/libcrc32c.ko"]]
        );
        // Names before a marker are not soft dependencies (kmod's reading).
        let softdep = "softdep overlay llc pre: crc32c_generic post: veth nothing_like_it\n";
        let files = IndexFiles { softdep, ..index() };
        assert_eq!(
            plan_modprobe(&files, "overlay").unwrap(),
            [[
                "kernel/crypto/crc32c_generic.ko",
                "kernel/fs/overlayfs/overlay.ko",
                "kernel/drivers/net/veth.ko"
            ]]
        );
    }

    #[test]
    fn an_alias_of_several_modules_plans_each_on_its_own() {
        let alias = "alias net-pf-40 vmw_vsock_vmci_transport\nalias net-pf-40 hv_sock\nalias net-pf-40 vsock_loopback\n";
        let dep = "kernel/a/vmw_vsock_vmci_transport.ko: kernel/a/vsock.ko\nkernel/a/hv_sock.ko: kernel/a/vsock.ko\nkernel/a/vsock_loopback.ko: kernel/a/vsock.ko\nkernel/a/vsock.ko:\n";
        let files = IndexFiles {
            dep,
            alias,
            ..index()
        };
        let plans = plan_modprobe(&files, "net-pf-40").unwrap();
        assert_eq!(plans.len(), 3, "{plans:?}");
        assert_eq!(plans[1], ["kernel/a/vsock.ko", "kernel/a/hv_sock.ko"]);
        assert_eq!(
            plans[2],
            ["kernel/a/vsock.ko", "kernel/a/vsock_loopback.ko"]
        );
    }

    #[test]
    fn a_stale_alias_target_does_not_sink_the_others() {
        let alias = "alias net-pf-40 gone_transport\nalias net-pf-40 veth\n";
        let files = IndexFiles { alias, ..index() };
        assert_eq!(
            plan_modprobe(&files, "net-pf-40").unwrap(),
            [["kernel/drivers/net/veth.ko"]]
        );
        let alias = "alias net-pf-41 gone_transport\n";
        let files = IndexFiles { alias, ..index() };
        assert!(matches!(
            plan_modprobe(&files, "net-pf-41"),
            Err(IndexError::ModuleNotFound(_))
        ));
    }

    #[test]
    fn only_alias_keys_of_modinfo_are_built_in_aliases() {
        let files = IndexFiles {
            builtin_modinfo: b"foo.description=see bar.alias=fs-zzz\0",
            ..index()
        };
        assert!(plan_modprobe(&files, "fs-zzz").is_err());
    }

    #[test]
    fn fnmatch_corners() {
        let m = |p: &str, s: &str| {
            let p: Vec<char> = p.chars().collect();
            let s: Vec<char> = s.chars().collect();
            fnmatch(&p, &s)
        };
        assert!(m("a**b", "axyb") && m("**", "") && m("*", "a/b"));
        assert!(m("[^x]y", "ay") && !m("[^x]y", "xy") && m("[!x]y", "ay"));
        assert!(m("[]]", "]") && m("[a-]", "-") && m("a\\*", "a*") && !m("a\\*", "ab"));
        assert!(m("a[b", "a[b") && !m("a[b", "ab"));
        assert!(!m("a*b", "axbc") && m("a*b*c", "aXbYbZc") && !m("?", ""));
        // A pattern that backtracks a lot still ends (linear passes).
        let long = "a".repeat(5000);
        assert!(!m(&format!("{}b", "*a".repeat(40)), &long));
    }

    #[test]
    fn patterns_match_as_fnmatch_does() {
        assert!(alias_matches(
            "pci:v00001AF4d00001000sv*sd*bc*sc*i*",
            "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00"
        ));
        assert!(!alias_matches(
            "pci:v00001AF4d00001000sv*sd*bc*sc*i*",
            "pci:v00008086d00001000sv00001AF4sd00000001bc02sc00i00"
        ));
        let wanted = normalize_alias("char-major-10-135").unwrap();
        assert!(alias_matches("char-major-10-[12]3?", &wanted));
        assert!(!alias_matches("char-major-10-[12]3?", "char_major_10_335"));
        // '-' and '_' are one, outside classes only.
        assert_eq!(normalize_alias("a-b[x-z]-c").unwrap(), "a_b[x-z]_c");
        assert!(normalize_alias("a[b").is_none());
        assert!(normalize_alias("a]b").is_none());
        assert!(!alias_matches("a[b", "a[b"));
    }

    #[test]
    fn built_in_modules_and_aliases_load_nothing() {
        assert!(plan_modprobe(&index(), "ext4").unwrap().is_empty());
        assert!(plan_modprobe(&index(), "fs-ext4").unwrap().is_empty());
        assert!(plan_modprobe(&index(), "devname:loop-control")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn unknown_names_are_not_found() {
        for name in ["fs-zfs", "net-pf-99", "", "a]b", "../../etc/passwd"] {
            let err = plan_modprobe(&index(), name).unwrap_err();
            assert!(
                matches!(&err, IndexError::ModuleNotFound(n) if n == name),
                "{name}: {err}"
            );
        }
    }

    #[test]
    fn an_oversized_alias_index_is_refused() {
        let alias = "alias x y\n".repeat(MAX_ALIAS_LINES + 1);
        let files = IndexFiles {
            alias: &alias,
            ..index()
        };
        let err = plan_modprobe(&files, "fs-zfs").unwrap_err();
        assert!(
            matches!(
                err,
                IndexError::IndexTooLarge {
                    file: "modules.alias",
                    ..
                }
            ),
            "{err}"
        );
    }
}
