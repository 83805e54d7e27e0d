//! Tests of the guest's network setup without root: plans made from what
//! the supervisor sends in the recorded scenarios (the supervisor's
//! `tests/fixtures/net/*.guest.json`, checked there against its own plan),
//! and [`apply`] on a fake that records the calls.

use std::net::IpAddr;

use runvm_protocol::{Interface, IpNet, MacAddr, Route};
use serde_json::Value;

use super::plan::NicSetup;
use super::*;

/// What the host sends in `scenario`.
fn sent(scenario: &str) -> (Vec<Interface>, Vec<Route>) {
    let path = format!(
        "{}/../supervisor/tests/fixtures/net/{scenario}.guest.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let v: Value = serde_json::from_str(&text).unwrap();
    (
        serde_json::from_value(v["interfaces"].clone()).unwrap(),
        serde_json::from_value(v["routes"].clone()).unwrap(),
    )
}

fn link(index: u32, name: &str, hw: &[u8]) -> Link {
    Link {
        index,
        name: name.into(),
        hw_address: hw.to_vec(),
    }
}

/// The guest's links at boot: `lo` (1), then one virtio NIC per interface
/// in QEMU's order, named `eth0`, `eth1`, … by the guest kernel.
fn booted(interfaces: &[Interface]) -> Vec<Link> {
    let mut links = vec![link(1, "lo", &[0; 6])];
    for (i, iface) in interfaces.iter().enumerate() {
        links.push(link(i as u32 + 2, &format!("eth{i}"), &iface.mac.octets()));
    }
    links
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn nic(index: u32, name: &str, mtu: u32, addresses: &[&str]) -> NicSetup {
    NicSetup {
        index,
        rename_from: None,
        rename_via: None,
        name: name.into(),
        mtu,
        addresses: addresses
            .iter()
            .map(|a| AddressSetup {
                address: net(a),
                nodad: a.contains(':'),
            })
            .collect(),
    }
}

fn route(index: u32, device: &str, dst: &str, gw: Option<&str>, metric: Option<u32>) -> RouteSetup {
    RouteSetup {
        index,
        device: device.into(),
        destination: net(dst),
        gateway: gw.map(ip),
        metric,
    }
}

fn plan_of(scenario: &str) -> GuestPlan {
    let (interfaces, routes) = sent(scenario);
    plan(&interfaces, &routes, &booted(&interfaces)).unwrap()
}

// ---------------------------------------------------------------------------
// Plans of the recorded scenarios
// ---------------------------------------------------------------------------

#[test]
fn default_bridge() {
    assert_eq!(
        plan_of("default"),
        GuestPlan {
            loopback: Some(1),
            nics: vec![nic(2, "eth0", 1500, &["172.17.0.2/16"])],
            routes: vec![route(2, "eth0", "0.0.0.0/0", Some("172.17.0.1"), None)],
        }
    );
}

#[test]
fn user_defined_network() {
    assert_eq!(
        plan_of("user"),
        GuestPlan {
            loopback: Some(1),
            nics: vec![nic(2, "eth0", 1500, &["172.21.0.2/16"])],
            routes: vec![route(2, "eth0", "0.0.0.0/0", Some("172.21.0.1"), None)],
        }
    );
}

#[test]
fn two_networks() {
    assert_eq!(
        plan_of("two"),
        GuestPlan {
            loopback: Some(1),
            nics: vec![
                nic(2, "eth0", 1500, &["172.22.0.2/16"]),
                nic(3, "eth1", 1500, &["172.23.0.2/16"]),
            ],
            routes: vec![route(2, "eth0", "0.0.0.0/0", Some("172.22.0.1"), None)],
        }
    );
}

#[test]
fn dual_stack() {
    assert_eq!(
        plan_of("dualstack"),
        GuestPlan {
            loopback: Some(1),
            nics: vec![nic(2, "eth0", 1500, &["172.24.0.2/16", "fd00:7::2/64"])],
            routes: vec![
                route(2, "eth0", "0.0.0.0/0", Some("172.24.0.1"), None),
                route(2, "eth0", "::/0", Some("fd00:7::1"), None),
            ],
        }
    );
}

#[test]
fn network_none_and_host_bring_up_loopback_only() {
    for scenario in ["none", "host"] {
        assert_eq!(
            plan_of(scenario),
            GuestPlan {
                loopback: Some(1),
                ..GuestPlan::default()
            },
            "{scenario}"
        );
    }
}

// ---------------------------------------------------------------------------
// Cases the recordings do not show
// ---------------------------------------------------------------------------

#[test]
fn nics_are_found_by_mac_and_renamed_when_their_names_differ() {
    let (interfaces, routes) = sent("two");
    // The guest kernel numbered the NICs the other way round.
    let links = vec![
        link(1, "lo", &[0; 6]),
        link(2, "eth0", &interfaces[1].mac.octets()),
        link(3, "eth1", &interfaces[0].mac.octets()),
    ];
    let p = plan(&interfaces, &routes, &links).unwrap();
    let renames: Vec<(u32, Option<&str>, &str)> = p
        .nics
        .iter()
        .map(|n| (n.index, n.rename_from.as_deref(), n.name.as_str()))
        .collect();
    assert_eq!(
        renames,
        [(3, Some("eth1"), "eth0"), (2, Some("eth0"), "eth1")]
    );
    assert_eq!(p.routes[0].index, 3, "the route follows eth0 to its NIC");
    // Each name is taken by the other NIC: both move aside first.
    let via: Vec<Option<&str>> = p.nics.iter().map(|n| n.rename_via.as_deref()).collect();
    assert_eq!(via, [Some("runvm3"), Some("runvm2")]);
}

#[test]
fn swapped_nics_move_aside_before_taking_their_names() {
    let (interfaces, _) = sent("two");
    let mut links = booted(&interfaces);
    // The guest numbered them the other way round.
    let (a, b) = (links[1].hw_address.clone(), links[2].hw_address.clone());
    links[1].hw_address = b;
    links[2].hw_address = a;
    let mut fake = Fake {
        links,
        ..Fake::default()
    };
    configure_on(&mut fake, "two").unwrap();
    let renames: Vec<&Call> = fake
        .calls
        .iter()
        .filter(|c| matches!(c, Call::Rename { .. }))
        .collect();
    let r = |index, to: &str| Call::Rename {
        index,
        to: to.into(),
    };
    assert_eq!(
        renames,
        [
            &r(3, "runvm3"),
            &r(2, "runvm2"),
            &r(3, "eth0"),
            &r(2, "eth1")
        ]
    );
}

#[test]
fn an_interface_without_its_nic_is_an_error_naming_it() {
    let (interfaces, routes) = sent("two");
    let links = booted(&interfaces[..1]);
    let err = plan(&interfaces, &routes, &links).unwrap_err();
    assert_eq!(
        runvm_contract::report::ErrorChain::chain(&crate::error::AgentError::from(err)).to_string(),
        "network setup failed: no guest NIC has MAC 02:42:ac:17:00:02 (for eth1): \
         the VM has fewer NICs than the container"
    );
    // A link with a hardware address that is no MAC never matches.
    let mut links = booted(&interfaces);
    links[2].hw_address.push(0);
    assert!(matches!(
        plan(&interfaces, &routes, &links),
        Err(NetError::NoNicForMac { name, .. }) if name == "eth1"
    ));
}

#[test]
fn a_guest_without_lo_brings_up_none() {
    let (interfaces, routes) = sent("default");
    let links = booted(&interfaces).split_off(1);
    assert_eq!(plan(&interfaces, &routes, &links).unwrap().loopback, None);
}

#[test]
fn routes_out_of_unknown_devices_or_of_mixed_families_are_left_out() {
    let (interfaces, _) = sent("two");
    let r = |dst: &str, gw: Option<&str>, dev: &str, metric| Route {
        destination: net(dst),
        gateway: gw.map(ip),
        device: dev.into(),
        metric,
    };
    let routes = [
        r("10.7.0.0/24", Some("172.22.0.254"), "eth0", Some(100)),
        r("10.8.0.0/16", None, "eth1", Some(5)),
        r("fd00:8::/64", Some("fd00:7::1"), "eth1", Some(1024)),
        r("10.9.0.0/16", None, "eth2", None),
        r("10.10.0.0/16", Some("fd00:7::1"), "eth0", None),
        r("fd00:9::/64", Some("172.22.0.1"), "eth0", None),
    ];
    let p = plan(&interfaces, &routes, &booted(&interfaces)).unwrap();
    assert_eq!(
        p.routes,
        [
            route(2, "eth0", "10.7.0.0/24", Some("172.22.0.254"), Some(100)),
            route(3, "eth1", "10.8.0.0/16", None, Some(5)),
            route(3, "eth1", "fd00:8::/64", Some("fd00:7::1"), None),
        ]
    );
}

// ---------------------------------------------------------------------------
// apply, on a fake
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Links,
    Up(u32),
    Rename { index: u32, to: String },
    Mtu { index: u32, mtu: u32 },
    Address { index: u32, address: AddressSetup },
    Route(RouteSetup),
    DelRoute(RouteSetup),
    Flush(u32),
    Down(u32),
}

#[derive(Default)]
struct Fake {
    links: Vec<Link>,
    calls: Vec<Call>,
    /// The call (counted from 0) that fails, if any.
    fail_at: Option<usize>,
    /// Destinations of the routes the kernel has already.
    existing: Vec<IpNet>,
    /// Addresses the links have already.
    addresses: Vec<IpNet>,
    /// Links that appear only after this many calls of `links` (a NIC
    /// plugged in while the guest runs).
    late: Vec<(usize, Link)>,
    link_calls: usize,
}

impl Fake {
    fn record(&mut self, call: Call) -> Result<(), NetError> {
        self.calls.push(call);
        if self.fail_at == Some(self.calls.len() - 1) {
            // An injected failure (any variant but RouteExists will do).
            return Err(NetError::Connect(
                std::io::ErrorKind::PermissionDenied.into(),
            ));
        }
        Ok(())
    }
}

impl GuestNetOps for Fake {
    async fn links(&mut self) -> Result<Vec<Link>, NetError> {
        self.record(Call::Links)?;
        self.link_calls += 1;
        let calls = self.link_calls;
        let (now, later): (Vec<_>, Vec<_>) =
            self.late.drain(..).partition(|(after, _)| calls > *after);
        self.late = later;
        self.links.extend(now.into_iter().map(|(_, l)| l));
        Ok(self.links.clone())
    }
    async fn set_up(&mut self, index: u32, _: &str) -> Result<(), NetError> {
        self.record(Call::Up(index))
    }
    async fn rename(&mut self, index: u32, _: &str, to: &str) -> Result<(), NetError> {
        self.record(Call::Rename {
            index,
            to: to.into(),
        })?;
        if let Some(l) = self.links.iter_mut().find(|l| l.index == index) {
            l.name = to.into();
        }
        Ok(())
    }
    async fn set_mtu(&mut self, index: u32, _: &str, mtu: u32) -> Result<(), NetError> {
        self.record(Call::Mtu { index, mtu })
    }
    async fn add_address(
        &mut self,
        index: u32,
        _: &str,
        address: &AddressSetup,
    ) -> Result<(), NetError> {
        self.record(Call::Address {
            index,
            address: *address,
        })?;
        if self.addresses.contains(&address.address) {
            return Err(NetError::AddressExists {
                address: address.address,
                device: String::new(),
            });
        }
        Ok(())
    }
    async fn add_route(&mut self, r: &RouteSetup) -> Result<(), NetError> {
        self.record(Call::Route(r.clone()))?;
        if self.existing.contains(&r.destination) {
            return Err(NetError::RouteExists {
                destination: r.destination,
                device: r.device.clone(),
            });
        }
        Ok(())
    }
    async fn del_route(&mut self, r: &RouteSetup) -> Result<(), NetError> {
        self.record(Call::DelRoute(r.clone()))
    }
    async fn flush_addresses(&mut self, index: u32, _: &str) -> Result<(), NetError> {
        self.record(Call::Flush(index))
    }
    async fn set_down(&mut self, index: u32, _: &str) -> Result<(), NetError> {
        self.record(Call::Down(index))
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
        .block_on(f)
}

/// Reads the links through the fake, plans and applies, as `configure`
/// does on the real kernel.
fn configure_on(fake: &mut Fake, scenario: &str) -> Result<(), NetError> {
    let (interfaces, routes) = sent(scenario);
    block_on(async {
        let links = fake.links().await?;
        apply(fake, &plan(&interfaces, &routes, &links)?).await
    })
}

#[test]
fn apply_brings_up_lo_then_each_nic_then_adds_the_routes() {
    let (interfaces, _) = sent("dualstack");
    let mut fake = Fake {
        links: booted(&interfaces),
        ..Fake::default()
    };
    configure_on(&mut fake, "dualstack").unwrap();
    assert_eq!(
        fake.calls,
        [
            Call::Links,
            Call::Up(1),
            Call::Mtu {
                index: 2,
                mtu: 1500
            },
            Call::Address {
                index: 2,
                address: AddressSetup {
                    address: net("172.24.0.2/16"),
                    nodad: false
                }
            },
            Call::Address {
                index: 2,
                address: AddressSetup {
                    address: net("fd00:7::2/64"),
                    nodad: true
                }
            },
            Call::Up(2),
            Call::Route(route(2, "eth0", "0.0.0.0/0", Some("172.24.0.1"), None)),
            Call::Route(route(2, "eth0", "::/0", Some("fd00:7::1"), None)),
        ]
    );
}

#[test]
fn apply_renames_before_configuring() {
    let (interfaces, _) = sent("two");
    let mut links = booted(&interfaces);
    links[1].name = "enp0s2".into();
    let mut fake = Fake {
        links,
        ..Fake::default()
    };
    configure_on(&mut fake, "two").unwrap();
    assert_eq!(
        fake.calls[..4],
        [
            Call::Links,
            Call::Up(1),
            Call::Rename {
                index: 2,
                to: "eth0".into()
            },
            Call::Mtu {
                index: 2,
                mtu: 1500
            },
        ]
    );
    assert!(!fake.calls[4..]
        .iter()
        .any(|c| matches!(c, Call::Rename { .. })));
}

#[test]
fn a_route_the_kernel_has_is_no_error() {
    let (interfaces, _) = sent("dualstack");
    let mut fake = Fake {
        links: booted(&interfaces),
        existing: vec![net("0.0.0.0/0")],
        ..Fake::default()
    };
    configure_on(&mut fake, "dualstack").unwrap();
    assert_eq!(
        fake.calls.last(),
        Some(&Call::Route(route(
            2,
            "eth0",
            "::/0",
            Some("fd00:7::1"),
            None
        ))),
        "the routes after it are added"
    );
}

#[test]
fn apply_stops_at_the_first_failure() {
    let (interfaces, _) = sent("two");
    let all = {
        let mut fake = Fake {
            links: booted(&interfaces),
            ..Fake::default()
        };
        configure_on(&mut fake, "two").unwrap();
        fake.calls
    };
    assert_eq!(all.len(), 1 + 1 + 2 * 3 + 1);
    for at in 0..all.len() {
        let mut fake = Fake {
            links: booted(&interfaces),
            fail_at: Some(at),
            ..Fake::default()
        };
        assert!(configure_on(&mut fake, "two").is_err());
        assert_eq!(fake.calls, all[..=at], "failing at {at}");
    }
}

#[test]
fn macs_match_whatever_case_the_host_wrote() {
    let (mut interfaces, routes) = sent("default");
    let json = serde_json::to_string(&interfaces[0])
        .unwrap()
        .replace("02:42:ac:11:00:02", "02:42:AC:11:00:02");
    interfaces[0] = serde_json::from_str(&json).unwrap();
    let links = vec![link(
        2,
        "eth0",
        &"02:42:ac:11:00:02".parse::<MacAddr>().unwrap().octets(),
    )];
    assert_eq!(plan(&interfaces, &routes, &links).unwrap().nics[0].index, 2);
}

// ---------------------------------------------------------------------------
// Updates while the container runs (docker network connect / disconnect)
// ---------------------------------------------------------------------------

fn network(scenario: &str) -> GuestNetwork {
    let (interfaces, routes) = sent(scenario);
    GuestNetwork {
        interfaces,
        routes,
        dns_relay: true,
    }
}

/// "two" without its second network: what the guest had before
/// `docker network connect`, or has after `disconnect`.
fn first_of_two() -> GuestNetwork {
    let mut n = network("two");
    n.interfaces.truncate(1);
    n.routes.retain(|r| r.device == "eth0");
    n
}

/// Runs an update from `old` to `new` on `fake`, waiting up to 5 s for NICs.
fn updated(fake: &mut Fake, old: &GuestNetwork, new: &GuestNetwork) {
    block_on(update(fake, old, new, std::time::Duration::from_secs(5))).unwrap();
}

#[test]
fn only_what_runvm_configured_and_the_host_no_longer_sends_is_removed() {
    let two = network("two");
    let one = first_of_two();
    let (macs, routes) = removed(&two, &one);
    assert_eq!(macs, [two.interfaces[1].mac]);
    assert!(
        routes.is_empty(),
        "eth1 had no route of its own: {routes:?}"
    );
    let (macs, routes) = removed(&one, &two);
    assert!(macs.is_empty() && routes.is_empty());
    // A default route that moves to another network goes from the first.
    let mut moved = two.clone();
    moved.routes = vec![Route {
        destination: net("0.0.0.0/0"),
        gateway: Some(ip("172.23.0.1")),
        device: "eth1".into(),
        metric: None,
    }];
    let (_, routes) = removed(&two, &moved);
    assert_eq!(routes, two.routes);
}

#[test]
fn a_connected_network_waits_for_its_nic_then_configures_it() {
    let two = network("two");
    let one = first_of_two();
    let mut links = booted(&one.interfaces);
    // The NIC QEMU plugs in shows up on the third look, as eth1.
    let late = link(3, "eth1", &two.interfaces[1].mac.octets());
    links.truncate(2);
    let mut fake = Fake {
        links,
        late: vec![(2, late)],
        // eth0's address is there from the boot.
        addresses: vec![one.interfaces[0].addresses[0]],
        ..Fake::default()
    };
    updated(&mut fake, &one, &two);
    let looks = fake
        .calls
        .iter()
        .filter(|c| matches!(c, Call::Links))
        .count();
    assert_eq!(
        looks, 4,
        "three looks until the NIC is there, one before the plan"
    );
    assert!(fake.calls.contains(&Call::Address {
        index: 3,
        address: AddressSetup {
            address: two.interfaces[1].addresses[0],
            nodad: false
        }
    }));
    assert!(fake.calls.contains(&Call::Up(3)));
    assert!(!fake
        .calls
        .iter()
        .any(|c| matches!(c, Call::DelRoute(_) | Call::Flush(_) | Call::Down(_))));
}

#[test]
fn a_disconnected_network_loses_its_routes_addresses_link_and_name() {
    let mut two = network("two");
    // The default route goes out of eth1 before the disconnect...
    two.routes = vec![Route {
        destination: net("0.0.0.0/0"),
        gateway: Some(ip("172.23.0.1")),
        device: "eth1".into(),
        metric: None,
    }];
    // ...and out of eth0 after it.
    let one = first_of_two();
    let mut fake = Fake {
        links: booted(&two.interfaces),
        ..Fake::default()
    };
    block_on(update(
        &mut fake,
        &two,
        &one,
        std::time::Duration::from_secs(5),
    ))
    .unwrap();
    let first: Vec<&Call> = fake.calls.iter().skip(1).take(4).collect();
    assert_eq!(
        first,
        [
            &Call::DelRoute(route(3, "eth1", "0.0.0.0/0", Some("172.23.0.1"), None)),
            &Call::Flush(3),
            &Call::Down(3),
            &Call::Rename {
                index: 3,
                to: "gone3".into()
            },
        ]
    );
    assert_eq!(
        fake.calls.last(),
        Some(&Call::Route(route(
            2,
            "eth0",
            "0.0.0.0/0",
            Some("172.22.0.1"),
            None
        )))
    );
}

#[test]
fn an_update_whose_nic_never_comes_fails_naming_it() {
    let two = network("two");
    let one = first_of_two();
    let mut fake = Fake {
        links: booted(&one.interfaces),
        ..Fake::default()
    };
    let err = block_on(update(
        &mut fake,
        &one,
        &two,
        std::time::Duration::from_millis(300),
    ))
    .unwrap_err();
    assert!(matches!(err, NetError::NoNicForMac { .. }), "{err}");
}

#[test]
fn a_reconnected_network_gets_its_new_nic_not_the_retired_one_of_the_same_mac() {
    // The network was disconnected and connected again: Docker gave the
    // new interface the same MAC. The old NIC was retired (gone3) but QEMU
    // has not unplugged it yet; the new one shows up on a later look.
    let two = network("two");
    let one = first_of_two();
    let mac = two.interfaces[1].mac.octets();
    let mut links = booted(&one.interfaces);
    links.push(link(3, "gone3", &mac));
    let mut fake = Fake {
        links,
        late: vec![(2, link(4, "eth2", &mac))],
        addresses: vec![one.interfaces[0].addresses[0]],
        ..Fake::default()
    };
    updated(&mut fake, &one, &two);
    assert!(
        fake.calls.contains(&Call::Up(4)),
        "the new NIC is configured: {:?}",
        fake.calls
    );
    assert!(
        !fake
            .calls
            .iter()
            .any(|c| matches!(c, Call::Up(3) | Call::Rename { index: 3, .. })),
        "the retired NIC is left alone: {:?}",
        fake.calls
    );
}
