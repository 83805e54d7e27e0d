//! Property tests of the config rewriter on structured-but-wrong input:
//! Docker's real config.json files with fields replaced by values of every
//! type (huge and negative numbers, wrong types, deep nesting), removed, or
//! added. Every entry point returns `Ok` or a typed error with a one-line
//! message and never panics; a successful rewrite is lossless for what
//! runvm does not own and its `vm.json` survives a JSON round trip.
//!
//! The generators work on JSON values and the public functions only, so
//! fields added to the configs or the VM settings do not break them. Each
//! property runs `PROPTEST_CASES` cases (a small default keeps `make test`
//! fast; raise it for long runs: `PROPTEST_CASES=100000 cargo test -p runvm-config`).

use proptest::prelude::*;
use runvm_config::options::parse_size_mib;
use runvm_config::rewrite::{
    guest_process, guest_ram_for_limit_mib, host_memory_limit, MIN_MEMORY_MIB, VM_OVERHEAD_PIDS,
};
use runvm_config::*;
use runvm_contract::{paths, VmConfig};
use runvm_hostile_json::{
    self as hostile_json, apply, config, edgy_number, tree_mutation, Mutation,
};
use serde_json::{json, Value};

mod common;
use common::{fixture, host};

/// Top-level fields of config.json that the rewrite changes; every other
/// top-level field must come out unchanged.
const OWNED_TOP: &[&str] = &["process", "root", "mounts", "linux", "annotations"];

// ---------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------

/// Strings runvm parses (CPU sets, sizes, paths) and others.
fn edgy_string() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,12}",
        "[0-9,\\- ]{0,12}",
        prop::sample::select(vec![
            "",
            "0",
            "0-1",
            "5-2",
            "0-4294967295",
            "4294967295-0",
            "1,,3",
            "-",
            "a-b",
            "0-0,0-0",
            "/",
            "/dev/shm",
            "/proc",
            "/proc/x",
            "/sys/",
            "/devx",
            "tmpfs",
            "bind",
            "network",
            "../../etc",
            "/rootfs",
        ])
        .prop_map(str::to_owned),
    ]
}

fn any_json() -> impl Strategy<Value = Value> + Clone {
    hostile_json::any_json(edgy_string(), field_name())
}

/// A value nested `depth` arrays or objects deep.
fn deeply_nested() -> impl Strategy<Value = Value> {
    (1usize..300, any::<bool>()).prop_map(|(depth, object)| {
        let mut v = json!(1);
        for _ in 0..depth {
            v = if object {
                json!({"limit": v})
            } else {
                json!([v])
            };
        }
        v
    })
}

/// Field names of OCI configs, and some that are not.
fn field_name() -> impl Strategy<Value = String> + Clone {
    hostile_json::field_name(&[
        "process",
        "root",
        "mounts",
        "linux",
        "annotations",
        "hostname",
        "args",
        "env",
        "cwd",
        "user",
        "uid",
        "gid",
        "umask",
        "additionalGids",
        "terminal",
        "consoleSize",
        "height",
        "width",
        "rlimits",
        "type",
        "soft",
        "hard",
        "capabilities",
        "bounding",
        "effective",
        "permitted",
        "inheritable",
        "ambient",
        "noNewPrivileges",
        "path",
        "readonly",
        "destination",
        "source",
        "options",
        "devices",
        "resources",
        "memory",
        "limit",
        "swap",
        "cpu",
        "quota",
        "period",
        "cpus",
        "namespaces",
        "io.runvm.rewritten",
    ])
}

/// Paths runvm reads, as JSON pointers: wrong values there reach the most
/// code.
const HOT_PATHS: &[&str] = &[
    "/process",
    "/process/args",
    "/process/args/0",
    "/process/env",
    "/process/env/0",
    "/process/cwd",
    "/process/user",
    "/process/user/uid",
    "/process/user/gid",
    "/process/user/umask",
    "/process/user/additionalGids",
    "/process/terminal",
    "/process/consoleSize",
    "/process/consoleSize/height",
    "/process/rlimits",
    "/process/rlimits/0/soft",
    "/process/capabilities",
    "/process/capabilities/bounding",
    "/process/capabilities/ambient",
    "/process/noNewPrivileges",
    "/root",
    "/root/path",
    "/root/readonly",
    "/hostname",
    "/mounts",
    "/mounts/0",
    "/mounts/1/type",
    "/mounts/6/destination",
    "/mounts/6/options",
    "/mounts/7",
    "/mounts/7/destination",
    "/mounts/7/source",
    "/linux",
    "/linux/devices",
    "/linux/resources",
    "/linux/resources/devices",
    "/linux/resources/memory",
    "/linux/resources/memory/limit",
    "/linux/resources/memory/swap",
    "/linux/resources/cpu",
    "/linux/resources/cpu/quota",
    "/linux/resources/cpu/period",
    "/linux/resources/cpu/cpus",
    "/linux/namespaces",
    "/linux/namespaces/0/type",
    "/linux/namespaces/0/path",
    "/annotations",
];

/// Numbers runvm reads, and the string it parses.
const NUMBER_PATHS: &[&str] = &[
    "/process/user/uid",
    "/process/user/gid",
    "/process/user/umask",
    "/process/user/additionalGids/0",
    "/process/consoleSize/height",
    "/process/consoleSize/width",
    "/process/rlimits/0/soft",
    "/process/rlimits/0/hard",
    "/linux/resources/memory/limit",
    "/linux/resources/memory/swap",
    "/linux/resources/cpu/quota",
    "/linux/resources/cpu/period",
];

fn mutation() -> impl Strategy<Value = Mutation> {
    let value = prop_oneof![6 => any_json(), 1 => deeply_nested()];
    prop_oneof![
        2 => (prop::sample::select(NUMBER_PATHS), edgy_number())
            .prop_map(|(path, with)| Mutation::Set { path, with }),
        1 => edgy_string().prop_map(|cpus| Mutation::Set {
            path: "/linux/resources/cpu/cpus",
            with: Value::String(cpus),
        }),
        3 => tree_mutation(value.clone(), field_name()),
        3 => (prop::sample::select(HOT_PATHS), value)
            .prop_map(|(path, with)| Mutation::Set { path, with }),
    ]
}

/// Objects of config.json where a vendor field (`x-…`) may be added: a
/// field no OCI version has, which must pass through the rewrite.
const VENDOR_PLACES: &[&str] = &[
    "",
    "/process",
    "/root",
    "/hooks",
    "/linux",
    "/linux/resources",
    "/linux/resources/memory",
    "/linux/resources/cpu",
    "/annotations",
];

#[derive(Debug, Clone)]
struct Vendor {
    place: &'static str,
    key: String,
    value: Value,
}

fn vendor_fields(places: &'static [&'static str]) -> impl Strategy<Value = Vec<Vendor>> {
    prop::collection::vec(
        (prop::sample::select(places), "x-[a-z0-9]{1,6}", any_json())
            .prop_map(|(place, key, value)| Vendor { place, key, value }),
        0..4,
    )
}

/// Adds the vendor fields whose place is an object; returns those added.
fn add_vendor_fields(v: &mut Value, fields: Vec<Vendor>) -> Vec<Vendor> {
    fields
        .into_iter()
        .filter(|f| match v.pointer_mut(f.place) {
            Some(Value::Object(o)) if !o.contains_key(&f.key) => {
                o.insert(f.key.clone(), f.value.clone());
                true
            }
            _ => false,
        })
        .collect()
}

/// A config.json written by Docker, then damaged, with vendor fields.
fn bad_config() -> impl Strategy<Value = (Value, Vec<Vendor>)> {
    let fixtures = vec![
        fixture("docker-20.10-default.json"),
        fixture("docker-20.10-full.json"),
    ];
    (
        prop::sample::select(fixtures),
        prop::collection::vec(mutation(), 0..5),
        vendor_fields(VENDOR_PLACES),
    )
        .prop_map(|(mut config, mutations, vendor)| {
            for m in &mutations {
                apply(&mut config, m);
            }
            let vendor = add_vendor_fields(&mut config, vendor);
            (config, vendor)
        })
}

/// The process object of a config.json written by Docker, damaged, with
/// vendor fields.
fn bad_process() -> impl Strategy<Value = (Value, Vec<Vendor>)> {
    let processes = vec![
        json!({"process": fixture("docker-20.10-default.json")["process"]}),
        json!({"process": fixture("docker-20.10-full.json")["process"]}),
    ];
    (
        prop::sample::select(processes),
        prop::collection::vec(mutation(), 0..5),
        vendor_fields(&["/process"]),
    )
        .prop_map(|(mut wrapper, mutations, vendor)| {
            for m in &mutations {
                apply(&mut wrapper, m);
            }
            let vendor = add_vendor_fields(&mut wrapper, vendor);
            let process = wrapper.get_mut("process").map(Value::take);
            (process.unwrap_or(Value::Null), vendor)
        })
}

/// `RUNVM_*` values, valid and not.
fn runvm_var() -> impl Strategy<Value = String> {
    let name = prop::sample::select(vec![
        "RUNVM_ACCEL",
        "RUNVM_KERNEL",
        "RUNVM_MEMORY",
        "RUNVM_CPUS",
        "RUNVM_DEBUG",
    ]);
    let value = prop_oneof![
        prop::sample::select(vec![
            "",
            "auto",
            "kvm",
            "tcg",
            "KVM",
            "0",
            "1",
            "true",
            "false",
            "yes",
            "64",
            "63",
            "255",
            "256",
            "-1",
            "512m",
            "2g",
            "2G",
            "1gib",
            "10m",
            "268435456b",
            "67108863b",
            "18446744073709551615g",
            "99999999999999999999",
            "/vmlinuz",
            "vmlinuz",
            " 512m ",
            "1.5g",
            "m",
            "0x10",
            "=",
            "\n",
            "🦀",
        ])
        .prop_map(str::to_owned),
        ".{0,10}",
    ];
    (name, value).prop_map(|(n, v)| format!("{n}={v}"))
}

fn env_list() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(
        prop_oneof![4 => runvm_var(), 1 => ".{0,16}", 1 => Just("PATH=/bin".to_owned())],
        0..6,
    )
}

/// What `VmOptions::from_env` looks up: the last `NAME=` of the container's
/// environment, else the runtime's.
fn lookup(env: &[String], fallback: &[String], name: &str) -> Option<String> {
    let prefix = format!("{name}=");
    let find = |list: &[String]| {
        list.iter()
            .rev()
            .find_map(|kv| kv.strip_prefix(&prefix).map(str::to_owned))
    };
    find(env).or_else(|| find(fallback))
}

fn vm_options(env: &[String], fallback: &[String]) -> Result<VmOptions, options::OptionError> {
    VmOptions::from_env(env, |name| lookup(&[], fallback, name))
}

/// The strings of a JSON array of strings, if it is one.
fn strings(v: Option<&Value>) -> Option<Vec<String>> {
    v?.as_array()?
        .iter()
        .map(|s| s.as_str().map(str::to_owned))
        .collect()
}

fn one_line(e: &impl std::fmt::Display) -> Result<(), TestCaseError> {
    let msg = e.to_string();
    prop_assert!(!msg.trim().is_empty(), "an empty error message");
    prop_assert!(!msg.contains('\n'), "a message of several lines: {:?}", msg);
    Ok(())
}

/// A destination runvm leaves in place for the supervisor.
fn is_kernel_fs(dest: &str) -> bool {
    ["/proc", "/sys", "/dev"]
        .iter()
        .any(|p| dest == *p || dest.strip_prefix(p).is_some_and(|r| r.starts_with('/')))
}

/// The fields of object `a` that object `b` has too, in `a`'s order.
fn common_keys<'a>(a: &'a Value, b: &Value) -> Vec<&'a String> {
    match (a.as_object(), b.as_object()) {
        (Some(a), Some(b)) => a.keys().filter(|k| b.contains_key(*k)).collect(),
        _ => Vec::new(),
    }
}

/// The memory limit as runvm reads it: a positive integer of bytes.
fn positive_i64(v: Option<&Value>) -> Option<i64> {
    v?.as_i64().filter(|n| *n > 0)
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

/// Checks a successful rewrite of `input` against what the rewrite
/// promises.
fn check_rewrite(
    input: &Value,
    vendor: &[Vendor],
    opts: &VmOptions,
    out: &Rewritten,
) -> Result<(), TestCaseError> {
    let (i, o) = (
        input.as_object().expect("a rewritten config was an object"),
        out.config.as_object().expect("the rewrite gives an object"),
    );
    // Every top-level field is still there, in the same order, and those
    // runvm does not own are unchanged.
    let order: Vec<&String> = o.keys().filter(|k| i.contains_key(*k)).collect();
    prop_assert_eq!(
        order,
        i.keys().collect::<Vec<_>>(),
        "top-level fields moved or vanished"
    );
    for (k, v) in i {
        if !OWNED_TOP.contains(&k.as_str()) {
            prop_assert_eq!(&o[k], v, "top-level field {} changed", k);
        }
    }
    // Inside the objects runvm edits, surviving fields keep their order.
    for place in [
        "/process",
        "/root",
        "/linux",
        "/linux/resources",
        "/linux/resources/memory",
    ] {
        if let (Some(a), Some(b)) = (input.pointer(place), out.config.pointer(place)) {
            prop_assert_eq!(
                common_keys(a, b),
                common_keys(b, a),
                "fields of {} reordered",
                place
            );
        }
    }
    for f in vendor {
        let at = format!("{}/{}", f.place, f.key);
        prop_assert_eq!(
            out.config.pointer(&at),
            Some(&f.value),
            "vendor field {} lost",
            at
        );
    }
    // Annotations are kept, and mark the config as rewritten.
    if let Some(Value::Object(a)) = i.get("annotations") {
        for (k, v) in a {
            if k != paths::ANNOTATION {
                prop_assert_eq!(&out.config["annotations"][k], v, "annotation {} changed", k);
            }
        }
    }
    prop_assert_eq!(&out.config["annotations"][paths::ANNOTATION], &json!("1"));
    // Docker's mounts: kept in order, each unchanged except for a
    // destination moved to a staging point, or (tmpfs) made by the guest.
    let out_mounts = out.config["mounts"].as_array().expect("mounts is an array");
    let mut from = 0;
    let mut staged = 0;
    for m in i
        .get("mounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let dest = m["destination"]
            .as_str()
            .expect("a kept mount had a destination");
        if m.get("type") == Some(&json!("tmpfs")) && !is_kernel_fs(dest) {
            prop_assert!(
                out.vm
                    .container
                    .mounts
                    .iter()
                    .any(|g| g.destination == dest),
                "tmpfs {} is neither kept nor made by the guest",
                dest
            );
            continue;
        }
        // A staged mount: the same mount at its staging point, with the
        // destination recorded, in Docker's order.
        let moved = match out.vm.staged_mounts.get(staged) {
            Some(st) if st.destination == dest => {
                let mut moved = m.clone();
                moved["destination"] = json!(st.staging);
                moved
            }
            _ => m.clone(),
        };
        if moved != *m {
            staged += 1;
        }
        // The host side's /sys and cgroup mounts are forced read-only.
        let forced_ro = {
            let mut f = m.clone();
            let kind = m.get("type").and_then(Value::as_str).unwrap_or("");
            if matches!(kind, "sysfs" | "cgroup" | "cgroup2") {
                if let Some(opts) = f.get_mut("options").and_then(Value::as_array_mut) {
                    opts.retain(|o| o != "rw");
                    if !opts.iter().any(|o| o == "ro") {
                        opts.push(json!("ro"));
                    }
                }
            }
            f
        };
        let found = out_mounts[from..]
            .iter()
            .position(|x| x == m || *x == moved || *x == forced_ro);
        prop_assert!(found.is_some(), "mount {} lost, changed or reordered", m);
        from += found.expect("checked") + 1;
    }
    // The guest runs the container's command.
    let process = &i["process"];
    prop_assert_eq!(
        Some(out.vm.container.process.args.clone()),
        strings(process.get("args"))
    );
    if let Some(env) = strings(process.get("env")) {
        prop_assert_eq!(&out.vm.container.process.env, &env);
    }
    // The memory limit grows by the VM overhead; the guest gets the
    // user's limit (or RUNVM_MEMORY).
    let mem_in = input.pointer("/linux/resources/memory");
    let mem_out = out.config.pointer("/linux/resources/memory");
    if let Some(limit) = positive_i64(mem_in.and_then(|m| m.get("limit"))) {
        let mem_out = mem_out.expect("the memory object is kept");
        let host = i64::try_from(host_memory_limit(limit as u64)).unwrap_or(i64::MAX);
        prop_assert!(host > limit || host == i64::MAX);
        prop_assert_eq!(&mem_out["limit"], &json!(host));
        if let Some(swap) = positive_i64(mem_in.and_then(|m| m.get("swap"))) {
            prop_assert_eq!(&mem_out["swap"], &json!(swap.saturating_add(host - limit)));
        }
        let guest = opts.memory_mib.unwrap_or(
            guest_ram_for_limit_mib(limit as u64)
                .min(common::host().host_memory_mib.max(MIN_MEMORY_MIB)),
        );
        prop_assert_eq!(out.vm.memory_mib, guest);
        prop_assert_eq!(out.vm.container.limits.memory_bytes, Some(limit as u64));
    } else if mem_in.is_some() {
        prop_assert_eq!(mem_out, mem_in, "a memory object without a limit changed");
    }
    prop_assert!(out.vm.memory_mib >= MIN_MEMORY_MIB);
    prop_assert!(out.vm.vcpus >= 1);
    // vm.json survives the trip to the supervisor.
    let text = serde_json::to_string(&out.vm).expect("VmConfig serialises");
    let back: VmConfig = serde_json::from_str(&text)
        .map_err(|e| TestCaseError::fail(format!("vm.json does not parse back: {e}: {text}")))?;
    prop_assert_eq!(&back, &out.vm);
    // A second rewrite is refused.
    let again = rewrite_config(out.config.clone(), opts, &host());
    prop_assert_eq!(again.err(), Some(RewriteError::AlreadyRewritten));
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn rewrite_config_never_panics_and_is_lossless(
        (input, vendor) in bad_config(),
        env in env_list(),
    ) {
        let opts = vm_options(&env, &[]).unwrap_or_else(|_| vm_options(&[], &[]).expect("defaults"));
        match rewrite_config(input.clone(), &opts, &host()) {
            Ok(out) => check_rewrite(&input, &vendor, &opts, &out)?,
            Err(e) => one_line(&e)?,
        }
    }

    /// The numbers of the container's resources, each of any size or type.
    #[test]
    fn rewrite_config_takes_any_resource_numbers(
        limit in edgy_number(),
        swap in edgy_number(),
        quota in edgy_number(),
        period in edgy_number(),
        cpus in edgy_string(),
        memory in prop::option::of(prop_oneof![Just(64u64), Just(128), 0u64..100_000, Just(u64::MAX)]),
    ) {
        let mut input = fixture("docker-20.10-full.json");
        input["linux"]["resources"]["memory"] = json!({"limit": limit, "swap": swap});
        input["linux"]["resources"]["cpu"] = json!({"quota": quota, "period": period, "cpus": cpus});
        let env: Vec<String> = memory.map(|m| format!("RUNVM_MEMORY={m}m")).into_iter().collect();
        let opts = vm_options(&env, &[]).unwrap_or_else(|_| vm_options(&[], &[]).expect("defaults"));
        match rewrite_config(input.clone(), &opts, &host()) {
            Ok(out) => check_rewrite(&input, &[], &opts, &out)?,
            Err(e) => one_line(&e)?,
        }
    }

    #[test]
    fn rewrite_config_takes_any_json(input in any_json()) {
        let opts = vm_options(&[], &[]).expect("defaults");
        match rewrite_config(input.clone(), &opts, &host()) {
            Ok(out) => check_rewrite(&input, &[], &opts, &out)?,
            Err(e) => one_line(&e)?,
        }
    }

    #[test]
    fn rewrite_exec_process_never_panics_and_is_lossless(
        (input, vendor) in bad_process(),
    ) {
        match rewrite_exec_process(input.clone()) {
            Ok((out, spec)) => {
                prop_assert_eq!(&spec, &guest_process(&input).expect("the rewrite accepted it"));
                for f in &vendor {
                    prop_assert_eq!(out.get(&f.key), Some(&f.value), "vendor field {} lost", f.key);
                }
                // The exec client finds the original process in its
                // environment, exactly.
                let env = strings(out.get("env")).expect("env is a list of strings");
                let lookup = |name: &str| {
                    let prefix = format!("{name}=");
                    env.iter().find_map(|kv| kv.strip_prefix(&prefix).map(str::to_owned))
                };
                let back = runvm_contract::exec_spec::decode(lookup)
                    .map_err(|e| TestCaseError::fail(format!("the exec spec does not decode: {e}")))?;
                prop_assert_eq!(back, spec);
                // The fields of the process keep their order.
                prop_assert_eq!(common_keys(&input, &out), common_keys(&out, &input));
            }
            Err(e) => one_line(&e)?,
        }
    }

    #[test]
    fn rewrite_exec_process_takes_any_json(input in any_json()) {
        if let Err(e) = rewrite_exec_process(input) {
            one_line(&e)?;
        }
    }

    #[test]
    fn rewrite_update_resources_only_grows_the_memory_limit(
        input in prop_oneof![
            bad_config().prop_map(|(c, _)| c.pointer("/linux/resources").cloned().unwrap_or(Value::Null)),
            any_json(),
            (edgy_number(), edgy_number(), any_json()).prop_map(|(limit, swap, other)| {
                json!({"memory": {"limit": limit, "swap": swap, "x": other}, "pids": {"limit": 5}})
            }),
        ],
    ) {
        let out = rewrite_update_resources(input.clone(), None);
        let limit = positive_i64(input.pointer("/memory/limit"));
        let pids = positive_i64(input.pointer("/pids/limit"));
        // Everything but the memory limit and swap and the pids limit is
        // unchanged.
        let strip = |v: &Value| {
            let mut v = v.clone();
            if let Some(Value::Object(m)) = v.get_mut("memory") {
                if limit.is_some() {
                    m.remove("limit");
                    m.remove("swap");
                }
            }
            if let Some(Value::Object(p)) = v.get_mut("pids") {
                if pids.is_some() {
                    p.remove("limit");
                }
            }
            v
        };
        prop_assert_eq!(strip(&out), strip(&input));
        if let Some(p) = pids {
            prop_assert_eq!(&out["pids"]["limit"], &json!(p.saturating_add(VM_OVERHEAD_PIDS)));
        }
        if let Some(limit) = limit {
            let host = i64::try_from(host_memory_limit(limit as u64)).unwrap_or(i64::MAX);
            let overhead = host - limit;
            prop_assert_eq!(&out["memory"]["limit"], &json!(host));
            match positive_i64(input.pointer("/memory/swap")) {
                Some(swap) => prop_assert_eq!(&out["memory"]["swap"], &json!(swap.saturating_add(overhead))),
                None => prop_assert_eq!(out.pointer("/memory/swap"), input.pointer("/memory/swap")),
            }
        }
    }

    /// `RUNVM_*` settings: the container's last value wins over the
    /// runtime's; a value is used as given or refused with an error that
    /// names the variable and the value.
    #[test]
    fn vm_options_take_any_environment(env in env_list(), fallback in env_list()) {
        let get = |name: &str| lookup(&env, &fallback, name).filter(|v| !v.is_empty());
        match vm_options(&env, &fallback) {
            Ok(o) => {
                prop_assert_eq!(o.cpus, get("RUNVM_CPUS").map(|v| v.parse::<u32>().expect("accepted")));
                if let Some(c) = o.cpus {
                    prop_assert!((1..=255).contains(&c));
                }
                prop_assert_eq!(o.memory_mib, get("RUNVM_MEMORY").map(|v| parse_size_mib(&v).expect("accepted")));
                prop_assert_eq!(o.kernel.clone(), get("RUNVM_KERNEL"));
                if let Some(k) = &o.kernel {
                    // A store name, never a path.
                    prop_assert!(!k.contains('/') && !k.starts_with('.'), "{}", k);
                }
                prop_assert_eq!(o.debug, matches!(get("RUNVM_DEBUG").as_deref(), Some("1" | "true")));
                let accel = match get("RUNVM_ACCEL").as_deref() {
                    None | Some("auto") => AccelRequest::Auto,
                    Some("kvm") => AccelRequest::Kvm,
                    Some("tcg") => AccelRequest::Tcg,
                    Some(other) => return Err(TestCaseError::fail(format!("RUNVM_ACCEL={other:?} accepted"))),
                };
                prop_assert_eq!(o.accel, accel);
            }
            Err(e) => {
                one_line(&e)?;
                prop_assert!(e.to_string().contains(e.name), "{} does not name {}", e, e.name);
                prop_assert_eq!(Some(e.value.clone()), lookup(&env, &fallback, e.name),
                    "the error names a value that was not given");
            }
        }
    }

    #[test]
    fn parse_size_mib_takes_any_string(s in ".{0,24}") {
        if let Some(m) = parse_size_mib(&s) {
            prop_assert!(m >= 64, "{:?} gave {} MiB", s, m);
        }
    }

    #[test]
    fn parse_size_mib_reads_numbers_with_units(
        n in prop_oneof![0u64..100_000, any::<u64>()],
        unit in prop::sample::select(vec!["", "m", "mb", "mib", "g", "gb", "gib", "b"]),
        upper in any::<bool>(),
        pad in prop::sample::select(vec!["", " ", "\t"]),
    ) {
        let text = format!("{pad}{n}{unit}{pad}");
        let text = if upper { text.to_uppercase() } else { text };
        let mib = match unit {
            "" | "m" | "mb" | "mib" => Some(n),
            "g" | "gb" | "gib" => n.checked_mul(1024),
            "b" => Some(n / (1024 * 1024)),
            _ => unreachable!(),
        };
        prop_assert_eq!(parse_size_mib(&text), mib.filter(|m| *m >= 64), "{:?}", text);
    }
}

#[test]
fn huge_memory_limits_do_not_overflow() {
    for limit in [i64::MAX, i64::MAX - 1, i64::MAX - 255 * 1024 * 1024] {
        let mut c = fixture("docker-20.10-full.json");
        c["linux"]["resources"]["memory"] = json!({"limit": limit, "swap": limit});
        let opts = vm_options(&["RUNVM_MEMORY=1g".into()], &[]).unwrap();
        let out = rewrite_config(c, &opts, &host()).expect("a huge limit is a limit");
        assert_eq!(
            out.config["linux"]["resources"]["memory"]["limit"],
            json!(i64::MAX)
        );
        assert_eq!(
            out.config["linux"]["resources"]["memory"]["swap"],
            json!(i64::MAX)
        );
        let r = rewrite_update_resources(json!({"memory": {"limit": limit, "swap": limit}}), None);
        assert_eq!(r, json!({"memory": {"limit": i64::MAX, "swap": i64::MAX}}));
    }
}

#[test]
fn malformed_cpu_sets_are_ignored_not_a_crash() {
    for cpus in [
        "5-2",
        "0-4294967295",
        "4294967295-4294967295",
        "1-0",
        "0-0,3-1",
    ] {
        let mut c = fixture("docker-20.10-full.json");
        c["linux"]["resources"]["cpu"] = json!({"cpus": cpus});
        let out = rewrite_config(c, &vm_options(&[], &[]).unwrap(), &host());
        let vcpus = out.map(|r| r.vm.vcpus);
        assert!(matches!(vcpus, Ok(n) if n >= 1), "{cpus}: {vcpus:?}");
    }
    // A well-formed set still counts.
    let mut c = fixture("docker-20.10-full.json");
    c["linux"]["resources"]["cpu"] = json!({"cpus": "0-1,3"});
    let out = rewrite_config(c, &vm_options(&[], &[]).unwrap(), &host()).unwrap();
    assert_eq!(out.vm.vcpus, 3);
}

#[test]
fn deep_nesting_in_any_field_is_fine() {
    let mut deep = json!("bottom");
    for _ in 0..500 {
        deep = json!({"a": [deep]});
    }
    let mut c = fixture("docker-20.10-full.json");
    c["x-deep"] = deep.clone();
    c["linux"]["resources"]["memory"]["x-deep"] = deep.clone();
    let out = rewrite_config(c, &vm_options(&[], &[]).unwrap(), &host()).unwrap();
    assert_eq!(out.config["x-deep"], deep);
    let mut c = fixture("docker-20.10-full.json");
    c["process"]["args"] = deep;
    assert!(matches!(
        rewrite_config(c, &vm_options(&[], &[]).unwrap(), &host()),
        Err(RewriteError::Malformed {
            field: "process.args",
            ..
        })
    ));
}
