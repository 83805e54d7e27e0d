//! What netlink shows of the container's network namespace, as plain data.
//!
//! The real implementation ([`super::netlink::RtNetlink::snapshot`]) fills
//! these from rtnetlink dumps; the tests fill them from recorded `ip -j`
//! output. Nothing here decides anything: that is [`super::plan`]'s job.

use std::net::IpAddr;

use runvm_protocol::IpNet;

/// The links, addresses and routes of a network namespace, each in the
/// order the kernel listed them (IPv4 routes before IPv6 routes).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    pub links: Vec<Link>,
    pub addresses: Vec<Address>,
    pub routes: Vec<RouteEntry>,
}

/// One network interface (`RTM_NEWLINK`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// The link layer (`ARPHRD_*` of the link header).
    pub link_type: LinkType,
    /// The driver kind (`IFLA_INFO_KIND`: `veth`, `bridge`, …), if any.
    pub kind: Option<String>,
    /// The hardware address (`IFLA_ADDRESS`), of whatever length the link
    /// layer uses; empty if the link has none.
    pub hw_address: Vec<u8>,
    /// `IFLA_MTU`, if reported.
    pub mtu: Option<u32>,
    /// The `IFF_*` flags of the link header.
    pub flags: u32,
}

/// The link layers the plan tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkType {
    /// `ARPHRD_ETHER`: veth, macvlan, bridge, tap, …
    Ether,
    /// `ARPHRD_LOOPBACK`.
    Loopback,
    /// Any other `ARPHRD_*` value (tunnels, `ARPHRD_NONE`, …).
    Other(u16),
}

impl LinkType {
    pub const ARPHRD_ETHER: u16 = 1;
    pub const ARPHRD_LOOPBACK: u16 = 772;
}

impl From<u16> for LinkType {
    fn from(arphrd: u16) -> Self {
        match arphrd {
            Self::ARPHRD_ETHER => Self::Ether,
            Self::ARPHRD_LOOPBACK => Self::Loopback,
            other => Self::Other(other),
        }
    }
}

/// One address of a link (`RTM_NEWADDR`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// Index of the link the address is on.
    pub link: u32,
    /// `IFA_ADDRESS` with the message's prefix length; `None` if the
    /// message had no `IFA_ADDRESS`.
    pub address: Option<IpNet>,
    /// `IFA_LOCAL`, which differs from `IFA_ADDRESS` only on
    /// point-to-point links. IPv4 addresses always have one.
    pub local: Option<IpAddr>,
}

/// One route (`RTM_NEWROUTE`), of any table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    /// `RTA_DST` with the header's prefix length; `0.0.0.0/0` or `::/0`
    /// when the message has no `RTA_DST`.
    pub destination: IpNet,
    /// `RTA_GATEWAY`.
    pub gateway: Option<IpAddr>,
    /// `RTA_OIF`: the index of the link the route goes out of.
    pub oif: Option<u32>,
    /// `RTA_PRIORITY` (the metric).
    pub priority: Option<u32>,
    /// The routing table (`RTA_TABLE`, else the header's): 254 is main.
    pub table: u32,
    /// Who made the route (`rtm_protocol`).
    pub protocol: RouteProtocol,
    /// `rtm_type`.
    pub kind: RouteKind,
}

impl RouteEntry {
    pub const TABLE_MAIN: u32 = 254;
}

/// `RTPROT_*`: who made a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteProtocol {
    /// `RTPROT_KERNEL`: the kernel, for an address's subnet.
    Kernel,
    /// `RTPROT_BOOT`: a route added without saying who (Docker's).
    Boot,
    /// `RTPROT_STATIC`: an administrator.
    Static,
    Other(u8),
}

impl From<u8> for RouteProtocol {
    fn from(p: u8) -> Self {
        match p {
            2 => Self::Kernel,
            3 => Self::Boot,
            4 => Self::Static,
            other => Self::Other(other),
        }
    }
}

/// `RTN_*`: what a route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    Unicast,
    Local,
    Broadcast,
    Multicast,
    Other(u8),
}

impl From<u8> for RouteKind {
    fn from(t: u8) -> Self {
        match t {
            1 => Self::Unicast,
            2 => Self::Local,
            3 => Self::Broadcast,
            5 => Self::Multicast,
            other => Self::Other(other),
        }
    }
}
