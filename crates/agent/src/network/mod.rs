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

use std::time::Duration;

use runvm_protocol::{GuestNetwork, Interface, IpNet, MacAddr, Route};

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
    /// The link has the address already (`EEXIST`): an update re-applies
    /// what the guest has.
    #[error("{address} is on {device} already")]
    AddressExists { address: IpNet, device: String },
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
    /// Removes a route; no error if the kernel has none such.
    async fn del_route(&mut self, route: &RouteSetup) -> Result<(), NetError>;
    /// Removes every address of a link.
    async fn flush_addresses(&mut self, index: u32, name: &str) -> Result<(), NetError>;
    /// Takes a link down.
    async fn set_down(&mut self, index: u32, name: &str) -> Result<(), NetError>;
}

/// Brings up loopback and configures every container interface.
pub async fn configure(interfaces: &[Interface], routes: &[Route]) -> crate::error::Result<()> {
    let mut ops = netlink::RtNetlink::connect()?;
    let links = ops.links().await?;
    apply(&mut ops, &plan(interfaces, routes, &links)?).await?;
    Ok(())
}

/// How long an update waits for the NICs the host plugged in to appear.
pub const NIC_WAIT: Duration = Duration::from_secs(20);

/// Moves the guest from the network `old` to `new` while the container
/// runs (`docker network connect` / `disconnect`); see [`update`].
pub async fn reconfigure(old: &GuestNetwork, new: &GuestNetwork) -> Result<(), NetError> {
    let mut ops = netlink::RtNetlink::connect()?;
    update(&mut ops, old, new, NIC_WAIT).await
}

/// What an update takes away: the MACs of the interfaces the host no
/// longer sends, and the routes it no longer sends. Only what runvm itself
/// configured is ever taken away: links and routes the workload made
/// (dockerd's bridges in the VM, say) are not runvm's to remove.
pub fn removed(old: &GuestNetwork, new: &GuestNetwork) -> (Vec<MacAddr>, Vec<Route>) {
    let macs = old
        .interfaces
        .iter()
        .filter(|o| !new.interfaces.iter().any(|n| n.mac == o.mac))
        .map(|o| o.mac)
        .collect();
    let routes = old
        .routes
        .iter()
        .filter(|r| !new.routes.contains(r))
        .cloned()
        .collect();
    (macs, routes)
}

/// Carries out an update: waits (up to `wait`) for every NIC of `new`;
/// retires the NICs whose interfaces are gone (addresses removed, link
/// down and renamed out of the way: QEMU unplugs the device, which can
/// take longer); removes the routes that are gone; then applies `new` as
/// at boot, where what exists already is no error.
pub async fn update<O: GuestNetOps>(
    ops: &mut O,
    old: &GuestNetwork,
    new: &GuestNetwork,
    wait: Duration,
) -> Result<(), NetError> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut links = in_service(ops.links().await?);
    while !new.interfaces.iter().all(|i| has_mac(&links, i.mac))
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
        links = in_service(ops.links().await?);
    }
    let (gone_macs, gone_routes) = removed(old, new);
    for r in &gone_routes {
        let Some(link) = links.iter().find(|l| l.name == r.device) else {
            continue; // its NIC is gone, and the route with it
        };
        let setup = RouteSetup {
            index: link.index,
            device: r.device.clone(),
            destination: r.destination,
            gateway: r.gateway,
            metric: r.metric,
        };
        ops.del_route(&setup).await?;
    }
    for mac in gone_macs {
        if let Some(link) = links.iter().find(|l| has_mac(std::slice::from_ref(l), mac)) {
            ops.flush_addresses(link.index, &link.name).await?;
            ops.set_down(link.index, &link.name).await?;
            let aside = format!("{RETIRED}{}", link.index);
            ops.rename(link.index, &link.name, &aside).await?;
        }
    }
    let links = in_service(ops.links().await?);
    apply(ops, &plan(&new.interfaces, &new.routes, &links)?).await
}

/// The name prefix of a retired NIC, which waits for QEMU to unplug it.
const RETIRED: &str = "gone";

/// `links` without the retired NICs: a network connected again comes
/// back with the same MAC, and its new NIC is the one to configure, even
/// while the old one is still there.
fn in_service(mut links: Vec<Link>) -> Vec<Link> {
    links.retain(|l| !l.name.starts_with(RETIRED));
    links
}

fn has_mac(links: &[Link], mac: MacAddr) -> bool {
    links
        .iter()
        .any(|l| MacAddr::try_from(&l.hw_address[..]) == Ok(mac))
}

/// Carries out `plan`: brings up `lo`; moves aside the NICs whose names
/// another needs; for each NIC in turn renames it if needed, sets its MTU,
/// adds its addresses and brings it up; then adds the routes. A route the
/// kernel has already is no error: it made the route of a connected subnet
/// itself when the address was added. Nor is an address the link has
/// (an update re-applies a NIC that was there before).
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
            match ops.add_address(nic.index, &nic.name, a).await {
                Ok(()) | Err(NetError::AddressExists { .. }) => {}
                Err(e) => return Err(e),
            }
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
