//! Moving the container's network into the VM.
//!
//! For every Ethernet interface of the container (Docker's veth), the
//! supervisor records its MAC, MTU, addresses and routes, creates a tap
//! device for QEMU, and joins the two with tc filters on their ingress
//! (as Kata's "tcfilter" model does): what the VM sends goes out of the
//! veth, and what arrives on the veth goes to the VM, but for the answers
//! to lookups that dockerd's embedded resolver forwards upstream from
//! inside the namespace, which its own stack must get (see [`tc`]). The
//! guest NIC gets the veth's MAC and the guest gets the addresses, so to
//! the rest of the network the VM *is* the container. The addresses stay on
//! the veth too, for dockerd's forwarded lookups; the namespace's stack
//! sees nothing else, so it never answers in the guest's place.
//!
//! The tap is opened by the supervisor and handed to QEMU as a file
//! descriptor; it is not persistent, so it disappears with QEMU.
//!
//! The work comes in three steps, so that the decisions are tested without
//! root: a [`Snapshot`] of the namespace (plain data, read through
//! [`NetlinkOps::snapshot`]), a [`plan`] made from it by a pure function,
//! and [`apply`], which carries the plan out through [`NetlinkOps`]: rtnetlink
//! and `/dev/net/tun` in [`netlink::RtNetlink`], a recorder in the tests.

pub mod hotplug;
mod netlink;
mod plan;
mod snapshot;
pub mod tc;
#[cfg(test)]
mod tests;

use std::os::fd::OwnedFd;

use runvm_protocol::{Interface, Route};

pub use plan::{plan, HostPlan};
pub use snapshot::Snapshot;

/// One container interface handed to the VM.
pub struct Nic<T = OwnedFd> {
    /// The namespace's link (its index).
    pub link: u32,
    pub interface: Interface,
    /// The tap's file descriptor, inherited by QEMU.
    pub tap: T,
}

/// What failed while taking over the network.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Netlink(#[from] runvm_netlink::NetlinkError),
    #[error("cannot {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the tap {0} is gone right after its creation")]
    TapVanished(String),
    #[error("netlink reported {what} with a prefix length of {len}, which no address has")]
    BadPrefix { what: String, len: u8 },
}

/// The netlink (and tun) operations the network takeover needs. `link` and
/// `tap` names are passed along for error messages.
pub trait NetlinkOps {
    /// What QEMU inherits for a tap.
    type Tap;
    /// Reads the namespace's links, addresses and routes.
    async fn snapshot(&mut self) -> Result<Snapshot, NetError>;
    /// Creates a (non-persistent) tap device named `name`.
    async fn create_tap(&mut self, name: &str) -> Result<Self::Tap, NetError>;
    /// The index of the link named `name`.
    async fn link_index(&mut self, name: &str) -> Result<u32, NetError>;
    /// Sets the MTU of a link and brings it up.
    async fn set_mtu_and_up(&mut self, index: u32, name: &str, mtu: u32) -> Result<(), NetError>;
    /// Adds an ingress qdisc to a link.
    async fn add_ingress_qdisc(&mut self, index: u32, name: &str) -> Result<(), NetError>;
    /// Adds `filter` to the ingress qdisc of link `on`; `other` is where
    /// its copies and redirects go.
    async fn add_filter(
        &mut self,
        on: (u32, &str),
        filter: &tc::Filter,
        other: (u32, &str),
    ) -> Result<(), NetError>;
}

/// Takes over the container's network: each Ethernet interface gets a tap
/// wired to it, and the guest gets its addresses and routes.
///
/// Only a network namespace of the container's own is taken over. Without
/// one (`own_network` false: the boot probe, in the host's namespace) the
/// interfaces are someone else's: nothing is read or changed and the VM
/// has loopback only.
pub async fn capture(own_network: bool) -> crate::error::Result<(Vec<Nic>, Vec<Route>)> {
    Ok(take_over(own_network, netlink::RtNetlink::connect).await?)
}

async fn take_over<O: NetlinkOps>(
    own_network: bool,
    connect: impl FnOnce() -> Result<O, NetError>,
) -> Result<(Vec<Nic<O::Tap>>, Vec<Route>), NetError> {
    if !own_network {
        return Ok((Vec::new(), Vec::new()));
    }
    let mut ops = connect()?;
    let snapshot = ops.snapshot().await?;
    apply(&mut ops, plan(&snapshot)).await
}

/// Carries out `plan`, NIC by NIC: creates the tap, sets its MTU and brings
/// it up, then gives the link and the tap an ingress qdisc each and adds
/// the filters of [`tc::filters`].
pub async fn apply<O: NetlinkOps>(
    ops: &mut O,
    plan: HostPlan,
) -> Result<(Vec<Nic<O::Tap>>, Vec<Route>), NetError> {
    let mut nics = Vec::new();
    for nic in plan.nics {
        let name = nic.interface.name.as_str();
        let tap = ops.create_tap(&nic.tap).await?;
        let tap_index = ops.link_index(&nic.tap).await?;
        ops.set_mtu_and_up(tap_index, &nic.tap, nic.interface.mtu)
            .await?;
        let link = (nic.link, name);
        let tap_end = (tap_index, nic.tap.as_str());
        ops.add_ingress_qdisc(link.0, link.1).await?;
        ops.add_ingress_qdisc(tap_end.0, tap_end.1).await?;
        for filter in &nic.filters {
            let (on, other) = match filter.on {
                tc::Side::Link => (link, tap_end),
                tc::Side::Tap => (tap_end, link),
            };
            ops.add_filter(on, filter, other).await?;
        }
        nics.push(Nic {
            link: nic.link,
            interface: nic.interface,
            tap,
        });
    }
    Ok((nics, plan.routes))
}
