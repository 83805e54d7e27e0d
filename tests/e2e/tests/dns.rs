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
        .address_on(net, "IPAddress")
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

/// An answer too large for one packet (EDNS, over 1500 bytes) that dockerd
/// forwards upstream comes back in IP fragments, only the first of which
/// has ports: it reaches dockerd in the container's namespace whole, and
/// so the workload in the VM, as under runc.
#[e2e_test]
fn a_fragmented_upstream_answer_arrives_whole() {
    // Nine strings of 250 bytes: about 2.3 KB of TXT record.
    let strings: Vec<String> = (b'a'..=b'i')
        .map(|c| char::from(c).to_string().repeat(250))
        .collect();
    let upstream = Upstream::start_with(&format!(
        "--edns-packet-max=4096 --txt-record=big.runvm.test,{}",
        strings.join(",")
    ));
    let net = Network::create("dns-frag", &[]);
    let dns = upstream.address.to_string();
    let (runc, runvm) = run_both(
        &["--network", &net.name, "--dns", &dns],
        &[IMAGE, "nettool", "dns-txt", "127.0.0.11", "big.runvm.test"],
        None,
    );
    runc.assert_code(0, "runc: the large answer");
    let out = runc.stdout_str();
    let size: usize = out
        .strip_prefix("answer ")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no size: {}", runc.describe()));
    assert!(
        size > 1500 && out.ends_with("tc 0, 1 records\n"),
        "{}",
        runc.describe()
    );
    assert_same(&runc, &runvm, "a fragmented answer");
}
