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

/// A detached container of `runtime` on `net` that only sleeps, once it
/// runs.
fn idle_on(net: &str, tag: &str, runtime: &str) -> Container {
    let c = Container::run_detached(
        tag,
        runtime,
        &["--network", net, IMAGE, "sh", "-c", "echo up; sleep 600"],
    );
    c.wait_for_log("up", Duration::from_secs(120));
    c
}

/// A detached runvm container on `net` running `script` (which prints
/// `up` when ready), and its address there (`field` of the network's
/// settings: `IPAddress` or `GlobalIPv6Address`).
fn vm_on(net: &str, tag: &str, script: &str, field: &str) -> (Container, String) {
    let c = Container::run_detached(tag, "runvm", &["--network", net, IMAGE, "sh", "-c", script]);
    c.wait_for_log("up", Duration::from_secs(120));
    let ip = c.address_on(net, field);
    (c, ip)
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
        let server_ip = server.address_on(&net_b.name, "IPAddress");
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
/// once (Docker adds it without duplicate address detection), reaches the
/// IPv6 gateway from its first instruction on, and reaches a runvm
/// container on the same network over IPv6 (ping and TCP): runvm to runvm
/// as runc to runvm.
#[e2e_test]
fn dual_stack_user_network() {
    // A ULA subnet of this test process, unlikely to clash with another
    // network on this host.
    let subnet = format!("fd00:7e:{:x}::/64", std::process::id() & 0xffff);
    let net = Network::create("net-v6", &["--ipv6", "--subnet", &subnet]);
    let _slots = vm_slots(2);
    let (_server, server_ip) = vm_on(
        &net.name,
        "v6-server",
        "while true; do nc -l -p 8080 -e echo hi-over-ipv6; done & echo up; wait",
        "GlobalIPv6Address",
    );
    assert!(
        server_ip.parse::<std::net::Ipv6Addr>().is_ok(),
        "the server has no IPv6 address: {server_ip:?}"
    );
    let script = format!(
        "ping -6 -c 1 -W 5 $(ip -6 route | awk '/^default/ {{ print $3 }}') >/dev/null && echo ping6-ok; \
         {SHOW_NETWORK}; \
         ping -6 -c 1 -W 5 {server_ip} >/dev/null && echo ping6-peer-ok; \
         for i in 1 2 3 4 5; do nc -w 5 {server_ip} 8080 </dev/null && break; sleep 1; done"
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
    assert!(
        out.ends_with("ping6-peer-ok\nhi-over-ipv6\n"),
        "runvm: another VM over IPv6:\n{}",
        runvm.describe()
    );
    assert_same_with(&runc, &runvm, "dual stack", normalise_ipv4);
}

/// On a network with MTU 9000 the guest's NIC has MTU 9000 and an
/// 8000-byte ping between two runvm containers passes unfragmented.
#[e2e_test]
fn jumbo_frames_on_an_mtu_9000_network() {
    let net = Network::create(
        "net-jumbo",
        &["--opt", "com.docker.network.driver.mtu=9000"],
    );
    let _slots = vm_slots(2);
    let (_peer, peer_ip) = vm_on(&net.name, "jumbo-peer", "echo up; sleep 600", "IPAddress");
    // Fragments would be counted by the guest's kernel: none may be made.
    let script = format!(
        "cat /sys/class/net/eth0/mtu; \
         ping -c 1 -W 5 -s 8000 {peer_ip} | grep -o '8008 bytes from'; \
         awk '/^Ip:/ {{ n++ }} n == 2 && /^Ip:/ {{ print \"fragments created:\", $NF; exit }}' /proc/net/snmp"
    );
    let (runc, runvm) = run_both(
        &["--network", &net.name],
        &[IMAGE, "sh", "-c", &script],
        None,
    );
    assert_eq!(
        runvm.stdout_str(),
        "9000\n8008 bytes from\nfragments created: 0\n",
        "{}",
        runvm.describe()
    );
    // (runc's namespace counts a fragment here, made by its stack for a
    // reason of its own; only what the workload sees is compared.)
    let without_fragments = |b: &[u8]| -> Vec<u8> {
        String::from_utf8_lossy(b)
            .lines()
            .filter(|l| !l.starts_with("fragments created:"))
            .map(|l| format!("{l}\n"))
            .collect::<String>()
            .into_bytes()
    };
    assert_same_with(&runc, &runvm, "MTU 9000", without_fragments);
}

/// Sends an HTTP request to `addr` and returns the whole answer.
fn http_get(addr: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr)?;
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    c.write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    // nettool's server keeps the connection: read up to its page's end.
    while !answer.ends_with(b"hello from nettool\n") {
        let n = c.read(&mut buf)?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// Sends one UDP datagram to `addr` and returns the answer.
fn udp_ask(addr: &str) -> std::io::Result<String> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.connect(addr)?;
    s.send(b"hello")?;
    let mut buf = [0u8; 1024];
    let n = s.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// `-p 18080:80`, `-p …/udp` and `-P`: a runvm container's published
/// ports answer from the host, and from another container through the
/// host's address on the bridge.
#[e2e_test]
fn published_ports_answer_from_the_host_and_other_containers() {
    let _slot = vm_slots(1);
    let server = Container::run_detached(
        "ports",
        "runvm",
        &[
            "-p",
            "18080:80",
            "-p",
            "18081:9090/udp",
            "--expose",
            "8081",
            "-P",
            IMAGE,
            "sh",
            "-c",
            "nettool http-serve 80 & nettool http-serve 8081 & nettool udp-serve 9090 hi-udp & sleep 1; echo up; wait",
        ],
    );
    server.wait_for_log("up", Duration::from_secs(120));
    let page = poll_until("the published HTTP port", Duration::from_secs(30), || {
        http_get("127.0.0.1:18080")
            .ok()
            .filter(|p| p.contains("200 OK"))
    });
    assert!(page.ends_with("hello from nettool\n"), "{page}");
    let udp = poll_until("the published UDP port", Duration::from_secs(30), || {
        udp_ask("127.0.0.1:18081").ok()
    });
    assert_eq!(udp, "hi-udp\n");
    // -P publishes the exposed 8081 on a port of Docker's choosing.
    let port = docker(&["port", &server.name, "8081/tcp"], None);
    port.assert_code(0, "docker port");
    let published = port
        .stdout_str()
        .lines()
        .find(|l| l.starts_with("0.0.0.0:"))
        .map(|l| l.replace("0.0.0.0", "127.0.0.1"))
        .unwrap_or_else(|| panic!("no IPv4 binding for -P: {}", port.describe()));
    let page = http_get(&published).unwrap_or_else(|e| panic!("{published}: {e}"));
    assert!(page.ends_with("hello from nettool\n"), "{page}");
    // From another container, through the gateway's address on the bridge.
    let script = "gw=$(ip route | awk '/^default/ { print $3 }'); \
                  printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 $gw 18080 | tail -1; \
                  nettool udp-ask $gw 18081 hello";
    let (runc, runvm) = run_both(&[], &[IMAGE, "sh", "-c", script], None);
    assert_eq!(
        runvm.stdout_str(),
        "hello from nettool\nhi-udp\n",
        "{}",
        runvm.describe()
    );
    assert_same(&runc, &runvm, "published ports from another container");
}

/// `docker network connect` and `disconnect` on a running container: the
/// VM gets a NIC with the new address and routes within seconds (its
/// address answers a peer's ping within 10 s), as under runc; after the
/// disconnect the address is gone from the guest.
#[e2e_test]
fn networks_connected_and_disconnected_while_running() {
    let net_a = Network::create("hot-a", &[]);
    let net_b = Network::create("hot-b", &[]);
    let peer = Container::run_detached(
        "hot-peer",
        "runc",
        &["--network", &net_b.name, IMAGE, "sleep", "600"],
    );
    let exec = |c: &Container, script: &str| {
        run_cmd_quiet(
            "docker",
            &["exec", &c.name, "sh", "-c", script],
            None,
            COMMAND_TIMEOUT,
        )
    };
    let mut states = Vec::new();
    for runtime in ["runc", "runvm"] {
        let _slot = (runtime == "runvm").then(|| vm_slots(1));
        let c = idle_on(&net_a.name, &format!("hot-{runtime}"), runtime);
        let start = std::time::Instant::now();
        docker(&["network", "connect", &net_b.name, &c.name], None)
            .assert_code(0, "docker network connect");
        let ip_b = c.address_on(&net_b.name, "IPAddress");
        // The address must be the container's own (under runvm the
        // namespace holds it too, until the new link is the VM's).
        poll_until(
            &format!("{runtime}: {ip_b} is on the container and answers the peer's ping"),
            Duration::from_secs(10),
            || {
                let own = exec(&c, "ip -o addr")
                    .stdout_str()
                    .contains(&format!(" {ip_b}/"));
                (own && exec(&peer, &format!("ping -c 1 -W 1 {ip_b}")).code == 0).then_some(())
            },
        );
        eprintln!(
            "{runtime}: the connected address answered after {:.1} s",
            start.elapsed().as_secs_f64()
        );
        states.push(exec(&c, SHOW_NETWORK));
        docker(&["network", "disconnect", &net_b.name, &c.name], None)
            .assert_code(0, "docker network disconnect");
        poll_until(
            &format!("{runtime}: {ip_b} is gone from the container"),
            Duration::from_secs(10),
            || {
                let r = exec(&c, "ip -o addr");
                (r.code == 0 && !r.stdout_str().contains(&format!(" {ip_b}/"))).then_some(())
            },
        );
        states.push(exec(&c, SHOW_NETWORK));
    }
    let (runc_connected, runc_after) = (&states[0], &states[1]);
    let (runvm_connected, runvm_after) = (&states[2], &states[3]);
    assert_same_with(runc_connected, runvm_connected, "connected", normalise_ipv4);
    assert_same_with(runc_after, runvm_after, "disconnected", normalise_ipv4);
}

/// The addressing and name options reach the guest as they reach a runc
/// container: a fixed IPv4 and IPv6 address and MAC, DNS servers, search
/// domains and options in resolv.conf, extra hosts in /etc/hosts.
#[e2e_test]
fn addressing_and_name_options_as_under_runc() {
    let id = std::process::id() & 0xff;
    let subnet4 = format!("10.251.{id}.0/24");
    let subnet6 = format!("fd00:7f:{id:x}::/64");
    let net = Network::create(
        "net-opts",
        &["--ipv6", "--subnet", &subnet4, "--subnet", &subnet6],
    );
    let ip4 = format!("10.251.{id}.77");
    let ip6 = format!("fd00:7f:{id:x}::77");
    let script = "cat /etc/resolv.conf; grep -v '^#' /etc/hosts; hostname; \
                  ip -o addr show scope global | awk '{ print $2, $3, $4 }'; \
                  cat /sys/class/net/eth0/address; \
                  ping -c 1 -W 5 {gw} >/dev/null && echo gateway-ok";
    let gw = format!("10.251.{id}.1");
    let script = script.replace("{gw}", &gw);
    let (runc, _) = same_sh(
        &[
            "--network",
            &net.name,
            "--ip",
            &ip4,
            "--ip6",
            &ip6,
            "--hostname",
            "opts-host",
            "--dns",
            "10.251.0.53",
            "--dns-search",
            "example.test",
            "--dns-option",
            "ndots:3",
            "--add-host",
            "extra.test:10.9.9.9",
        ],
        &script,
    );
    runc.assert_code(0, "the options under runc");
    assert!(
        runc.stdout_str().ends_with("gateway-ok\n"),
        "{}",
        runc.describe()
    );
    // --mac-address: the docker CLI of Docker 25 and later sets it per
    // network, which this engine's API (1.41) lacks; the engine's own CLI
    // (Debian's docker.io, /usr/bin/docker) sets it as the engine expects.
    let mac = |runtime: &str| {
        let _slot = (runtime == "runvm").then(|| vm_slots(1));
        let rt = format!(
            "--runtime={}",
            if runtime == "runvm" {
                runvm_runtime()
            } else {
                "runc".into()
            }
        );
        let r = run_cmd(
            "/usr/bin/docker",
            &[
                "run",
                "--rm",
                &rt,
                "--network",
                &net.name,
                "--mac-address",
                "02:42:0a:fb:00:78",
                IMAGE,
                "cat",
                "/sys/class/net/eth0/address",
            ],
            None,
            COMMAND_TIMEOUT,
        );
        r.assert_code(0, &format!("{runtime}: --mac-address"));
        r.stdout_str()
    };
    assert_eq!(mac("runc"), "02:42:0a:fb:00:78\n");
    assert_eq!(mac("runvm"), "02:42:0a:fb:00:78\n");
}

/// `docker network disconnect N c && docker network connect N c`, which
/// Docker does within one burst of namespace changes: the VM's NIC is
/// replaced by one for the new link (same MAC, same address), and a
/// network connected afterwards still reaches the VM. The checks ping
/// from inside the container: a peer's ping to its address would be
/// answered by the namespace's own stack even with no NIC in the VM.
#[e2e_test]
fn a_network_reconnected_at_once_reaches_the_vm_again() {
    let net_a = Network::create("recon-a", &[]);
    let net_b = Network::create("recon-b", &[]);
    let peer_a = Container::run_detached(
        "recon-peer-a",
        "runc",
        &["--network", &net_a.name, IMAGE, "sleep", "600"],
    );
    let peer_b = Container::run_detached(
        "recon-peer-b",
        "runc",
        &["--network", &net_b.name, IMAGE, "sleep", "600"],
    );
    let _slot = vm_slots(1);
    let c = idle_on(&net_a.name, "recon", "runvm");
    let reaches = |target: &str| {
        run_cmd_quiet(
            "docker",
            &["exec", &c.name, "ping", "-c", "1", "-W", "1", target],
            None,
            COMMAND_TIMEOUT,
        )
        .code
            == 0
    };
    for round in 1..=2 {
        let out = run_cmd_quiet(
            "sh",
            &[
                "-c",
                &format!(
                    "docker network disconnect {n} {c} && docker network connect {n} {c}",
                    n = net_a.name,
                    c = c.name
                ),
            ],
            None,
            COMMAND_TIMEOUT,
        );
        out.assert_code(0, "disconnect && connect");
        let target = peer_a.address_on(&net_a.name, "IPAddress");
        poll_until(
            &format!("round {round}: the VM reaches {target} again"),
            Duration::from_secs(20),
            || reaches(&target).then_some(()),
        );
    }
    docker(&["network", "connect", &net_b.name, &c.name], None)
        .assert_code(0, "docker network connect");
    let target = peer_b.address_on(&net_b.name, "IPAddress");
    poll_until(
        &format!("the VM reaches {target} on the network connected afterwards"),
        Duration::from_secs(20),
        || reaches(&target).then_some(()),
    );
}
