//! Reproducing the container's network configuration on the guest's NICs.
//!
//! Each guest NIC has the MAC address of the container interface it stands
//! for, so the NIC is found by MAC, renamed (eth0, …), and given the
//! interface's MTU, addresses and routes.

use std::net::IpAddr;

use futures::TryStreamExt;
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::route::RouteScope;
use rtnetlink::Handle;

use crate::error::{AgentError, Result};
use runvm_protocol::{Interface, MacAddr, Route};

fn net_err(what: &str, e: impl std::fmt::Display) -> AgentError {
    AgentError::Network(format!("{what}: {e}"))
}

async fn links(handle: &Handle) -> Result<Vec<(u32, String, Option<MacAddr>)>> {
    let mut out = Vec::new();
    let mut stream = handle.link().get().execute();
    while let Some(msg) = stream
        .try_next()
        .await
        .map_err(|e| net_err("list links", e))?
    {
        let mut name = String::new();
        let mut mac = None;
        for a in &msg.attributes {
            match a {
                LinkAttribute::IfName(n) => name = n.clone(),
                LinkAttribute::Address(m) => mac = MacAddr::try_from(&m[..]).ok(),
                _ => {}
            }
        }
        out.push((msg.header.index, name, mac));
    }
    Ok(out)
}

/// Brings up loopback and configures every container interface.
pub async fn configure(interfaces: &[Interface], routes: &[Route]) -> Result<()> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| net_err("open netlink", e))?;
    tokio::spawn(conn);
    let all = links(&handle).await?;
    if let Some((lo, _, _)) = all.iter().find(|(_, n, _)| n == "lo") {
        handle
            .link()
            .set(*lo)
            .up()
            .execute()
            .await
            .map_err(|e| net_err("bring up lo", e))?;
    }
    let mut index_of = std::collections::HashMap::new();
    for iface in interfaces {
        let Some((index, name, _)) = all.iter().find(|(_, _, mac)| *mac == Some(iface.mac)) else {
            return Err(AgentError::Network(format!(
                "no guest NIC has MAC {} (for {})",
                iface.mac, iface.name
            )));
        };
        if *name != iface.name {
            handle
                .link()
                .set(*index)
                .name(iface.name.clone())
                .execute()
                .await
                .map_err(|e| net_err(&format!("rename {name} to {}", iface.name), e))?;
        }
        handle
            .link()
            .set(*index)
            .mtu(iface.mtu)
            .execute()
            .await
            .map_err(|e| net_err(&format!("set the MTU of {}", iface.name), e))?;
        for a in &iface.addresses {
            handle
                .address()
                .add(*index, a.addr(), a.prefix_len())
                .execute()
                .await
                .map_err(|e| net_err(&format!("add {a} to {}", iface.name), e))?;
        }
        handle
            .link()
            .set(*index)
            .up()
            .execute()
            .await
            .map_err(|e| net_err(&format!("bring up {}", iface.name), e))?;
        index_of.insert(iface.name.clone(), *index);
    }
    for r in routes {
        let Some(index) = index_of.get(&r.device) else {
            continue;
        };
        let (dst, len) = (r.destination.addr(), r.destination.prefix_len());
        let gw = r.gateway;
        let base = handle.route().add().output_interface(*index);
        let base = if gw.is_none() {
            base.scope(RouteScope::Link)
        } else {
            base
        };
        let res = match (dst, gw) {
            (IpAddr::V4(d), Some(IpAddr::V4(g))) => {
                let mut req = base.v4().destination_prefix(d, len).gateway(g);
                if let Some(m) = r.metric {
                    req = req.priority(m);
                }
                req.execute().await
            }
            (IpAddr::V4(d), None) => base.v4().destination_prefix(d, len).execute().await,
            (IpAddr::V6(d), Some(IpAddr::V6(g))) => {
                base.v6()
                    .destination_prefix(d, len)
                    .gateway(g)
                    .execute()
                    .await
            }
            (IpAddr::V6(d), None) => base.v6().destination_prefix(d, len).execute().await,
            _ => continue,
        };
        match res {
            Ok(()) => {}
            // The kernel already made the route of a connected subnet.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {}
            Err(e) => return Err(net_err(&format!("add route {}", r.destination), e)),
        }
    }
    Ok(())
}
