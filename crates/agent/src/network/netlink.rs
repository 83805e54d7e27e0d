//! [`GuestNetOps`] on the guest's kernel, through rtnetlink.

use std::net::IpAddr;

use futures::TryStreamExt;
use netlink_packet_route::address::AddressHeaderFlag;
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::route::{RouteMessage, RouteScope};
use rtnetlink::Handle;
use runvm_netlink::nl;

use super::{AddressSetup, GuestNetOps, Link, NetError, RouteSetup};

pub struct RtNetlink {
    handle: Handle,
}

impl RtNetlink {
    pub fn connect() -> Result<Self, NetError> {
        let handle = runvm_netlink::connect().map_err(NetError::Connect)?;
        Ok(Self { handle })
    }
}

impl GuestNetOps for RtNetlink {
    async fn links(&mut self) -> Result<Vec<Link>, NetError> {
        let mut out = Vec::new();
        let mut stream = self.handle.link().get().execute();
        while let Some(msg) = stream.try_next().await.map_err(nl("list links"))? {
            let mut link = Link {
                index: msg.header.index,
                name: String::new(),
                hw_address: Vec::new(),
            };
            for a in &msg.attributes {
                match a {
                    LinkAttribute::IfName(n) => link.name = n.clone(),
                    LinkAttribute::Address(m) => link.hw_address = m.clone(),
                    _ => {}
                }
            }
            out.push(link);
        }
        Ok(out)
    }

    async fn set_up(&mut self, index: u32, name: &str) -> Result<(), NetError> {
        self.handle
            .link()
            .set(index)
            .up()
            .execute()
            .await
            .map_err(nl(format!("bring up {name}")))?;
        Ok(())
    }

    async fn rename(&mut self, index: u32, from: &str, to: &str) -> Result<(), NetError> {
        self.handle
            .link()
            .set(index)
            .name(to.to_owned())
            .execute()
            .await
            .map_err(nl(format!("rename {from} to {to}")))?;
        Ok(())
    }

    async fn set_mtu(&mut self, index: u32, name: &str, mtu: u32) -> Result<(), NetError> {
        self.handle
            .link()
            .set(index)
            .mtu(mtu)
            .execute()
            .await
            .map_err(nl(format!("set the MTU of {name} to {mtu}")))?;
        Ok(())
    }

    async fn add_address(
        &mut self,
        index: u32,
        name: &str,
        a: &AddressSetup,
    ) -> Result<(), NetError> {
        let mut req = self
            .handle
            .address()
            .add(index, a.address.addr(), a.address.prefix_len());
        if a.nodad {
            req.message_mut()
                .header
                .flags
                .push(AddressHeaderFlag::Nodad);
        }
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {
                Err(NetError::AddressExists {
                    address: a.address,
                    device: name.to_owned(),
                })
            }
            Err(e) => Err(nl(format!("add {} to {name}", a.address))(e).into()),
        }
    }

    async fn add_route(&mut self, r: &RouteSetup) -> Result<(), NetError> {
        let mut req = self.handle.route().add();
        *req.message_mut() = route_message(&self.handle, r);
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {
                Err(NetError::RouteExists {
                    destination: r.destination,
                    device: r.device.clone(),
                })
            }
            Err(e) => Err(nl(format!(
                "add the route to {} via {}",
                r.destination, r.device
            ))(e)
            .into()),
        }
    }

    async fn del_route(&mut self, r: &RouteSetup) -> Result<(), NetError> {
        match self
            .handle
            .route()
            .del(route_message(&self.handle, r))
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => Ok(()),
            Err(e) => Err(nl(format!(
                "remove the route to {} via {}",
                r.destination, r.device
            ))(e)
            .into()),
        }
    }

    async fn flush_addresses(&mut self, index: u32, name: &str) -> Result<(), NetError> {
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let mut all = Vec::new();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(nl(format!("list the addresses of {name}")))?
        {
            all.push(msg);
        }
        for msg in all {
            match self.handle.address().del(msg).execute().await {
                Ok(()) => {}
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EADDRNOTAVAIL => {}
                Err(e) => return Err(nl(format!("remove an address of {name}"))(e).into()),
            }
        }
        Ok(())
    }

    async fn set_down(&mut self, index: u32, name: &str) -> Result<(), NetError> {
        self.handle
            .link()
            .set(index)
            .down()
            .execute()
            .await
            .map_err(nl(format!("take {name} down")))?;
        Ok(())
    }
}

/// The netlink message for route `r` (to add or to remove).
fn route_message(handle: &Handle, r: &RouteSetup) -> RouteMessage {
    let base = handle.route().add().output_interface(r.index);
    let base = if r.gateway.is_none() {
        base.scope(RouteScope::Link)
    } else {
        base
    };
    let (dst, len) = (r.destination.addr(), r.destination.prefix_len());
    match (dst, r.gateway) {
        (IpAddr::V4(d), gw) => {
            let mut req = base.v4().destination_prefix(d, len);
            if let Some(IpAddr::V4(g)) = gw {
                req = req.gateway(g);
            }
            if let Some(m) = r.metric {
                req = req.priority(m);
            }
            req.message_mut().clone()
        }
        (IpAddr::V6(d), gw) => {
            let mut req = base.v6().destination_prefix(d, len);
            if let Some(IpAddr::V6(g)) = gw {
                req = req.gateway(g);
            }
            if let Some(m) = r.metric {
                req = req.priority(m);
            }
            req.message_mut().clone()
        }
    }
}
