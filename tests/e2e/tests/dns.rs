//! Docker's embedded DNS on user-defined networks, from inside the VM:
//! container names, aliases and `--link` names over UDP and TCP, names that
//! dockerd forwards upstream, and traffic by name, both ways between runvm
//! and runc containers.

use std::net::Ipv4Addr;
use std::time::Duration;

use runvm_e2e::*;

/// A shell function for the test image: `tcp_lookup NAME` asks 127.0.0.11
/// for NAME's A record over TCP (busybox's nslookup speaks UDP only) and
/// prints the answer as decimal bytes on one line, length prefix first.
const TCP_LOOKUP: &str = r#"tcp_lookup() {
  { printf '\022\064\001\000\000\001\000\000\000\000\000\000'
    for l in $(echo "$1" | tr . ' '); do printf "\\$(printf %03o ${#l})%s" "$l"; done
    printf '\000\000\001\000\001'; } > /tmp/q
  n=$(wc -c < /tmp/q)
  { printf "\\$(printf %03o $((n / 256)))\\$(printf %03o $((n % 256)))"; cat /tmp/q; } |
    nc -w 3 127.0.0.11 53 | od -An -tu1 -v | tr -s ' \n' '  '; echo
}"#;

/// The first IPv4 address of an A answer printed by `tcp_lookup`: the
/// answer count is non-zero and the record's data ends the message.
fn tcp_answer(line: &str) -> Option<Ipv4Addr> {
    let bytes: Vec<u8> = line
        .split_whitespace()
        .map(|b| b.parse().ok())
        .collect::<Option<_>>()?;
    let msg = bytes.get(2..)?;
    let len = usize::from(u16::from_be_bytes([bytes[0], *bytes.get(1)?]));
    let answers = u16::from_be_bytes([*msg.get(6)?, *msg.get(7)?]);
    if len != msg.len() || answers == 0 || msg.len() < 4 {
        return None;
    }
    let a = &msg[msg.len() - 4..];
    Some(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
}

#[test]
fn tcp_answers_are_read_from_the_end_of_the_message() {
    // 2-byte length 16, header with one answer, 4 bytes of address.
    let line = "0 16 18 52 129 128 0 1 0 1 0 0 0 0 172 18 0 5";
    assert_eq!(tcp_answer(line), Some(Ipv4Addr::new(172, 18, 0, 5)));
    assert_eq!(
        tcp_answer("0 16 18 52 129 131 0 1 0 0 0 0 0 0 0 0 0 0"),
        None
    );
    assert_eq!(tcp_answer(""), None);
    assert_eq!(tcp_answer("0 9 1"), None);
}

/// What a client prints for one name: its address by UDP (nslookup), by
/// TCP, and the answers of the TCP server reached by that name and of the
/// UDP server at the address it resolved to (nettool takes addresses).
fn client_script(names: &[&str]) -> String {
    let mut s = format!("{TCP_LOOKUP}\n");
    for n in names {
        s.push_str(&format!(
            "ip=$(nslookup {n} 2>&1 | awk '/^Address/ && !/127.0.0.11/ {{ print $2 }}'); \
             echo \"{n} udp $ip\"; \
             echo \"{n} tcp $(tcp_lookup {n})\"; \
             echo \"{n} tcp-server $(for i in 1 2 3 4 5; do nc -w 3 {n} 8080 </dev/null && break; sleep 1; done)\"; \
             echo \"{n} udp-server $(nettool udp-ask $ip 9090 hello)\"\n"
        ));
    }
    s
}

/// A server on `net`: `hi-tcp` on TCP 8080 and `hi-udp` on UDP 9090, for
/// as many clients as come.
fn server(tag: &str, runtime: &str, net: &str, alias: &str) -> (Container, Ipv4Addr) {
    let c = Container::run_detached(
        tag,
        runtime,
        &[
            "--network",
            net,
            "--network-alias",
            alias,
            IMAGE,
            "sh",
            "-c",
            "while true; do nc -l -p 8080 -e echo hi-tcp; done & \
             nettool udp-serve 9090 hi-udp & \
             echo up; wait",
        ],
    );
    c.wait_for_log("up", Duration::from_secs(120));
    let ip = c
        .inspect(&format!(
            "{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}"
        ))
        .parse()
        .unwrap_or_else(|e| panic!("{tag}: no address on {net}: {e}"));
    (c, ip)
}

/// For each line of a client's output about `name`: the lookups gave
/// `ip` and both servers answered.
fn assert_reached(out: &str, name: &str, ip: Ipv4Addr, who: &str) {
    let line = |kind: &str| {
        let prefix = format!("{name} {kind} ");
        out.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("{who}: no {kind} line for {name}:\n{out}"))
            .trim()
            .to_owned()
    };
    assert_eq!(
        line("udp"),
        ip.to_string(),
        "{who}: UDP lookup of {name}:\n{out}"
    );
    assert_eq!(
        tcp_answer(&line("tcp")),
        Some(ip),
        "{who}: TCP lookup of {name}:\n{out}"
    );
    assert_eq!(line("tcp-server"), "hi-tcp", "{who}: TCP to {name}:\n{out}");
    assert_eq!(line("udp-server"), "hi-udp", "{who}: UDP to {name}:\n{out}");
}

/// Two runvm containers, and a runvm and a runc container, find each other
/// by name, alias and link name, over UDP and TCP DNS, and exchange TCP
/// and UDP traffic by those names, in both directions.
#[e2e_test]
fn names_resolve_and_answer_between_runvm_and_runc_on_a_user_network() {
    let net = Network::create("dns", &[]);
    let _slots = vm_slots(2);
    let (vm_server, vm_ip) = server("dns-vm", "runvm", &net.name, "vm-alias");
    let (runc_server, runc_ip) = server("dns-runc", "runc", &net.name, "runc-alias");
    for client in ["runvm", "runc"] {
        let link = format!("{}:vm-link", vm_server.name);
        let names = [
            vm_server.name.as_str(),
            "vm-alias",
            "vm-link",
            runc_server.name.as_str(),
            "runc-alias",
        ];
        let run = run_one(
            client,
            &["--network", &net.name, "--link", &link],
            &[IMAGE, "sh", "-c", &client_script(&names)],
            None,
        );
        run.assert_code(0, &format!("{client} client"));
        let out = run.stdout_str();
        let who = format!("{client} client");
        for name in &names[..3] {
            assert_reached(&out, name, vm_ip, &who);
        }
        for name in &names[3..] {
            assert_reached(&out, name, runc_ip, &who);
        }
    }
}

/// A DNS server of this test on the host, on an address of a bridge it
/// creates (a bridge, not a dummy link: the host kernel may lack the dummy
/// module): it knows one name only, and `docker run --dns` points dockerd
/// at it.
struct Upstream {
    link: String,
    address: Ipv4Addr,
    pid: u32,
}

impl Upstream {
    fn start(name: &str, answer: Ipv4Addr) -> Self {
        Self::start_with(&format!("--address=/{name}/{answer}"))
    }

    /// dnsmasq with `records` (its options) as what it knows.
    fn start_with(records: &str) -> Self {
        // One link and address per server, also for the tests that run
        // at once.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = std::process::id();
        let link = format!("rvdns{}x{n}", id % 100_000);
        let address = Ipv4Addr::new(10, 254, (id >> 8) as u8 ^ (n as u8), (id as u8).max(1));
        host_sh(&format!(
            "ip link add {link} type bridge && ip addr add {address}/32 dev {link} && ip link set {link} up"
        ))
        .assert_code(0, "create the upstream server's link");
        let pidfile = format!("/tmp/{link}.pid");
        host_sh(&format!(
            "dnsmasq --pid-file={pidfile} --listen-address={address} --bind-interfaces \
             --port=53 --no-resolv --no-hosts --log-facility=/dev/null {records}"
        ))
        .assert_code(0, "start dnsmasq");
        let pid = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .expect("dnsmasq's pid");
        let _ = std::fs::remove_file(&pidfile);
        Upstream { link, address, pid }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = host_sh(&format!("kill {}; ip link del {}", self.pid, self.link));
    }
}

/// A name that only an upstream server knows resolves in the VM: dockerd
/// forwards it from inside the container's namespace, and its answer
/// reaches dockerd there rather than the VM.
#[e2e_test]
fn names_dockerd_forwards_upstream_resolve_in_the_vm() {
    let upstream = Upstream::start("only-upstream.runvm.test", Ipv4Addr::new(10, 9, 8, 7));
    let net = Network::create("dns-up", &[]);
    let dns = upstream.address.to_string();
    let script = format!(
        "{TCP_LOOKUP}\n\
         nslookup only-upstream.runvm.test | awk '/^Address/ && !/127.0.0.11/ {{ print \"udp\", $2 }}'; \
         echo \"tcp $(tcp_lookup only-upstream.runvm.test)\""
    );
    let (runc, runvm) = run_both(
        &["--network", &net.name, "--dns", &dns],
        &[IMAGE, "sh", "-c", &script],
        None,
    );
    for (who, run) in [("runc", &runc), ("runvm", &runvm)] {
        let out = run.stdout_str();
        assert!(
            out.contains("udp 10.9.8.7\n"),
            "{who}: UDP lookup via the upstream server:\n{}",
            run.describe()
        );
        let tcp = out
            .lines()
            .find_map(|l| l.strip_prefix("tcp "))
            .unwrap_or("");
        assert_eq!(
            tcp_answer(tcp),
            Some(Ipv4Addr::new(10, 9, 8, 7)),
            "{who}: TCP lookup via the upstream server:\n{}",
            run.describe()
        );
    }
    assert_same(&runc, &runvm, "lookups forwarded upstream");
}

/// A query for the TXT records of `name` with an EDNS buffer of `edns`
/// bytes.
fn txt_query(name: &str, edns: u16) -> Vec<u8> {
    let mut q = vec![0x52, 0x38, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend(label.as_bytes());
    }
    q.extend([0, 0, 16, 0, 1]);
    // OPT: root name, type 41, class = the buffer size, TTL 0, no data.
    q.extend([0, 0, 41]);
    q.extend(edns.to_be_bytes());
    q.extend([0, 0, 0, 0, 0, 0]);
    q
}

/// Asks Docker's embedded resolver, from inside the network namespace of
/// the process `pid` on the host (as the supervisor does, and as a runc
/// container's process does), over UDP; the answer's size, if one came.
fn ask_in_namespace(pid: &str, query: Vec<u8>) -> Option<usize> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).expect("the namespace");
    std::thread::spawn(move || {
        // The network namespace is per thread: this one only.
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        s.send_to(&query, "127.0.0.11:53").unwrap();
        let mut buf = vec![0u8; 65536];
        s.recv(&mut buf).ok()
    })
    .join()
    .unwrap()
}

/// An upstream answer larger than the MTU (a lookup with a large EDNS
/// buffer) comes back to dockerd in fragments, only the first of which has
/// ports: it reaches dockerd whole in a runvm container's namespace, as in
/// a runc container's, and is not lost to the VM.
#[e2e_test]
fn an_upstream_answer_larger_than_the_mtu_reaches_dockerd() {
    let text = "x".repeat(200);
    let records: Vec<String> = (0..15)
        .map(|i| format!("--txt-record=big.runvm.test,{i}{text}"))
        .collect();
    let upstream = Upstream::start_with(&format!("--edns-packet-max=4096 {}", records.join(" ")));
    let net = Network::create("dns-big", &[]);
    let dns = upstream.address.to_string();
    for runtime in ["runc", "runvm"] {
        let _slot = (runtime == "runvm").then(|| vm_slots(1));
        let c = Container::run_detached(
            &format!("dns-big-{runtime}"),
            runtime,
            &[
                "--network",
                &net.name,
                "--dns",
                &dns,
                IMAGE,
                "sh",
                "-c",
                "echo up; sleep 600",
            ],
        );
        // Under runvm the VM runs: the namespace's link is wired to it.
        c.wait_for_log("up", Duration::from_secs(120));
        let pid = c.inspect("{{.State.Pid}}");
        let size = ask_in_namespace(&pid, txt_query("big.runvm.test", 4096));
        assert!(
            size.is_some_and(|n| n > 3000),
            "{runtime}: the 3 KB answer, got {size:?} bytes"
        );
    }
}
