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

/// The container's addresses and routes with the parts that differ from
/// one container to the next left out: interface index (and so the order
/// of the interfaces, which under runc follows the order in which Docker
/// happened to create them), the addresses' host parts (IPv4 by
/// `normalise_ipv4`, IPv6 here).
const SHOW_NETWORK: &str = "ip -o addr show scope global | awk '{ $1 = \"\"; sub(/::[0-9a-f]+\\//, \"::<host>/\"); print }' | sort; \
     ip route; ip -6 route 2>/dev/null | grep -v '^fe80\\|^multicast'";

/// A container created on one network, connected to a second before it
/// starts (`docker create` + `docker network connect` + `docker start`):
/// it has both NICs, with their addresses and routes as under runc, and
/// reaches the gateway of the first and a container on the second.
#[e2e_test]
fn two_networks_attached_before_the_start() {
    let net_a = Network::create("net-a", &[]);
    let net_b = Network::create("net-b", &[]);
    let run = |runtime: &str| -> Run {
        let server = Container::run_detached(
            &format!("net-b-server-{runtime}"),
            "runc",
            &[
                "--network",
                &net_b.name,
                IMAGE,
                "sh",
                "-c",
                "echo up; nc -l -p 8080 -e echo hi-from-b",
            ],
        );
        server.wait_for_log("up", Duration::from_secs(60));
        let server_ip = server.inspect(&format!(
            "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
            net_b.name
        ));
        let client = Container::new(&format!("two-nets-{runtime}"));
        let script = format!(
            "{SHOW_NETWORK}; \
             ping -c 1 -W 5 $(ip route | awk '/^default/ {{ print $3 }}') >/dev/null && echo ping-a-ok; \
             for i in 1 2 3 4 5 6 7 8 9 10; do nc -w 5 {server_ip} 8080 </dev/null 2>/dev/null && break; sleep 1; done"
        );
        let rt = format!("--runtime={runtime}");
        docker(
            &[
                "create",
                "--name",
                &client.name,
                &rt,
                "--network",
                &net_a.name,
                IMAGE,
                "sh",
                "-c",
                &script,
            ],
            None,
        )
        .assert_code(0, "docker create");
        docker(&["network", "connect", &net_b.name, &client.name], None)
            .assert_code(0, "docker network connect");
        let _slot = (runtime == "runvm").then(|| vm_slots(1));
        let run = docker(&["start", "-a", &client.name], None);
        // The server ends once the client has reached it; if the client
        // never did, its output says so (below) and the server is removed.
        drop(server);
        run
    };
    let runc = run("runc");
    let runvm = run("runvm");
    let out = runvm.stdout_str();
    assert!(
        out.contains(" eth0 inet ") && out.contains(" eth1 inet "),
        "runvm: two NICs:\n{}",
        runvm.describe()
    );
    assert!(
        out.ends_with("ping-a-ok\nhi-from-b\n"),
        "runvm: both networks reachable:\n{}",
        runvm.describe()
    );
    assert_same_with(&runc, &runvm, "two networks", normalise_ipv4);
}

/// On a network created with `--ipv6` the container has its IPv4 and IPv6
/// addresses and default routes as under runc, the IPv6 address usable at
/// once (Docker adds it without duplicate address detection), and reaches
/// the IPv6 gateway from its first instruction on.
#[e2e_test]
fn dual_stack_user_network() {
    // A ULA subnet of this test process, unlikely to clash with another
    // network on this host.
    let subnet = format!("fd00:7e:{:x}::/64", std::process::id() & 0xffff);
    let net = Network::create("net-v6", &["--ipv6", "--subnet", &subnet]);
    let script = format!(
        "ping -6 -c 1 -W 5 $(ip -6 route | awk '/^default/ {{ print $3 }}') >/dev/null && echo ping6-ok; \
         {SHOW_NETWORK}"
    );
    let (runc, runvm) = run_both(
        &["--network", &net.name],
        &[IMAGE, "sh", "-c", &script],
        None,
    );
    let out = runvm.stdout_str();
    assert!(
        out.starts_with("ping6-ok\n"),
        "runvm: the IPv6 gateway answers at once:\n{}",
        runvm.describe()
    );
    assert!(
        out.contains("default via fd00:7e:"),
        "runvm: the IPv6 default route:\n{}",
        runvm.describe()
    );
    assert_same_with(&runc, &runvm, "dual stack", normalise_ipv4);
}
