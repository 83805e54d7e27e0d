//! What to do with the container's network: a pure function of a
//! [`Snapshot`].

use runvm_protocol::{Interface, IpNet, MacAddr, Route};

use super::snapshot::{LinkType, RouteEntry, RouteKind, RouteProtocol, Snapshot};

/// Names of the taps the supervisor creates; a link named so is one of
/// runvm's own and never taken over.
pub const TAP_PREFIX: &str = "runvm";

/// The tap of the `index`-th NIC of the VM (from 0), which sits in slot
/// `index + 1` of the NIC bridge: boot NICs and NICs plugged in later
/// are named alike.
pub fn tap_name(index: usize) -> String {
    format!("{TAP_PREFIX}-tap{index}")
}

/// The MTU of a link that does not report one.
const DEFAULT_MTU: u32 = 1500;

/// What [`super::apply`] does, and what the guest is told.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostPlan {
    /// The links that become NICs of the VM, in the order of the snapshot
    /// (which is the order of the VM's NICs).
    pub nics: Vec<NicPlan>,
    /// The routes the guest reproduces.
    pub routes: Vec<Route>,
    /// The links left as they are, and why.
    pub left_alone: Vec<LeftAlone>,
}

/// A link handed to the VM: a tap is created for it, the two are joined by
/// tc filters, and the guest gets its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicPlan {
    /// Index of the container's link (Docker's veth).
    pub link: u32,
    /// Name of the tap to create.
    pub tap: String,
    /// What the guest is told about the NIC (its name is the link's).
    pub interface: Interface,
    /// The filters that join the link and the tap.
    pub filters: Vec<super::tc::Filter>,
}

/// A link the plan does not touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeftAlone {
    pub index: u32,
    pub name: String,
    pub why: Why,
}

/// Why a link is left alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// The loopback device: the guest has its own.
    Loopback,
    /// Not an Ethernet link (tunnels, `ARPHRD_NONE` devices): a tap carries
    /// Ethernet frames only.
    NotEthernet(LinkType),
    /// An Ethernet link whose hardware address is not 6 bytes long.
    NoMac { len: usize },
    /// One of runvm's own taps.
    OwnTap,
    /// An Ethernet tunnel the kernel puts in every namespace by itself
    /// once its module is loaded (`gretap0`, `erspan0`, …): never one of
    /// Docker's interfaces.
    KernelTunnel,
}

/// Driver kinds of the Ethernet tunnels the kernel creates in every network
/// namespace (the "fallback" devices of ip_gre and ip6_gre).
const KERNEL_TUNNEL_KINDS: &[&str] = &["gretap", "erspan", "ip6gretap", "ip6erspan"];

fn is_v6_link_local(net: &IpNet) -> bool {
    matches!(net, IpNet::V6(n) if n.addr().is_unicast_link_local())
}

/// Decides which links become NICs, with which addresses, and which routes
/// the guest gets.
///
/// Every Ethernet link with a 6-byte MAC becomes a NIC (`runvm-tapN` for
/// the N-th), with its MTU and its addresses but the IPv6 link-local ones.
/// The guest gets the routes of the main table that the kernel did not
/// make itself (those come with the addresses), that are unicast and go
/// out of one of those links; IPv6 routes to link-local or multicast
/// destinations come with the interface and are left out, and IPv6
/// metrics too (the guest's kernel picks its own).
pub fn plan(snapshot: &Snapshot) -> HostPlan {
    let mut out = HostPlan::default();
    for link in &snapshot.links {
        let mac = match (link.link_type, MacAddr::try_from(&link.hw_address[..])) {
            (LinkType::Ether, Ok(_)) if link.name.starts_with(TAP_PREFIX) => Err(Why::OwnTap),
            (LinkType::Ether, _)
                if link
                    .kind
                    .as_deref()
                    .is_some_and(|k| KERNEL_TUNNEL_KINDS.contains(&k)) =>
            {
                Err(Why::KernelTunnel)
            }
            (LinkType::Ether, Ok(mac)) => Ok(mac),
            (LinkType::Ether, Err(_)) => Err(Why::NoMac {
                len: link.hw_address.len(),
            }),
            (LinkType::Loopback, _) => Err(Why::Loopback),
            (other, _) => Err(Why::NotEthernet(other)),
        };
        let mac = match mac {
            Ok(mac) => mac,
            Err(why) => {
                out.left_alone.push(LeftAlone {
                    index: link.index,
                    name: link.name.clone(),
                    why,
                });
                continue;
            }
        };
        // IPv6 link-local addresses stay behind: the guest makes its own.
        let addresses = snapshot
            .addresses
            .iter()
            .filter(|a| a.link == link.index)
            .filter_map(|a| a.address)
            .filter(|net| !is_v6_link_local(net))
            .collect();
        out.nics.push(NicPlan {
            link: link.index,
            tap: tap_name(out.nics.len()),
            interface: Interface {
                name: link.name.clone(),
                mac,
                mtu: link.mtu.unwrap_or(DEFAULT_MTU),
                addresses,
            },
            filters: super::tc::filters(),
        });
    }
    out.routes = snapshot
        .routes
        .iter()
        .filter_map(|r| guest_route(r, &out.nics))
        .collect();
    out
}

fn guest_route(r: &RouteEntry, nics: &[NicPlan]) -> Option<Route> {
    if r.protocol == RouteProtocol::Kernel
        || r.kind != RouteKind::Unicast
        || r.table != RouteEntry::TABLE_MAIN
    {
        return None;
    }
    let nic = nics.iter().find(|n| Some(n.link) == r.oif)?;
    let v6 = match r.destination {
        IpNet::V4(_) => false,
        IpNet::V6(d) if d.addr().is_unicast_link_local() || d.addr().is_multicast() => {
            return None;
        }
        IpNet::V6(_) => true,
    };
    Some(Route {
        destination: r.destination,
        gateway: r.gateway,
        device: nic.interface.name.clone(),
        metric: if v6 { None } else { r.priority },
    })
}
