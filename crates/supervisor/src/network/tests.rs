//! Tests of the network takeover without root: plans made from snapshots
//! recorded in real containers (`tests/fixtures/net`, see its README), and
//! [`apply`] on a fake that records the calls.

use runvm_contract::report::ErrorChain;
use std::cell::RefCell;
use std::net::IpAddr;
use std::rc::Rc;

use runvm_protocol::{Interface, IpNet, Route};
use serde_json::Value;

use super::plan::{LeftAlone, Why};
use super::snapshot::{Address, Link, LinkType, RouteEntry, RouteKind, RouteProtocol};
use super::*;

// ---------------------------------------------------------------------------
// Fixtures: `ip -j` output converted into a snapshot
// ---------------------------------------------------------------------------

fn fixture(scenario: &str, suffix: &str) -> String {
    let path = format!(
        "{}/tests/fixtures/net/{scenario}.{suffix}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The recorded namespace of `scenario`, as the real reader would see it.
fn recorded(scenario: &str) -> Snapshot {
    let v: Value = serde_json::from_str(&fixture(scenario, "netns")).unwrap();
    snapshot_from_ip_json(&v)
}

/// What the guest must be told in `scenario` (written by hand).
fn expected(scenario: &str) -> (Vec<Interface>, Vec<Route>) {
    let v: Value = serde_json::from_str(&fixture(scenario, "guest")).unwrap();
    (
        serde_json::from_value(v["interfaces"].clone()).unwrap(),
        serde_json::from_value(v["routes"].clone()).unwrap(),
    )
}

fn str_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn u32_of(v: &Value, key: &str) -> Option<u32> {
    v.get(key)
        .and_then(Value::as_u64)
        .map(|n| u32::try_from(n).unwrap())
}

/// Converts the output of `ip -j -d link`, `ip -j addr`, `ip -4/-6 -j -d
/// route show table all` into a [`Snapshot`], undoing what iproute2 does to
/// the netlink values it prints (names for numbers, `default` for `0/0`,
/// host routes without their prefix length, IFF_RUNNING hidden behind
/// NO-CARRIER).
pub fn snapshot_from_ip_json(v: &Value) -> Snapshot {
    let mut s = Snapshot::default();
    for l in v["link"].as_array().unwrap() {
        let name = str_of(l, "ifname").unwrap().to_owned();
        let link_type = match str_of(l, "link_type").unwrap() {
            "ether" => LinkType::Ether,
            "loopback" => LinkType::Loopback,
            "none" => LinkType::Other(0xfffe),
            "ipip" => LinkType::Other(768),
            "sit" => LinkType::Other(776),
            other => panic!("{name}: link type {other} has no number here yet"),
        };
        let hw_address = str_of(l, "address")
            .map(|a| {
                a.split(':')
                    .map(|b| u8::from_str_radix(b, 16).unwrap())
                    .collect()
            })
            .unwrap_or_default();
        let mut flags = 0;
        let names: Vec<&str> = l["flags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap())
            .collect();
        for f in &names {
            flags |= match *f {
                "UP" => libc::IFF_UP,
                "BROADCAST" => libc::IFF_BROADCAST,
                "LOOPBACK" => libc::IFF_LOOPBACK,
                "POINTOPOINT" => libc::IFF_POINTOPOINT,
                "NOARP" => libc::IFF_NOARP,
                "PROMISC" => libc::IFF_PROMISC,
                "ALLMULTI" => libc::IFF_ALLMULTI,
                "MASTER" => libc::IFF_MASTER,
                "SLAVE" => libc::IFF_SLAVE,
                "MULTICAST" => libc::IFF_MULTICAST,
                "DYNAMIC" => libc::IFF_DYNAMIC,
                "LOWER_UP" => 1 << 16,
                "DORMANT" => 1 << 17,
                "NO-CARRIER" => 0,
                other => panic!("{name}: flag {other} has no bit here yet"),
            } as u32;
        }
        // iproute2 never prints RUNNING: it prints NO-CARRIER for an up
        // link that is not running.
        if names.contains(&"UP") && !names.contains(&"NO-CARRIER") {
            flags |= libc::IFF_RUNNING as u32;
        }
        s.links.push(Link {
            index: u32_of(l, "ifindex").unwrap(),
            name,
            link_type,
            kind: l
                .pointer("/linkinfo/info_kind")
                .and_then(Value::as_str)
                .map(str::to_owned),
            hw_address,
            mtu: u32_of(l, "mtu"),
            flags,
        });
    }
    // A netlink dump lists the IPv4 addresses of every link, then the IPv6
    // ones; `ip` groups them by link.
    for (l, family) in ["inet", "inet6"]
        .into_iter()
        .flat_map(|f| v["addr"].as_array().unwrap().iter().map(move |l| (l, f)))
    {
        let link = u32_of(l, "ifindex").unwrap();
        let of_family = |a: &&Value| str_of(a, "family") == Some(family);
        for a in l["addr_info"].as_array().unwrap().iter().filter(of_family) {
            let len = u8::try_from(a["prefixlen"].as_u64().unwrap()).unwrap();
            let ip = |key| str_of(a, key).map(|t: &str| t.parse::<IpAddr>().unwrap());
            // iproute2 prints IFA_LOCAL as "local" and IFA_ADDRESS as
            // "address" when they differ (a peer); an address without
            // IFA_LOCAL (IPv6) has its IFA_ADDRESS printed as "local".
            let (address, local) = match (family, ip("address")) {
                (_, Some(peer)) => (peer, ip("local")),
                ("inet", None) => (ip("local").unwrap(), ip("local")),
                (_, None) => (ip("local").unwrap(), None),
            };
            s.addresses.push(Address {
                link,
                address: Some(IpNet::new(address, len).unwrap()),
                local,
            });
        }
    }
    for (key, unspecified, host_len) in [
        ("route4", IpAddr::from([0u8; 4]), 32),
        ("route6", IpAddr::from([0u16; 8]), 128),
    ] {
        for r in v[key].as_array().unwrap() {
            let destination = match str_of(r, "dst").unwrap() {
                "default" => IpNet::new(unspecified, 0).unwrap(),
                d if d.contains('/') => d.parse().unwrap(),
                d => IpNet::new(d.parse().unwrap(), host_len).unwrap(),
            };
            let oif = str_of(r, "dev").map(|dev| {
                s.links
                    .iter()
                    .find(|l| l.name == dev)
                    .unwrap_or_else(|| panic!("no link {dev}"))
                    .index
            });
            let number = |key: &str, names: &[(&str, u32)]| -> u32 {
                let t = str_of(r, key).unwrap();
                names
                    .iter()
                    .find(|(n, _)| *n == t)
                    .map(|(_, v)| *v)
                    .unwrap_or_else(|| t.parse().unwrap_or_else(|_| panic!("{key} {t}")))
            };
            let protocol = number(
                "protocol",
                &[("kernel", 2), ("boot", 3), ("static", 4), ("ra", 9)],
            );
            let kind = number(
                "type",
                &[
                    ("unicast", 1),
                    ("local", 2),
                    ("broadcast", 3),
                    ("anycast", 4),
                    ("multicast", 5),
                    ("blackhole", 6),
                    ("unreachable", 7),
                ],
            );
            s.routes.push(RouteEntry {
                destination,
                gateway: str_of(r, "gateway").map(|g| g.parse().unwrap()),
                oif,
                priority: u32_of(r, "metric"),
                table: number("table", &[("main", 254), ("local", 255), ("default", 253)]),
                protocol: u8::try_from(protocol).unwrap().into(),
                kind: u8::try_from(kind).unwrap().into(),
            });
        }
    }
    s
}

// ---------------------------------------------------------------------------
// A fake NetlinkOps that records the calls
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Snapshot,
    CreateTap(String),
    LinkIndex(String),
    SetMtuAndUp { index: u32, mtu: u32 },
    IngressQdisc(u32),
    Filter { on: u32, priority: u16, other: u32 },
}

/// Index of the first tap the fake creates.
const FIRST_TAP_INDEX: u32 = 100;

pub struct Fake {
    snapshot: Snapshot,
    /// The calls so far, shared with the test after the fake moved.
    log: Rc<RefCell<Vec<Call>>>,
    /// The call (counted from 0) that fails, if any.
    fail_at: Option<usize>,
    /// Taps are created but never found (as if removed at once).
    taps_vanish: bool,
    taps: Vec<String>,
}

impl Fake {
    pub fn new(snapshot: Snapshot) -> Self {
        Self {
            snapshot,
            log: Rc::default(),
            fail_at: None,
            taps_vanish: false,
            taps: Vec::new(),
        }
    }

    pub fn calls(&self) -> Vec<Call> {
        self.log.borrow().clone()
    }

    fn record(&mut self, call: Call) -> Result<(), NetError> {
        let mut log = self.log.borrow_mut();
        let at = log.len();
        log.push(call.clone());
        if self.fail_at == Some(at) {
            return Err(NetError::Io {
                what: format!("{call:?}"),
                source: std::io::ErrorKind::PermissionDenied.into(),
            });
        }
        Ok(())
    }
}

impl NetlinkOps for Fake {
    /// The tap's name stands for its descriptor.
    type Tap = String;

    async fn snapshot(&mut self) -> Result<Snapshot, NetError> {
        self.record(Call::Snapshot)?;
        Ok(self.snapshot.clone())
    }

    async fn create_tap(&mut self, name: &str) -> Result<String, NetError> {
        self.record(Call::CreateTap(name.into()))?;
        if !self.taps_vanish {
            self.taps.push(name.into());
        }
        Ok(name.into())
    }

    async fn link_index(&mut self, name: &str) -> Result<u32, NetError> {
        self.record(Call::LinkIndex(name.into()))?;
        let at = self.taps.iter().position(|t| t == name);
        at.map(|i| FIRST_TAP_INDEX + i as u32)
            .ok_or_else(|| NetError::TapVanished(name.into()))
    }

    async fn set_mtu_and_up(&mut self, index: u32, _: &str, mtu: u32) -> Result<(), NetError> {
        self.record(Call::SetMtuAndUp { index, mtu })
    }

    async fn add_ingress_qdisc(&mut self, index: u32, _: &str) -> Result<(), NetError> {
        self.record(Call::IngressQdisc(index))
    }

    async fn add_filter(
        &mut self,
        on: (u32, &str),
        filter: &tc::Filter,
        other: (u32, &str),
    ) -> Result<(), NetError> {
        self.record(Call::Filter {
            on: on.0,
            priority: filter.priority,
            other: other.0,
        })
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn left(index: u32, name: &str, why: Why) -> LeftAlone {
    LeftAlone {
        index,
        name: name.into(),
        why,
    }
}

/// The calls that wire one NIC: tap `n` (index FIRST_TAP_INDEX + n) for
/// `link`, with the filters of [`tc::filters`].
fn wiring(n: u32, link: u32, mtu: u32) -> Vec<Call> {
    let tap = FIRST_TAP_INDEX + n;
    let mut calls = vec![
        Call::CreateTap(format!("runvm-tap{n}")),
        Call::LinkIndex(format!("runvm-tap{n}")),
        Call::SetMtuAndUp { index: tap, mtu },
        Call::IngressQdisc(link),
        Call::IngressQdisc(tap),
    ];
    calls.extend(tc::filters().iter().map(|f| match f.on {
        tc::Side::Link => Call::Filter {
            on: link,
            priority: f.priority,
            other: tap,
        },
        tc::Side::Tap => Call::Filter {
            on: tap,
            priority: f.priority,
            other: link,
        },
    }));
    calls
}

// ---------------------------------------------------------------------------
// Plans of the recorded scenarios
// ---------------------------------------------------------------------------

/// The plan's interfaces and routes are what the guest must be told.
fn assert_guest_side(scenario: &str, plan: &HostPlan) {
    let (interfaces, routes) = expected(scenario);
    let got: Vec<&Interface> = plan.nics.iter().map(|n| &n.interface).collect();
    assert_eq!(got, interfaces.iter().collect::<Vec<_>>(), "{scenario}");
    assert_eq!(plan.routes, routes, "{scenario}");
}

#[test]
fn default_bridge_one_veth_and_a_default_route() {
    let p = plan(&recorded("default"));
    assert_guest_side("default", &p);
    assert_eq!(p.nics.len(), 1);
    assert_eq!(p.nics[0].link, 5334);
    assert_eq!(p.nics[0].tap, "runvm-tap0");
    assert_eq!(p.nics[0].filters, tc::filters());
    assert_eq!(p.left_alone, [left(1, "lo", Why::Loopback)]);
}

#[test]
fn user_defined_network_as_the_default_bridge() {
    let p = plan(&recorded("user"));
    assert_guest_side("user", &p);
    assert_eq!(p.nics[0].link, 5336);
    assert_eq!(p.left_alone, [left(1, "lo", Why::Loopback)]);
}

#[test]
fn two_networks_two_nics_one_default_route() {
    let p = plan(&recorded("two"));
    assert_guest_side("two", &p);
    let taps: Vec<(u32, &str)> = p.nics.iter().map(|n| (n.link, n.tap.as_str())).collect();
    assert_eq!(taps, [(5338, "runvm-tap0"), (5340, "runvm-tap1")]);
    // eth1's only route is the kernel's, for its subnet: it comes with the
    // address in the guest too.
    assert!(p.routes.iter().all(|r| r.device == "eth0"));
}

#[test]
fn dual_stack_gives_both_families_but_not_the_link_local_address() {
    let p = plan(&recorded("dualstack"));
    assert_guest_side("dualstack", &p);
    // fe80::42:acff:fe18:2/64 is not sent: the guest makes its own from
    // the same MAC.
    assert_eq!(
        p.nics[0].interface.addresses,
        [net("172.24.0.2/16"), net("fd00:7::2/64")]
    );
    // The IPv6 default route loses its metric (1024); the kernel's
    // fd00:7::/64 and fe80::/64 and the local table's ff00::/8 stay out.
    assert_eq!(
        p.routes[1],
        Route {
            destination: net("::/0"),
            gateway: Some(ip("fd00:7::1")),
            device: "eth0".into(),
            metric: None,
        }
    );
}

#[test]
fn network_none_has_no_nic() {
    let p = plan(&recorded("none"));
    assert_guest_side("none", &p);
    assert_eq!(p.left_alone, [left(1, "lo", Why::Loopback)]);
    let (nics, routes) = block_on(apply(&mut Fake::new(recorded("none")), p)).unwrap();
    assert!(nics.is_empty() && routes.is_empty());
}

#[test]
fn host_network_is_never_read_or_touched() {
    // With --network host the supervisor runs in the host's namespace,
    // which has Ethernet links aplenty: the plan would take them...
    let host = recorded("host");
    let p = plan(&host);
    let taken: Vec<&str> = p.nics.iter().map(|n| n.interface.name.as_str()).collect();
    for name in ["eth0", "docker0"] {
        assert!(taken.contains(&name), "{name} not in {taken:?}");
    }
    // ... so nothing gets that far: no netlink connection at all.
    let mut connected = false;
    let (nics, routes) = block_on(take_over(false, || {
        connected = true;
        Ok(Fake::new(host))
    }))
    .unwrap();
    assert!(!connected, "the host's namespace was opened");
    assert!(nics.is_empty() && routes.is_empty());
    assert_guest_side("host", &HostPlan::default());
}

// ---------------------------------------------------------------------------
// Cases the recordings do not show
// ---------------------------------------------------------------------------

fn link(index: u32, name: &str, link_type: LinkType, hw: &[u8]) -> Link {
    Link {
        index,
        name: name.into(),
        link_type,
        kind: None,
        hw_address: hw.to_vec(),
        mtu: Some(1500),
        flags: libc::IFF_UP as u32,
    }
}

fn route(destination: &str, gateway: Option<&str>, oif: u32) -> RouteEntry {
    RouteEntry {
        destination: net(destination),
        gateway: gateway.map(ip),
        oif: Some(oif),
        priority: None,
        table: RouteEntry::TABLE_MAIN,
        protocol: RouteProtocol::Boot,
        kind: RouteKind::Unicast,
    }
}

#[test]
fn only_ethernet_links_with_a_mac_and_not_runvms_own_or_the_kernels_tunnels_are_taken() {
    let mut s = recorded("default");
    s.links.extend([
        link(2, "tunl0", LinkType::Other(768), &[0, 0, 0, 0]),
        link(3, "wg0", LinkType::Other(0xfffe), &[]),
        link(4, "runvm-tap0", LinkType::Ether, &[2, 0, 0, 0, 0, 1]),
        link(5, "odd0", LinkType::Ether, &[2, 0, 0, 0, 0, 0, 1]),
        Link {
            mtu: None,
            ..link(6, "eth9", LinkType::Ether, &[2, 0, 0, 0, 0, 9])
        },
        Link {
            kind: Some("gretap".into()),
            ..link(7, "gretap0", LinkType::Ether, &[0; 6])
        },
        Link {
            kind: Some("erspan".into()),
            ..link(8, "erspan0", LinkType::Ether, &[0; 6])
        },
    ]);
    let p = plan(&s);
    assert_eq!(
        p.left_alone,
        [
            left(1, "lo", Why::Loopback),
            left(2, "tunl0", Why::NotEthernet(LinkType::Other(768))),
            left(3, "wg0", Why::NotEthernet(LinkType::Other(0xfffe))),
            left(4, "runvm-tap0", Why::OwnTap),
            left(5, "odd0", Why::NoMac { len: 7 }),
            left(7, "gretap0", Why::KernelTunnel),
            left(8, "erspan0", Why::KernelTunnel),
        ]
    );
    let names: Vec<(&str, &str, u32)> = p
        .nics
        .iter()
        .map(|n| (n.interface.name.as_str(), n.tap.as_str(), n.interface.mtu))
        .collect();
    // A link without an MTU gets Ethernet's; taps are numbered by NIC.
    assert_eq!(
        names,
        [("eth0", "runvm-tap0", 1500), ("eth9", "runvm-tap1", 1500)]
    );
}

#[test]
fn addresses_without_ifa_address_are_not_sent() {
    let mut s = recorded("default");
    s.addresses.push(Address {
        link: 5334,
        address: None,
        local: Some(ip("10.9.9.9")),
    });
    let p = plan(&s);
    assert_eq!(p.nics[0].interface.addresses, [net("172.17.0.2/16")]);
}

#[test]
fn routes_the_guest_gets_and_those_it_does_not() {
    let mut s = recorded("two");
    let eth0 = 5338;
    s.routes = vec![
        // Taken: a static route with a metric (kept for IPv4), a route
        // without gateway, an IPv6 route.
        RouteEntry {
            priority: Some(100),
            protocol: RouteProtocol::Static,
            ..route("10.7.0.0/24", Some("172.22.0.254"), eth0)
        },
        route("10.8.0.0/16", None, 5340),
        RouteEntry {
            priority: Some(1024),
            ..route("fd00:8::/64", Some("fd00:7::1"), eth0)
        },
        // Left out: the kernel's, another table's, not unicast, out of a
        // link that is not a NIC or of none, IPv6 link-local and
        // multicast destinations.
        RouteEntry {
            protocol: RouteProtocol::Kernel,
            ..route("10.9.0.0/16", None, eth0)
        },
        RouteEntry {
            table: 100,
            ..route("10.10.0.0/16", None, eth0)
        },
        RouteEntry {
            kind: RouteKind::Other(6),
            ..route("10.11.0.0/16", None, eth0)
        },
        route("10.12.0.0/16", None, 1),
        RouteEntry {
            oif: None,
            ..route("10.13.0.0/16", None, eth0)
        },
        route("fe80::/64", None, eth0),
        route("ff02::/16", None, eth0),
    ];
    let p = plan(&s);
    let r = |d: &str, g: Option<&str>, dev: &str, metric| Route {
        destination: net(d),
        gateway: g.map(ip),
        device: dev.into(),
        metric,
    };
    assert_eq!(
        p.routes,
        [
            r("10.7.0.0/24", Some("172.22.0.254"), "eth0", Some(100)),
            r("10.8.0.0/16", None, "eth1", None),
            r("fd00:8::/64", Some("fd00:7::1"), "eth0", None),
        ]
    );
}

// ---------------------------------------------------------------------------
// apply, on the fake
// ---------------------------------------------------------------------------

#[test]
fn take_over_reads_plans_and_wires_each_nic_in_order() {
    let fake = Fake::new(recorded("two"));
    let log = fake.log.clone();
    let (nics, routes) = block_on(take_over(true, || Ok(fake))).unwrap();
    let mut calls = vec![Call::Snapshot];
    calls.extend(wiring(0, 5338, 1500));
    calls.extend(wiring(1, 5340, 1500));
    assert_eq!(*log.borrow(), calls);
    let taps: Vec<&str> = nics.iter().map(|n| n.tap.as_str()).collect();
    assert_eq!(taps, ["runvm-tap0", "runvm-tap1"]);
    let (interfaces, expected_routes) = expected("two");
    let got: Vec<Interface> = nics.into_iter().map(|n| n.interface).collect();
    assert_eq!(got, interfaces);
    assert_eq!(routes, expected_routes);
}

#[test]
fn apply_makes_the_calls_of_the_plan_in_order() {
    let mut fake = Fake::new(recorded("dualstack"));
    block_on(apply(&mut fake, plan(&recorded("dualstack")))).unwrap();
    assert_eq!(fake.calls(), wiring(0, 5342, 1500));
    let mut fake = Fake::new(recorded("default"));
    let mut p = plan(&recorded("default"));
    p.nics[0].interface.mtu = 9000;
    block_on(apply(&mut fake, p)).unwrap();
    assert_eq!(fake.calls(), wiring(0, 5334, 9000));
}

#[test]
fn apply_stops_at_the_first_failure_and_names_it() {
    let all = {
        let mut fake = Fake::new(recorded("two"));
        block_on(apply(&mut fake, plan(&recorded("two")))).unwrap();
        fake.calls()
    };
    assert_eq!(all.len(), 2 * (5 + tc::filters().len()));
    for at in 0..all.len() {
        let mut fake = Fake::new(recorded("two"));
        fake.fail_at = Some(at);
        let err = block_on(apply(&mut fake, plan(&recorded("two"))))
            .err()
            .expect("a failure");
        assert_eq!(fake.calls(), all[..=at], "failing at {at}");
        assert_eq!(
            err.chain().to_string(),
            format!("cannot {:?}: permission denied", all[at])
        );
    }
}

#[test]
fn a_tap_that_vanishes_is_named() {
    let mut fake = Fake::new(recorded("default"));
    fake.taps_vanish = true;
    let err = block_on(take_over(true, || Ok(fake))).err().unwrap();
    assert_eq!(
        crate::error::SupervisorError::from(err).chain().to_string(),
        "network setup failed: the tap runvm-tap0 is gone right after its creation"
    );
}

// ---------------------------------------------------------------------------
// The real reader and the fixtures' converter agree
// ---------------------------------------------------------------------------

/// Reads the current network namespace with [`netlink::RtNetlink`] and with
/// `ip -j`, and checks that the fixtures' converter turns the latter into
/// the former: the recorded fixtures then stand for what the supervisor
/// reads. Needs root (or CAP_NET_ADMIN) and a namespace nobody changes
/// meanwhile; `scripts/record-net-fixtures.sh` runs it in each container it
/// records.
#[test]
#[ignore = "reads a live network namespace: run by scripts/record-net-fixtures.sh"]
fn the_real_reader_sees_what_ip_shows() {
    let ip_json = |args: &[&str]| -> Value {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "ip {args:?}: {out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let shown = serde_json::json!({
        "link": ip_json(&["-j", "-d", "link", "show"]),
        "addr": ip_json(&["-j", "addr", "show"]),
        "route4": ip_json(&["-4", "-j", "-d", "route", "show", "table", "all"]),
        "route6": ip_json(&["-6", "-j", "-d", "route", "show", "table", "all"]),
    });
    let read = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async { netlink::RtNetlink::connect()?.snapshot().await })
        .unwrap();
    assert_eq!(read, snapshot_from_ip_json(&shown));
}

// ---------------------------------------------------------------------------
// Networks connected and disconnected while the container runs
// ---------------------------------------------------------------------------

use super::hotplug::{diff, slot_tap, Plugged};

/// The NICs the VM got at boot in `scenario`, on slots 1, 2, …
fn plugged_at_boot(scenario: &str) -> (Vec<Plugged>, Vec<Route>) {
    let p = plan(&recorded(scenario));
    let plugged = p
        .nics
        .iter()
        .zip(1..)
        .map(|(n, slot)| Plugged {
            link: n.link,
            slot,
            interface: n.interface.clone(),
        })
        .collect();
    (plugged, p.routes)
}

#[test]
fn nothing_changed_nothing_to_do() {
    let (plugged, routes) = plugged_at_boot("two");
    let s = recorded("two");
    let c = diff(&plugged, &routes, &plan(&s), &s);
    assert_eq!(c, hotplug::Changes::default());
}

#[test]
fn a_connected_link_is_plugged_into_a_free_slot_once_it_is_up() {
    // The VM booted with the first network; the second arrives.
    let (mut plugged, routes) = plugged_at_boot("two");
    plugged.truncate(1);
    let mut s = recorded("two");
    let second = s.links.iter().position(|l| l.index == 5340).unwrap();
    let up = s.links[second].flags;
    s.links[second].flags &= !(libc::IFF_UP as u32);
    let c = diff(&plugged, &routes, &plan(&s), &s);
    assert!(c.plug.is_empty(), "not yet up");
    s.links[second].flags = up;
    let c = diff(&plugged, &routes, &plan(&s), &s);
    assert_eq!(c.plug.len(), 1);
    assert_eq!((c.plug[0].0.link, c.plug[0].1), (5340, 2));
    assert!(c.unplug.is_empty());
    assert!(c.tell_guest);
    assert_eq!(
        slot_tap(2),
        "runvm-tap1",
        "the tap the boot plan names for NIC 2"
    );
}

#[test]
fn a_disconnected_link_is_unplugged_and_its_slot_reused() {
    let (plugged, routes) = plugged_at_boot("two");
    let mut s = recorded("two");
    // The first network goes.
    s.links.retain(|l| l.index != 5338);
    s.addresses.retain(|a| a.link != 5338);
    s.routes.retain(|r| r.oif != Some(5338));
    let p = plan(&s);
    let c = diff(&plugged, &routes, &p, &s);
    assert_eq!(c.unplug, [0]);
    assert!(c.plug.is_empty());
    assert!(c.tell_guest);
    // A link that comes back with a new index takes the freed slot 1.
    let mut back = recorded("two");
    for l in &mut back.links {
        if l.index == 5338 {
            l.index = 6000;
        }
    }
    for a in &mut back.addresses {
        if a.link == 5338 {
            a.link = 6000;
        }
    }
    let c = diff(&plugged[1..], &routes, &plan(&back), &back);
    assert_eq!(c.plug.len(), 1);
    assert_eq!((c.plug[0].0.link, c.plug[0].1), (6000, 1));
}

#[test]
fn a_changed_route_or_address_is_told_to_the_guest_alone() {
    let (plugged, routes) = plugged_at_boot("two");
    let s = recorded("two");
    let c = diff(&plugged, &[], &plan(&s), &s);
    assert!(c.tell_guest && c.plug.is_empty() && c.unplug.is_empty());
    let mut changed = plugged.clone();
    changed[1].interface.mtu = 9000;
    let c = diff(&changed, &routes, &plan(&s), &s);
    assert!(c.tell_guest && c.plug.is_empty() && c.unplug.is_empty());
}

#[test]
fn a_network_reconnected_in_one_burst_gets_a_slot_that_is_not_being_unplugged() {
    // `docker network disconnect n c && docker network connect n c`: within
    // one settle, the first network's link is replaced by a new one (a new
    // index, the same MAC: Docker derives it from the same address).
    let (plugged, routes) = plugged_at_boot("two");
    let mut s = recorded("two");
    for l in &mut s.links {
        if l.index == 5338 {
            l.index = 6000;
        }
    }
    for a in &mut s.addresses {
        if a.link == 5338 {
            a.link = 6000;
        }
    }
    for r in &mut s.routes {
        if r.oif == Some(5338) {
            r.oif = Some(6000);
        }
    }
    let c = diff(&plugged, &routes, &plan(&s), &s);
    assert_eq!(c.unplug, [0], "the old NIC goes");
    assert_eq!(c.plug.len(), 1);
    let (nic, slot) = &c.plug[0];
    assert_eq!(nic.link, 6000);
    assert!(
        plugged.iter().all(|p| p.slot != *slot),
        "slot {slot} still holds the NIC being unplugged: QEMU refuses a second nic{slot}"
    );
}
