//! Moving the container's network into the VM.
//!
//! For every Ethernet interface of the container (Docker's veth), the
//! supervisor records its MAC, MTU, addresses and routes, creates a tap
//! device for QEMU, and joins the two with tc: everything that arrives on
//! the veth is redirected to the tap and the other way round (an ingress
//! qdisc with a match-all u32 filter and a mirred redirect, as Kata's
//! "tcfilter" model does). The guest NIC gets the veth's MAC and the guest
//! gets the addresses, so to the rest of the network the VM *is* the
//! container. The addresses are removed from the veth so the container's own
//! stack never answers in the guest's place.
//!
//! The tap is opened by the supervisor and handed to QEMU as a file
//! descriptor; it is not persistent, so it disappears with QEMU.
//!
//! The work comes in three steps, so that the decisions are tested without
//! root: a [`Snapshot`] of the namespace (plain data, read through
//! [`NetlinkOps::snapshot`]), a [`plan`] made from it by a pure function,
//! and [`apply`], which carries the plan out through [`NetlinkOps`]: rtnetlink
//! and `/dev/net/tun` in [`netlink::RtNetlink`], a recorder in the tests.

mod netlink;
mod plan;
mod snapshot;
#[cfg(test)]
mod tests;

use std::os::fd::OwnedFd;

use runvm_protocol::{Interface, Route};

pub use plan::{plan, HostPlan};
pub use snapshot::{Address, Snapshot};

/// One container interface handed to the VM.
pub struct Nic<T = OwnedFd> {
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
    /// Removes an address from a link.
    async fn remove_address(&mut self, name: &str, address: &Address) -> Result<(), NetError>;
    /// Adds an ingress qdisc to a link.
    async fn add_ingress_qdisc(&mut self, index: u32, name: &str) -> Result<(), NetError>;
    /// Adds a match-all filter to a link's ingress qdisc that redirects
    /// every frame out of another link.
    async fn add_redirect(&mut self, from: (u32, &str), to: (u32, &str)) -> Result<(), NetError>;
}

/// Takes over the container's network: each Ethernet interface gets a tap
/// wired to it, and the guest gets its addresses and routes.
///
/// Only a network namespace of the container's own is taken over. With
/// `--network host` or `container:X` (`own_network` false) the interfaces
/// are someone else's: nothing is read or changed and the VM has loopback
/// only.
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
/// it up, removes the addresses from the container's link, then redirects
/// the link's frames to the tap and the tap's to the link.
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
        for address in &nic.remove {
            ops.remove_address(name, address).await?;
        }
        for (from, to) in [
            ((nic.link, name), (tap_index, nic.tap.as_str())),
            ((tap_index, nic.tap.as_str()), (nic.link, name)),
        ] {
            ops.add_ingress_qdisc(from.0, from.1).await?;
            ops.add_redirect(from, to).await?;
        }
        nics.push(Nic {
            interface: nic.interface,
            tap,
        });
    }
    Ok((nics, plan.routes))
}
