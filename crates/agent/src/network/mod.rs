//! Reproducing the container's network configuration on the guest's NICs.
//!
//! Each guest NIC has the MAC address of the container interface it stands
//! for, so the NIC is found by MAC, renamed (eth0, …), and given the
//! interface's MTU, addresses and routes.
//!
//! As on the host side, the decisions are a pure [`plan`] made from the
//! host's interfaces and routes and the guest's links (read through
//! [`GuestNetOps::links`]), carried out by [`apply`] through
//! [`GuestNetOps`]: rtnetlink in [`netlink::RtNetlink`], a recorder in the
//! tests.

mod netlink;
mod plan;
#[cfg(test)]
mod tests;

use runvm_protocol::{Interface, IpNet, MacAddr, Route};

pub use plan::{plan, AddressSetup, GuestPlan, Link, RouteSetup};

/// What failed while configuring the guest's network.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Netlink(#[from] runvm_netlink::NetlinkError),
    #[error("cannot open a netlink socket")]
    Connect(#[source] std::io::Error),
    #[error("no guest NIC has MAC {mac} (for {name}): the VM has fewer NICs than the container")]
    NoNicForMac { mac: MacAddr, name: String },
    /// The kernel has the route already (`EEXIST`).
    #[error("the route to {destination} via {device} exists already")]
    RouteExists { destination: IpNet, device: String },
}

/// The netlink operations the guest's network setup needs. Names are
/// passed along for error messages.
pub trait GuestNetOps {
    /// The guest's links.
    async fn links(&mut self) -> Result<Vec<Link>, NetError>;
    async fn set_up(&mut self, index: u32, name: &str) -> Result<(), NetError>;
    async fn rename(&mut self, index: u32, from: &str, to: &str) -> Result<(), NetError>;
    async fn set_mtu(&mut self, index: u32, name: &str, mtu: u32) -> Result<(), NetError>;
    async fn add_address(
        &mut self,
        index: u32,
        name: &str,
        address: &AddressSetup,
    ) -> Result<(), NetError>;
    /// Adds a route; [`NetError::RouteExists`] if the kernel has it.
    async fn add_route(&mut self, route: &RouteSetup) -> Result<(), NetError>;
}

/// Brings up loopback and configures every container interface.
pub async fn configure(interfaces: &[Interface], routes: &[Route]) -> crate::error::Result<()> {
    let mut ops = netlink::RtNetlink::connect()?;
    let links = ops.links().await?;
    apply(&mut ops, &plan(interfaces, routes, &links)?).await?;
    Ok(())
}

/// Carries out `plan`: brings up `lo`; moves aside the NICs whose names
/// another needs; for each NIC in turn renames it if needed, sets its MTU, adds its addresses and brings it up; then adds the
/// routes. A route the kernel has already is no error: it made the route
/// of a connected subnet itself when the address was added.
pub async fn apply<O: GuestNetOps>(ops: &mut O, plan: &GuestPlan) -> Result<(), NetError> {
    if let Some(lo) = plan.loopback {
        ops.set_up(lo, "lo").await?;
    }
    for nic in &plan.nics {
        if let (Some(from), Some(via)) = (&nic.rename_from, &nic.rename_via) {
            ops.rename(nic.index, from, via).await?;
        }
    }
    for nic in &plan.nics {
        if let Some(from) = &nic.rename_from {
            let from = nic.rename_via.as_ref().unwrap_or(from);
            ops.rename(nic.index, from, &nic.name).await?;
        }
        ops.set_mtu(nic.index, &nic.name, nic.mtu).await?;
        for a in &nic.addresses {
            ops.add_address(nic.index, &nic.name, a).await?;
        }
        ops.set_up(nic.index, &nic.name).await?;
    }
    for r in &plan.routes {
        match ops.add_route(r).await {
            Ok(()) | Err(NetError::RouteExists { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
