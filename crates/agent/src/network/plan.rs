//! Which guest NIC gets which name, MTU, addresses and routes: a pure
//! function of what the host sent and the guest's links.

use std::net::IpAddr;

use runvm_protocol::{Interface, IpNet, MacAddr, Route};

use super::NetError;

/// A link of the guest as netlink shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `IFLA_ADDRESS`, of whatever length; empty if the link has none.
    pub hw_address: Vec<u8>,
}

/// What [`super::apply`] does.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GuestPlan {
    /// The loopback device to bring up, if the guest has one.
    pub loopback: Option<u32>,
    /// The NICs to configure, in the order the host listed them.
    pub nics: Vec<NicSetup>,
    /// The routes to add, in the order the host listed them.
    pub routes: Vec<RouteSetup>,
}

/// One guest NIC standing for a container interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicSetup {
    pub index: u32,
    /// The NIC's current name, when it differs from the interface's.
    pub rename_from: Option<String>,
    /// A name to go through first, when another guest NIC has the name
    /// this one needs (the guest numbered them the other way round, e.g.
    /// eth0 and eth1 swap): all such NICs move aside before any takes
    /// its final name.
    pub rename_via: Option<String>,
    /// The container interface's name (`eth0`, …).
    pub name: String,
    pub mtu: u32,
    pub addresses: Vec<AddressSetup>,
}

/// One address of a NIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressSetup {
    pub address: IpNet,
    /// Added without duplicate address detection (`IFA_F_NODAD`). Docker
    /// adds a container's IPv6 addresses so: its IPAM made them unique.
    /// With DAD, the address stays tentative, unusable as a source, for
    /// the first second or two of the workload.
    pub nodad: bool,
}

/// One route, out of a configured NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSetup {
    /// Index of the NIC the route goes out of.
    pub index: u32,
    pub device: String,
    pub destination: IpNet,
    pub gateway: Option<IpAddr>,
    /// The metric, for IPv4 routes only.
    pub metric: Option<u32>,
}

/// Matches each interface the host sent with the guest NIC of the same MAC
/// (QEMU gives each NIC the MAC of the container interface it stands for)
/// and plans its name, MTU and addresses (IPv6 ones without duplicate
/// address detection, as under runc); plans the routes that go out of
/// those NICs; and brings up `lo`.
///
/// A route out of a device the host did not send, or whose gateway is of
/// another family than its destination, is left out, as is the metric of
/// an IPv6 route. An interface whose MAC no guest NIC has is an error:
/// the guest would lack a network the container has.
pub fn plan(
    interfaces: &[Interface],
    routes: &[Route],
    links: &[Link],
) -> Result<GuestPlan, NetError> {
    let mut out = GuestPlan {
        loopback: links.iter().find(|l| l.name == "lo").map(|l| l.index),
        ..GuestPlan::default()
    };
    for iface in interfaces {
        let link = links
            .iter()
            .find(|l| MacAddr::try_from(&l.hw_address[..]) == Ok(iface.mac))
            .ok_or_else(|| NetError::NoNicForMac {
                mac: iface.mac,
                name: iface.name.clone(),
            })?;
        out.nics.push(NicSetup {
            index: link.index,
            rename_from: (link.name != iface.name).then(|| link.name.clone()),
            rename_via: links
                .iter()
                .any(|l| l.name == iface.name && l.index != link.index)
                .then(|| format!("runvm{}", link.index)),
            name: iface.name.clone(),
            mtu: iface.mtu,
            addresses: iface
                .addresses
                .iter()
                .map(|&address| AddressSetup {
                    address,
                    nodad: matches!(address, IpNet::V6(_)),
                })
                .collect(),
        });
    }
    for r in routes {
        let Some(nic) = out.nics.iter().find(|n| n.name == r.device) else {
            continue;
        };
        let v4 = match (r.destination, r.gateway) {
            (IpNet::V4(_), None | Some(IpAddr::V4(_))) => true,
            (IpNet::V6(_), None | Some(IpAddr::V6(_))) => false,
            _ => continue,
        };
        out.routes.push(RouteSetup {
            index: nic.index,
            device: nic.name.clone(),
            destination: r.destination,
            gateway: r.gateway,
            metric: if v4 { r.metric } else { None },
        });
    }
    Ok(out)
}
