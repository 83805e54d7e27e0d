//! Two containers on the default bridge talk to each other.

use std::time::Duration;

use runvm_e2e::*;

/// A listens on 8080 and answers `hi-from-a`; B pings A by IP and connects.
/// Returns what B printed.
fn pair(runtime: &str) -> Run {
    let _slots = (runtime == "runvm").then(|| vm_slots(2));
    let a = Container::run_detached(
        &format!("net-a-{runtime}"),
        runtime,
        &[
            IMAGE,
            "sh",
            "-c",
            "echo up; nc -l -p 8080 -e echo hi-from-a",
        ],
    );
    a.wait_for_log("up", Duration::from_secs(60));
    let ip = a.inspect("{{.NetworkSettings.IPAddress}}");
    assert!(
        ip.parse::<std::net::Ipv4Addr>().is_ok(),
        "{runtime}: A has no IP address: {ip:?}"
    );
    // `up` is printed just before nc listens: retry the connection a little.
    let script = format!(
        "ping -c 1 -W 5 {ip} >/dev/null && echo ping-ok && \
         for i in 1 2 3 4 5 6 7 8 9 10; do nc {ip} 8080 </dev/null 2>/dev/null && break; sleep 1; done"
    );
    let b = run_one(runtime, &[], &[IMAGE, "sh", "-c", &script], None);
    let a_code = a.wait_exit();
    assert_eq!(
        a_code, 0,
        "{runtime}: A's exit code after serving one client"
    );
    b
}

#[e2e_test]
fn containers_reach_each_other_by_ip() {
    let runc = pair("runc");
    let runvm = pair("runvm");
    assert_eq!(
        runvm.stdout_str(),
        "ping-ok\nhi-from-a\n",
        "B under runvm:\n{}",
        runvm.describe()
    );
    assert_same(&runc, &runvm, "B's output");
}

/// With `--network host` the VM must leave the host's interfaces alone (it
/// gets loopback only): the host's addresses, routes and qdiscs are the same
/// before and after.
#[e2e_test]
fn host_network_is_never_taken_over() {
    let _slot = vm_slots(1);
    let snapshot = || {
        // Containers that other tests start meanwhile add and remove veths,
        // and docker0's carrier (`linkdown`) comes and goes with them.
        let r = host_sh(
            "{ ip -o addr; ip route; ip -6 route; tc qdisc show; } | grep -v veth | sed 's/ linkdown//'",
        );
        r.assert_code(0, "host network snapshot");
        r.stdout_str()
    };
    let before = snapshot();
    let r = run_one(
        "runvm",
        &["--network", "host"],
        &[IMAGE, "sh", "-c", "ip -o link | cut -d: -f2"],
        None,
    );
    r.assert_code(0, "docker run --network host");
    assert_eq!(
        r.stdout_str().trim(),
        "lo",
        "the VM gets loopback only:\n{}",
        r.describe()
    );
    assert_eq!(snapshot(), before, "the host's network changed");
}
