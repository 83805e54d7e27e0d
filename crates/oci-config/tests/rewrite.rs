//! The rewrite on real config.json files written by Docker 20.10.

use runvm_config::rewrite::{HostDevice, HostEntry};
use runvm_config::*;
use serde_json::{json, Value};

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn host() -> HostLayout {
    HostLayout {
        new_root: "/run/bundle/runvm/root".into(),
        host_entries: vec![
            HostEntry::Bind("/usr".into()),
            HostEntry::Symlink {
                path: "/lib".into(),
                target: "usr/lib".into(),
            },
        ],
        supervisor: "/usr/local/lib/runvm/runvm-supervisor".into(),
        virtiofsd: "/usr/local/lib/runvm/virtiofsd".into(),
        kernel: "/var/lib/runvm/kernel/boot/vmlinuz".into(),
        initrd: "/var/lib/runvm/cache/initramfs.img".into(),
        qemu: "/usr/bin/qemu-system-x86_64".into(),
        devices: vec![HostDevice {
            path: "/dev/kvm".into(),
            major: 10,
            minor: 232,
        }],
        host_cpus: 2,
        accel: Accel::Tcg,
        accel_warning: None,
    }
}

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
    for key in [
        "seccomp",
        "maskedPaths",
        "readonlyPaths",
        "namespaces",
        "cgroupsPath",
        "sysctl",
        "x-extra",
    ] {
        assert_eq!(out["linux"][key], orig["linux"][key], "linux.{key} changed");
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
fn docker_mounts_move_under_rootfs_and_tmpfs_goes_to_the_guest() {
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
        let m = mount(out, &format!("/rootfs{moved}")).unwrap();
        let o = mount(&orig, moved).unwrap();
        assert_eq!(m["source"], o["source"]);
        assert_eq!(m["options"], o["options"]);
    }
    assert!(mount(out, "/scratch").is_none());
    assert!(mount(out, "/rootfs/scratch").is_none());
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
        assert!(caps.contains(&json!("CAP_NET_ADMIN")));
        assert!(
            caps.contains(&json!("CAP_AUDIT_WRITE")),
            "Docker's own caps are kept"
        );
    }
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
    let overhead = (rewrite::VM_OVERHEAD_MIB * 1024 * 1024) as i64;
    assert_eq!(mem["limit"], json!(268435456 + overhead));
    assert_eq!(mem["swap"], json!(536870912 + overhead));
    assert_eq!(r.vm.memory_mib, 256);
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
fn a_tiny_memory_limit_is_refused_with_the_fix() {
    let mut orig = fixture("docker-20.10-full.json");
    orig["linux"]["resources"]["memory"]["limit"] = json!(6 * 1024 * 1024);
    let e = rewrite_config(orig, &opts(&[]), &host()).unwrap_err();
    assert!(e.to_string().contains("--memory 128m"), "{e}");
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
    let back = runvm_config::exec_spec::decode(var).unwrap();
    assert_eq!(back, spec);
    assert_eq!(spec.args, ["sh", "-c", "echo hi"]);
    assert_eq!(
        (spec.uid, spec.gid, spec.additional_gids.clone()),
        (1000, 1000, vec![10])
    );
    assert_eq!(spec.console_size, Some((30, 100)));
    assert_eq!(spec.cwd, "/tmp");
}

#[test]
fn only_a_private_network_namespace_is_taken_over() {
    let r = rewrite_config(fixture("docker-20.10-default.json"), &opts(&[]), &host()).unwrap();
    assert!(r.vm.own_network);
    let mut host_net = fixture("docker-20.10-default.json");
    host_net["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .retain(|n| n["type"] != "network");
    let r = rewrite_config(host_net, &opts(&[]), &host()).unwrap();
    assert!(
        !r.vm.own_network,
        "no network namespace: the host's interfaces"
    );
    // What Docker 20.10 writes for --network host / container:X.
    let mut joined = fixture("docker-20.10-default.json");
    for n in joined["linux"]["namespaces"].as_array_mut().unwrap() {
        if n["type"] == "network" {
            n["path"] = json!("/proc/4211/ns/net");
        }
    }
    let r = rewrite_config(joined, &opts(&[]), &host()).unwrap();
    assert!(
        !r.vm.own_network,
        "a joined namespace must never be taken over"
    );
}

#[test]
fn docker_update_keeps_room_for_qemu() {
    let overhead = (rewrite::VM_OVERHEAD_MIB * 1024 * 1024) as i64;
    let r = rewrite_update_resources(json!({
        "memory": {"limit": 536870912, "swap": 1073741824},
        "cpu": {"shares": 512},
        "x-other": true
    }));
    assert_eq!(r["memory"]["limit"], json!(536870912 + overhead));
    assert_eq!(r["memory"]["swap"], json!(1073741824 + overhead));
    assert_eq!(r["cpu"]["shares"], 512);
    assert_eq!(r["x-other"], true);
    let unlimited = rewrite_update_resources(json!({"memory": {"limit": 0}, "pids": {"limit": 5}}));
    assert_eq!(
        unlimited,
        json!({"memory": {"limit": 0}, "pids": {"limit": 5}})
    );
}
