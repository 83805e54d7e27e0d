//! The rewrite on real config.json files written by Docker 20.10.

use runvm_config::rewrite::guest_process;
use runvm_config::*;
use runvm_contract::{Accel, VmConfig};
use serde_json::{json, Value};

mod common;
use common::{fixture, host};

fn opts(env: &[&str]) -> VmOptions {
    let env: Vec<String> = env.iter().map(|s| s.to_string()).collect();
    VmOptions::from_env(&env, |_| None).unwrap()
}

fn mount<'a>(config: &'a Value, dest: &str) -> Option<&'a Value> {
    config["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["destination"] == dest)
}

#[test]
fn everything_runvm_does_not_own_passes_through() {
    let mut orig = fixture("docker-20.10-full.json");
    // Fields no version of the OCI spec has must survive too.
    orig["x-vendor"] = json!({"a": [1, 2, {"b": null}]});
    orig["process"]["x-extra"] = json!(true);
    orig["linux"]["x-extra"] = json!("keep me");
    let out = rewrite_config(orig.clone(), &opts(&[]), &host())
        .unwrap()
        .config;
    for key in orig.as_object().unwrap().keys() {
        assert!(out.get(key).is_some(), "top-level {key} was dropped");
    }
    // (linux.seccomp is runvm's own: see below.)
    for key in [
        "maskedPaths",
        "readonlyPaths",
        "namespaces",
        "cgroupsPath",
        "x-extra",
    ] {
        assert_eq!(out["linux"][key], orig["linux"][key], "linux.{key} changed");
    }
    // The sysctls stay; runvm adds the resolver's port range.
    for (k, v) in orig["linux"]["sysctl"].as_object().into_iter().flatten() {
        assert_eq!(&out["linux"]["sysctl"][k], v, "linux.sysctl.{k} changed");
    }
    assert_eq!(out["hooks"], orig["hooks"]);
    assert_eq!(out["x-vendor"], orig["x-vendor"]);
    assert_eq!(out["process"]["x-extra"], json!(true));
    assert_eq!(
        out["process"]["oomScoreAdj"],
        orig["process"]["oomScoreAdj"]
    );
    assert_eq!(out["process"]["terminal"], orig["process"]["terminal"]);
    assert_eq!(out["hostname"], orig["hostname"]);
    // Key order of the untouched parts is kept (serde_json preserve_order).
    let ok: Vec<_> = orig.as_object().unwrap().keys().collect();
    let nk: Vec<_> = out
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| ok.contains(k))
        .collect();
    assert_eq!(ok, nk);
    // And the result is plain JSON that parses back to itself.
    let text = serde_json::to_string_pretty(&out).unwrap();
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), out);
}

#[test]
fn root_becomes_runvm_dir_with_image_root_mounted_first() {
    let orig = fixture("docker-20.10-default.json");
    let out = rewrite_config(orig.clone(), &opts(&[]), &host())
        .unwrap()
        .config;
    assert_eq!(out["root"]["path"], "/run/bundle/runvm/root");
    assert_eq!(out["root"]["readonly"], true);
    let first = &out["mounts"][0];
    assert_eq!(first["destination"], "/rootfs");
    assert_eq!(first["source"], orig["root"]["path"]);
    assert_eq!(first["options"], json!(["rbind", "rprivate"]));
    let usr = mount(&out, "/usr").unwrap();
    assert!(usr["options"].as_array().unwrap().contains(&json!("ro")));
    assert_eq!(
        mount(&out, "/runvm/vmlinuz").unwrap()["source"],
        "/var/lib/runvm/kernel/boot/vmlinuz"
    );
}

#[test]
fn docker_mounts_are_staged_in_runvms_root_and_tmpfs_goes_to_the_guest() {
    let orig = fixture("docker-20.10-full.json");
    let r = rewrite_config(orig.clone(), &opts(&[]), &host()).unwrap();
    let out = &r.config;
    for kept in [
        "/proc",
        "/dev",
        "/dev/pts",
        "/sys",
        "/sys/fs/cgroup",
        "/dev/mqueue",
        "/dev/shm",
    ] {
        assert!(
            mount(out, kept).is_some(),
            "{kept} must stay for the supervisor"
        );
    }
    for moved in [
        "/data",
        "/hosttmp",
        "/etc/resolv.conf",
        "/etc/hostname",
        "/etc/hosts",
    ] {
        assert!(mount(out, moved).is_none(), "{moved} must move");
        let staged: Vec<_> =
            r.vm.staged_mounts
                .iter()
                .filter(|s| s.destination == moved)
                .collect();
        assert_eq!(staged.len(), 1, "{moved} staged once");
        assert!(
            staged[0].staging.starts_with("/runvm/mnt/"),
            "{:?}",
            staged[0]
        );
        let m = mount(out, &staged[0].staging).unwrap();
        let o = mount(&orig, moved).unwrap();
        assert_eq!(m["source"], o["source"]);
        assert_eq!(m["options"], o["options"]);
    }
    // runc never resolves a destination the image could redirect: every
    // mount it makes is a kernel filesystem, runvm's own, or a staging point.
    for m in out["mounts"].as_array().unwrap() {
        let d = m["destination"].as_str().unwrap();
        assert!(
            !d.starts_with("/rootfs/"),
            "runc would resolve {d} through the image"
        );
    }
    // Staging points are distinct and in Docker's order (parents first).
    let order: Vec<&str> =
        r.vm.staged_mounts
            .iter()
            .map(|s| s.destination.as_str())
            .collect();
    let in_orig: Vec<&str> = orig["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["destination"].as_str().unwrap())
        .filter(|d| order.contains(d))
        .collect();
    assert_eq!(order, in_orig);
    assert!(mount(out, "/scratch").is_none());
    assert!(!r
        .vm
        .staged_mounts
        .iter()
        .any(|s| s.destination == "/scratch"));
    let scratch =
        r.vm.container
            .mounts
            .iter()
            .find(|m| m.destination == "/scratch")
            .unwrap();
    assert_eq!(scratch.fstype, "tmpfs");
    assert!(scratch.options.contains(&"size=10m".to_string()));
    let shm =
        r.vm.container
            .mounts
            .iter()
            .find(|m| m.destination == "/dev/shm")
            .unwrap();
    assert!(shm.options.contains(&"size=67108864".to_string()));
}

#[test]
fn the_process_becomes_the_supervisor_and_the_original_goes_to_the_guest() {
    let orig = fixture("docker-20.10-full.json");
    let r = rewrite_config(orig, &opts(&[]), &host()).unwrap();
    let p = &r.config["process"];
    assert_eq!(p["args"], json!(["/runvm/bin/runvm-supervisor"]));
    assert_eq!(p["user"], json!({"uid": 0, "gid": 0}));
    assert_eq!(p["cwd"], "/");
    assert!(p.get("rlimits").is_none());
    for set in ["bounding", "effective", "permitted"] {
        let caps = p["capabilities"][set].as_array().unwrap();
        assert_eq!(
            caps,
            &runvm_config::rewrite::SUPERVISOR_CAPS
                .iter()
                .map(|c| json!(c))
                .collect::<Vec<_>>(),
            "the host side has runvm's set only, not Docker's"
        );
    }
    assert!(p["capabilities"].get("ambient").is_none());
    assert_eq!(p["noNewPrivileges"], true);
    let g = &r.vm.container.process;
    assert_eq!(g.args, vec!["sleep", "30"]);
    assert_eq!((g.uid, g.gid), (1000, 1000));
    assert_eq!(g.additional_gids, vec![1000, 44]);
    assert_eq!(g.cwd, "/tmp");
    assert!(g.terminal);
    assert!(g.env.contains(&"FOO=bar".to_string()));
    assert_eq!(g.rlimits[0].kind, "RLIMIT_NOFILE");
    assert_eq!((g.rlimits[0].soft, g.rlimits[0].hard), (1024, 2048));
    assert_eq!(r.vm.container.hostname.as_deref(), Some("myhost"));
    let caps = g.capabilities.as_ref().unwrap();
    assert!(caps.bounding.contains(&"CAP_AUDIT_WRITE".to_string()));
    assert!(
        !caps.bounding.contains(&"CAP_NET_ADMIN".to_string()),
        "the guest gets Docker's set, not the supervisor's"
    );
    assert!(
        caps.effective.is_empty(),
        "Docker gives a non-root user no effective caps"
    );
}

#[test]
fn memory_limit_grows_by_the_overhead_and_cpus_follow_the_quota() {
    let orig = fixture("docker-20.10-full.json");
    let r = rewrite_config(orig, &opts(&[]), &host()).unwrap();
    let mem = &r.config["linux"]["resources"]["memory"];
    // 256 MiB for the workload (held there by the guest's cgroup), the
    // guest kernel's 64 MiB beside it, QEMU's and virtiofsd's 256 MiB.
    let mib = 1024 * 1024;
    assert_eq!(mem["limit"], json!(580 * mib));
    assert_eq!(mem["swap"], json!((512 + 324) * mib));
    assert_eq!(r.vm.memory_mib, 256 + rewrite::GUEST_KERNEL_MIB + 4);
    assert_eq!(r.vm.container.limits.memory_bytes, Some(256 * mib as u64));
    assert_eq!(r.vm.vcpus, 2, "--cpus 1.5 rounds up to 2 vCPUs");

    let def = rewrite_config(fixture("docker-20.10-default.json"), &opts(&[]), &host()).unwrap();
    assert_eq!(def.vm.memory_mib, rewrite::DEFAULT_MEMORY_MIB);
    assert_eq!(def.vm.vcpus, 2, "every host CPU without a limit");
    let set = rewrite_config(
        fixture("docker-20.10-default.json"),
        &opts(&["RUNVM_MEMORY=1g", "RUNVM_CPUS=1"]),
        &host(),
    )
    .unwrap();
    assert_eq!((set.vm.memory_mib, set.vm.vcpus), (1024, 1));
}

#[test]
fn a_tiny_runvm_memory_names_runvm_memory_not_the_memory_flag() {
    let orig = fixture("docker-20.10-default.json");
    let e = rewrite_config(orig, &opts(&["RUNVM_MEMORY=64m"]), &host()).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("RUNVM_MEMORY=\"64m\""), "{msg}");
    assert!(msg.contains("128m"), "{msg}");
    assert!(!msg.contains("--memory"), "{msg}");
}

#[test]
fn a_cpu_quota_too_small_to_boot_under_tcg_is_refused_with_the_fix() {
    let quota = |q: i64| {
        let mut c = fixture("docker-20.10-full.json");
        c["linux"]["resources"]["cpu"]["quota"] = json!(q);
        c["linux"]["resources"]["cpu"]["period"] = json!(100000);
        c
    };
    // --cpus 0.01: refused under TCG, naming the limit and the fix.
    let e = rewrite_config(quota(1000), &opts(&[]), &host()).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("0.010 CPUs"), "{msg}");
    assert!(msg.contains("--cpus 0.1"), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");
    // --cpus 0.1 boots (slowly): accepted, one vCPU.
    let r = rewrite_config(quota(10000), &opts(&[]), &host()).unwrap();
    assert_eq!(r.vm.vcpus, 1);
    // Under KVM a small quota is left alone.
    let mut kvm = host();
    kvm.accel = Accel::Kvm;
    assert!(rewrite_config(quota(1000), &opts(&[]), &kvm).is_ok());
}

#[test]
fn devices_are_added_once_with_cgroup_rules() {
    let orig = fixture("docker-20.10-default.json");
    let out = rewrite_config(orig, &opts(&[]), &host()).unwrap().config;
    let devs = out["linux"]["devices"].as_array().unwrap();
    assert_eq!(devs.iter().filter(|d| d["path"] == "/dev/kvm").count(), 1);
    let rules = out["linux"]["resources"]["devices"].as_array().unwrap();
    assert!(rules
        .iter()
        .any(|r| r["major"] == 10 && r["minor"] == 232 && r["allow"] == true));
    // The rule comes after Docker's deny-all, so it takes effect.
    assert_eq!(rules[0]["allow"], false);
}

#[test]
fn a_second_rewrite_is_refused() {
    let orig = fixture("docker-20.10-default.json");
    let once = rewrite_config(orig, &opts(&[]), &host()).unwrap().config;
    let e = rewrite_config(once, &opts(&[]), &host()).unwrap_err();
    assert_eq!(e, RewriteError::AlreadyRewritten);
}

#[test]
fn not_an_oci_config_is_a_clear_error() {
    let e = rewrite_config(json!({"root": {"path": "/x"}}), &opts(&[]), &host()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "config.json has no \"process\" object; it is not an OCI runtime config"
    );
}

#[test]
fn an_exec_process_becomes_the_exec_client_carrying_the_original() {
    let process = json!({
        "terminal": true,
        "consoleSize": {"height": 30, "width": 100},
        "user": {"uid": 1000, "gid": 1000, "additionalGids": [10]},
        "args": ["sh", "-c", "echo hi"],
        "env": ["PATH=/bin", "A=1"],
        "cwd": "/tmp",
        "capabilities": {"bounding": ["CAP_KILL"]},
        "x-future-field": 42
    });
    let (out, spec) = rewrite_exec_process(process).unwrap();
    assert_eq!(out["args"], json!(["/runvm/bin/runvm-supervisor", "exec"]));
    assert_eq!(out["user"], json!({"uid": 0, "gid": 0}));
    assert_eq!(out["terminal"], true);
    assert_eq!(out["consoleSize"]["height"], 30);
    assert_eq!(out["x-future-field"], 42);
    let env: Vec<&str> = out["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    let var = |name: &str| {
        env.iter()
            .find_map(|e| e.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_owned)
    };
    let back = runvm_contract::exec_spec::decode(var).unwrap();
    assert_eq!(back, spec);
    assert_eq!(spec.args, ["sh", "-c", "echo hi"]);
    assert_eq!(
        (spec.uid, spec.gid, spec.additional_gids.clone()),
        (1000, 1000, vec![10])
    );
    assert_eq!(spec.console_size, Some((30, 100)));
    assert_eq!(spec.cwd, "/tmp");
    // The exec client has no capability on the host side; the exec's own
    // capabilities travel to the guest.
    for set in ["bounding", "effective", "permitted"] {
        assert_eq!(out["capabilities"][set], json!([]), "{set}");
    }
    assert_eq!(out["noNewPrivileges"], true);
    assert_eq!(spec.capabilities.unwrap().bounding, ["CAP_KILL"]);
}

#[test]
fn privileged_and_cap_add_do_not_reach_the_host_side() {
    let mut orig = fixture("docker-20.10-default.json");
    let all = json!([
        "CAP_SYS_ADMIN",
        "CAP_SYS_MODULE",
        "CAP_SYS_RAWIO",
        "CAP_SYS_PTRACE"
    ]);
    for set in [
        "bounding",
        "effective",
        "permitted",
        "inheritable",
        "ambient",
    ] {
        orig["process"]["capabilities"][set] = all.clone();
    }
    let mut r = rewrite_config(orig, &opts(&[]), &host()).unwrap();
    let caps = &r.config["process"]["capabilities"];
    for c in [
        "CAP_SYS_ADMIN",
        "CAP_SYS_MODULE",
        "CAP_SYS_RAWIO",
        "CAP_SYS_PTRACE",
    ] {
        assert!(
            !caps["bounding"].as_array().unwrap().contains(&json!(c)),
            "{c}"
        );
    }
    assert_eq!(
        r.vm.container
            .process
            .capabilities
            .as_ref()
            .unwrap()
            .bounding,
        [
            "CAP_SYS_ADMIN",
            "CAP_SYS_MODULE",
            "CAP_SYS_RAWIO",
            "CAP_SYS_PTRACE"
        ]
    );
    // `runc run` only: the supervisor places the mounts itself.
    runvm_config::rewrite::grant_mount_placement(&mut r.config);
    for set in ["bounding", "effective", "permitted"] {
        assert!(r.config["process"]["capabilities"][set]
            .as_array()
            .unwrap()
            .contains(&json!("CAP_SYS_ADMIN")));
    }
}

#[test]
fn only_a_private_network_namespace_is_accepted_and_gets_the_resolver_ports() {
    let r = rewrite_config(fixture("docker-20.10-default.json"), &opts(&[]), &host()).unwrap();
    assert!(r.vm.own_network);
    assert_eq!(
        r.config["linux"]["sysctl"]["net.ipv4.ip_local_port_range"],
        "61440 65535"
    );
    let mut host_net = fixture("docker-20.10-default.json");
    host_net["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .retain(|n| n["type"] != "network");
    let err = rewrite_config(host_net, &opts(&[]), &host()).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("--network host is not supported by runvm: a VM runs its own kernel"),
        "{err}"
    );
    // What Docker 20.10 writes for --network host: the host's namespace by
    // path (/var/run/docker/netns/default, a bind mount of it), the one
    // runvm itself runs in.
    let mut host_by_path = fixture("docker-20.10-default.json");
    for n in host_by_path["linux"]["namespaces"].as_array_mut().unwrap() {
        if n["type"] == "network" {
            n["path"] = json!("/proc/self/ns/net");
        }
    }
    let err = rewrite_config(host_by_path, &opts(&[]), &host()).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("--network host is not supported by runvm"),
        "{err}"
    );
    // What Docker 20.10 writes for --network container:X.
    let mut joined = fixture("docker-20.10-default.json");
    for n in joined["linux"]["namespaces"].as_array_mut().unwrap() {
        if n["type"] == "network" {
            n["path"] = json!("/proc/4211/ns/net");
        }
    }
    let err = rewrite_config(joined, &opts(&[]), &host()).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("--network container:<name> is not supported by runvm"),
        "{err}"
    );
    assert!(!err.to_string().contains('\n'));
}

#[test]
fn the_containers_own_sysctls_are_kept_beside_the_resolver_ports() {
    let mut orig = fixture("docker-20.10-default.json");
    orig["linux"]["sysctl"] = json!({"net.ipv4.ping_group_range": "0 2147483647"});
    let r = rewrite_config(orig, &opts(&[]), &host()).unwrap();
    assert_eq!(
        r.config["linux"]["sysctl"],
        json!({
            "net.ipv4.ping_group_range": "0 2147483647",
            "net.ipv4.ip_local_port_range": "61440 65535"
        })
    );
}

#[test]
fn the_guest_gets_the_containers_sysctls_in_order_and_not_runvms() {
    let mut orig = fixture("docker-20.10-default.json");
    orig["linux"]["sysctl"] = json!({
        "net.ipv4.ip_forward": "1",
        "kernel.domainname": "example.org",
        "net.ipv4.ip_unprivileged_port_start": "0"
    });
    let r = rewrite_config(orig, &opts(&[]), &host()).unwrap();
    let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
    assert_eq!(
        r.vm.container.sysctl,
        [
            pair("net.ipv4.ip_forward", "1"),
            pair("kernel.domainname", "example.org"),
            pair("net.ipv4.ip_unprivileged_port_start", "0"),
        ]
    );
}

#[test]
fn a_sysctl_value_that_is_not_a_string_is_refused() {
    let mut orig = fixture("docker-20.10-default.json");
    orig["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": 1});
    let err = rewrite_config(orig, &opts(&[]), &host()).unwrap_err();
    assert!(err.to_string().contains("linux.sysctl"), "{err}");
}

#[test]
fn docker_update_keeps_room_for_qemu() {
    // 512 MiB: 64 MiB for the guest kernel, 8 for its page descriptors,
    // 256 for QEMU.
    let added = ((64 + 8 + rewrite::VM_OVERHEAD_MIB) * 1024 * 1024) as i64;
    let r = rewrite_update_resources(
        json!({
            "memory": {"limit": 536870912, "swap": 1073741824},
            "cpu": {"shares": 512},
            "x-other": true
        }),
        None,
    );
    assert_eq!(r["memory"]["limit"], json!(536870912 + added));
    assert_eq!(r["memory"]["swap"], json!(1073741824 + added));
    assert_eq!(r["cpu"]["shares"], 512);
    assert_eq!(r["x-other"], true);
    let unlimited =
        rewrite_update_resources(json!({"memory": {"limit": 0}, "pids": {"limit": 5}}), None);
    assert_eq!(
        unlimited,
        json!({"memory": {"limit": 0}, "pids": {"limit": 5 + rewrite::VM_OVERHEAD_PIDS}})
    );
    // Below what the VM booted with, the host limit stays above its RAM.
    let mib = 1024 * 1024;
    let low = rewrite_update_resources(json!({"memory": {"limit": 64 * mib}}), Some(600));
    assert_eq!(
        low["memory"]["limit"],
        json!((600 + rewrite::VM_OVERHEAD_MIB) * mib as u64)
    );
    let pids = rewrite_update_resources(json!({"pids": {"limit": 4194300}}), None);
    assert_eq!(pids["pids"]["limit"], json!(4194304), "pids.max's ceiling");
}

#[test]
fn any_memory_limit_docker_accepts_gets_a_vm_and_the_guest_holds_the_limits() {
    let mib: u64 = 1024 * 1024;
    for (limit, guest) in [
        (6 * mib, 128),
        (64 * mib, 129),
        (100 * mib, 166),
        (mib / 2 + 64 * mib, 131),
        (16 * 1024 * mib, 16384 + 64 + 256),
    ] {
        let mut orig = fixture("docker-20.10-default.json");
        orig["linux"]["resources"]["memory"] = json!({"limit": limit});
        orig["linux"]["resources"]["pids"] = json!({"limit": 10});
        let mut big_host = host();
        big_host.host_memory_mib = 64 * 1024;
        let r = rewrite_config(orig, &opts(&[]), &big_host).unwrap();
        assert_eq!(r.vm.memory_mib, guest, "-m {limit}");
        assert_eq!(r.vm.container.limits.memory_bytes, Some(limit));
        assert_eq!(r.vm.container.limits.pids, Some(10));
        assert_eq!(
            r.config["linux"]["resources"]["memory"]["limit"],
            json!((guest + rewrite::VM_OVERHEAD_MIB) * mib)
        );
        assert_eq!(
            r.config["linux"]["resources"]["pids"]["limit"],
            json!(10 + rewrite::VM_OVERHEAD_PIDS)
        );
    }
    let none = rewrite_config(fixture("docker-20.10-default.json"), &opts(&[]), &host()).unwrap();
    assert!(!none.vm.container.limits.any());
    // A limit beyond the host's memory ("no limit" to many) gets a guest
    // of the host's memory, not one whose page tables alone cost GiBs;
    // the guest cgroup still holds the limit asked for.
    let mut orig = fixture("docker-20.10-default.json");
    orig["linux"]["resources"]["memory"] = json!({"limit": 64u64 << 30});
    let r = rewrite_config(orig, &opts(&[]), &host()).unwrap();
    assert_eq!(r.vm.memory_mib, host().host_memory_mib);
    assert_eq!(r.vm.container.limits.memory_bytes, Some(64u64 << 30));
}

#[test]
fn a_relative_mount_destination_is_refused() {
    let mut orig = fixture("docker-20.10-default.json");
    orig["mounts"].as_array_mut().unwrap().push(
        json!({"destination": "data", "type": "bind", "source": "/srv", "options": ["rbind"]}),
    );
    let e = rewrite_config(orig, &opts(&[]), &host()).unwrap_err();
    assert!(
        e.to_string().contains("\"data\" is not an absolute path"),
        "{e}"
    );
}

#[test]
fn read_only_root_is_applied_after_the_mounts_are_placed() {
    let mut orig = fixture("docker-20.10-default.json");
    orig["root"]["readonly"] = json!(true);
    let r = rewrite_config(orig, &opts(&[]), &host()).unwrap();
    let first = &r.config["mounts"][0];
    assert_eq!(first["destination"], "/rootfs");
    assert!(!first["options"].as_array().unwrap().contains(&json!("ro")));
    assert!(r.vm.container.readonly_root);
}

#[test]
fn runvm_memory_and_cpus_may_lower_the_engines_limits_never_raise_them() {
    let mut orig = fixture("docker-20.10-default.json");
    orig["linux"]["resources"]["memory"] = json!({"limit": 300 * 1024 * 1024});
    orig["linux"]["resources"]["cpu"] = json!({"quota": 100000, "period": 100000});
    // Lower: fine.
    let r = rewrite_config(
        orig.clone(),
        &opts(&["RUNVM_MEMORY=200m", "RUNVM_CPUS=1"]),
        &host(),
    )
    .unwrap();
    assert_eq!((r.vm.memory_mib, r.vm.vcpus), (200, 1));
    // Raise: refused, one line naming the variable and the limit.
    let e = rewrite_config(orig.clone(), &opts(&["RUNVM_MEMORY=4g"]), &host()).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("RUNVM_MEMORY") && msg.contains("300 MiB") && !msg.contains('\n'),
        "{msg}"
    );
    let e = rewrite_config(orig, &opts(&["RUNVM_CPUS=2"]), &host()).unwrap_err();
    assert!(e.to_string().contains("RUNVM_CPUS"), "{e}");
    // Without engine limits, the host is the limit.
    let orig = fixture("docker-20.10-default.json");
    let e = rewrite_config(orig.clone(), &opts(&["RUNVM_MEMORY=64g"]), &host()).unwrap_err();
    assert!(e.to_string().contains("4096 MiB"), "{e}");
    let e = rewrite_config(orig.clone(), &opts(&["RUNVM_CPUS=3"]), &host()).unwrap_err();
    assert!(e.to_string().contains("2 CPUs"), "{e}");
    let r = rewrite_config(orig, &opts(&["RUNVM_MEMORY=1g", "RUNVM_CPUS=2"]), &host()).unwrap();
    assert_eq!((r.vm.memory_mib, r.vm.vcpus), (1024, 2));
}

#[test]
fn kvm_belongs_to_qemus_own_unprivileged_ids() {
    let r = rewrite_config(fixture("docker-20.10-default.json"), &opts(&[]), &host()).unwrap();
    let kvm = r.config["linux"]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["path"] == "/dev/kvm")
        .unwrap();
    assert_eq!(
        (kvm["uid"].as_u64(), kvm["gid"].as_u64()),
        (Some(2130706500), Some(2130706500))
    );
    assert_eq!(kvm["fileMode"], 0o600);
    assert_eq!((r.vm.qemu_uid, r.vm.qemu_gid), (2130706500, 2130706500));
    let a =
        runvm_config::rewrite::qemu_ids("/run/containerd/io.containerd.runtime.v2.task/moby/aaa");
    let b =
        runvm_config::rewrite::qemu_ids("/run/containerd/io.containerd.runtime.v2.task/moby/bbb");
    assert_ne!(a, b);
    for (uid, _) in [a, b] {
        assert!((runvm_config::rewrite::QEMU_ID_BASE..i32::MAX as u32).contains(&uid));
    }
}

#[test]
fn runvms_profile_goes_to_the_host_side_and_the_containers_to_the_guest() {
    let orig = fixture("docker-20.10-default.json");
    assert!(orig["linux"]["seccomp"].is_object());
    let r = rewrite_config(orig.clone(), &opts(&[]), &host()).unwrap();
    // runc installs runvm's own profile on the supervisor...
    assert_eq!(r.config["linux"]["seccomp"], host_seccomp::profile());
    assert_ne!(r.config["linux"]["seccomp"], orig["linux"]["seccomp"]);
    // ... and the guest gets the container's, compiled.
    let guest = r.vm.container.seccomp.as_ref().expect("a guest filter");
    assert_eq!(
        *guest,
        seccomp::compile(&orig["linux"]["seccomp"])
            .unwrap()
            .unwrap()
    );
    // The key keeps its place in linux.
    let keys =
        |v: &Value| -> Vec<String> { v["linux"].as_object().unwrap().keys().cloned().collect() };
    let pos = |v: &Value| keys(v).iter().position(|k| k == "seccomp");
    assert_eq!(pos(&orig), pos(&r.config));
}

#[test]
fn unconfined_and_privileged_containers_still_get_runvms_profile_on_the_host() {
    // seccomp=unconfined and --privileged: Docker writes no linux.seccomp,
    // no masked or read-only paths, and a read-write /sys.
    let mut orig = fixture("docker-20.10-default.json");
    let linux = orig["linux"].as_object_mut().unwrap();
    linux.remove("seccomp");
    linux.remove("maskedPaths");
    linux.remove("readonlyPaths");
    for m in orig["mounts"].as_array_mut().unwrap() {
        if m["destination"] == "/sys" || m["destination"] == "/sys/fs/cgroup" {
            let opts = m["options"].as_array_mut().unwrap();
            opts.retain(|o| o != "ro");
            opts.push(json!("rw"));
        }
    }
    // --privileged's device rule: every device.
    orig["linux"]["resources"]["devices"] = json!([{"allow": true, "access": "rwm"}]);
    let r = rewrite_config(orig, &opts(&[]), &host()).unwrap();
    assert_eq!(r.config["linux"]["seccomp"], host_seccomp::profile());
    let c = &r.vm.container;
    assert!(c.seccomp.is_none());
    assert!(c.masked_paths.is_empty() && c.readonly_paths.is_empty());
    assert!(!c.sysfs_readonly && !c.cgroup_readonly);
    assert!(c.any_device);
}

#[test]
fn any_device_is_what_the_device_cgroup_allows_for_every_device() {
    let with = |rules: Value| {
        let mut orig = fixture("docker-20.10-default.json");
        orig["linux"]["resources"]["devices"] = rules;
        rewrite_config(orig, &opts(&[]), &host())
            .unwrap()
            .vm
            .container
            .any_device
    };
    // Docker's default: deny all, then a list.
    let orig = fixture("docker-20.10-default.json");
    let r = rewrite_config(orig.clone(), &opts(&[]), &host()).unwrap();
    assert!(!r.vm.container.any_device);
    assert!(with(
        json!([{"allow": true, "type": "a", "major": -1, "minor": -1, "access": "rwm"}])
    ));
    // The last rule for every device decides; specific rules do not.
    assert!(!with(json!([
        {"allow": true, "access": "rwm"},
        {"allow": false, "access": "rwm"},
        {"allow": true, "type": "c", "major": 10, "minor": 200, "access": "rwm"}
    ])));
    assert!(!with(
        json!([{"allow": true, "type": "c", "access": "rwm"}])
    ));
    // --device-cgroup-rule 'c *:* rwm' and 'b *:* rwm' together: all.
    assert!(with(json!([
        {"allow": false, "access": "rwm"},
        {"allow": true, "type": "c", "access": "rwm"},
        {"allow": true, "type": "b", "access": "rwm"}
    ])));
    assert!(!with(json!([{"allow": true, "access": "m"}])));
    assert!(!with(json!([{"allow": true}])));
    assert!(!with(json!([])));
    assert!(!with(Value::Null));
}

#[test]
fn masked_and_readonly_paths_and_read_only_sys_travel_to_the_guest() {
    let orig = fixture("docker-20.10-default.json");
    let r = rewrite_config(orig.clone(), &opts(&[]), &host()).unwrap();
    let c = &r.vm.container;
    let list = |k: &str| -> Vec<String> {
        orig["linux"][k]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(c.masked_paths, list("maskedPaths"));
    assert!(c.masked_paths.contains(&"/proc/kcore".to_owned()));
    assert_eq!(c.readonly_paths, list("readonlyPaths"));
    assert!(c.readonly_paths.contains(&"/proc/sys".to_owned()));
    assert!(c.sysfs_readonly && c.cgroup_readonly);
    // They stay in place for the supervisor's container too.
    assert_eq!(
        r.config["linux"]["maskedPaths"],
        orig["linux"]["maskedPaths"]
    );
    assert_eq!(
        r.config["linux"]["readonlyPaths"],
        orig["linux"]["readonlyPaths"]
    );
    // And survive the trip to the supervisor in vm.json.
    let vm: VmConfig = serde_json::from_str(&serde_json::to_string(&r.vm).unwrap()).unwrap();
    assert_eq!(vm, r.vm);
}

#[test]
fn a_profile_runvm_cannot_apply_fails_create_naming_the_field() {
    let mut orig = fixture("docker-20.10-default.json");
    orig["linux"]["seccomp"]["listenerPath"] = json!("/run/seccomp-agent.sock");
    let e = rewrite_config(orig, &opts(&[]), &host())
        .unwrap_err()
        .to_string();
    assert!(e.contains("linux.seccomp.listenerPath"), "{e}");
    assert!(!e.contains('\n'), "{e}");
}

#[test]
fn the_host_side_gets_runvms_devices_and_confinement_whatever_the_container_asks() {
    let mut orig = fixture("docker-20.10-default.json");
    // What --privileged / --device give runc.
    orig["linux"]["devices"] = json!([{"path": "/dev/vda", "type": "b", "major": 254, "minor": 0}]);
    orig["linux"]["resources"]["devices"] = json!([{"allow": true, "access": "rwm"}]);
    with_sys_admin(&mut orig);
    orig["linux"]["maskedPaths"] = json!([]);
    orig["linux"]["readonlyPaths"] = json!([]);
    for m in orig["mounts"].as_array_mut().unwrap() {
        if m["type"] == "sysfs" {
            m["options"] = json!(["nosuid", "noexec", "nodev", "rw"]);
        }
    }
    let r = rewrite_config(orig, &opts(&[]), &host()).unwrap();
    let linux = &r.config["linux"];
    let paths: Vec<&str> = linux["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["/dev/kvm"]);
    let rules = linux["resources"]["devices"].as_array().unwrap();
    assert_eq!(rules[0], json!({"allow": false, "access": "rwm"}));
    assert!(!rules
        .iter()
        .any(|r| r["allow"] == true && r.get("type").is_none()));
    assert!(!rules.iter().any(|r| r["major"] == 254));
    assert!(linux["maskedPaths"]
        .as_array()
        .unwrap()
        .contains(&json!("/proc/kcore")));
    assert!(linux["readonlyPaths"]
        .as_array()
        .unwrap()
        .contains(&json!("/proc/sys")));
    let sys = mount(&r.config, "/sys").unwrap();
    assert!(sys["options"].as_array().unwrap().contains(&json!("ro")));
    assert!(!sys["options"].as_array().unwrap().contains(&json!("rw")));
    // The guest still follows the container.
    assert!(r.vm.container.masked_paths.is_empty());
}

#[test]
fn ids_that_do_not_fit_32_bits_are_refused_not_truncated_to_root() {
    let base = json!({"args": ["true"], "user": {"uid": 0, "gid": 0}});
    for (path, value, field) in [
        ("uid", json!(4_294_967_296_u64), "process.user.uid"),
        ("gid", json!(4_294_967_296_u64 + 5), "process.user.gid"),
        ("uid", json!(-1), "process.user.uid"),
        ("uid", json!("0"), "process.user.uid"),
        ("umask", json!(1.5), "process.user.umask"),
        (
            "additionalGids",
            json!([10, 4_294_967_296_u64]),
            "process.user.additionalGids",
        ),
        ("additionalGids", json!(10), "process.user.additionalGids"),
        (
            "additionalGids",
            json!([10, null]),
            "process.user.additionalGids",
        ),
    ] {
        let mut p = base.clone();
        p["user"][path] = value.clone();
        let e = guest_process(&p).unwrap_err();
        assert!(
            matches!(&e, RewriteError::Malformed { field: f, .. } if *f == field),
            "{path}={value}: {e}"
        );
        assert!(rewrite_exec_process(p).is_err(), "{path}={value}");
    }
    let mut p = base;
    p["user"] = json!({"uid": 4_294_967_295_u64, "gid": 7, "additionalGids": [1, 2]});
    let spec = guest_process(&p).unwrap();
    assert_eq!((spec.uid, spec.gid), (u32::MAX, 7));
    assert_eq!(spec.additional_gids, [1, 2]);
}

#[test]
fn an_oversized_console_is_clamped_not_wrapped() {
    let p = json!({"args": ["true"], "consoleSize": {"height": 70_000, "width": 80}});
    assert_eq!(
        guest_process(&p).unwrap().console_size,
        Some((u16::MAX, 80))
    );
}

#[test]
fn the_kernels_modules_are_bound_read_only_for_the_guest() {
    let r = rewrite_config(fixture("docker-20.10-default.json"), &opts(&[]), &host()).unwrap();
    let m = r.config["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["destination"] == "/runvm/modules")
        .expect("a mount of the modules");
    assert_eq!(
        m["source"],
        "/var/lib/runvm/kernel/6.1.0-57-cloud-amd64/lib/modules/6.1.0-57-cloud-amd64"
    );
    assert!(m["options"].as_array().unwrap().contains(&json!("ro")));
    assert_eq!(
        r.vm.container.kernel_modules.as_deref(),
        Some("6.1.0-57-cloud-amd64")
    );
    // A kernel with everything built in has no modules to serve.
    let mut h = host();
    h.modules = None;
    let r = rewrite_config(fixture("docker-20.10-default.json"), &opts(&[]), &h).unwrap();
    assert!(r.vm.container.kernel_modules.is_none());
    assert!(!r.config["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["destination"] == "/runvm/modules"));
}

#[test]
fn devices_the_guest_has_go_to_the_guest_and_the_hosts_hardware_is_refused() {
    let mut orig = fixture("docker-20.10-default.json");
    orig["linux"]["devices"] = json!([
        {"path": "/dev/mynull", "type": "c", "major": 1, "minor": 3, "fileMode": 438, "uid": 0, "gid": 0},
        {"path": "/dev/net/tun", "type": "c", "major": 10, "minor": 200, "fileMode": 438, "uid": 0, "gid": 0}
    ]);
    let r = rewrite_config(orig, &opts(&[]), &host()).unwrap();
    let d = &r.vm.container.devices;
    assert_eq!(d.len(), 2);
    assert_eq!(
        (d[0].path.as_str(), d[0].major, d[0].minor, d[0].mode),
        ("/dev/mynull", 1, 3, 0o666)
    );
    // The host side gets runvm's devices only.
    let host_side = r.config["linux"]["devices"].to_string();
    assert!(!host_side.contains("/dev/mynull"), "{host_side}");

    for (path, kind, major, minor) in [("/dev/sda", "b", 8, 0), ("/dev/kvm", "c", 10, 232)] {
        let mut orig = fixture("docker-20.10-default.json");
        orig["linux"]["devices"] = json!([
            {"path": path, "type": kind, "major": major, "minor": minor, "fileMode": 432}
        ]);
        let e = rewrite_config(orig, &opts(&[]), &host())
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("--device {path}")), "{e}");
        assert!(e.contains(&format!("{major}:{minor}")), "{e}");
        assert!(e.contains("drop the --device"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }
    // A path that climbs out is refused too.
    let mut orig = fixture("docker-20.10-default.json");
    orig["linux"]["devices"] =
        json!([{"path": "/dev/../etc/x", "type": "c", "major": 1, "minor": 3}]);
    assert!(rewrite_config(orig, &opts(&[]), &host()).is_err());
}

#[test]
fn privileged_lists_every_host_device_and_is_not_refused() {
    let mut orig = fixture("docker-20.10-default.json");
    orig["linux"]["devices"] =
        json!([{"path": "/dev/sda", "type": "b", "major": 8, "minor": 0, "fileMode": 432}]);
    orig["linux"]["resources"]["devices"] = json!([{"allow": true, "access": "rwm"}]);
    // A device cgroup rule for every device alone is not --privileged.
    let e = rewrite_config(orig.clone(), &opts(&[]), &host()).unwrap_err();
    assert!(e.to_string().contains("--device /dev/sda"), "{e}");
    with_sys_admin(&mut orig);
    orig["linux"]["devices"]
        .as_array_mut()
        .unwrap()
        .push(json!({"path": "/custom", "type": "c", "major": 1, "minor": 3, "fileMode": 438}));
    let r = rewrite_config(orig, &opts(&[]), &host()).unwrap();
    let paths: Vec<&str> =
        r.vm.container
            .devices
            .iter()
            .map(|d| d.path.as_str())
            .collect();
    assert_eq!(paths, ["/custom"], "the guest's own /dev has the rest");
    let mut orig = fixture("docker-20.10-default.json");
    orig["linux"]["devices"] = Value::Null;
    assert!(rewrite_config(orig, &opts(&[]), &host()).is_ok());
}

/// Adds CAP_SYS_ADMIN to the process's bounding set, as --privileged has it.
fn with_sys_admin(config: &mut Value) {
    config["process"]["capabilities"]["bounding"]
        .as_array_mut()
        .unwrap()
        .push(json!("CAP_SYS_ADMIN"));
}

#[test]
fn sharing_the_hosts_or_another_containers_pid_ipc_or_uts_namespace_is_refused() {
    for (kind, flag) in [("pid", "--pid"), ("ipc", "--ipc"), ("uts", "--uts")] {
        let mut orig = fixture("docker-20.10-default.json");
        let ns = orig["linux"]["namespaces"].as_array_mut().unwrap();
        ns.retain(|n| n["type"] != kind);
        let e = rewrite_config(orig.clone(), &opts(&[]), &host())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("{flag} host is not supported by runvm")),
            "{e}"
        );
        let ns = orig["linux"]["namespaces"].as_array_mut().unwrap();
        ns.push(json!({"type": kind, "path": "/proc/4242/ns/x"}));
        let e = rewrite_config(orig, &opts(&[]), &host())
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("{flag} container:<name>")), "{e}");
    }
}

#[test]
fn limits_with_v1_cgroups_in_the_guest_are_refused() {
    let mut orig = fixture("docker-20.10-default.json");
    orig["linux"]["resources"]["pids"] = json!({"limit": 10});
    let e = rewrite_config(orig, &opts(&["RUNVM_CGROUPFS=1"]), &host())
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("RUNVM_CGROUPFS=1 cannot hold"), "{e}");
    // Without a limit, v1 is fine.
    let orig = fixture("docker-20.10-default.json");
    assert!(rewrite_config(orig, &opts(&["RUNVM_CGROUPFS=1"]), &host()).is_ok());
}

#[test]
fn oom_score_adj_goes_to_the_guest_and_a_wild_one_is_refused() {
    let mut orig = fixture("docker-20.10-default.json");
    orig["process"]["oomScoreAdj"] = json!(500);
    let r = rewrite_config(orig, &opts(&[]), &host()).unwrap();
    assert_eq!(r.vm.container.process.oom_score_adj, Some(500));
    let mut orig = fixture("docker-20.10-default.json");
    orig["process"]["oomScoreAdj"] = json!(5000);
    let e = rewrite_config(orig, &opts(&[]), &host())
        .unwrap_err()
        .to_string();
    assert!(e.contains("process.oomScoreAdj"), "{e}");
}

#[test]
fn a_bound_shm_gives_the_guests_shm_the_size_of_the_hosts() {
    // Podman binds a tmpfs of --shm-size at /dev/shm.
    let mut orig = fixture("docker-20.10-full.json");
    let mounts = orig["mounts"].as_array_mut().unwrap();
    mounts.retain(|m| m["destination"] != "/dev/shm");
    mounts.push(json!({
        "destination": "/dev/shm", "type": "bind",
        "source": "/var/lib/containers/storage/overlay-containers/c/userdata/shm",
        "options": ["bind", "private"]
    }));
    let guest_shm = |host: &HostLayout| {
        let r = rewrite_config(orig.clone(), &opts(&[]), host).unwrap();
        let shm =
            r.vm.container
                .mounts
                .iter()
                .find(|m| m.destination == "/dev/shm");
        shm.unwrap().options.clone()
    };
    let mut h = host();
    h.bound_shm_bytes = Some(8 << 20);
    let sized = guest_shm(&h);
    assert!(sized.contains(&"size=8388608".to_string()), "{sized:?}");
    for o in ["nosuid", "nodev", "noexec", "mode=1777"] {
        assert!(sized.contains(&o.to_string()), "{o} in {sized:?}");
    }
    h.bound_shm_bytes = None;
    assert!(guest_shm(&h).contains(&"size=67108864".to_string()));
}

#[test]
fn an_exec_with_the_supervisors_capabilities_gets_the_containers() {
    // Podman copies an exec's capability sets from the bundle's
    // config.json, which holds the supervisor's after the rewrite.
    let rewritten = rewrite_config(fixture("docker-20.10-full.json"), &opts(&[]), &host())
        .unwrap()
        .config;
    let sup = rewritten["process"]["capabilities"]["bounding"].clone();
    let names = |n: &[&str]| -> Vec<String> { n.iter().map(|s| s.to_string()).collect() };
    // A container whose user is not root: a bounding set, nothing else.
    let container = runvm_protocol::Capabilities {
        bounding: names(&["CAP_CHOWN", "CAP_NET_BIND_SERVICE"]),
        ..Default::default()
    };
    // Podman, for an exec as the container's user, copies every set of
    // the config's.
    let mut exec = json!({"args": ["id"], "cwd": "/", "user": {"uid": 1000, "gid": 1000},
        "capabilities": {"bounding": sup, "effective": sup, "permitted": sup,
                         "inheritable": sup, "ambient": sup}});
    runvm_config::exec_caps_from_container(&mut exec, &container);
    assert_eq!(exec["capabilities"]["bounding"], json!(container.bounding));
    for set in ["effective", "permitted", "inheritable", "ambient"] {
        assert_eq!(
            exec["capabilities"][set],
            json!([]),
            "{set}: the user gets none"
        );
    }
    // `podman exec -u 0` into that container: root gets the bounding set
    // as its effective and permitted sets, as Podman gives it under runc.
    let mut exec = json!({"user": {"uid": 0, "gid": 0},
        "capabilities": {"bounding": sup, "effective": sup, "permitted": sup,
                         "inheritable": [], "ambient": []}});
    runvm_config::exec_caps_from_container(&mut exec, &container);
    for set in ["bounding", "effective", "permitted"] {
        assert_eq!(
            exec["capabilities"][set],
            json!(container.bounding),
            "{set}"
        );
    }
    // The container's sets unknown (no vm.json): none of the supervisor's
    // reach the guest.
    let mut exec = json!({"user": {"uid": 1000, "gid": 1000},
        "capabilities": {"bounding": sup, "ambient": sup}});
    runvm_config::exec_caps_from_container(&mut exec, &Default::default());
    assert_eq!(exec["capabilities"]["bounding"], json!([]));
    assert_eq!(exec["capabilities"]["ambient"], json!([]));

    // A root container: each set becomes the container's own.
    let root = runvm_protocol::Capabilities {
        bounding: names(&["CAP_CHOWN", "CAP_KILL"]),
        effective: names(&["CAP_CHOWN", "CAP_KILL"]),
        permitted: names(&["CAP_CHOWN", "CAP_KILL"]),
        ..Default::default()
    };
    let mut exec = json!({"capabilities": {"bounding": sup, "effective": sup,
        "permitted": sup, "inheritable": [], "ambient": []}});
    runvm_config::exec_caps_from_container(&mut exec, &root);
    for set in ["bounding", "effective", "permitted"] {
        assert_eq!(exec["capabilities"][set], json!(root.bounding), "{set}");
    }
    assert_eq!(exec["capabilities"]["inheritable"], json!([]));

    // `--privileged` (every capability) stays as the engine chose.
    let all = json!(["CAP_CHOWN", "CAP_SYS_ADMIN", "CAP_NET_ADMIN"]);
    let mut privileged = json!({"capabilities": {"bounding": all, "effective": all}});
    runvm_config::exec_caps_from_container(&mut privileged, &root);
    assert_eq!(privileged["capabilities"]["bounding"], all);
    assert_eq!(privileged["capabilities"]["effective"], all);

    // With `runc run`'s extra capability too.
    let mut with_mount = sup.as_array().unwrap().clone();
    with_mount.push(json!(runvm_config::rewrite::MOUNT_PLACEMENT_CAP));
    let mut p = json!({"user": {"uid": 1000}, "capabilities": {"effective": with_mount}});
    runvm_config::exec_caps_from_container(&mut p, &container);
    assert_eq!(p["capabilities"]["effective"], json!([]));
}
